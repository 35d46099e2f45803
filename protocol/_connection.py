"""Sans-IO framed connections and the peer session state machine.

Theory of operation
-------------------
``FramedConnection`` turns bytes into typed messages and back: feed it what the
transport delivered with ``receive_data()``, pull messages with
``next_event()`` until it returns ``NEED_DATA``, and turn outgoing messages into
bytes with ``send()``.  It owns no socket, no clock and no randomness.

``PeerSession`` adds the peer protocol's states on top::

    AWAIT_HELLO --Hello--> OPEN --Error / close()--> CLOSED

Each side sends ``Hello`` first.  The session is open once the other side's
``Hello`` has arrived, names the node the transport authenticated (the TLS
certificate's identity), and shares a protocol version with us.  Any other
message before that, or a second ``Hello``, is a protocol violation.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgspec

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from ._messages import (
    ADMIN_DECODER,
    PEER_DECODER,
    PEER_MESSAGE_TYPES,
    PROTOCOL_VERSIONS,
    Error,
    Hello,
    MessageDecoder,
    PeerMessage,
    to_wire,
)


class NeedData:
    """The type of ``NEED_DATA``: feed more bytes before the next message."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class FramedConnection:
    """Frames plus typed messages, in both directions."""

    def __init__(
        self, decoder: MessageDecoder, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> None:
        self._frames = FrameDecoder(max_frame_size=max_frame_size)
        self._messages = decoder
        self.max_frame_size = max_frame_size

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the transport.  Raises ``RemoteProtocolError``."""
        self._frames.receive_data(data)

    def next_event(self) -> Any:
        """The next decoded message, or ``NEED_DATA``.  Raises ``RemoteProtocolError``."""
        body = self._frames.next_frame()
        if body is None:
            return NEED_DATA
        return self._messages.from_wire(body)

    def send(self, message: msgspec.Struct) -> bytes:
        """Bytes to write for ``message``."""
        return encode_frame(to_wire(message), max_frame_size=self.max_frame_size)


def admin_connection(*, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> FramedConnection:
    """A connection speaking the admin protocol (either side)."""
    return FramedConnection(ADMIN_DECODER, max_frame_size=max_frame_size)


class SessionState(enum.Enum):
    AWAIT_HELLO = "await-hello"
    OPEN = "open"
    CLOSED = "closed"


# (state, message type) -> next state.  Types absent from a state are violations.
_TRANSITIONS: Final[dict[tuple[SessionState, str], SessionState]] = {
    (SessionState.AWAIT_HELLO, "hello"): SessionState.OPEN,
    (SessionState.AWAIT_HELLO, "error"): SessionState.CLOSED,
    (SessionState.OPEN, "error"): SessionState.CLOSED,
    # Once open, every message but a second hello keeps the session open.
    **{
        (SessionState.OPEN, str(cls.__struct_config__.tag)): SessionState.OPEN
        for cls in PEER_MESSAGE_TYPES
        if cls not in (Hello, Error)
    },
}


def _kind(message: msgspec.Struct) -> str:
    return str(type(message).__struct_config__.tag)


class PeerSession:
    """One side of a peer session.

    ``expected_peer`` is the node id the transport authenticated; a ``Hello``
    naming anyone else is refused with ``WRONG_PEER``.
    """

    def __init__(
        self,
        *,
        local_node: str,
        expected_peer: str,
        versions: tuple[int, ...] = PROTOCOL_VERSIONS,
        features: tuple[str, ...] = (),
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.local_node = local_node
        self.expected_peer = expected_peer
        self.versions = versions
        self.features = features
        self.state = SessionState.AWAIT_HELLO
        self.version: int | None = None
        self.peer_features: frozenset[str] = frozenset()
        self._conn = FramedConnection(PEER_DECODER, max_frame_size=max_frame_size)

    def hello(self) -> bytes:
        """Bytes of our ``Hello``: send them first."""
        return self._conn.send(
            Hello(
                node_id=self.local_node, versions=list(self.versions), features=list(self.features)
            )
        )

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer.  Raises ``RemoteProtocolError``."""
        if self.state is SessionState.CLOSED:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "data after session closed")
        self._conn.receive_data(data)

    def next_event(self) -> PeerMessage | NeedData:
        """The next message, or ``NEED_DATA``.  Raises ``RemoteProtocolError``.

        The peer's ``Hello`` is returned too, once the session is open.
        """
        if self.state is SessionState.CLOSED:
            return NEED_DATA
        message: PeerMessage | NeedData = self._conn.next_event()
        if isinstance(message, NeedData):
            return message
        kind = _kind(message)
        next_state = _TRANSITIONS.get((self.state, kind))
        if next_state is None:
            arrived_in = self.state  # name the state the message came in, not CLOSED
            self.state = SessionState.CLOSED
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"{kind!r} not allowed in state {arrived_in.value}"
            )
        if isinstance(message, Hello):
            self._accept_hello(message)
        self.state = next_state
        return message

    def send(self, message: msgspec.Struct) -> bytes:
        """Bytes of ``message``.  Raises ``LocalProtocolError`` before the session is open."""
        if isinstance(message, Error):
            self.state = SessionState.CLOSED
            return self._conn.send(message)
        if self.state is not SessionState.OPEN:
            raise LocalProtocolError(f"cannot send {_kind(message)!r} in state {self.state.value}")
        return self._conn.send(message)

    def close(self) -> None:
        self.state = SessionState.CLOSED

    def _accept_hello(self, hello: Hello) -> None:
        if hello.node_id != self.expected_peer:
            self.state = SessionState.CLOSED
            raise RemoteProtocolError(
                ErrorCode.WRONG_PEER,
                f"hello names {hello.node_id!r} but the certificate is for {self.expected_peer!r}",
            )
        common = set(hello.versions) & set(self.versions)
        if not common:
            self.state = SessionState.CLOSED
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"no common protocol version (ours {sorted(self.versions)}, "
                f"theirs {sorted(hello.versions)})",
            )
        self.version = max(common)
        self.peer_features = frozenset(hello.features)
