"""The QKD device protocol: a framed key stream between a QKD device and its KMS.

Theory of operation
-------------------
The device protocol runs over TCP *and* over a serial line.  A serial line has
no connection boundary: the KMS may open the tty in the middle of a frame, a
noisy line may flip or drop bytes, a device may reboot half-way through a
write.  So the framing is built to *resynchronise*, not to break:

* Every frame starts with a two-byte sync word (``0xC1 0x51``; ``0xC1`` is
  never a msgpack type byte nor a UTF-8 byte), then a version byte, a u32
  big-endian body length and a CRC-32 of those seven bytes.  The header check
  lets the decoder reject a false sync word (one that happens to occur inside
  key bytes) at once, without waiting for a length's worth of data.
* The msgpack body follows, then a CRC-32 of header and body.
* ``DeviceFrameDecoder.next_frame()`` hunts for the sync word and discards what
  precedes it.  A frame that fails a check raises ``RemoteProtocolError``
  *after* the decoder has stepped past it: the caller logs, drops, and calls
  ``next_frame()`` again.  The decoder never enters a broken state.  A body
  whose checksum fails is stepped over by its sync word only, so that a frame
  starting inside a truncated one is still found.
* Bytes discarded while hunting are reported once, as one ``BAD_FRAME`` error,
  when the next genuine header is found (or when ``NOISE_REPORT_BYTES`` have
  gone by without one: a wrong baud rate looks like this).  Bytes that belong
  to a frame already reported (bad checksum, oversized, unknown version) are
  skipped silently, so one bad frame is one error.
* Memory is bounded: the buffer holds at most one maximal frame plus one chunk
  fed by ``receive_data()`` (``max_chunk``).  A length above
  ``max_frame_size`` is refused from the header, before any body is buffered.

Above the frames, two small state machines (tables below) give each side its
rules.  The KMS end (``DeviceClient``) asks with ``Start``/``Resync``; the
device answers each with a ``DeviceHello`` and then streams ``KeyBlockMsg``s
with strictly increasing block ids from the id asked for.  Blocks that arrive
between a ``Start``/``Resync`` and the device's ``DeviceHello`` belong to the
previous stream and are discarded silently.  A block id that goes backwards or
repeats raises ``RemoteProtocolError`` and the block is dropped; the stream
goes on.

Nothing here reads a clock: ``produced_at`` is the device's own timestamp.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Annotated, Final, Literal, TypeAlias

import msgspec

from ._connection import NEED_DATA, NeedData
from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._messages import U32, U63, LinkId, MessageDecoder, NodeId, ShortText, to_wire

DEVICE_PROTOCOL_VERSIONS: Final = (1,)
FRAME_VERSION: Final = 1
SYNC_WORD: Final = b"\xc1\x51"
DEFAULT_MAX_DEVICE_FRAME_SIZE: Final = 1 << 20
DEFAULT_MAX_CHUNK: Final = 1 << 16
NOISE_REPORT_BYTES: Final = 1 << 16
MAX_KEY_BYTES: Final = 1 << 17

# sync word (2s), version (B), body length (I), header CRC-32 (I)
_HEADER: Final = struct.Struct(">2sBII")
_CRC: Final = struct.Struct(">I")
DEVICE_HEADER_SIZE: Final = _HEADER.size
DEVICE_TRAILER_SIZE: Final = _CRC.size
_CHECKED_HEADER: Final = DEVICE_HEADER_SIZE - _CRC.size

Role = Literal["alice", "bob"]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1e12)]
Timestamp = Annotated[float, msgspec.Meta(ge=0.0, le=1e11)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Severity = Literal["cleared", "indeterminate", "warning", "minor", "major", "critical"]
DeviceState = Literal["idle", "starting", "running", "stopped", "fault"]


class _DeviceMessage(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


# --- device to KMS -------------------------------------------------------------------


class DeviceHello(_DeviceMessage, frozen=True, tag="hello"):
    """Who the device is.  Sent in answer to every ``Start`` and ``Resync``."""

    device_id: NodeId
    link_id: LinkId
    role: Role
    versions: Annotated[list[U32], msgspec.Meta(min_length=1, max_length=16)]


class KeyBlockMsg(_DeviceMessage, frozen=True, tag="key.block"):
    """One block of final key.  ``key`` is secret: left out of ``repr``."""

    block_id: U63
    key: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_KEY_BYTES)]
    qber: Probability
    secret_key_rate: Rate
    produced_at: Timestamp

    def __repr__(self) -> str:
        return (
            f"KeyBlockMsg(block_id={self.block_id}, key=<{len(self.key)} bytes>, "
            f"qber={self.qber}, secret_key_rate={self.secret_key_rate}, "
            f"produced_at={self.produced_at})"
        )


class DeviceStatus(_DeviceMessage, frozen=True, tag="status"):
    """The device's state and figures of merit; also a heartbeat."""

    state: DeviceState
    qber: Probability | None = None
    skr: Rate | None = None
    detail: ShortText = ""


class DeviceAlarm(_DeviceMessage, frozen=True, tag="alarm"):
    """Something the operator should know (severities as in the state agent)."""

    severity: Severity
    code: Code
    message: ShortText


# --- KMS to device -------------------------------------------------------------------


class Start(_DeviceMessage, frozen=True, tag="start"):
    """Start streaming, from ``from_block_id`` or, if absent, from the device's current block."""

    from_block_id: U63 | None = None


class Stop(_DeviceMessage, frozen=True, tag="stop"):
    """Stop streaming."""


class Resync(_DeviceMessage, frozen=True, tag="resync"):
    """Restart the stream at ``from_block_id`` (or the oldest block still held)."""

    from_block_id: U63


DeviceToKms: TypeAlias = DeviceHello | KeyBlockMsg | DeviceStatus | DeviceAlarm
KmsToDevice: TypeAlias = Start | Stop | Resync
DeviceMessage: TypeAlias = DeviceToKms | KmsToDevice
DEVICE_TO_KMS_TYPES: Final = (DeviceHello, KeyBlockMsg, DeviceStatus, DeviceAlarm)
KMS_TO_DEVICE_TYPES: Final = (Start, Stop, Resync)
DEVICE_TO_KMS_DECODER: Final = MessageDecoder(DeviceToKms)
KMS_TO_DEVICE_DECODER: Final = MessageDecoder(KmsToDevice)


# --- frames --------------------------------------------------------------------------


def _crc(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    return zlib.crc32(data, start) & 0xFFFFFFFF


def encode_device_frame(
    body: bytes, *, max_frame_size: int = DEFAULT_MAX_DEVICE_FRAME_SIZE
) -> bytes:
    """Frame one body.  Raises ``LocalProtocolError`` if it exceeds ``max_frame_size``."""
    if len(body) > max_frame_size:
        raise LocalProtocolError(
            f"device frame of {len(body)} bytes exceeds the maximum of {max_frame_size}"
        )
    head = struct.pack(">2sBI", SYNC_WORD, FRAME_VERSION, len(body))
    header = head + _CRC.pack(_crc(head))
    return header + body + _CRC.pack(_crc(body, _crc(header)))


class DeviceFrameDecoder:
    """Incremental, bounded, self-resynchronising frame decoder (see the module doc)."""

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_DEVICE_FRAME_SIZE,
        max_chunk: int = DEFAULT_MAX_CHUNK,
    ) -> None:
        if max_frame_size < 1 or max_chunk < 1:
            raise ValueError("max_frame_size and max_chunk must be positive")
        self.max_frame_size = max_frame_size
        self.max_buffer_size = DEVICE_HEADER_SIZE + max_frame_size + DEVICE_TRAILER_SIZE + max_chunk
        self._buffer = bytearray()
        self._skipped = 0  # noise discarded and not yet reported
        self._quiet = 0  # bytes of an already-reported bad frame, skipped without a report
        self._scanned = 0  # how far the pending frame's span was searched for another frame

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the line.

        Raises ``LocalProtocolError`` if the caller fed more than ``max_chunk``
        bytes without draining ``next_frame()`` first: the buffer stays bounded.
        """
        if len(self._buffer) + len(data) > self.max_buffer_size:
            raise LocalProtocolError(
                f"device decoder buffer would exceed {self.max_buffer_size} bytes: "
                "drain next_frame() before feeding more, at most max_chunk bytes at a time"
            )
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """One complete, checked frame body, or ``None`` if more data is needed.

        Raises ``RemoteProtocolError`` for noise, a bad checksum, an oversized
        frame or an unknown frame version; the decoder has already stepped past
        the offending bytes, so calling again continues with what follows.
        """
        buf = self._buffer
        while True:
            at = buf.find(SYNC_WORD)
            if at < 0:
                # Keep a last byte that may be the first half of a sync word.
                keep = 1 if buf and buf[-1] == SYNC_WORD[0] else 0
                self._discard(len(buf) - keep)
                if self._skipped >= NOISE_REPORT_BYTES:
                    raise self._noise_error(" (wrong baud rate, or not a qkms device?)")
                return None
            self._discard(at)
            if len(buf) < DEVICE_HEADER_SIZE:
                return None
            _, version, length, header_crc = _HEADER.unpack_from(buf)
            if _crc(memoryview(buf)[:_CHECKED_HEADER]) != header_crc:
                self._discard(1)  # a false sync word inside other bytes: keep hunting
                continue
            # A genuine header.  Report the noise before it, if any, first.
            self._quiet = 0
            if self._skipped:
                raise self._noise_error("")
            if version != FRAME_VERSION:
                self._skip_reported(DEVICE_HEADER_SIZE, length + DEVICE_TRAILER_SIZE)
                raise RemoteProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"device frame version {version} (this end speaks {FRAME_VERSION})",
                )
            if length > self.max_frame_size:
                self._skip_reported(DEVICE_HEADER_SIZE, length + DEVICE_TRAILER_SIZE)
                raise RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"device frame of {length} bytes exceeds the maximum of {self.max_frame_size}",
                )
            end = DEVICE_HEADER_SIZE + length
            if len(buf) < end + DEVICE_TRAILER_SIZE:
                # A frame cut short on the line is only found out by its checksum, once the
                # bytes it announced have arrived: meanwhile a whole frame that follows it
                # would wait, for ever if the device falls quiet.  A complete, checked frame
                # starting inside this one's span proves it truncated: drop it now.
                inner = self._complete_frame_inside()
                if inner is None:
                    return None
                del buf[:inner]
                self._scanned = 0
                raise RemoteProtocolError(
                    ErrorCode.BAD_CHECKSUM,
                    f"device frame of {length} bytes truncated: another frame starts "
                    f"{inner} bytes into it",
                )
            (frame_crc,) = _CRC.unpack_from(buf, end)
            if _crc(memoryview(buf)[:end]) != frame_crc:
                # Step over the sync word only: a frame may start inside a truncated one.
                self._skip_reported(len(SYNC_WORD), end + DEVICE_TRAILER_SIZE - len(SYNC_WORD))
                raise RemoteProtocolError(
                    ErrorCode.BAD_CHECKSUM,
                    f"device frame of {length} bytes failed its checksum (corrupt or truncated)",
                )
            body = bytes(buf[DEVICE_HEADER_SIZE:end])
            del buf[: end + DEVICE_TRAILER_SIZE]
            self._scanned = 0
            return body

    def _complete_frame_inside(self) -> int | None:
        """Where a complete frame with valid checksums starts after the pending header, if
        one does.  Each byte is looked at once while the pending frame waits."""
        buf = self._buffer
        at = max(self._scanned, 1)
        while (at := buf.find(SYNC_WORD, at)) >= 0:
            if len(buf) - at < DEVICE_HEADER_SIZE:
                break  # not enough yet to judge: look here again next time
            _, version, length, header_crc = _HEADER.unpack_from(buf, at)
            end = at + DEVICE_HEADER_SIZE + length
            if (
                _crc(memoryview(buf)[at : at + _CHECKED_HEADER]) == header_crc
                and version == FRAME_VERSION
                and length <= self.max_frame_size
            ):
                if len(buf) < end + DEVICE_TRAILER_SIZE:
                    break  # a genuine header whose frame is not complete yet
                if _crc(memoryview(buf)[at:end]) == _CRC.unpack_from(buf, end)[0]:
                    return at
            at += 1
        self._scanned = at if at >= 0 else max(len(buf) - len(SYNC_WORD) + 1, 1)
        return None

    def _discard(self, n: int) -> None:
        if n <= 0:
            return
        del self._buffer[:n]
        self._scanned = 0
        quiet = min(n, self._quiet)
        self._quiet -= quiet
        self._skipped += n - quiet

    def _skip_reported(self, now: int, later: int) -> None:
        del self._buffer[:now]
        self._scanned = 0
        self._quiet = later

    def _noise_error(self, hint: str) -> RemoteProtocolError:
        skipped, self._skipped = self._skipped, 0
        return RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"skipped {skipped} bytes of noise before a sync word{hint}"
        )


# --- the two ends --------------------------------------------------------------------


def _kind(message: msgspec.Struct) -> str:
    return str(type(message).__struct_config__.tag)


class ClientState(enum.Enum):
    """The KMS end's view of the stream."""

    IDLE = "idle"  # nothing asked, or stopped
    AWAIT_HELLO = "await-hello"  # Start/Resync sent, the device has not answered yet
    STREAMING = "streaming"


# (state, message type) -> next state.  Absent pairs are protocol violations.
_CLIENT_TRANSITIONS: Final[dict[tuple[ClientState, str], ClientState]] = {
    (ClientState.IDLE, "hello"): ClientState.IDLE,
    (ClientState.AWAIT_HELLO, "hello"): ClientState.STREAMING,
    (ClientState.STREAMING, "hello"): ClientState.STREAMING,
    (ClientState.STREAMING, "key.block"): ClientState.STREAMING,
    **{(state, kind): state for state in ClientState for kind in ("status", "alarm")},
}
# Blocks of a stream we no longer want (before the device acknowledged Start/Resync,
# or after Stop) are dropped without an error: they were in flight, not wrong.
_CLIENT_STALE: Final = frozenset(
    {(ClientState.IDLE, "key.block"), (ClientState.AWAIT_HELLO, "key.block")}
)

# Errors that mean "this is not the device this end is configured for".
HELLO_REFUSALS: Final = frozenset(
    {ErrorCode.UNKNOWN_LINK, ErrorCode.WRONG_PEER, ErrorCode.UNSUPPORTED_VERSION}
)


class DeviceClient:
    """The KMS end of a device link, sans IO.

    ``link_id`` (and, if given, ``role`` and ``device_id``) are what this end is
    configured for; a ``DeviceHello`` naming anything else is refused with
    ``UNKNOWN_LINK``, ``WRONG_PEER`` or ``UNSUPPORTED_VERSION`` (see
    ``HELLO_REFUSALS``) and the stream stays unacknowledged.
    """

    def __init__(
        self,
        *,
        link_id: str,
        role: Role | None = None,
        device_id: str | None = None,
        versions: tuple[int, ...] = DEVICE_PROTOCOL_VERSIONS,
        max_frame_size: int = DEFAULT_MAX_DEVICE_FRAME_SIZE,
        max_chunk: int = DEFAULT_MAX_CHUNK,
    ) -> None:
        self.link_id = link_id
        self.role = role
        self.device_id = device_id
        self.versions = versions
        self.max_frame_size = max_frame_size
        self.state = ClientState.IDLE
        self.hello: DeviceHello | None = None
        self.version: int | None = None
        self.stale_blocks = 0
        self._frames = DeviceFrameDecoder(max_frame_size=max_frame_size, max_chunk=max_chunk)
        self._floor = 0  # lowest block id acceptable next
        self._last: int | None = None  # last block id accepted

    def start(self, from_block_id: int | None = None) -> bytes:
        """Bytes of ``Start``: stream from ``from_block_id`` or from the device's current block."""
        self._await_hello(from_block_id)
        return self._send(Start(from_block_id=from_block_id))

    def resync(self, from_block_id: int) -> bytes:
        """Bytes of ``Resync``: restart the stream at ``from_block_id``."""
        self._await_hello(from_block_id)
        return self._send(Resync(from_block_id=from_block_id))

    def stop(self) -> bytes:
        """Bytes of ``Stop``.  Blocks still in flight are then discarded silently."""
        self.state = ClientState.IDLE
        return self._send(Stop())

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the device (at most ``max_chunk`` between drains)."""
        self._frames.receive_data(data)

    def next_event(self) -> DeviceToKms | NeedData:
        """The next message from the device, or ``NEED_DATA``.

        Raises ``RemoteProtocolError`` for a bad frame, a bad message, a message
        out of place, a refused hello, or a block id that repeats or goes
        backwards.  The offending frame is dropped; call again to go on.
        """
        while True:
            body = self._frames.next_frame()
            if body is None:
                return NEED_DATA
            message: DeviceToKms = DEVICE_TO_KMS_DECODER.from_wire(body)
            kind = _kind(message)
            if (self.state, kind) in _CLIENT_STALE:
                self.stale_blocks += 1
                continue
            next_state = _CLIENT_TRANSITIONS.get((self.state, kind))
            if next_state is None:
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"device sent {kind!r} in state {self.state.value}",
                )
            if isinstance(message, DeviceHello):
                self._check_hello(message)
            elif isinstance(message, KeyBlockMsg):
                self._check_block(message)
            self.state = next_state
            return message

    def _await_hello(self, from_block_id: int | None) -> None:
        self.state = ClientState.AWAIT_HELLO
        self._floor = 0 if from_block_id is None else from_block_id
        self._last = None

    def _send(self, message: KmsToDevice) -> bytes:
        return encode_device_frame(to_wire(message), max_frame_size=self.max_frame_size)

    def _check_hello(self, hello: DeviceHello) -> None:
        if hello.link_id != self.link_id:
            raise RemoteProtocolError(
                ErrorCode.UNKNOWN_LINK,
                f"device {hello.device_id!r} serves link {hello.link_id!r}, "
                f"but this end is configured for link {self.link_id!r}",
            )
        if self.role is not None and hello.role != self.role:
            raise RemoteProtocolError(
                ErrorCode.WRONG_PEER,
                f"device {hello.device_id!r} plays {hello.role!r}, this end expects {self.role!r}",
            )
        if self.device_id is not None and hello.device_id != self.device_id:
            raise RemoteProtocolError(
                ErrorCode.WRONG_PEER,
                f"device says it is {hello.device_id!r}, this end expects {self.device_id!r}",
            )
        common = set(hello.versions) & set(self.versions)
        if not common:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"no common device protocol version (ours {sorted(self.versions)}, "
                f"the device's {sorted(hello.versions)})",
            )
        self.version = max(common)
        self.hello = hello

    def _check_block(self, block: KeyBlockMsg) -> None:
        if block.block_id == self._last:
            raise RemoteProtocolError(
                ErrorCode.DUPLICATE_BLOCK, f"block {block.block_id} received twice"
            )
        if block.block_id < self._floor:
            raise RemoteProtocolError(
                ErrorCode.BLOCK_OUT_OF_ORDER,
                f"block {block.block_id} goes backwards (expected {self._floor} or later)",
            )
        self._last = block.block_id
        self._floor = block.block_id + 1


class EndpointState(enum.Enum):
    """The device end's view of the stream."""

    IDLE = "idle"
    STREAMING = "streaming"


_ENDPOINT_TRANSITIONS: Final[dict[tuple[EndpointState, str], EndpointState]] = {
    **{(state, "start"): EndpointState.STREAMING for state in EndpointState},
    **{(state, "resync"): EndpointState.STREAMING for state in EndpointState},
    **{(state, "stop"): EndpointState.IDLE for state in EndpointState},
}


class DeviceEndpoint:
    """The device end of a device link, sans IO (for emulators and fake devices)."""

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_DEVICE_FRAME_SIZE,
        max_chunk: int = DEFAULT_MAX_CHUNK,
    ) -> None:
        self.max_frame_size = max_frame_size
        self.state = EndpointState.IDLE
        self._frames = DeviceFrameDecoder(max_frame_size=max_frame_size, max_chunk=max_chunk)

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the KMS (at most ``max_chunk`` between drains)."""
        self._frames.receive_data(data)

    def next_event(self) -> KmsToDevice | NeedData:
        """The next command from the KMS, or ``NEED_DATA``.

        Raises ``RemoteProtocolError`` for a bad frame or message (dropped; call again).
        """
        body = self._frames.next_frame()
        if body is None:
            return NEED_DATA
        message: KmsToDevice = KMS_TO_DEVICE_DECODER.from_wire(body)
        kind = _kind(message)
        next_state = _ENDPOINT_TRANSITIONS.get((self.state, kind))
        if next_state is None:  # pragma: no cover - every pair is in the table today
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"{kind!r} not allowed in state {self.state.value}"
            )
        self.state = next_state
        return message

    def send(self, message: DeviceToKms) -> bytes:
        """Bytes of one device message."""
        if not isinstance(message, DEVICE_TO_KMS_TYPES):
            raise LocalProtocolError(f"a device does not send {_kind(message)!r}")
        return encode_device_frame(to_wire(message), max_frame_size=self.max_frame_size)
