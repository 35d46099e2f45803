"""``qkmsctl sae``: an SAE's view of a KME, over ETSI GS QKD 014, for operators.

The SAE is whoever holds the client certificate: give ``--url``, ``--ca``, ``--cert``
and ``--key``, or ``--lab DIR --sae SAE_ID`` to take them from a lab's ``lab.json``.
Keys are shown by fingerprint (the first 16 hex digits of their SHA-256); the raw key
only with ``--show-key``.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from qkms_client import (
    BadRequest,
    Etsi014Client,
    Etsi014Error,
    KeyDelivery,
    KeyStatus,
    KeyUnwrapError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
)
from qkms_pqc import HybridPrivateKey, PqcError, generate_keypair, write_private_key

from ._errors import CliError, Group
from ._lab import Lab
from ._render import table

FINGERPRINT_HEX = 16


@dataclasses.dataclass(frozen=True)
class _Kme:
    """Where the KME is and who we are to it."""

    url: str
    ca: Path
    cert: Path
    key: Path
    sae: str | None
    timeout: float


def _error(exc: Etsi014Error, kme: _Kme) -> CliError:
    """The one line an operator sees for a failed ETSI 014 call (exit status 1)."""
    who = f"SAE {kme.sae}" if kme.sae else f"the SAE of {kme.cert}"
    if isinstance(exc, Unauthorized):
        message = (
            f"not authorised: KME {kme.url} refused {who} (401): the SAE must be attached to "
            "this KME, and keys can be fetched only by the SAEs they were requested for"
        )
    elif isinstance(exc, BadRequest):
        message = f"KME {kme.url} refused the request (400): {exc.message}"
    elif isinstance(exc, ServiceUnavailable):
        message = f"KME {kme.url} cannot serve now (503): {exc.message}"
    elif isinstance(exc, TransportError | KeyUnwrapError):
        message = str(exc)
    else:
        message = f"KME {kme.url} answered outside ETSI 014: {exc}"
    return CliError(message)


def _from_lab(directory: Path, sae: str) -> dict[str, Any]:
    manifest = Lab(directory).manifest()
    try:
        entry = manifest["saes"][sae]
        return {
            "url": manifest["kmes"][entry["kme"]]["url"],
            "ca": manifest["ca"],
            "cert": entry["cert"],
            "key": entry["key"],
        }
    except KeyError:
        known = ", ".join(sorted(manifest.get("saes", {}))) or "none"
        raise CliError(
            f"{directory / 'lab.json'}: no SAE {sae!r} in this lab (known: {known})"
        ) from None


def _kme_options(f: Callable[..., None]) -> Callable[..., None]:
    """``--url --ca --cert --key`` or ``--lab --sae``, and ``--timeout``: handed on as ``kme``."""

    @click.option("--url", help="the KME's ETSI 014 base URL, https://host:port")
    @click.option("--ca", type=click.Path(dir_okay=False, path_type=Path), help="network CA")
    @click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), help="SAE cert")
    @click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="SAE key")
    @click.option(
        "--lab",
        "lab_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="take the above from this lab's lab.json (with --sae)",
    )
    @click.option("--sae", "sae_id", help="the SAE to act as, from --lab")
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=30.0,
        show_default=True,
        help="seconds per network operation",
    )
    @functools.wraps(f)
    def wrapper(
        *,
        url: str | None,
        ca: Path | None,
        cert: Path | None,
        key: Path | None,
        lab_dir: Path | None,
        sae_id: str | None,
        timeout: float,
        **kwargs: Any,
    ) -> None:
        given: dict[str, Any] = {"url": url, "ca": ca, "cert": cert, "key": key}
        if lab_dir is not None:
            if sae_id is None:
                raise click.UsageError("--lab needs --sae SAE_ID: the SAE to act as")
            given = {**_from_lab(lab_dir, sae_id), **{k: v for k, v in given.items() if v}}
        elif sae_id is not None:
            raise click.UsageError("--sae names an SAE of --lab DIR; without a lab use --cert")
        missing = [f"--{name}" for name, value in given.items() if not value]
        if missing:
            raise click.UsageError(
                f"missing {', '.join(missing)}: give --url, --ca, --cert and --key, "
                "or --lab DIR --sae SAE_ID"
            )
        kme = _Kme(
            url=str(given["url"]),
            ca=Path(given["ca"]),
            cert=Path(given["cert"]),
            key=Path(given["key"]),
            sae=sae_id,
            timeout=timeout,
        )
        f(kme=kme, **kwargs)

    return wrapper


def _client(kme: _Kme, pqc_key: Path | None = None) -> Etsi014Client:
    private = None
    if pqc_key is not None:
        try:
            private = HybridPrivateKey.load(pqc_key)
        except OSError as exc:
            raise CliError(f"PQC key {pqc_key}: {exc.strerror or exc}") from None
        except PqcError as exc:
            raise CliError(f"PQC key {pqc_key}: {exc}") from None
    try:
        return Etsi014Client(
            kme.url,
            ca=kme.ca,
            cert=kme.cert,
            key=kme.key,
            pqc_private_key=private,
            timeout=kme.timeout,
        )
    except ValueError as exc:
        raise CliError(f"--url: {exc}") from None
    except Etsi014Error as exc:
        raise _error(exc, kme) from None


def fingerprint(key: bytes) -> str:
    """A short public name for key bytes: the first 16 hex digits of their SHA-256."""
    return hashlib.sha256(key).hexdigest()[:FINGERPRINT_HEX]


_json = click.option("--json", "as_json", is_flag=True, help="print JSON")
_show_key = click.option(
    "--show-key", is_flag=True, help="also print the raw keys (base64): secret material!"
)
_pqc_key = click.option(
    "--pqc-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="this SAE's hybrid PQC private key: unwrap keys the KME wrapped for it",
)


def _print_keys(delivery: KeyDelivery, *, show_key: bool, as_json: bool) -> None:
    if as_json:
        keys = []
        for k in delivery:
            entry: dict[str, Any] = {
                "key_ID": k.key_id,
                "size_bits": len(k.key) * 8,
                "fingerprint": fingerprint(k.key),
            }
            if show_key:
                entry["key"] = base64.b64encode(k.key).decode("ascii")
            keys.append(entry)
        out = {"keys": keys, "pqc_unwrapped": delivery.pqc_unwrapped}
        click.echo(json.dumps(out, indent=2))
        return
    headers = ["key ID", "bits", "fingerprint (SHA-256)"]
    if show_key:
        headers.append("key (base64)")
    rows = []
    for k in delivery:
        row = [k.key_id, len(k.key) * 8, fingerprint(k.key)]
        if show_key:
            row.append(base64.b64encode(k.key).decode("ascii"))
        rows.append(row)
    click.echo(table(headers, rows))
    if delivery.pqc_unwrapped:
        click.echo("(delivered PQC-wrapped, unwrapped with --pqc-key)")


@click.group(cls=Group)
def sae() -> None:
    """Act as an SAE towards a KME (ETSI GS QKD 014): status, get keys, register PQC keys."""


@sae.command()
@click.argument("slave")
@_json
@_kme_options
def status(*, kme: _Kme, slave: str, as_json: bool) -> None:
    """The KME's Status for keys from this SAE to SLAVE."""
    with _client(kme) as client:
        try:
            result = client.status(slave)
        except Etsi014Error as exc:
            raise _error(exc, kme) from None
    fields = _status_fields(result)
    if as_json:
        click.echo(json.dumps(fields, indent=2))
    else:
        click.echo(table(["field", "value"], [[k, _cell(v)] for k, v in fields.items()]))


def _status_fields(s: KeyStatus) -> dict[str, Any]:
    """ETSI 014 Table 9 names, in its order."""
    fields: dict[str, Any] = {
        "source_KME_ID": s.source_kme_id,
        "target_KME_ID": s.target_kme_id,
        "master_SAE_ID": s.master_sae_id,
        "slave_SAE_ID": s.slave_sae_id,
        "key_size": s.key_size,
        "stored_key_count": s.stored_key_count,
        "max_key_count": s.max_key_count,
        "max_key_per_request": s.max_key_per_request,
        "max_key_size": s.max_key_size,
        "min_key_size": s.min_key_size,
        "max_SAE_ID_count": s.max_sae_id_count,
    }
    if s.extension is not None:
        fields["status_extension"] = dict(s.extension)
    return fields


def _cell(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


@sae.command("get-key")
@click.argument("slave")
@click.option("--number", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--size", type=click.IntRange(min=1), help="bits per key [default: the KME's]")
@click.option(
    "--additional-slave", "additional", multiple=True, help="another slave SAE (repeatable)"
)
@_show_key
@_pqc_key
@_json
@_kme_options
def get_key(
    *,
    kme: _Kme,
    slave: str,
    number: int,
    size: int | None,
    additional: Sequence[str],
    show_key: bool,
    pqc_key: Path | None,
    as_json: bool,
) -> None:
    """New keys shared with SLAVE (enc_keys): key IDs and fingerprints."""
    with _client(kme, pqc_key) as client:
        try:
            delivery = client.get_key(slave, number, size, additional_slave_sae_ids=additional)
        except Etsi014Error as exc:
            raise _error(exc, kme) from None
    _print_keys(delivery, show_key=show_key, as_json=as_json)


@sae.command("get-key-with-ids")
@click.argument("master")
@click.argument("key_ids", metavar="KEY_ID...", nargs=-1, required=True)
@_show_key
@_pqc_key
@_json
@_kme_options
def get_key_with_ids(
    *,
    kme: _Kme,
    master: str,
    key_ids: Sequence[str],
    show_key: bool,
    pqc_key: Path | None,
    as_json: bool,
) -> None:
    """The keys MASTER obtained for this SAE under KEY_IDs (dec_keys)."""
    with _client(kme, pqc_key) as client:
        try:
            delivery = client.get_key_with_ids(master, list(key_ids))
        except Etsi014Error as exc:
            raise _error(exc, kme) from None
    _print_keys(delivery, show_key=show_key, as_json=as_json)


@sae.command("register-pqc")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="the new private key file (written 0600; never overwritten)",
)
@click.option(
    "--public-out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="the new public key file, for the KME (never overwritten)",
)
@click.option("--sae", "sae_id", default="SAE_ID", help="the SAE's id, for the config lines")
def register_pqc(out: Path, public_out: Path, sae_id: str) -> None:
    """Make a hybrid ML-KEM-768 + X25519 key pair for PQC-wrapped delivery."""
    for path in (out, public_out):
        if path.exists() or path.is_symlink():
            raise CliError(f"{path} already exists; not overwriting it")
    try:
        private = generate_keypair()
    except PqcError as exc:
        raise CliError(f"cannot make a PQC key pair: {exc}") from None
    public = private.public_key()
    try:
        write_private_key(out, private)
    except OSError as exc:
        raise CliError(f"{out}: {exc.strerror or exc}") from None
    try:
        fd = os.open(public_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as file:
            file.write(public.to_pem())
    except OSError as exc:
        out.unlink(missing_ok=True)  # no private key without its public half
        raise CliError(f"{public_out}: {exc.strerror or exc}") from None
    click.echo(f"private key: {out} (mode 0600: keep it with the SAE, secret)")
    click.echo(f"public key:  {public_out}")
    click.echo(f"public key fingerprint (SHA-256): {public.fingerprint()}")
    click.echo("")
    click.echo("Add to the config of the KME this SAE is attached to, then restart it:")
    click.echo("")
    click.echo(f"[saes.{sae_id}]")
    click.echo(f"pqc_public_key = {json.dumps(str(public_out.resolve()))}")
