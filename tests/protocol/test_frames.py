"""The frame codec: u32 big-endian length, then one msgpack map."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import ErrorCode, FrameDecoder, LocalProtocolError, RemoteProtocolError, encode_frame


def test_frame_is_length_prefixed_big_endian() -> None:
    assert encode_frame(b"\x80") == b"\x00\x00\x00\x01\x80"


def test_decoder_needs_more_data_until_the_frame_is_whole() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00\x00\x03ab")
    assert decoder.next_frame() is None
    decoder.receive_data(b"c")
    assert decoder.next_frame() == b"abc"
    assert decoder.next_frame() is None


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_frames_come_out_whole_whatever_the_split(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.receive_data(stream[start:cut])
        start = cut
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == bodies
    assert decoder.buffered == 0


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.receive_data(struct.pack(">I", 1025))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == 0


def test_a_broken_decoder_stays_broken() -> None:
    decoder = FrameDecoder(max_frame_size=8)
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(b"\x00\x00\x00\x01a")


def test_buffer_never_exceeds_one_frame_plus_header() -> None:
    decoder = FrameDecoder(max_frame_size=16)
    decoder.receive_data(struct.pack(">I", 16) + b"x" * 15)
    assert decoder.buffered == 19


def test_encoding_an_oversized_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 17, max_frame_size=16)
