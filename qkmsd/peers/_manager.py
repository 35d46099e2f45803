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
dispatches messages to the agents in order, one sends a ``Ping`` once a heartbeat has
passed with nothing sent (any message keeps a session heard: the other end's ``Pong``
answers too, so one end's pings keep both heard; each end still pings every
``CLOCK_PING_HEARTBEATS`` heartbeats, for a sample of the peer's clock), and a
watchdog declares the peer down when nothing at all has come from it for ``silence``
seconds: a cut fibre or a dead host sends no reset, only silence.  The watchdog counts
silence only while this node's own event loop runs (a wake more than a tick late credits
one tick; a loop whose turns are slow, timed at each wake, credits less, at most half
less), and not while the reader waits for our own dispatcher to take a
message: a node stalled or crowded by load does not drop its healthy peers.  A send blocked by a
peer that stopped reading does not hold the watchdog up either.  The ``down`` callbacks
get the reason (``silent for ...`` for this case), and ``peers_status`` shows it with
the time the session ended.  A protocol violation is answered with an ``Error`` frame
and the connection is closed; the node carries on.  The dialer reconnects with
jittered exponential backoff, capped at ``reconnect_max``, each connect attempt
bounded by ``CONNECT_TIMEOUT``, so a peer is back within seconds of a heal.

A connection that fails before its session opens (TLS, certificate, ``Hello``, time-out)
changes nothing of the peer's shown state while another session with that peer is open:
a stranger using a live peer's name must not be able to write its ``last_error`` or TLS
details, nor close it.  A second session that does open (a valid certificate for the
peer, then a valid ``Hello``) replaces the first: the newer wins, so that a peer that
restarted is back at once instead of waiting for its old, half-open session to fall
silent.  Only a holder of the peer's key can do that, and the answer to a
stolen key is revocation: ``close_revoked`` ends the sessions whose certificate the new
CRL revokes.

Agents register for what they own: ``on_message(KeyAnnounce, handler)`` for
one-way messages (handled one at a time, in the order they arrived),
``on_request(SupplyReserve, handler)`` for requests (served concurrently, up to
``REQUESTS_IN_FLIGHT`` a session; the handler's return value is sent back under
the request's id, or not at all for a request with no id: ``SupplyBurn`` from a
peer that does not announce ``FEATURE_BURN_ACK``), and ``on_connectivity(up, down)``
for sessions opening (``up(peer)``) and closing (``down(peer, reason)``).
``request(peer, message)`` sends a request under a fresh id and returns its reply; the
reader hands replies straight to their waiting caller, so a reply never queues behind
the agents' work.  ``has_feature(peer, name)``: what the peer's ``Hello`` announced.
"""

from __future__ import annotations

import dataclasses
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import trio

from protocol import (
    PEER_FEATURES,
    REPLY_TYPES,
    Error,
    ErrorCode,
    LocalProtocolError,
    NeedData,
    PeerMessage,
    PeerReply,
    PeerRequest,
    PeerSession,
    Ping,
    Pong,
    RemoteProtocolError,
)

from .._exc import collapse
from ..errors import PeerConnectionLost, PeerUnavailable
from ..log import get_logger
from ..netguard import Admission, ConnectionGate, GateLimits, GateStatistics, wait_for_data
from ..tls import (
    CertificateIdentityError,
    certificate_identity,
    certificate_serial,
    expect_identity,
)
from ..tlsgroup import TlsContexts

log = get_logger("qkms.peers")

M = TypeVar("M", bound=msgspec.Struct)
R = TypeVar("R", bound=PeerRequest)
Handler = Callable[[str, Any], Awaitable[None]]
RequestHandler = Callable[[str, Any], Awaitable[PeerReply]]
PeerEvent = Callable[[str], Awaitable[None]]
PeerDownEvent = Callable[[str, str], Awaitable[None]]

HANDSHAKE_TIMEOUT = 10.0
MAX_CLOCK_RTT_S = 2.0
"""A ping answered later than this gives no clock offset (its error would be too wide)."""
CONNECT_TIMEOUT = 3.0
"""How long the dialer waits for one TCP connect.  A SYN lost to a cut link is
retransmitted by the kernel only after 1, 3, 7, 15 s: a fresh attempt after a heal
connects sooner than waiting for it."""
CLOCK_PING_HEARTBEATS = 16
"""An end that has had no need to ping (it kept sending) pings anyway after this many
heartbeats: the answer measures the peer's clock (``clock_offset_s``)."""
SILENT = "silent"
"""How a ``down`` reason begins when the peer was declared down for silence."""
BUSY_TURNS = 8
"""The watchdog credits its step less this many of its loop's turns (timed at each wake):
a heartbeat takes several turns to be sent, polled and read (at most half the step)."""
REQUESTS_IN_FLIGHT = 256
"""Requests from one peer served at once; past this the peer's session waits."""
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
    down_since: float | None = None
    """When the last session ended (the manager's ``clock``); None while connected or never up."""
    down_reason: str = ""
    """Why the last session ended (``silent for ...`` when the peer fell silent)."""
    clock_offset_s: float | None = None
    """The peer's wall clock minus ours, from the last ping it answered (half the round
    trip is the error bound); None before one."""


class PeerStatistics(msgspec.Struct, frozen=True):
    connected: int
    """Peers with an open session."""
    configured: int
    """Peers in the configuration."""
    listener: GateStatistics
    """The peer port's connection gate."""


@dataclasses.dataclass
class _Waiting:
    """A request sent on a session, waiting for its reply."""

    reply_type: type[msgspec.Struct]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    reply: PeerReply | None = None


class _Session:
    """One live, authenticated connection: the send side, under one lock."""

    def __init__(self, peer: str, stream: trio.abc.Stream, session: PeerSession) -> None:
        self.peer = peer
        self.stream = stream
        self.session = session
        self.serial: int | None = None
        """The serial number of the peer's certificate, where TLS authenticated it."""
        self.tls_version: str | None = None
        self.tls_group: str | None = None
        self.error = ""
        """Why this session ended; the peer's ``last_error`` if it was the peer's session."""
        self.send_lock = trio.Lock()
        self.cancel_scope = trio.CancelScope()
        self.last_rx = trio.current_time()
        self.last_tx = self.last_rx
        """When a message was last sent (trio time): a heartbeat is due a period later."""
        self.ping_period = math.inf
        self.clock_ping_at = math.inf
        self.ping_timer: trio.CancelScope | None = None
        self.held = False
        """True while the reader waits for our own dispatcher: our slowness, not silence."""
        self.waiting: dict[int, _Waiting] = {}
        self.closed = False
        self.requests = trio.CapacityLimiter(REQUESTS_IN_FLIGHT)

    def end(self) -> None:
        """Wake every caller still waiting for a reply on this session: none will come."""
        self.closed = True
        for waiting in self.waiting.values():
            waiting.done.set()

    async def send(self, message: Any) -> None:
        # The lock is nearly always free: taken then without a turn of the scheduler
        # (``Lock.acquire`` takes one), the stream's send being the checkpoint.
        try:
            self.send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self.send_lock.acquire()
        try:
            try:
                await self.stream.send_all(self.session.send(message))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
                raise PeerConnectionLost(f"send to {self.peer} failed: {exc}") from None
            self.last_tx = trio.current_time()
            if self.ping_timer is not None:
                self.ping_timer.deadline = self.ping_due()
        finally:
            self.send_lock.release()

    def ping_due(self) -> float:
        """When the heartbeat task pings next (trio time)."""
        return min(self.last_tx + self.ping_period, self.clock_ping_at)


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
        heartbeat: float,
        reconnect_max: float,
        silence: float | None = None,
        max_frame_size: int = 1 << 20,
        gate: GateLimits | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` is the wall clock of ``last_heard`` and ``connected_since``."""
        self.node_id = node_id
        self._clock = clock
        self._listen = (listen_host, listen_port)
        # Given TlsContexts made from functions, each handshake's group is named on any
        # Python; given bare contexts, where Python can tell (see TlsContexts).
        self._server_tls = _contexts(server_context)
        self._client_tls = _contexts(client_context)
        self._handlers: dict[type[Any], Handler] = {}
        self._request_handlers: dict[type[Any], RequestHandler] = {}
        self._on_up: list[PeerEvent] = []
        self._on_down: list[PeerDownEvent] = []
        self._next_request_id = 1
        self._heartbeat = heartbeat
        self._clock_ping = CLOCK_PING_HEARTBEATS * heartbeat
        self._silence = 3 * heartbeat if silence is None else silence
        self._reconnect_max = reconnect_max
        self._max_frame = max_frame_size
        self._peers = {
            node: PeerState(node, address, dials=node_id < node) for node, address in peers.items()
        }
        self._live: dict[str, _Session] = {}
        self._sessions: set[_Session] = set()
        """Every authenticated connection, open or still waiting for its ``Hello``."""
        self.port: int | None = None
        # Strangers reach the peer port too: cap them before any TLS state exists.
        self._gate = ConnectionGate("peer", gate or GateLimits(256, 64))
        self._accept_timeout = handshake_timeout

    # --- registration: each agent names the messages it owns ------------------------------

    def on_message(self, kind: type[M], handler: Callable[[str, M], Awaitable[None]]) -> None:
        """Hand every ``kind`` message from any peer to ``handler(peer, message)``.

        Handled one at a time per session, in the order they arrived.
        """
        self._register(kind)
        self._handlers[kind] = handler

    def on_request(self, kind: type[R], handler: Callable[[str, R], Awaitable[PeerReply]]) -> None:
        """Answer every ``kind`` request with what ``handler(peer, request)`` returns.

        Requests are served concurrently; the reply goes back under the request's id.
        A handler that raises sends no reply (the requester times out), and is logged.
        """
        if kind not in REPLY_TYPES:
            raise TypeError(f"{kind.__name__} is not a request type")
        self._register(kind)
        self._request_handlers[kind] = handler

    def on_connectivity(self, up: PeerEvent, down: PeerDownEvent) -> None:
        """Call ``up(peer)`` when a session opens and ``down(peer, reason)`` when it closes.

        ``reason`` is what the admin ``peers`` shows; it begins with ``SILENT`` when the
        peer was declared down because nothing came from it for ``silence`` seconds.
        """
        self._on_up.append(up)
        self._on_down.append(down)

    def _register(self, kind: type[Any]) -> None:
        if kind in self._handlers or kind in self._request_handlers:
            raise ValueError(f"{kind.__name__} already has a handler")

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

    async def request(self, peer: str, message: R) -> PeerReply:
        """Send ``message`` to ``peer`` under a fresh id and return the peer's reply.

        Raises ``PeerUnavailable`` if no session is open, or if it ends before the reply
        comes.  The caller owns the time limit (``trio.move_on_after``); on cancellation
        the request is forgotten and a late reply dropped.  Either way the peer may
        still have acted on the request.
        """
        live = self._live.get(peer)
        name = type(message).__name__
        if live is None:
            raise PeerUnavailable(f"peer {peer} is not connected")
        request_id = self._next_request_id
        self._next_request_id += 1
        message = msgspec.structs.replace(message, id=request_id)
        waiting = live.waiting[request_id] = _Waiting(REPLY_TYPES[type(message)])
        try:
            try:
                await live.send(message)
            except PeerConnectionLost as exc:
                live.cancel_scope.cancel()
                raise PeerUnavailable(f"peer {peer}: {exc}") from None
            await waiting.done.wait()
        finally:
            del live.waiting[request_id]
        if waiting.reply is None:
            raise PeerUnavailable(f"the session with {peer} ended before it answered {name}")
        return waiting.reply

    def close_revoked(self, serials: frozenset[int]) -> list[str]:
        """Close every session whose peer certificate has one of ``serials``; their peers.

        New handshakes are refused by the TLS contexts' CRL; this ends what was
        authenticated before the revocation.
        """
        closed: list[str] = []
        for live in list(self._sessions):
            if live.serial is not None and live.serial in serials:
                live.error = f"certificate revoked (serial {live.serial:x})"
                live.cancel_scope.cancel()
                closed.append(live.peer)
        for peer in closed:
            log.warning("peer.revoked", peer=peer)
        return closed

    def is_connected(self, peer: str) -> bool:
        return peer in self._live

    def has_feature(self, peer: str, feature: str) -> bool:
        """Whether ``peer``'s open session announced ``feature`` in its ``Hello``."""
        live = self._live.get(peer)
        return live is not None and feature in live.session.peer_features

    def last_heard(self, peer: str) -> float | None:
        """When ``peer`` last sent us anything (the ``clock``'s time), or None."""
        state = self._peers.get(peer)
        return state.last_seen if state is not None else None

    def peers_status(self) -> list[PeerState]:
        """Copies of every configured peer's state."""
        return [dataclasses.replace(p) for p in self._peers.values()]

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            connected=len(self._live),
            configured=len(self._peers),
            listener=self._gate.statistics(),
        )

    # --- connections ---------------------------------------------------------------

    async def _dial_forever(self, state: PeerState) -> None:
        host, _, port = state.address.rpartition(":")
        host = host.strip("[]")
        failures = 0
        while True:
            state.state = "connecting"
            tcp: trio.SocketStream | None = None
            try:
                with trio.move_on_after(CONNECT_TIMEOUT):
                    tcp = await trio.open_tcp_stream(host, int(port))
                if tcp is None:
                    state.last_error = f"connect: no answer within {CONNECT_TIMEOUT:g} s"
            except OSError as exc:
                state.last_error = f"connect: {exc.strerror or exc}"
            if tcp is not None:
                stream = trio.SSLStream(tcp, self._client_tls.handshake, server_hostname=None)
                began = trio.current_time()
                ran = await self._run_connection(stream, self._client_tls, expected=state.node_id)
                # Only a session that lasted resets the backoff: one that opens and dies
                # at once (a peer that rejects us) must not turn into a reconnect storm.
                if ran and trio.current_time() - began > self._silence:
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
        return await self.serve_authenticated(
            stream,
            peer,
            tls_version=stream.version(),
            tls_group=group or "unknown",
            serial=certificate_serial(stream),
        )

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

    async def serve_authenticated(
        self,
        stream: trio.abc.Stream,
        peer: str,
        *,
        tls_version: str | None = None,
        tls_group: str | None = None,
        serial: int | None = None,
    ) -> bool:
        """Run the peer session over a transport that already authenticated ``peer``.

        The TLS paths call this after the certificate check, with the handshake's
        version, group and the certificate's serial (shown, and checked on revocation,
        once the session opens); tests call it with memory streams.  Takes ownership of
        ``stream`` and closes it.  Returns whether the session opened, once it has ended.
        """
        session = PeerSession(
            local_node=self.node_id,
            expected_peer=peer,
            features=PEER_FEATURES,
            max_frame_size=self._max_frame,
        )
        live = _Session(peer, stream, session)
        live.tls_version, live.tls_group, live.serial = tls_version, tls_group, serial
        state = self._peers[peer]
        opened = False
        self._sessions.add(live)
        inbox_send, inbox_recv = trio.open_memory_channel[Any](1024)
        try:
            with live.cancel_scope:
                await stream.send_all(session.hello())
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._dispatch, live, inbox_recv, nursery)
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await self._next_message(live)  # the session admits only Hello first
                    opened = True
                    await self._open(live)
                    nursery.start_soon(self._heartbeat_loop, live)
                    nursery.start_soon(self._watchdog, live)
                    async with inbox_send:
                        while True:
                            message = await self._next_message(live)
                            await self._handle(live, message, inbox_send)
        except BaseException as raw:
            exc = session_ending(raw)
            if exc is None:
                raise
            if isinstance(exc, RemoteProtocolError):
                log.warning("peer.protocol_error", peer=peer, code=str(exc.code), error=exc.message)
                live.error = f"protocol error: {exc.code}"
                await self._send_error(live, exc.code, exc.message)
            elif isinstance(exc, PeerConnectionLost):
                live.error = str(exc)
            elif isinstance(exc, trio.TooSlowError):
                live.error = "no hello within the handshake time-out"
            else:
                live.error = f"connection lost: {_reason(exc)}"
        finally:
            self._sessions.discard(live)
            live.end()
            # The peer's state is this session's to write only if it is (or was) the
            # peer's session, or if there is none: a failed stranger with a live peer's
            # name leaves the healthy session's state alone.
            if live.error and self._live.get(peer) in (None, live):
                state.last_error = live.error
            if opened:
                await self._close(live)
            await trio.aclose_forcefully(stream)
        return opened

    async def _open(self, live: _Session) -> None:
        state = self._peers[live.peer]
        old = self._live.get(live.peer)
        if old is not None:
            # The newer authenticated session wins (see the module's docstring).
            old.error = "replaced by a new session from the same peer"
            old.cancel_scope.cancel()
            log.info("peer.session_replaced", peer=live.peer)
        self._live[live.peer] = live
        state.state = "connected"
        state.connected_since = self._clock()
        state.connects += 1
        state.version = live.session.version
        state.last_error = ""
        state.down_since, state.down_reason = None, ""
        if live.tls_version is not None:
            state.tls_version, state.tls_group = live.tls_version, live.tls_group
        log.info("peer.connected", peer=live.peer, version=live.session.version)
        for up in self._on_up:
            await up(live.peer)

    async def _close(self, live: _Session) -> None:
        if self._live.get(live.peer) is live:
            del self._live[live.peer]
            state = self._peers[live.peer]
            state.state = "disconnected"
            state.connected_since = None
            reason = live.error or "closed"
            state.down_since, state.down_reason = self._clock(), reason
            log.info("peer.disconnected", peer=live.peer, reason=reason)
            with trio.CancelScope(shield=True):
                for down in self._on_down:
                    await down(live.peer, reason)

    async def _next_message(self, live: _Session) -> PeerMessage:
        while True:
            message = live.session.next_event()
            if not isinstance(message, NeedData):
                live.last_rx = trio.current_time()
                if self._live.get(live.peer) in (None, live):  # not a stranger's Hello
                    self._peers[live.peer].last_seen = self._clock()
                return message
            try:
                data = await live.stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                raise PeerConnectionLost(
                    f"receive from {live.peer} failed: {_reason(exc)}"
                ) from None
            if not data:
                raise PeerConnectionLost(f"{live.peer} closed the connection")
            live.last_rx = trio.current_time()  # heard, even if the frame is not whole yet
            live.session.receive_data(bytes(data))

    async def _handle(
        self, live: _Session, message: PeerMessage, inbox: trio.MemorySendChannel[Any]
    ) -> None:
        if isinstance(message, PeerReply):
            self._deliver_reply(live, message)
        elif isinstance(message, Ping):
            await live.send(Pong(nonce=message.nonce, echo=message.sent_at, at=time.time()))
        elif isinstance(message, Pong):
            self._clock_sample(live.peer, message)
        elif isinstance(message, Error):
            log.warning(
                "peer.error_received", peer=live.peer, code=message.code, error=message.message
            )
            raise PeerConnectionLost(f"{live.peer} sent error {message.code}: {message.message}")
        elif type(message) in self._handlers or type(message) in self._request_handlers:
            live.held = True
            try:
                await inbox.send(message)
            finally:
                live.held = False
        else:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"{type(message).__name__} not handled"
            )

    def _deliver_reply(self, live: _Session, reply: PeerReply) -> None:
        waiting = live.waiting.get(reply.id)
        if waiting is None or not isinstance(reply, waiting.reply_type):
            # Its caller gave up (time-out, cancellation): the answer has no one to go to.
            log.warning("peer.reply_unexpected", peer=live.peer, id=reply.id)
            return
        waiting.reply = reply
        waiting.done.set()

    async def _dispatch(
        self, live: _Session, inbox: trio.MemoryReceiveChannel[Any], nursery: trio.Nursery
    ) -> None:
        peer = live.peer
        async with inbox:
            async for message in inbox:
                serve = self._request_handlers.get(type(message))
                if serve is not None:
                    token = object()
                    await live.requests.acquire_on_behalf_of(token)
                    nursery.start_soon(self._serve_request, live, serve, message, token)
                    continue
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

    async def _serve_request(
        self, live: _Session, serve: RequestHandler, request: Any, token: object
    ) -> None:
        try:
            try:
                reply = await serve(live.peer, request)
            except Exception:
                log.error(
                    "peer.handler_failed",
                    peer=live.peer,
                    message=type(request).__name__,
                    exc_info=True,
                )
                return
            if request.id is None:  # the one-way form of a request, from an older peer
                return
            await live.send(msgspec.structs.replace(reply, id=request.id))
        finally:
            live.requests.release_on_behalf_of(token)

    def _clock_sample(self, peer: str, pong: Pong) -> None:
        """The peer's clock offset from an answered ping: its clock when it answered, less
        the middle of our round trip.  Answers over ``MAX_CLOCK_RTT_S`` are not used."""
        if pong.echo is None or pong.at is None:
            return
        now = time.time()
        rtt = now - pong.echo
        if not (math.isfinite(pong.at) and 0 <= rtt <= MAX_CLOCK_RTT_S):
            return
        state = self._peers.get(peer)
        if state is not None:
            state.clock_offset_s = round(pong.at - (pong.echo + now) / 2, 4)

    async def _heartbeat_loop(self, live: _Session) -> None:
        """Ping once a heartbeat has passed with nothing sent (any message, an answer to
        the peer's ping too, keeps the session heard), and every ``CLOCK_PING_HEARTBEATS``
        heartbeats in any case, for a clock sample.

        It waits under one cancel scope whose deadline each send moves (``_Session.send``):
        an end whose answers keep the session heard is not woken for nothing."""
        nonce = 0
        # Two ends that start together would ping together for ever, each answer pushing
        # the other's next ping: the end with the greater id waits a sixteenth longer, so
        # that the other's pings (and its own answers) soon do for both.
        live.ping_period = self._heartbeat * (1.0 if self.node_id < live.peer else 1.0625)
        live.clock_ping_at = trio.current_time() + self._clock_ping
        while True:
            if trio.current_time() < live.ping_due():
                with trio.CancelScope(deadline=live.ping_due()) as live.ping_timer:
                    await trio.sleep_forever()
                live.ping_timer = None
                continue
            nonce += 1
            live.clock_ping_at = trio.current_time() + self._clock_ping
            await live.send(Ping(nonce=nonce, sent_at=time.time()))

    async def _watchdog(self, live: _Session) -> None:
        """Raise once nothing has come from the peer for ``silence`` seconds of our time.

        It sleeps until the silence could first reach the limit (the last thing heard plus
        the limit, or one tick at least), not tick by tick: on a session that hears its
        peer, about one wake-up per ``silence`` seconds.
        """
        tick = min(self._heartbeat, self._silence / 4)
        silent = 0.0
        seen = live.last_rx
        before = trio.current_time()
        while True:
            step = max(tick, self._silence - silent)
            await trio.sleep(step)
            woke = trio.current_time()
            # A loop can also wake its timers on time yet be slow, each of its turns long
            # (thousands of runnable tasks): a frame then needs several turns to be sent,
            # polled and read.  Yield twice (between the two, the loop polls the sockets and
            # the reader reads what the kernel holds) and time the turns.
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
            now = trio.current_time()
            turn = (now - woke) / 2
            # A wake more than a tick (and those turns) late means our own loop was
            # stalled: credit one tick only, so that the reader gets its turns before the
            # silence is counted against the peer.  A slow loop detects later; it does not
            # drop early.  The turns themselves are our loop's time: never credited.
            elapsed = woke - before
            credit = min(elapsed, step) if elapsed <= step + tick + 2 * turn else tick
            # And credit less the busier the loop: an idle loop's turns take no time; a
            # busy one's credit is at least half, so it still drops a dead peer.
            credit -= min(BUSY_TURNS * turn, credit / 2)
            before = now
            if live.last_rx != seen:
                seen = live.last_rx
                silent = min(now - seen, credit)
            elif not live.held:
                silent += credit
            if silent >= self._silence:
                live.error = f"{SILENT} for {self._silence:g} s (no heartbeat or message)"
                log.warning("peer.silent", peer=live.peer, silence_s=self._silence)
                raise PeerConnectionLost(live.error)

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


_SESSION_ENDINGS = (
    RemoteProtocolError,
    PeerConnectionLost,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ssl.SSLError,
)


def session_ending(raw: BaseException) -> BaseException | None:
    """What ended a session, if a session may end that way; None for anything else (a bug,
    or cancellation from outside), which must propagate.

    A connection that breaks can fail several of the session's tasks at once (the reader
    and a heartbeat both see the reset): a group of such errors ends the session like one
    of them, a protocol error first (the peer is answered with an ``Error`` frame).
    """
    exc = collapse(raw)
    if not isinstance(exc, BaseExceptionGroup):
        return exc if isinstance(exc, _SESSION_ENDINGS) else None
    matched, rest = exc.split((*_SESSION_ENDINGS, trio.Cancelled))
    if rest is not None or matched is None:
        return None
    leaves = [e for e in _leaves(matched) if not isinstance(e, trio.Cancelled)]
    if not leaves:
        return None
    return next((e for e in leaves if isinstance(e, RemoteProtocolError)), leaves[0])


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _contexts(given: ssl.SSLContext | TlsContexts) -> TlsContexts:
    return given if isinstance(given, TlsContexts) else TlsContexts(given)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(exc) or type(exc).__name__
