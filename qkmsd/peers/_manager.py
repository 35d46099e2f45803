"""The peer manager: mutual-TLS sessions with the neighbouring nodes.

Theory of operation
-------------------
Every node listens on its peer port.  For each configured peer, the node with
the lower id dials and the other accepts, so a pair keeps one connection.  A
connection is admitted only if the TLS handshake verifies the peer's
certificate against the network CA (OpenSSL refuses other CAs before any
message exists) and the certificate names a configured peer with role
``node``.  Then both sides send ``Hello``; the session opens when the other's
``Hello`` names the same node.  Nothing a peer sends is acted on before that.

Inside a session, one task reads (so the peer's writes always drain), one task
dispatches messages to the agents in order, one sends heartbeats, and a peer
silent for three heartbeats is dropped.  A protocol violation is answered with
an ``Error`` frame and the connection is closed; the node carries on.  The
dialer reconnects with jittered exponential backoff.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from protocol import (
    NEED_DATA,
    Error,
    ErrorCode,
    LocalProtocolError,
    PeerSession,
    Ping,
    Pong,
    RemoteProtocolError,
)

from .._exc import collapse
from ..errors import PeerConnectionLost
from ..log import get_logger
from ..netguard import Admission, ConnectionGate, GateLimits, wait_for_data
from ..tls import CertificateIdentityError, certificate_identity, expect_identity
from ..tlsgroup import TlsContexts

log = get_logger("qkms.peers")

Handler = Callable[[str, Any], Awaitable[None]]
PeerEvent = Callable[[str], Awaitable[None]]

HANDSHAKE_TIMEOUT = 10.0
_READ_SIZE = 65536


@dataclasses.dataclass
class PeerState:
    """What the admin socket shows about one peer."""

    node_id: str
    address: str
    dials: bool
    state: str = "disconnected"
    connected_since: float | None = None
    last_seen: float | None = None
    last_error: str = ""
    connects: int = 0
    refused: int = 0
    version: int | None = None
    """The peer protocol version of the current or last session."""
    tls_version: str | None = None
    """The TLS version of the last handshake that authenticated this peer."""
    tls_group: str | None = None
    """That handshake's key exchange group (``unknown`` where it could not be read)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Session:
    """One live, authenticated connection: the send side, under one lock."""

    def __init__(self, peer: str, stream: trio.abc.Stream, session: PeerSession) -> None:
        self.peer = peer
        self.stream = stream
        self.session = session
        self.send_lock = trio.Lock()
        self.cancel_scope = trio.CancelScope()
        self.last_rx = trio.current_time()

    async def send(self, message: Any) -> None:
        async with self.send_lock:
            try:
                await self.stream.send_all(self.session.send(message))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                raise PeerConnectionLost(f"send to {self.peer} failed: {exc}") from None


class PeerManager:
    def __init__(
        self,
        *,
        node_id: str,
        peers: dict[str, str],
        listen_host: str,
        listen_port: int,
        server_context: ssl.SSLContext | TlsContexts,
        client_context: ssl.SSLContext | TlsContexts,
        handlers: dict[type[Any], Handler],
        on_up: PeerEvent,
        on_down: PeerEvent,
        heartbeat: float,
        reconnect_max: float,
        max_frame_size: int = 1 << 20,
        gate: GateLimits | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.node_id = node_id
        self._listen = (listen_host, listen_port)
        # Given TlsContexts made from functions, each handshake's group is named on any
        # Python; given bare contexts, where Python can tell (see TlsContexts).
        self._server_tls = _contexts(server_context)
        self._client_tls = _contexts(client_context)
        self._handlers = handlers
        self._on_up = on_up
        self._on_down = on_down
        self._heartbeat = heartbeat
        self._reconnect_max = reconnect_max
        self._max_frame = max_frame_size
        self._peers = {
            node: PeerState(node, address, dials=node_id < node) for node, address in peers.items()
        }
        self._live: dict[str, _Session] = {}
        self.port: int | None = None
        # Strangers reach the peer port too: cap them before any TLS state exists.
        self._gate = ConnectionGate("peer", gate or GateLimits(256, 64))
        self._accept_timeout = handshake_timeout

    # --- public --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial, serve.  ``task_status.started(port)`` once listening."""
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("peers.listening", host=host, port=self.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._gate.serve, listeners, self._accept)
            for state in self._peers.values():
                if state.dials:
                    nursery.start_soon(self._dial_forever, state)
            task_status.started(self.port)

    async def send(self, peer: str, message: Any) -> bool:
        """Send to ``peer`` if a session is open.  False if not (or if it just broke)."""
        session = self._live.get(peer)
        if session is None:
            return False
        try:
            await session.send(message)
        except PeerConnectionLost as exc:
            log.warning("peer.send_failed", peer=peer, error=str(exc))
            session.cancel_scope.cancel()
            return False
        return True

    def is_connected(self, peer: str) -> bool:
        return peer in self._live

    def last_heard(self, peer: str) -> float | None:
        """When ``peer`` last sent us anything (``time.time()``), or None."""
        state = self._peers.get(peer)
        return state.last_seen if state is not None else None

    def peers_status(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self._peers.values()]

    def statistics(self) -> dict[str, Any]:
        return {
            "connected": len(self._live),
            "configured": len(self._peers),
            "listener": self._gate.statistics(),
        }

    # --- connections ---------------------------------------------------------------

    async def _dial_forever(self, state: PeerState) -> None:
        host, _, port = state.address.rpartition(":")
        host = host.strip("[]")
        failures = 0
        while True:
            state.state = "connecting"
            try:
                tcp = await trio.open_tcp_stream(host, int(port))
            except OSError as exc:
                state.last_error = f"connect: {exc.strerror or exc}"
            else:
                stream = trio.SSLStream(tcp, self._client_tls.handshake, server_hostname=None)
                began = trio.current_time()
                ran = await self._run_connection(stream, self._client_tls, expected=state.node_id)
                # Only a session that lasted resets the backoff: one that opens and dies
                # at once (a peer that rejects us) must not turn into a reconnect storm.
                if ran and trio.current_time() - began > 3 * self._heartbeat:
                    failures = 0
            state.state = "disconnected"
            failures += 1
            delay = min(self._reconnect_max, 0.5 * 2 ** min(failures, 10))
            await trio.sleep(delay * random.uniform(0.5, 1.0))

    async def _accept(self, tcp: trio.SocketStream, admission: Admission) -> None:
        deadline = admission.admitted_at + self._accept_timeout
        spoke = False
        with trio.move_on_at(deadline) as waiting:
            spoke = await wait_for_data(tcp)  # no TLS state for a silent socket
            if spoke:
                await admission.start_handshake()  # TLS state for a few strangers at a time
        if waiting.cancelled_caught or not spoke:
            timed_out = waiting.cancelled_caught
            self._gate.note_refused("handshake_timeout" if timed_out else "closed_before_tls")
            return
        stream = trio.SSLStream(tcp, self._server_tls.handshake, server_side=True)
        await self._run_connection(stream, self._server_tls, expected=None, admission=admission)

    async def _run_connection(
        self,
        stream: trio.SSLStream[Any],
        tls: TlsContexts,
        *,
        expected: str | None,
        admission: Admission | None = None,
    ) -> bool:
        """Handshake, authenticate, run the session.  True if a session opened."""
        try:
            if admission is None:
                deadline = trio.current_time() + HANDSHAKE_TIMEOUT
            else:
                deadline = admission.admitted_at + self._accept_timeout
            with trio.fail_at(deadline):
                await stream.do_handshake()
            group = tls.after_handshake(stream)
            identity = certificate_identity(stream)
            expect_identity(identity, common_name=expected, role="node")
            peer = identity.common_name
            if peer not in self._peers:
                raise CertificateIdentityError(f"node {peer!r} is not a configured peer")
            state = self._peers[peer]
            state.tls_version, state.tls_group = stream.version(), group or "unknown"
        except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError) as exc:
            kind = "handshake_timeout" if isinstance(exc, trio.TooSlowError) else "tls"
            self._note_refusal(expected, f"TLS handshake failed: {_reason(exc)}", kind)
            await trio.aclose_forcefully(stream)
            return False
        except CertificateIdentityError as exc:
            self._note_refusal(expected, str(exc), "identity")
            await trio.aclose_forcefully(stream)
            return False
        if admission is not None:
            admission.authenticated()
        return await self.serve_authenticated(stream, peer)

    def _note_refusal(self, expected: str | None, reason: str, kind: str) -> None:
        if expected is None:
            # An accepted stranger: counted, and logged once per interval with the rest
            # (a flood must not write a line per connection).
            self._gate.note_refused(kind)
            return
        log.warning("peer.refused", peer=expected, reason=reason)
        state = self._peers[expected]
        state.refused += 1
        if expected not in self._live:  # never overwrite a healthy session's last error
            state.last_error = reason

    async def serve_authenticated(self, stream: trio.abc.Stream, peer: str) -> bool:
        """Run the peer session over a transport that already authenticated ``peer``.

        The TLS paths call this after the certificate check; tests call it with
        memory streams.  Takes ownership of ``stream`` and closes it.  Returns
        whether the session opened, once it has ended.
        """
        session = PeerSession(
            local_node=self.node_id, expected_peer=peer, max_frame_size=self._max_frame
        )
        live = _Session(peer, stream, session)
        state = self._peers[peer]
        opened = False
        inbox_send, inbox_recv = trio.open_memory_channel[Any](1024)
        try:
            with live.cancel_scope:
                await stream.send_all(session.hello())
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._dispatch, peer, inbox_recv)
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await self._next_message(live)  # the session admits only Hello first
                    opened = True
                    await self._open(live)
                    nursery.start_soon(self._heartbeat_loop, live)
                    async with inbox_send:
                        while True:
                            message = await self._next_message(live)
                            await self._handle(live, message, inbox_send)
        except BaseException as raw:
            exc = collapse(raw)
            if isinstance(exc, RemoteProtocolError):
                log.warning("peer.protocol_error", peer=peer, code=str(exc.code), error=exc.message)
                state.last_error = f"protocol error: {exc.code}"
                await self._send_error(live, exc.code, exc.message)
            elif isinstance(exc, PeerConnectionLost):
                state.last_error = str(exc)
            elif isinstance(exc, trio.TooSlowError):
                state.last_error = "no hello within the handshake time-out"
            elif isinstance(
                exc, trio.BrokenResourceError | trio.ClosedResourceError | ssl.SSLError
            ):
                state.last_error = f"connection lost: {_reason(exc)}"
            else:
                raise
        finally:
            if opened:
                await self._close(live)
            await trio.aclose_forcefully(stream)
        return opened

    async def _open(self, live: _Session) -> None:
        state = self._peers[live.peer]
        old = self._live.get(live.peer)
        if old is not None:
            old.cancel_scope.cancel()
        self._live[live.peer] = live
        state.state = "connected"
        state.connected_since = time.time()
        state.connects += 1
        state.version = live.session.version
        state.last_error = ""
        log.info("peer.connected", peer=live.peer, version=live.session.version)
        await self._on_up(live.peer)

    async def _close(self, live: _Session) -> None:
        if self._live.get(live.peer) is live:
            del self._live[live.peer]
            state = self._peers[live.peer]
            state.state = "disconnected"
            state.connected_since = None
            log.info("peer.disconnected", peer=live.peer, reason=state.last_error or "closed")
            with trio.CancelScope(shield=True):
                await self._on_down(live.peer)

    async def _next_message(self, live: _Session) -> Any:
        while True:
            message = live.session.next_event()
            if message is not NEED_DATA:
                live.last_rx = trio.current_time()
                self._peers[live.peer].last_seen = time.time()
                return message
            try:
                data = await live.stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                raise PeerConnectionLost(f"receive from {live.peer} failed: {exc}") from None
            if not data:
                raise PeerConnectionLost(f"{live.peer} closed the connection")
            live.session.receive_data(bytes(data))

    async def _handle(
        self, live: _Session, message: Any, inbox: trio.MemorySendChannel[Any]
    ) -> None:
        if isinstance(message, Ping):
            await live.send(Pong(nonce=message.nonce))
        elif isinstance(message, Pong):
            pass
        elif isinstance(message, Error):
            log.warning(
                "peer.error_received", peer=live.peer, code=message.code, error=message.message
            )
            raise PeerConnectionLost(f"{live.peer} sent error {message.code}: {message.message}")
        elif type(message) in self._handlers:
            await inbox.send(message)
        else:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"{type(message).__name__} not handled"
            )

    async def _dispatch(self, peer: str, inbox: trio.MemoryReceiveChannel[Any]) -> None:
        async with inbox:
            async for message in inbox:
                try:
                    await self._handlers[type(message)](peer, message)
                except PeerConnectionLost:
                    raise
                except Exception:
                    # A bug in an agent must not end the session silently: log it loudly.
                    log.error(
                        "peer.handler_failed",
                        peer=peer,
                        message=type(message).__name__,
                        exc_info=True,
                    )

    async def _heartbeat_loop(self, live: _Session) -> None:
        nonce = 0
        while True:
            await trio.sleep(self._heartbeat)
            if trio.current_time() - live.last_rx > 3 * self._heartbeat:
                raise PeerConnectionLost(f"{live.peer} silent for {3 * self._heartbeat:.0f} s")
            nonce += 1
            await live.send(Ping(nonce=nonce))

    async def _send_error(self, live: _Session, code: ErrorCode, message: str) -> None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                async with live.send_lock:
                    await live.stream.send_all(
                        live.session.send(Error(code=str(code), message=message[:1000]))
                    )
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                ssl.SSLError,
                LocalProtocolError,
            ):
                pass


def _contexts(given: ssl.SSLContext | TlsContexts) -> TlsContexts:
    return given if isinstance(given, TlsContexts) else TlsContexts(given)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(exc) or type(exc).__name__
