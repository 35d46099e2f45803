"""The blocking client: ``ssl`` sockets + h11, one keep-alive connection reused."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h11

from qkms_pqc import HybridPrivateKey

from ._errors import TransportError
from ._http import RECEIVE_SIZE, Exchange, KmeClosed
from ._results import (
    HttpCall,
    KeyDelivery,
    KeyStatus,
    dec_keys_call,
    enc_keys_call,
    parse_endpoint,
    parse_keys,
    parse_status,
    status_call,
)
from ._tls import check_kme_identity, client_context, connection_dropped

__all__ = ["Etsi014Client"]


class Etsi014Client:
    """An SAE's ETSI GS QKD 014 client, blocking.

    ``base_url`` is the KME's ``https://host[:port]``; ``ca`` the network CA; ``cert`` and
    ``key`` the SAE's client certificate, which is how the KME knows the SAE.  With
    ``kme_id``, the KME's certificate must have that CN.  With ``pqc_private_key``,
    PQC-wrapped keys are unwrapped (``KeyDelivery.pqc_unwrapped``).  ``timeout`` bounds
    each socket operation, in seconds.

    One connection is kept alive and reused; use ``close()`` or ``with``.  Not thread-safe:
    use one client per thread.  Every method raises a subclass of ``Etsi014Error``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca: Path | str,
        cert: Path | str,
        key: Path | str,
        pqc_private_key: HybridPrivateKey | None = None,
        kme_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._endpoint = parse_endpoint(base_url)
        self._context = client_context(ca, cert, key)
        self._pqc_private_key = pqc_private_key
        self._kme_id = kme_id
        self._timeout = timeout
        self._sock: ssl.SSLSocket | None = None
        self._conn = h11.Connection(h11.CLIENT)

    def status(self, slave_sae_id: str) -> KeyStatus:
        """Status of the keys this SAE may get for ``slave_sae_id`` (GET ``status``)."""
        return parse_status(*self._request(status_call(self._endpoint, slave_sae_id)))

    def get_key(
        self,
        slave_sae_id: str,
        number: int = 1,
        size: int | None = None,
        additional_slave_sae_ids: Sequence[str] = (),
        extension_mandatory: Sequence[Mapping[str, Any]] = (),
        extension_optional: Sequence[Mapping[str, Any]] = (),
    ) -> KeyDelivery:
        """Get ``number`` new keys (of ``size`` bits, else the KME's default) shared with
        ``slave_sae_id`` and any ``additional_slave_sae_ids`` (POST ``enc_keys``)."""
        call = enc_keys_call(
            self._endpoint,
            slave_sae_id,
            number=number,
            size=size,
            additional_slave_sae_ids=additional_slave_sae_ids,
            extension_mandatory=extension_mandatory,
            extension_optional=extension_optional,
        )
        return parse_keys(
            *self._request(call),
            pqc_private_key=self._pqc_private_key,
            expected_number=number,
            expected_size=size,
        )

    def get_key_with_ids(self, master_sae_id: str, key_ids: Sequence[str]) -> KeyDelivery:
        """Get the keys ``master_sae_id`` obtained under ``key_ids`` (POST ``dec_keys``)."""
        call = dec_keys_call(self._endpoint, master_sae_id, key_ids)
        return parse_keys(
            *self._request(call), pqc_private_key=self._pqc_private_key, expected_ids=key_ids
        )

    def close(self) -> None:
        """Close the kept-alive connection, if any.  The client can still be used."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Etsi014Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self) -> ssl.SSLSocket:
        if self._sock is not None and connection_dropped(self._sock):
            self.close()
        if self._sock is None:
            raw = socket.create_connection(
                (self._endpoint.host, self._endpoint.port), timeout=self._timeout
            )
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = self._context.wrap_socket(raw, server_hostname=self._endpoint.host)
            except BaseException:
                raw.close()
                raise
            try:
                check_kme_identity(sock.getpeercert(), self._kme_id)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
            self._conn = h11.Connection(h11.CLIENT)
        return self._sock

    def _request(self, call: HttpCall) -> tuple[int, bytes]:
        try:
            sock = self._connection()
            exchange = Exchange(self._conn, call, self._endpoint)
            sock.sendall(exchange.request)
            while not exchange.complete():
                exchange.receive(sock.recv(RECEIVE_SIZE))
            if not exchange.reusable():
                self.close()
            return exchange.result()
        except (OSError, KmeClosed) as exc:
            self.close()
            raise TransportError(
                f"request to KME {self._endpoint.host}:{self._endpoint.port} failed: "
                f"{_describe(exc)}"
            ) from None
        except h11.ProtocolError:
            self.close()
            raise TransportError(
                f"KME {self._endpoint.host}:{self._endpoint.port} broke HTTP/1.1"
            ) from None
        except BaseException:
            self.close()
            raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"KME certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
