"""Length-prefixed frames: a u32 big-endian length, then one msgpack map.

Theory of operation: ``FrameDecoder.receive_data(bytes)`` appends to a bounded
buffer; ``next_frame()`` returns one complete frame body (the msgpack bytes),
or ``None`` when more data is needed.  A length above ``max_frame_size`` is
rejected as soon as the four length bytes are in, before any body is buffered,
so a hostile peer can never make us hold more than ``max_frame_size + 4``
bytes.  After an error the decoder stays broken: the connection must close.
"""

from __future__ import annotations

import struct

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError

DEFAULT_MAX_FRAME_SIZE = 1 << 20
_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


def encode_frame(body: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Prefix ``body`` with its length.  Raises ``LocalProtocolError`` if too big."""
    if len(body) > max_frame_size:
        raise LocalProtocolError(
            f"frame of {len(body)} bytes exceeds the maximum of {max_frame_size}"
        )
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental, bounded frame decoder.  Accepts bytes split anywhere."""

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._broken: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the other side.  Raises ``RemoteProtocolError``."""
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        self._check_header()

    def next_frame(self) -> bytes | None:
        """One complete frame body, or ``None`` if more data is needed."""
        if self._broken is not None:
            raise self._broken
        if len(self._buffer) < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        self._check_header()
        return body

    def _check_header(self) -> None:
        if len(self._buffer) >= HEADER_SIZE:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self.max_frame_size:
                self._buffer.clear()
                self._broken = RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {length} bytes exceeds the maximum of {self.max_frame_size}",
                )
                raise self._broken
