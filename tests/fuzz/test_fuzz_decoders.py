"""Every wire decoder against any byte string: a message, need-more-data or a clean error.

The short runs here are part of ``make test``; the long ones (``make soak``) run each
decoder for minutes and print the number of cases, like ``benchmarks/fuzz_decoders.py``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_decoders import fuzz_inputs, have_atheris
from protocol import (
    NEED_DATA,
    PEER_DECODER,
    DeviceClient,
    DeviceFrameDecoder,
    FrameDecoder,
    RemoteProtocolError,
    admin_connection,
    encode_device_frame,
    encode_frame,
    etsi014,
)
from protocol._device import DEVICE_HEADER_SIZE, DEVICE_TRAILER_SIZE

from ..soaktable import Record
from .targets import MAX_CHUNK, MAX_FRAME, TARGETS, BoundExceeded, fuzz_device, fuzz_frames

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(TARGETS)


@pytest.mark.parametrize("name", NAMES)
def test_every_seed_is_accepted_by_its_target(name: str) -> None:
    for seed in TARGETS[name].seeds:
        TARGETS[name].run(seed)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_bytes_give_a_message_or_a_remote_protocol_error(
    name: str, data: st.DataObject
) -> None:
    target = TARGETS[name]
    target.run(data.draw(fuzz_inputs(target.seeds, st)))


# --- the bounds the targets check, shown to bite -------------------------------------


def test_what_a_frame_decoder_keeps_after_draining_is_less_than_one_frame() -> None:
    # A decoder given one frame's bytes plus another whole frame holds both until drained;
    # the target drains, so what it checks is what stays: less than one frame.
    fuzz_frames(b"\x00" + struct.pack(">I", MAX_FRAME) + b"x" * MAX_FRAME)
    decoder = FrameDecoder(max_frame_size=MAX_FRAME)
    decoder.receive_data(struct.pack(">I", MAX_FRAME) + b"x" * (MAX_FRAME - 1))
    assert decoder.buffered == MAX_FRAME + 3


def test_a_length_over_the_limit_is_refused_from_four_bytes_whatever_follows() -> None:
    for length in (MAX_FRAME + 1, 10**9, 2**32 - 1):
        decoder = FrameDecoder(max_frame_size=MAX_FRAME)
        with pytest.raises(RemoteProtocolError):
            decoder.receive_data(struct.pack(">I", length))
        assert decoder.buffered == 0


def test_a_device_decoder_stays_within_one_frame_and_one_chunk_under_noise() -> None:
    fuzz_device(b"\x00" + b"\xc1\x51" * 5000)
    frames = DeviceFrameDecoder(max_frame_size=MAX_FRAME, max_chunk=MAX_CHUNK)
    assert (
        frames.max_buffer_size == DEVICE_HEADER_SIZE + MAX_FRAME + DEVICE_TRAILER_SIZE + MAX_CHUNK
    )


def test_bound_exceeded_is_not_a_protocol_error() -> None:
    # The targets swallow RemoteProtocolError only: a bound broken must fail the run.
    assert not issubclass(BoundExceeded, RemoteProtocolError)


def test_deeply_nested_msgpack_is_a_remote_error_not_a_recursion_error() -> None:
    body = b"\x91" * 100_000 + b"\xc0"  # a list in a list ... 100,000 deep
    with pytest.raises(RemoteProtocolError):
        PEER_DECODER.from_wire(body)
    conn = admin_connection()
    conn.receive_data(encode_frame(b"\x81\xa1a" * 50_000 + b"\xc0"))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_deeply_nested_json_is_400_not_a_recursion_error() -> None:
    for decode in (etsi014.decode_key_request, etsi014.decode_key_ids):
        with pytest.raises(etsi014.ApiRequestError) as info:
            decode(b'{"extension_mandatory": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}")
        assert info.value.http_status == 400


def test_a_msgpack_header_claiming_a_billion_entries_allocates_nothing_for_them() -> None:
    # array32 / map32 / bin32 / str32 headers promising 10^9 items in a 5-byte body.
    for head in (b"\xdd", b"\xdf", b"\xc6", b"\xdb"):
        with pytest.raises(RemoteProtocolError):
            PEER_DECODER.from_wire(head + struct.pack(">I", 10**9))


def test_a_device_block_with_a_key_over_its_limit_is_refused_and_the_stream_goes_on() -> None:
    client = DeviceClient(link_id="A~B")
    client.start()
    hello = {"type": "hello", "device_id": "D", "link_id": "A~B", "role": "alice", "versions": [1]}
    big = {
        "type": "key.block",
        "block_id": 1,
        "key": b"k" * (1 << 17 | 1),
        "qber": 0.0,
        "secret_key_rate": 0.0,
        "produced_at": 0.0,
    }
    stream = encode_device_frame(msgspec.msgpack.encode(hello)) + encode_device_frame(
        msgspec.msgpack.encode(big)
    )
    events: list[object] = []
    errors = 0
    for start in range(0, len(stream), 1 << 16):
        client.receive_data(stream[start : start + (1 << 16)])
        while True:
            try:
                event = client.next_event()
            except RemoteProtocolError:
                errors += 1
                continue
            if event is NEED_DATA:
                break
            events.append(event)
    assert [type(e).__name__ for e in events] == ["DeviceHello"]
    assert errors == 1


# --- atheris: coverage-guided, a short run here and a long one under soak ----------------


def _fuzz(*args: str) -> dict[str, object]:
    out = ROOT / "benchmarks" / "results" / "fuzz_decoders.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_decoders.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report: dict[str, object] = json.loads(out.read_text())
    return report


@pytest.mark.skipif(not have_atheris(), reason="atheris is not installed for this Python")
def test_atheris_runs_every_decoder_briefly_without_a_failure(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fuzz_decoders.py"),
            "--engine",
            "atheris",
            "--runs",
            "2000",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert {r["target"] for r in results} == set(NAMES)
    assert all(r["cases"] >= 2000 and r["failure"] is None for r in results)


@pytest.mark.soak
def test_soak_every_decoder_for_minutes(soak_table: Record) -> None:
    """``make soak``: atheris for 120 s per decoder (hypothesis, 100,000 cases, without it)."""
    args = (
        ["--seconds", "120"] if have_atheris() else ["--engine", "hypothesis", "--runs", "100000"]
    )
    report = _fuzz(*args)
    results = report["results"]
    assert isinstance(results, list)
    soak_table(
        tried="coverage-guided fuzzing of every decoder"
        + (" (atheris, 120 s each)" if have_atheris() else " (hypothesis)"),
        cases=", ".join(f"{r['target']} {r['cases']:,}" for r in results),
        found=f"{sum(r['failure'] is not None for r in results)} decoders failed",
    )
    assert all(r["failure"] is None for r in results)
