"""TLS and connection helpers shared by both client flavours."""

from __future__ import annotations

import select
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from ._errors import TransportError

__all__ = ["check_kme_identity", "client_context", "connection_dropped"]


def client_context(ca: Path | str, cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """Mutual TLS (1.2 or 1.3) to a KME: ``ca`` as the trust anchor, the SAE's certificate.

    The KME's certificate must name the base URL's host (hostname check on).  Raises
    ``TransportError`` naming the file that cannot be loaded.
    """
    try:
        # With a cafile, the default context trusts that CA alone; without one it would
        # also trust every CA of the system store for the KME's host name.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"cannot load CA certificate {ca}: {_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        # Only the reason: never anything that could quote the key file.
        raise TransportError(
            f"cannot load SAE certificate {cert} with key {key}: {_reason(exc)}"
        ) from None
    return ctx


def check_kme_identity(peer_cert: Mapping[str, object] | None, kme_id: str | None) -> None:
    """ETSI 014 section 4: the SAE confirms the KME ID from the KME's certificate (its CN).

    Does nothing when ``kme_id`` is None.  Raises ``TransportError`` on a mismatch.
    """
    if kme_id is None:
        return
    names: list[str] = []
    subject = (peer_cert or {}).get("subject", ())
    if isinstance(subject, tuple):
        for rdn in subject:
            for pair in rdn if isinstance(rdn, tuple) else ():
                if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "commonName":
                    names.append(str(pair[1]))
    if names != [kme_id]:
        raise TransportError(
            f"KME certificate is for {names[0][:64] if names else 'no CN'!r}, expected {kme_id!r}"
        )


class _Socket(Protocol):
    def fileno(self) -> int: ...


def connection_dropped(sock: _Socket | None) -> bool:
    """Whether an idle keep-alive connection was closed by the KME (or is unusable).

    An idle HTTP connection has nothing to read; readable means EOF, a TLS alert or junk.
    """
    if sock is None:
        return True
    try:
        fd = sock.fileno()
        if fd < 0:
            return True
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return exc.strerror or type(exc).__name__
