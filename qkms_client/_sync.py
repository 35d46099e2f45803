"""The blocking client: ``ssl`` + ``http.client``, one keep-alive connection reused."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from qkms_pqc import HybridPrivateKey

from ._errors import TransportError
from ._results import (
    MAX_RESPONSE_BYTES,
    HttpCall,
    KeyDelivery,
    KeyStatus,
    dec_keys_call,
    enc_keys_call,
    parse_endpoint,
    parse_keys,
    parse_status,
    status_call,
    too_large,
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
        self._conn: http.client.HTTPSConnection | None = None

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
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Etsi014Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is not None and connection_dropped(self._conn.sock):
            self.close()
        if self._conn is None:
            conn = http.client.HTTPSConnection(
                self._endpoint.host,
                self._endpoint.port,
                timeout=self._timeout,
                context=self._context,
            )
            try:
                conn.connect()
                sock = conn.sock
                assert isinstance(sock, ssl.SSLSocket)
                check_kme_identity(sock.getpeercert(), self._kme_id)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _request(self, call: HttpCall) -> tuple[int, bytes]:
        headers = {"accept": "application/json"}
        if call.body is not None:
            headers["content-type"] = "application/json"
        try:
            conn = self._connection()
            conn.request(call.method, call.path, body=call.body, headers=headers)
            response = conn.getresponse()
            body = response.read(MAX_RESPONSE_BYTES + 1)
            if len(body) > MAX_RESPONSE_BYTES:
                self.close()
                raise too_large()
            if response.will_close:
                self.close()
            return response.status, body
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(
                f"request to KME {self._endpoint.host}:{self._endpoint.port} failed: "
                f"{_describe(exc)}"
            ) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"KME certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
