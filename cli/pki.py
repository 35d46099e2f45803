"""``qkmsctl pki``: create the network CA, issue node and SAE certificates, revoke them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli._errors import Group
from cli._pki import (
    CRL_DAYS,
    ISSUED,
    Kind,
    init_ca,
    issue_node,
    issue_operator,
    issue_sae,
    list_certificates,
    revoke,
    sign_crl,
)

__all__ = ["pki"]

_DIR_OPTION = click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="PKI directory (ca.pem, ca.key, crl.pem, index.json, nodes/, saes/).",
)


@click.group(cls=Group)
def pki() -> None:
    """Build the network PKI: one CA, a certificate per node and per SAE."""


@pki.command("init")
@_DIR_OPTION
@click.option("--common-name", default="qkms network CA", show_default=True)
@click.option(
    "--days", type=click.IntRange(min=1), default=3650, show_default=True, help="Validity in days."
)
@click.option("--force", is_flag=True, help="Replace an existing CA (orphans its certificates).")
def init_command(directory: Path, common_name: str, days: int, force: bool) -> None:
    """Create the network CA in --dir."""
    files = init_ca(directory, common_name=common_name, days=days, force=force)
    click.echo(f"wrote {files.cert}")
    click.echo(f"wrote {files.key} (private, 0600: keep it off the nodes)")
    if force:
        click.echo(
            "note: certificates issued by a previous CA no longer verify; reissue them", err=True
        )


@pki.command("issue")
@_DIR_OPTION
@click.option("--node", "node_id", metavar="ID", help="Issue a node (KME) certificate.")
@click.option("--sae", "sae_id", metavar="ID", help="Issue an SAE (application) certificate.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="H",
    help="Extra IP address or DNS name of the node (repeatable; loopback is always included).",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=825,
    show_default=True,
    help="Validity in days (never beyond the CA's own expiry).",
)
@click.option(
    "--seconds",
    type=click.IntRange(min=1),
    help="Validity in seconds instead of --days, for --node (a lab's certificate that"
    " expires soon, to watch the cert-expiring alarm).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing certificate for this id (the old one is revoked in crl.pem).",
)
def issue_command(
    directory: Path,
    node_id: str | None,
    sae_id: str | None,
    hosts: tuple[str, ...],
    days: int,
    seconds: int | None,
    force: bool,
) -> None:
    """Issue a certificate signed by the CA in --dir, for --node ID or --sae ID."""
    if node_id is not None and sae_id is not None:
        raise click.UsageError("give one of --node ID or --sae ID, not both")
    if sae_id is not None and hosts:
        raise click.UsageError("--host applies to --node only: an SAE is never a TLS server")
    if sae_id is not None and seconds is not None:
        raise click.UsageError("--seconds applies to --node only")
    if node_id is not None:
        files = issue_node(directory, node_id, hosts=hosts, days=days, seconds=seconds, force=force)
    elif sae_id is not None:
        files = issue_sae(directory, sae_id, days=days, force=force)
    else:
        raise click.UsageError("give --node ID or --sae ID")
    click.echo(
        f"wrote {files.cert} ({files.kind} {files.id}, valid until {files.not_after:%F %T} UTC)"
    )
    click.echo(f"wrote {files.key} (private, 0600)")
    if force:
        click.echo(
            "note: any previous certificate for this id is revoked; copy crl.pem to every "
            "node and reload them (systemctl reload qkmsd)",
            err=True,
        )


@pki.command("operator")
@_DIR_OPTION
@click.argument("name")
@click.option(
    "--read-only", is_flag=True, help="View the dashboard only (OU=operator-ro), never operate."
)
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Replace NAME's certificate (the old one is revoked).")
def operator_command(directory: Path, name: str, read_only: bool, days: int, force: bool) -> None:
    """Issue a dashboard operator certificate for NAME (OU=operator, or operator-ro).

    The operator's browser presents it to a node's [listen] dashboard_tls; a PKCS#12 bundle
    for a browser: openssl pkcs12 -export -in NAME.pem -inkey NAME.key -out NAME.p12
    """
    files = issue_operator(directory, name, read_only=read_only, days=days, force=force)
    what = "view only" if read_only else "view and operate"
    click.echo(
        f"wrote {files.cert} ({files.kind} {files.id}: {what}, valid until {files.not_after:%F})"
    )
    click.echo(f"wrote {files.key} (private, 0600)")


@pki.command("revoke")
@_DIR_OPTION
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(["node", "sae", "operator", "operator-ro"]),
    help="Revoke only this kind's certificate (default: whichever NAME has).",
)
def revoke_command(directory: Path, name: str, kind: str | None) -> None:
    """Revoke the current certificate of NAME and sign crl.pem again."""
    chosen: Kind | None = next((k for k in ISSUED if k == kind), None)
    revoked = revoke(directory, name, kind=chosen)
    for one in revoked:
        click.echo(f"revoked {one.kind} {one.id} (serial {one.serial})")
    click.echo(f"wrote {revoked[0].crl}: copy it to every node and reload them")


@pki.command("crl")
@_DIR_OPTION
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=CRL_DAYS,
    show_default=True,
    help="Days until the CRL's next update; nodes refuse every handshake after it.",
)
def crl_command(directory: Path, days: int) -> None:
    """Sign crl.pem again with every revocation so far (before its next update)."""
    click.echo(f"wrote {sign_crl(directory, days=days)}: copy it to every node and reload them")


@pki.command("list")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(directory: Path, as_json: bool) -> None:
    """List the CA and the certificates issued in --dir, revoked ones too."""
    infos = list_certificates(directory)
    if as_json:
        rows = [
            {
                "kind": info.kind,
                "id": info.id,
                "path": str(info.path) if info.path is not None else None,
                "not_after": info.not_after.isoformat(),
                "sha256": info.fingerprint,
                "serial": info.serial,
                "revoked": info.revoked.isoformat() if info.revoked else None,
                "reason": info.reason or None,
            }
            for info in infos
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not infos:
        click.echo(f"no certificates in {directory}")
        return
    width = max(len(info.id) for info in infos)
    click.echo(f"{'KIND':<5} {'ID':<{width}} {'NOT AFTER':<10} {'STATUS':<10} SHA-256")
    for info in infos:
        status = (info.reason or "revoked") if info.revoked else "valid"
        click.echo(
            f"{info.kind:<5} {info.id:<{width}} {info.not_after:%Y-%m-%d} {status:<10} "
            f"{info.fingerprint}"
        )
