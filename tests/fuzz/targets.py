"""One fuzz target per decoder that reads bytes from the other side.

A target takes any byte string and feeds it to one decoder.  It returns normally when the
decoder answered with messages, "need more data" or a clean error of the decoder's root
(``RemoteProtocolError``, of which ``ApiRequestError`` is one).  Any other exception, or a
decoder holding more bytes than its wire limit allows, escapes as the failure.

The same targets run under atheris (coverage-guided, ``benchmarks/fuzz_decoders.py``) and
under hypothesis (``tests/fuzz/test_fuzz_decoders.py``).  Where a decoder checks
structure (msgpack, CRCs, JSON), part of each input is first turned into something that
passes those checks, so that the fuzzer reaches the typed validation behind them rather
than spending every case on "not msgpack": the first byte picks how.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from protocol import (
    ADMIN_DECODER,
    ADMIN_MESSAGE_TYPES,
    NEED_DATA,
    PEER_DECODER,
    PEER_MESSAGE_TYPES,
    DeviceClient,
    DeviceEndpoint,
    DeviceFrameDecoder,
    FrameDecoder,
    PeerSession,
    RemoteProtocolError,
    admin_connection,
    encode_device_frame,
    encode_frame,
    etsi014,
)
from protocol._device import DEVICE_HEADER_SIZE, DEVICE_TRAILER_SIZE

MAX_FRAME: Final = 4096
"""The frame limit the targets run with: small, so that the bound is reached often."""
MAX_CHUNK: Final = 512

_PEER_TAGS: Final = [str(c.__struct_config__.tag) for c in PEER_MESSAGE_TYPES]
_ADMIN_TAGS: Final = [str(c.__struct_config__.tag) for c in ADMIN_MESSAGE_TYPES]
_DEVICE_TAGS: Final = ["hello", "key.block", "status", "alarm", "start", "stop", "resync"]
_METHODS: Final = ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "get"]


class BoundExceeded(AssertionError):
    """A decoder holds more bytes than its wire limit allows."""


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _split(data: bytes) -> tuple[int, bytes]:
    """The first byte (the target's choice) and the rest."""
    return (data[0], data[1:]) if data else (0, b"")


def _any_msgpack(data: bytes) -> Any:
    """``data`` as a msgpack value if it is one, else None."""
    try:
        return msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, RecursionError, ValueError, OverflowError):
        return None


def _tagged_body(choice: int, rest: bytes, tags: list[str]) -> bytes:
    """A msgpack map with a real ``type`` tag and the fields ``rest`` decodes to, if any.

    ``choice`` picks the tag; a ``rest`` that is not a msgpack map is sent as it is.
    """
    value = _any_msgpack(rest)
    if not isinstance(value, dict):
        return rest
    value["type"] = tags[choice % len(tags)]
    try:
        return msgspec.msgpack.encode(value)
    except (TypeError, OverflowError, ValueError):
        return rest


def _drain(next_event: Callable[[], Any]) -> int:
    """Events until NEED_DATA; a RemoteProtocolError ends it (the stream is then closed)."""
    count = 0
    while next_event() is not NEED_DATA:
        count += 1
    return count


# --- the targets ---------------------------------------------------------------------


def fuzz_frames(data: bytes) -> None:
    """The u32-length frame decoder, fed in chunks chosen by the first byte."""
    choice, rest = _split(data)
    decoder = FrameDecoder(max_frame_size=MAX_FRAME)
    try:
        for chunk in _chunks(rest, 1 + choice * 8):
            decoder.receive_data(chunk)
            while decoder.next_frame() is not None:
                pass
            # What is left is less than one whole frame: header plus at most the limit.
            if decoder.buffered >= MAX_FRAME + 4:
                raise BoundExceeded(f"frame decoder holds {decoder.buffered} bytes")
    except RemoteProtocolError:
        pass


def fuzz_peer_messages(data: bytes) -> None:
    """Peer frame bodies (``PEER_DECODER``) and a peer session opened by them."""
    choice, rest = _split(data)
    body = _tagged_body(choice >> 1, rest, _PEER_TAGS) if choice & 1 else rest
    try:
        PEER_DECODER.from_wire(body)
    except RemoteProtocolError:
        pass
    session = PeerSession(local_node="KME_A", expected_peer="KME_B", max_frame_size=MAX_FRAME)
    hello = {"type": "hello", "node_id": "KME_B", "versions": [1]}
    stream = (encode_frame(msgspec.msgpack.encode(hello)) if choice & 2 else b"") + (
        encode_frame(body, max_frame_size=1 << 30) if choice & 4 else rest
    )
    try:
        for chunk in _chunks(stream, 1 + choice * 4):
            session.receive_data(chunk)
            _drain(session.next_event)
    except RemoteProtocolError:
        pass


def fuzz_admin(data: bytes) -> None:
    """Admin frame bodies (``ADMIN_DECODER``) and the admin connection the server reads."""
    choice, rest = _split(data)
    body = _tagged_body(choice >> 1, rest, _ADMIN_TAGS) if choice & 1 else rest
    try:
        ADMIN_DECODER.from_wire(body)
    except RemoteProtocolError:
        pass
    conn = admin_connection(max_frame_size=MAX_FRAME)
    stream = encode_frame(body, max_frame_size=1 << 30) if choice & 2 else rest
    try:
        for chunk in _chunks(stream, 1 + choice * 4):
            conn.receive_data(chunk)
            _drain(conn.next_event)
    except RemoteProtocolError:
        pass


def fuzz_device(data: bytes) -> None:
    """The device protocol's self-resynchronising frames, at both ends, in bounded memory.

    Unlike the other decoders it never breaks: after an error the caller goes on reading.
    """
    choice, rest = _split(data)
    if choice & 1:
        # A well-framed body (right CRCs) so the decoder reaches the message checks.
        body = _tagged_body(choice >> 1, rest, _DEVICE_TAGS)
        stream = rest[: choice % 7] + encode_device_frame(body, max_frame_size=1 << 30)
    else:
        stream = rest
    ends: list[DeviceClient | DeviceEndpoint] = [
        DeviceClient(link_id="A~B", max_frame_size=MAX_FRAME, max_chunk=MAX_CHUNK),
        DeviceEndpoint(max_frame_size=MAX_FRAME, max_chunk=MAX_CHUNK),
    ]
    first = ends[0]
    assert isinstance(first, DeviceClient)
    first.start()
    limit = DEVICE_HEADER_SIZE + MAX_FRAME + DEVICE_TRAILER_SIZE + MAX_CHUNK
    for end in ends:
        for chunk in _chunks(stream, 1 + (choice % 64) * 8):
            end.receive_data(chunk)
            while True:
                try:
                    if end.next_event() is NEED_DATA:
                        break
                except RemoteProtocolError:
                    continue
            frames: DeviceFrameDecoder = end._frames
            if frames.buffered > limit:
                raise BoundExceeded(f"device decoder holds {frames.buffered} bytes")


_BODY_DECODERS: Final[list[Callable[[bytes], Any]]] = [
    etsi014.decode_key_request,
    etsi014.decode_key_ids,
    etsi014.decode_status,
    etsi014.decode_key_container,
    etsi014.decode_error,
]
_BODY_FIELDS: Final = [
    "number",
    "size",
    "additional_slave_SAE_IDs",
    "extension_mandatory",
    "extension_optional",
    "key_IDs",
    "key_ID",
    "keys",
    "key",
    "message",
    "details",
]


def fuzz_etsi014_bodies(data: bytes) -> None:
    """ETSI 014 JSON bodies: the ones an SAE posts and the ones a KME answers."""
    choice, rest = _split(data)
    decode = _BODY_DECODERS[choice % len(_BODY_DECODERS)]
    body = rest
    if choice & 0x80:
        # A JSON object with the spec's field names and values read from the input.
        value = _any_msgpack(rest)
        fields = value if isinstance(value, dict) else {"_": value}
        named = {_BODY_FIELDS[i % len(_BODY_FIELDS)]: v for i, v in enumerate(fields.values())}
        try:
            body = json.dumps(named).encode()
        except (TypeError, ValueError, RecursionError):
            body = rest
    try:
        decode(body)
    except RemoteProtocolError:
        pass


def fuzz_etsi014_requests(data: bytes) -> None:
    """ETSI 014 request routing: method and target as the HTTP shell hands them on."""
    choice, rest = _split(data)
    method = _METHODS[choice % len(_METHODS)]
    # The shell passes only ASCII targets (others are 400 before routing).
    target = rest.decode("ascii", errors="replace").replace("\ufffd", "?")
    if choice & 0x40:
        target = etsi014.API_PREFIX + target
    try:
        call = etsi014.parse_api_path(method, target)
    except RemoteProtocolError:
        return
    if call.key_request is not None or call.key_ids is not None:
        # What routing built from a query string is a body the front can encode.
        etsi014.encode_json(call.key_request or call.key_ids)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: tuple[bytes, ...]
    """Inputs that reach deep: valid messages, so a fuzzer mutates from there."""


def _seeds() -> dict[str, tuple[bytes, ...]]:
    hello = msgspec.msgpack.encode({"node_id": "KME_B", "versions": [1]})
    announce = msgspec.msgpack.encode({"link_id": "A~B", "block_ids": [1, 2, 3]})
    reserve = msgspec.msgpack.encode(
        {
            "id": 1,
            "link_id": "A~B",
            "master_sae": "SAE_A",
            "slave_saes": ["SAE_B"],
            "expires_at": 1.0,
            "keys": [{"key_id": "01234567-89ab-cdef-0123-456789abcdef", "segments": [[2, 0, 32]]}],
        }
    )
    request = msgspec.msgpack.encode({"id": 7, "method": "status", "params": {}})
    block = msgspec.msgpack.encode(
        {"block_id": 5, "key": b"k" * 32, "qber": 0.01, "secret_key_rate": 1e3, "produced_at": 1.0}
    )
    device_hello = msgspec.msgpack.encode(
        {"device_id": "QKD_1", "link_id": "A~B", "role": "alice", "versions": [1]}
    )
    key_ids = msgspec.msgpack.encode(
        {"key_IDs": [{"key_ID": "01234567-89ab-cdef-0123-456789abcdef"}]}
    )
    key_request = msgspec.msgpack.encode(
        {"number": 2, "size": 256, "additional_slave_SAE_IDs": ["SAE_C"]}
    )
    return {
        "frames": (
            b"\x07" + encode_frame(hello) + encode_frame(announce),
            b"\x00" + b"\x00\x00\x10\x01",
        ),
        "peer_messages": tuple(
            bytes([choice]) + body
            for choice, body in (
                (0x07, hello),
                (0x0F, announce),
                (0x03 | (_PEER_TAGS.index("supply.reserve") << 1), reserve),
            )
        ),
        "admin": (bytes([0x01]) + request, bytes([0x03]) + request),
        "device": (
            bytes([0x01 | (_DEVICE_TAGS.index("key.block") << 1)]) + block,
            bytes([0x01]) + device_hello,
        ),
        "etsi014_bodies": (
            bytes([0x80]) + key_request,
            bytes([0x81]) + key_ids,
            b"\x00" + b'{"number": 3, "size": 256}',
        ),
        "etsi014_requests": (
            b"\x00" + b"/api/v1/keys/SAE_B/status",
            b"\x00" + b"/api/v1/keys/SAE_B/enc_keys?number=2&size=256",
            b"\x40" + b"SAE_A/dec_keys?key_ID=01234567-89ab-cdef-0123-456789abcdef",
        ),
    }


_SEEDS: Final = _seeds()
TARGETS: Final = {
    t.name: t
    for t in (
        Target("frames", fuzz_frames, _SEEDS["frames"]),
        Target("peer_messages", fuzz_peer_messages, _SEEDS["peer_messages"]),
        Target("admin", fuzz_admin, _SEEDS["admin"]),
        Target("device", fuzz_device, _SEEDS["device"]),
        Target("etsi014_bodies", fuzz_etsi014_bodies, _SEEDS["etsi014_bodies"]),
        Target("etsi014_requests", fuzz_etsi014_requests, _SEEDS["etsi014_requests"]),
    )
}
"""Every fuzz target by name."""
