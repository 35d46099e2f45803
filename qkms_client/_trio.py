"""The trio client: ``trio.open_ssl_over_tcp_stream`` + h11, one keep-alive connection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h11
import trio

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

__all__ = ["TrioEtsi014Client"]


class TrioEtsi014Client:
    """An SAE's ETSI GS QKD 014 client for trio.

    Arguments as ``Etsi014Client``, without ``timeout``: the caller owns time limits
    (``with trio.fail_after(...)``).  One connection is kept alive and reused; calls from
    several tasks take turns on it.  Use ``async with`` or ``aclose()``.

    Every method raises a subclass of ``Etsi014Error``.  On cancellation the connection is
    dropped (its state is unknown) and the next call opens a new one; whether the KME
    delivered keys for a cancelled ``get_key`` is unknown too.
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
    ) -> None:
        self._endpoint = parse_endpoint(base_url)
        self._context = client_context(ca, cert, key)
        self._pqc_private_key = pqc_private_key
        self._kme_id = kme_id
        self._stream: trio.SSLStream[trio.SocketStream] | None = None
        self._conn = h11.Connection(h11.CLIENT)
        self._lock = trio.Lock()

    async def status(self, slave_sae_id: str) -> KeyStatus:
        """Status of the keys this SAE may get for ``slave_sae_id`` (GET ``status``)."""
        return parse_status(*await self._request(status_call(self._endpoint, slave_sae_id)))

    async def get_key(
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
            *await self._request(call),
            pqc_private_key=self._pqc_private_key,
            expected_number=number,
            expected_size=size,
        )

    async def get_key_with_ids(self, master_sae_id: str, key_ids: Sequence[str]) -> KeyDelivery:
        """Get the keys ``master_sae_id`` obtained under ``key_ids`` (POST ``dec_keys``)."""
        call = dec_keys_call(self._endpoint, master_sae_id, key_ids)
        return parse_keys(
            *await self._request(call),
            pqc_private_key=self._pqc_private_key,
            expected_ids=key_ids,
        )

    async def aclose(self) -> None:
        """Close the kept-alive connection, if any.  The client can still be used."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def __aenter__(self) -> TrioEtsi014Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _connect(self) -> trio.SSLStream[trio.SocketStream]:
        if self._stream is not None and connection_dropped(self._stream.transport_stream.socket):
            await self.aclose()
        if self._stream is None:
            stream = await trio.open_ssl_over_tcp_stream(
                self._endpoint.host,
                self._endpoint.port,
                ssl_context=self._context,
                https_compatible=True,
            )
            try:
                await stream.do_handshake()
                check_kme_identity(stream.getpeercert(), self._kme_id)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._stream = stream
            self._conn = h11.Connection(h11.CLIENT)
        return self._stream

    async def _request(self, call: HttpCall) -> tuple[int, bytes]:
        async with self._lock:
            try:
                return await self._exchange(call)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, KmeClosed) as exc:
                await self.aclose()
                raise TransportError(
                    f"request to KME {self._endpoint.host}:{self._endpoint.port} failed: "
                    f"{_describe(exc)}"
                ) from None
            except h11.ProtocolError:
                await self.aclose()
                raise TransportError(
                    f"KME {self._endpoint.host}:{self._endpoint.port} broke HTTP/1.1"
                ) from None
            except BaseException:
                await self.aclose()
                raise

    async def _exchange(self, call: HttpCall) -> tuple[int, bytes]:
        stream = await self._connect()
        exchange = Exchange(self._conn, call, self._endpoint)
        await stream.send_all(exchange.request)
        while not exchange.complete():
            exchange.receive(bytes(await stream.receive_some(RECEIVE_SIZE)))
        if not exchange.reusable():
            await self.aclose()
        return exchange.result()


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
    if reason:
        return f"TLS failed ({reason})"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc) or type(cause).__name__
