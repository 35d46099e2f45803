"""A connection gate for a listener that strangers can reach: caps before authentication.

Theory of operation
-------------------
Every accepted connection asks the gate for an ``Admission`` before anything is spent on
it.  The gate counts the connections of its listener, in total and per source address.
A connection is *pending* until its handler calls ``Admission.authenticated()`` (the TLS
handshake verified a certificate we accept); from then on it is never shed.

When a new connection would pass a cap, the gate sheds the oldest pending connection
under that cap (of the same source for the per-source cap, of any source for the
listener cap) by cancelling its scope, and admits the new one.  Only if no pending
connection is left under the cap is the new one refused, and it is closed at once: the
authenticated sessions keep their places, and a flood of idle connections can delay a
legitimate handshake by at most the time it takes to shed one stranger.

``serve`` is the accept loop (trio's ``serve_listeners`` logs a traceback per failed
accept).  When accept fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
ENOMEM), the loop sheds the oldest pending connection, which frees a descriptor, and
sleeps a little longer each time (up to a second) so the event loop keeps serving the
connections it has.

Refusals are counted, not logged one by one: each ``report_interval`` the gate logs one
line per kind (``net.refused`` with a count per reason, ``net.accept_failed`` with a
count per errno), and only if something happened.  Handlers add their own reasons
(``note_refused``) such as TLS handshakes that failed or timed out.

Memory: a pending connection holds its socket, a small task and its ``Admission``;
handlers wait for the client's first byte (``wait_for_data``) before they build TLS state,
and build it only holding a handshake slot (``Admission.start_handshake``; at most
``max_handshakes`` at once), so the tens of KiB
that OpenSSL takes per handshake are spent on a few connections at a time, never on all
the pending ones (the allocator would keep that memory after the flood).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec
import trio

from .log import get_logger

__all__ = ["Admission", "ConnectionGate", "GateLimits", "wait_for_data"]

log = get_logger("qkms.net")

_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF_FIRST_S: Final = 0.01
_BACKOFF_MAX_S: Final = 1.0
_REASON_CHARS: Final = re.compile(r"[^a-z0-9]+")


@dataclasses.dataclass(frozen=True, slots=True)
class GateLimits:
    """Caps on the concurrent connections of one listener.

    ``max_connections`` counts every open connection of the listener, pending or
    authenticated; ``max_per_source`` those from one source address.
    """

    max_connections: int = 4096
    max_per_source: int = 256
    max_handshakes: int = 64
    """TLS handshakes in progress at once: each holds tens of KiB of OpenSSL state."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_per_source <= self.max_connections:
            raise ValueError("GateLimits needs 1 <= max_per_source <= max_connections")
        if self.max_handshakes < 1:
            raise ValueError("GateLimits needs max_handshakes >= 1")


class Admission:
    """One admitted connection's place at the gate.

    ``scope`` is the cancel scope its handler runs in: the gate cancels it to shed the
    connection while it is pending.  ``admitted_at`` is ``trio.current_time()`` at accept,
    for the handler's handshake deadline.
    """

    __slots__ = (
        "source",
        "admitted_at",
        "scope",
        "shed",
        "is_authenticated",
        "_gate",
        "_open",
        "_handshaking",
    )

    def __init__(self, gate: ConnectionGate, source: str, admitted_at: float) -> None:
        self.source = source
        self.admitted_at = admitted_at
        self.scope = trio.CancelScope()
        self.shed = False
        self.is_authenticated = False
        self._gate = gate
        self._open = True
        self._handshaking = False

    async def start_handshake(self) -> None:
        """Wait for one of the gate's handshake slots; hold it until ``end_handshake``.

        Build TLS state only after this.  On cancellation nothing is held.
        """
        await self._gate.handshakes.acquire_on_behalf_of(self)
        self._handshaking = True

    def end_handshake(self) -> None:
        """Give the handshake slot back (idempotent; ``authenticated`` and ``release`` do)."""
        if self._handshaking:
            self._handshaking = False
            self._gate.handshakes.release_on_behalf_of(self)

    def authenticated(self) -> None:
        """The peer is who it must be: from now on this connection is never shed."""
        self.end_handshake()
        if self._open and not self.is_authenticated:
            self.is_authenticated = True
            self._gate._forget_pending(self)

    def release(self) -> None:
        """The connection has ended (idempotent)."""
        self.end_handshake()
        if self._open:
            self._open = False
            self._gate._release(self)


ConnectionHandler = Callable[[trio.SocketStream, Admission], Awaitable[None]]


class GateStatistics(msgspec.Struct, frozen=True):
    open: int
    """Connections admitted and not yet closed."""
    pending: int
    """Of those, connections not yet authenticated (the ones that may be shed)."""
    sources: int
    """Distinct source addresses with an open connection."""
    totals: dict[str, int]
    """Counts since start: admitted, and refused or shed by reason."""


class ConnectionGate:
    """Admission control for one listener; see the module docstring.

    ``name`` labels the log lines (``api``, ``peer``).
    """

    def __init__(self, name: str, limits: GateLimits, *, report_interval: float = 10.0) -> None:
        self.name = name
        self.limits = limits
        self._report_interval = report_interval
        self._open = 0
        self._per_source: dict[str, int] = {}
        # Insertion-ordered: the first entry is the oldest pending connection.
        self._pending: dict[Admission, None] = {}
        self._pending_by_source: dict[str, dict[Admission, None]] = {}
        self._refused: collections.Counter[str] = collections.Counter()
        self._accept_errors: collections.Counter[str] = collections.Counter()
        self._totals: collections.Counter[str] = collections.Counter()
        self.handshakes = trio.CapacityLimiter(limits.max_handshakes)

    # --- admission -------------------------------------------------------------------

    def admit(self, source: str) -> Admission | None:
        """A place for a new connection from ``source``, shedding if need be; else None."""
        if self._per_source.get(source, 0) >= self.limits.max_per_source:
            if not self._shed_oldest(self._pending_by_source.get(source)):
                self.note_refused("source_full")
                return None
        if self._open >= self.limits.max_connections:
            if not self._shed_oldest(self._pending):
                self.note_refused("listener_full")
                return None
        admission = Admission(self, source, trio.current_time())
        self._open += 1
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._pending[admission] = None
        self._pending_by_source.setdefault(source, {})[admission] = None
        self._totals["admitted"] += 1
        return admission

    def shed_oldest_pending(self) -> bool:
        """Shed the oldest pending connection of any source.  False if none is pending."""
        return self._shed_oldest(self._pending)

    def _shed_oldest(self, pending: dict[Admission, None] | None) -> bool:
        if not pending:
            return False
        oldest = next(iter(pending))
        oldest.shed = True
        oldest.scope.cancel()
        # Its place is free now: the task closes the socket at its next checkpoint.
        oldest.release()
        self.note_refused("shed")
        return True

    def _forget_pending(self, admission: Admission) -> None:
        self._pending.pop(admission, None)
        by_source = self._pending_by_source.get(admission.source)
        if by_source is not None:
            by_source.pop(admission, None)
            if not by_source:
                del self._pending_by_source[admission.source]

    def _release(self, admission: Admission) -> None:
        self._forget_pending(admission)
        self._open -= 1
        left = self._per_source[admission.source] - 1
        if left:
            self._per_source[admission.source] = left
        else:
            del self._per_source[admission.source]

    # --- accounting ------------------------------------------------------------------

    def note_refused(self, reason: str) -> None:
        """Count one refused or failed connection under ``reason`` (a short identifier)."""
        key = _REASON_CHARS.sub("_", reason.lower()).strip("_")[:48] or "unknown"
        self._refused[key] += 1
        self._totals[f"refused_{key}"] += 1

    def statistics(self) -> GateStatistics:
        """Open and pending connections now, and counts since start."""
        return GateStatistics(
            open=self._open,
            pending=len(self._pending),
            sources=len(self._per_source),
            totals=dict(self._totals),
        )

    def report(self) -> None:
        """Log what was refused since the last report, one line per kind; then reset."""
        if self._refused:
            log.warning(
                "net.refused",
                listener=self.name,
                interval_s=self._report_interval,
                total=sum(self._refused.values()),
                open=self._open,
                pending=len(self._pending),
                **dict(sorted(self._refused.items())),
            )
            self._refused.clear()
        if self._accept_errors:
            log.warning(
                "net.accept_failed",
                listener=self.name,
                interval_s=self._report_interval,
                open=self._open,
                **dict(sorted(self._accept_errors.items())),
            )
            self._accept_errors.clear()

    # --- serving ---------------------------------------------------------------------

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[trio.SocketStream]],
        handler: ConnectionHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on every listener until cancelled; run ``handler(stream, admission)``.

        The handler runs in ``admission.scope``; when it returns or fails the gate frees
        the place and closes the stream.  A handler's exception propagates (a bug).
        Raises ``OSError`` from accept other than the resource errors above.  On
        cancellation the listeners and every connection close.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report_forever)
            for listener in listeners:
                nursery.start_soon(self._accept_forever, listener, handler, nursery)
            task_status.started()

    async def _report_forever(self) -> None:
        try:
            while True:
                await trio.sleep(self._report_interval)
                self.report()
        finally:
            self.report()

    async def _accept_forever(
        self,
        listener: trio.abc.Listener[trio.SocketStream],
        handler: ConnectionHandler,
        nursery: trio.Nursery,
    ) -> None:
        async with listener:
            backoff = 0.0
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _RESOURCE_ERRNOS:
                        raise
                    self._accept_errors[errno.errorcode[exc.errno].lower()] += 1
                    self._totals["accept_errors"] += 1
                    self.shed_oldest_pending()
                    backoff = min(max(2 * backoff, _BACKOFF_FIRST_S), _BACKOFF_MAX_S)
                    await trio.sleep(backoff)
                    continue
                backoff = 0.0
                admission = self.admit(_source(stream))
                if admission is None:
                    stream.socket.close()  # before any task, buffer or TLS state
                    continue
                nursery.start_soon(self._run, handler, stream, admission)

    async def _run(
        self, handler: ConnectionHandler, stream: trio.SocketStream, admission: Admission
    ) -> None:
        try:
            with admission.scope:
                await handler(stream, admission)
        finally:
            admission.release()
            await trio.aclose_forcefully(stream)


async def wait_for_data(stream: trio.SocketStream) -> bool:
    """Until the client has sent something: True; False if it closed or reset first.

    Costs no buffer and no TLS state, however long the client stays silent.
    """
    await trio.lowlevel.wait_readable(stream.socket)
    try:
        return bool(await stream.socket.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


def _source(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "-"
    return str(address[0]) if isinstance(address, tuple) else str(address)
