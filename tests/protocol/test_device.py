"""The device protocol: frames that resynchronise, typed messages, the two ends' rules."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._device import (
    DEVICE_HEADER_SIZE,
    NEED_DATA,
    NOISE_REPORT_BYTES,
    SYNC_WORD,
    ClientState,
    DeviceAlarm,
    DeviceClient,
    DeviceEndpoint,
    DeviceFrameDecoder,
    DeviceHello,
    DeviceStatus,
    KeyBlockMsg,
    Resync,
    Start,
    Stop,
    encode_device_frame,
)
from protocol._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol._messages import to_wire

# --- strategies ----------------------------------------------------------------------

ids = st.from_regex(r"\A[A-Za-z0-9_.:-]{1,32}\Z")
u63 = st.integers(0, 2**63 - 1)
prob = st.floats(0.0, 1.0)
rate = st.floats(0.0, 1e12)
text = st.text(max_size=200)

hellos = st.builds(
    DeviceHello,
    device_id=ids,
    link_id=ids,
    role=st.sampled_from(["alice", "bob"]),
    versions=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=16),
)
blocks = st.builds(
    KeyBlockMsg,
    block_id=u63,
    key=st.binary(min_size=1, max_size=512),
    qber=prob,
    secret_key_rate=rate,
    produced_at=st.floats(0.0, 1e11),
)
statuses = st.builds(
    DeviceStatus,
    state=st.sampled_from(["idle", "starting", "running", "stopped", "fault"]),
    qber=st.none() | prob,
    skr=st.none() | rate,
    detail=text,
)
alarms = st.builds(
    DeviceAlarm,
    severity=st.sampled_from(["cleared", "indeterminate", "warning", "minor", "major", "critical"]),
    code=st.from_regex(r"\A[a-z-]{1,64}\Z"),
    message=text,
)
device_messages = hellos | blocks | statuses | alarms
kms_messages = (
    st.builds(Start, from_block_id=st.none() | u63)
    | st.just(Stop())
    | st.builds(Resync, from_block_id=u63)
)
any_message = device_messages | kms_messages


def frame(message: msgspec.Struct) -> bytes:
    return encode_device_frame(to_wire(message))


def drain(decoder: DeviceFrameDecoder) -> list[bytes | RemoteProtocolError]:
    """Everything the decoder can give now: bodies and errors, in order."""
    out: list[bytes | RemoteProtocolError] = []
    while True:
        try:
            body = decoder.next_frame()
        except RemoteProtocolError as exc:
            out.append(exc)
            continue
        if body is None:
            return out
        out.append(body)


def feed(data: bytes, *, byte_at_a_time: bool, **kw: Any) -> list[bytes | RemoteProtocolError]:
    decoder = DeviceFrameDecoder(**kw)
    out: list[bytes | RemoteProtocolError] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_at_a_time else [data]
    for chunk in chunks:
        decoder.receive_data(chunk)
        out += drain(decoder)
    return out


def bodies(results: list[bytes | RemoteProtocolError]) -> list[bytes]:
    return [r for r in results if isinstance(r, bytes)]


def errors(results: list[bytes | RemoteProtocolError]) -> list[RemoteProtocolError]:
    return [r for r in results if isinstance(r, RemoteProtocolError)]


def header(length: int, *, version: int = 1) -> bytes:
    head = struct.pack(">2sBI", SYNC_WORD, version, length)
    return head + struct.pack(">I", zlib.crc32(head))


# --- round trips ---------------------------------------------------------------------


@given(any_message, st.booleans())
def test_every_message_survives_a_round_trip_fed_whole_or_byte_by_byte(
    message: msgspec.Struct, byte_at_a_time: bool
) -> None:
    [body] = feed(frame(message), byte_at_a_time=byte_at_a_time)
    assert isinstance(body, bytes)
    decoded = msgspec.msgpack.decode(body, type=type(message))
    assert decoded == message


@given(any_message)
def test_every_body_is_a_plain_msgpack_map_tagged_by_type(message: msgspec.Struct) -> None:
    decoded = msgpack.unpackb(to_wire(message), raw=False)
    assert decoded["type"] == type(message).__struct_config__.tag


@given(st.lists(device_messages, max_size=8), st.booleans())
def test_a_stream_of_frames_decodes_in_order_however_it_is_split(
    messages: list[msgspec.Struct], byte_at_a_time: bool
) -> None:
    endpoint = DeviceEndpoint()
    data = b"".join(endpoint.send(m) for m in messages)  # type: ignore[arg-type]
    results = feed(data, byte_at_a_time=byte_at_a_time)
    assert bodies(results) == results == [to_wire(m) for m in messages]


def test_a_key_block_repr_never_shows_the_key() -> None:
    key = bytes(range(32))
    block = KeyBlockMsg(block_id=1, key=key, qber=0.01, secret_key_rate=1e3, produced_at=1.0)
    assert key.hex() not in repr(block)
    assert repr(key) not in repr(block)
    assert "32 bytes" in repr(block)


# --- arbitrary bytes -----------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=2048), st.booleans())
def test_arbitrary_bytes_give_only_frames_need_data_or_remote_protocol_errors(
    data: bytes, byte_at_a_time: bool
) -> None:
    feed(data, byte_at_a_time=byte_at_a_time)  # any other exception fails the test


@settings(max_examples=300)
@given(st.binary(max_size=2048), st.booleans())
def test_arbitrary_bytes_to_either_end_give_only_messages_need_data_or_errors(
    data: bytes, byte_at_a_time: bool
) -> None:
    client = DeviceClient(link_id="L")
    client.start()
    endpoint = DeviceEndpoint()
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_at_a_time else [data]
    for chunk in chunks:
        for end in (client, endpoint):
            end.receive_data(chunk)
            while True:
                try:
                    if end.next_event() is NEED_DATA:
                        break
                except RemoteProtocolError:
                    pass


@given(st.lists(any_message, min_size=1, max_size=5), st.binary(max_size=300), st.booleans())
def test_frames_mixed_with_arbitrary_bytes_never_raise_anything_else(
    messages: list[msgspec.Struct], noise: bytes, byte_at_a_time: bool
) -> None:
    data = noise.join(frame(m) for m in messages)
    feed(data, byte_at_a_time=byte_at_a_time)


# --- resynchronisation ---------------------------------------------------------------


@given(st.binary(min_size=1, max_size=500), blocks, st.booleans())
def test_the_decoder_resynchronises_after_garbage(
    garbage: bytes, block: KeyBlockMsg, byte_at_a_time: bool
) -> None:
    results = feed(garbage + frame(block), byte_at_a_time=byte_at_a_time)
    assert bodies(results) == [to_wire(block)]
    [noise] = errors(results)
    assert noise.code == ErrorCode.BAD_FRAME
    assert f"skipped {len(garbage)} bytes" in noise.message


@settings(max_examples=200)
@given(
    st.lists(blocks, min_size=3, max_size=3),
    st.integers(0, 10_000),
    st.integers(1, 255),
    st.booleans(),
)
def test_one_corrupt_byte_costs_exactly_that_frame_and_one_error(
    three: list[KeyBlockMsg], where: int, flip: int, byte_at_a_time: bool
) -> None:
    first, middle, last = (frame(b) for b in three)
    damaged = bytearray(middle)
    damaged[where % len(damaged)] ^= flip
    results = feed(first + bytes(damaged) + last, byte_at_a_time=byte_at_a_time)
    assert bodies(results) == [to_wire(three[0]), to_wire(three[2])]
    [error] = errors(results)
    assert error.code in (ErrorCode.BAD_CHECKSUM, ErrorCode.BAD_FRAME)


def test_a_frame_cut_after_its_header_does_not_hold_back_a_shorter_one_behind_it() -> None:
    # The cut header announces more bytes than the whole next frame has: nothing more
    # arrives, yet the next frame comes out (found by hypothesis).
    lost = KeyBlockMsg(block_id=0, key=bytes(13), qber=0.0, secret_key_rate=0.0, produced_at=0.0)
    kept = KeyBlockMsg(block_id=1, key=bytes(1), qber=0.0, secret_key_rate=0.0, produced_at=0.0)
    cut = frame(lost)[:DEVICE_HEADER_SIZE]
    for byte_at_a_time in (False, True):
        results = feed(cut + frame(kept), byte_at_a_time=byte_at_a_time)
        assert bodies(results) == [to_wire(kept)]
        [error] = errors(results)
        assert error.code == ErrorCode.BAD_CHECKSUM
        assert "truncated" in error.message


@given(blocks, blocks, st.data())
def test_a_truncated_frame_is_dropped_and_the_next_one_is_found(
    lost: KeyBlockMsg, kept: KeyBlockMsg, data: st.DataObject
) -> None:
    cut = frame(lost)
    cut = cut[: data.draw(st.integers(1, len(cut) - 1))]
    results = feed(cut + frame(kept), byte_at_a_time=False)
    assert bodies(results) == [to_wire(kept)]
    assert len(errors(results)) == 1


def test_an_oversized_length_is_refused_from_the_header_alone() -> None:
    decoder = DeviceFrameDecoder(max_frame_size=1024)
    decoder.receive_data(header(1025))
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frame()
    assert caught.value.code == ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == 0
    # The oversized body that follows is skipped without a second report.
    decoder.receive_data(b"\x00" * 1025 + b"\x00\x00\x00\x00")
    assert drain(decoder) == []
    decoder.receive_data(frame(Stop()))
    assert drain(decoder) == [to_wire(Stop())]


def test_a_bad_checksum_is_reported_once_and_the_stream_goes_on() -> None:
    good = frame(Stop())
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    results = feed(bytes(bad) + good, byte_at_a_time=False)
    assert [type(r) for r in results] == [RemoteProtocolError, bytes]
    assert errors(results)[0].code == ErrorCode.BAD_CHECKSUM


def test_an_unknown_frame_version_is_refused_and_skipped() -> None:
    body = to_wire(Stop())
    head = header(len(body), version=9)
    alien = head + body + struct.pack(">I", zlib.crc32(head + body))
    results = feed(alien + frame(Stop()), byte_at_a_time=False)
    assert [type(r) for r in results] == [RemoteProtocolError, bytes]
    assert errors(results)[0].code == ErrorCode.UNSUPPORTED_VERSION


def test_a_false_sync_word_inside_noise_is_not_taken_for_a_frame() -> None:
    results = feed(b"\x00" + SYNC_WORD + b"\xff" * 20 + frame(Stop()), byte_at_a_time=False)
    assert bodies(results) == [to_wire(Stop())]
    assert [e.code for e in errors(results)] == [ErrorCode.BAD_FRAME]


def test_endless_noise_is_reported_even_without_a_sync_word() -> None:
    decoder = DeviceFrameDecoder()
    decoder.receive_data(b"\x55" * NOISE_REPORT_BYTES)
    with pytest.raises(RemoteProtocolError, match="wrong baud rate"):
        decoder.next_frame()
    assert decoder.buffered == 0


def test_noise_is_discarded_as_it_comes_so_the_buffer_stays_small() -> None:
    decoder = DeviceFrameDecoder()
    for _ in range(10):
        decoder.receive_data(b"\x00" * 1000)
        assert decoder.next_frame() is None
        assert decoder.buffered == 0


def test_feeding_more_than_a_chunk_without_draining_is_a_local_error() -> None:
    decoder = DeviceFrameDecoder(max_frame_size=64, max_chunk=64)
    decoder.receive_data(header(64))
    with pytest.raises(LocalProtocolError, match="drain next_frame"):
        decoder.receive_data(b"\x00" * decoder.max_buffer_size)


def test_an_undecodable_body_with_a_good_checksum_is_a_bad_frame() -> None:
    client = DeviceClient(link_id="L")
    client.receive_data(encode_device_frame(b"\xc1not msgpack"))
    with pytest.raises(RemoteProtocolError) as caught:
        client.next_event()
    assert caught.value.code == ErrorCode.BAD_FRAME
    assert client.next_event() is NEED_DATA


def test_encoding_refuses_a_body_above_the_maximum() -> None:
    with pytest.raises(LocalProtocolError):
        encode_device_frame(b"\x00" * 11, max_frame_size=10)


# --- the KMS end ---------------------------------------------------------------------


def hello(**overrides: Any) -> DeviceHello:
    fields: dict[str, Any] = {
        "device_id": "qkd-a",
        "link_id": "L",
        "role": "alice",
        "versions": [1],
    } | overrides
    return DeviceHello(**fields)


def block(block_id: int) -> KeyBlockMsg:
    return KeyBlockMsg(
        block_id=block_id, key=b"\x01" * 8, qber=0.02, secret_key_rate=1e3, produced_at=1.0
    )


def events(client: DeviceClient, *messages: msgspec.Struct) -> list[Any]:
    """What the client makes of ``messages``: messages and error codes, in order."""
    endpoint = DeviceEndpoint()
    for m in messages:
        client.receive_data(endpoint.send(m))  # type: ignore[arg-type]
    out: list[Any] = []
    while True:
        try:
            event = client.next_event()
        except RemoteProtocolError as exc:
            out.append(exc.code)
            continue
        if event is NEED_DATA:
            return out
        out.append(event)


def test_start_asks_for_a_block_id_and_the_hello_opens_the_stream() -> None:
    client = DeviceClient(link_id="L", role="alice")
    sent = DeviceEndpoint()
    sent.receive_data(client.start(7))
    assert sent.next_event() == Start(from_block_id=7)
    assert client.state is ClientState.AWAIT_HELLO
    assert events(client, hello(), block(7), block(9)) == [hello(), block(7), block(9)]
    assert client.state is ClientState.STREAMING
    assert client.hello == hello()
    assert client.version == 1


def test_blocks_before_the_hello_are_stale_and_dropped_silently() -> None:
    client = DeviceClient(link_id="L")
    client.start(5)
    assert events(client, block(3), block(4), hello(), block(5)) == [hello(), block(5)]
    assert client.stale_blocks == 2


def test_a_duplicated_block_is_refused_and_the_stream_goes_on() -> None:
    client = DeviceClient(link_id="L")
    client.start()
    assert events(client, hello(), block(1), block(1), block(2)) == [
        hello(),
        block(1),
        ErrorCode.DUPLICATE_BLOCK,
        block(2),
    ]


def test_a_block_id_going_backwards_is_refused_and_the_stream_goes_on() -> None:
    client = DeviceClient(link_id="L")
    client.start()
    assert events(client, hello(), block(5), block(3), block(6)) == [
        hello(),
        block(5),
        ErrorCode.BLOCK_OUT_OF_ORDER,
        block(6),
    ]


def test_a_block_before_the_id_asked_for_is_refused() -> None:
    client = DeviceClient(link_id="L")
    client.resync(10)
    assert events(client, hello(), block(9), block(10)) == [
        hello(),
        ErrorCode.BLOCK_OUT_OF_ORDER,
        block(10),
    ]


def test_resync_restarts_the_stream_and_drops_what_was_in_flight() -> None:
    client = DeviceClient(link_id="L")
    client.start(1)
    assert events(client, hello(), block(1), block(2)) == [hello(), block(1), block(2)]
    client.resync(2)
    assert events(client, block(3), hello(), block(2)) == [hello(), block(2)]


def test_blocks_after_stop_are_dropped_silently() -> None:
    client = DeviceClient(link_id="L")
    client.start()
    events(client, hello(), block(1))
    client.stop()
    assert events(client, block(2), DeviceStatus(state="stopped")) == [
        DeviceStatus(state="stopped")
    ]
    assert client.stale_blocks == 1


@pytest.mark.parametrize(
    ("wrong", "code"),
    [
        ({"link_id": "other"}, ErrorCode.UNKNOWN_LINK),
        ({"role": "bob"}, ErrorCode.WRONG_PEER),
        ({"device_id": "qkd-z"}, ErrorCode.WRONG_PEER),
        ({"versions": [2, 3]}, ErrorCode.UNSUPPORTED_VERSION),
    ],
)
def test_a_hello_from_the_wrong_device_is_refused(wrong: dict[str, Any], code: ErrorCode) -> None:
    client = DeviceClient(link_id="L", role="alice", device_id="qkd-a")
    client.start()
    assert events(client, hello(**wrong), block(1)) == [code]
    assert client.state is ClientState.AWAIT_HELLO


def test_status_and_alarms_are_welcome_in_every_state() -> None:
    client = DeviceClient(link_id="L")
    alarm = DeviceAlarm(severity="major", code="laser-fault", message="laser temperature high")
    assert events(client, alarm) == [alarm]
    client.start()
    assert events(client, alarm, DeviceStatus(state="running")) == [
        alarm,
        DeviceStatus(state="running"),
    ]


def test_the_kms_end_refuses_commands_meant_for_a_device() -> None:
    client = DeviceClient(link_id="L")
    client.receive_data(frame(Start()))
    with pytest.raises(RemoteProtocolError) as caught:
        client.next_event()
    assert caught.value.code == ErrorCode.BAD_MESSAGE


# --- the device end ------------------------------------------------------------------


def test_the_device_end_decodes_commands_and_follows_them() -> None:
    endpoint = DeviceEndpoint()
    client = DeviceClient(link_id="L")
    endpoint.receive_data(client.start(3) + client.resync(4) + client.stop())
    assert [endpoint.next_event() for _ in range(3)] == [
        Start(from_block_id=3),
        Resync(from_block_id=4),
        Stop(),
    ]
    assert endpoint.next_event() is NEED_DATA


def test_the_device_end_refuses_device_messages_from_the_kms() -> None:
    endpoint = DeviceEndpoint()
    endpoint.receive_data(frame(block(1)))
    with pytest.raises(RemoteProtocolError) as caught:
        endpoint.next_event()
    assert caught.value.code == ErrorCode.BAD_MESSAGE


def test_a_device_cannot_send_kms_commands() -> None:
    with pytest.raises(LocalProtocolError):
        DeviceEndpoint().send(Start())  # type: ignore[arg-type]


def test_header_size_is_eleven_bytes() -> None:
    assert DEVICE_HEADER_SIZE == 11
    assert len(frame(Stop())) == 11 + len(to_wire(Stop())) + 4
