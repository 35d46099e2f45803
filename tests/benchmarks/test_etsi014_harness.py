"""The ETSI 014 benchmark's harness, null KMEs and run plan: what they count and answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from . import load_benchmark


@pytest.fixture(scope="module")
def harness() -> Any:
    return load_benchmark("_etsi014_harness")


@pytest.fixture(scope="module")
def null() -> Any:
    return load_benchmark("_etsi014_null")


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_benchmark("etsi014_bench")


def status(**supply: int) -> dict[str, Any]:
    """An admin ``status`` answer as qkmsd gives it, trimmed to what the harness reads."""
    return {
        "node_id": "KME_B",
        "store": {"batches": 10, "calls": 30, "inline": 5},
        "api": {
            "listen": "127.0.0.1:1",
            "tls": {"handshakes": 16, "failed": 0, "versions": {"TLSv1.3": 16}},
            "supply": {"enc_keys": 0, "dec_keys": 7, "keys_out": 7, "refused": 1} | supply,
        },
        "peers": {},
        "links": {},
    }


def test_a_node_s_counters_are_read_from_its_admin_status(harness: Any) -> None:
    got = harness.counters_of(status(stock_keys_in=64))
    assert got == {
        "store_batches": 10,
        "store_calls": 30,
        "store_inline": 5,
        "enc_keys": 0,
        "dec_keys": 7,
        "keys_out": 7,
        "refused": 1,
        "stock_keys_in": 64,
        "stock_keys_out": 0,
        "tls_handshakes": 16,
    }


def test_a_node_without_the_api_counts_zero_requests(harness: Any) -> None:
    got = harness.counters_of({"store": {"batches": 3, "calls": 3, "inline": 0}, "api": None})
    assert got["store_batches"] == 3
    assert got["dec_keys"] == got["tls_handshakes"] == 0


def test_a_window_s_counters_are_what_grew_in_it(harness: Any) -> None:
    before = harness.counters_of(status())
    after = harness.counters_of(status(dec_keys=507, keys_out=507))
    deltas = harness.counter_deltas(before, after)
    assert deltas["dec_keys"] == deltas["keys_out"] == 500
    assert deltas["store_batches"] == deltas["refused"] == 0


def test_a_server_s_wait_for_the_cpu_sums_its_threads_run_queue_time(
    harness: Any, tmp_path: Path
) -> None:
    # /proc/PID/task/TID/schedstat: time on a core, time runnable but waiting (ns), slices.
    for tid, stat in (("41", "9000000 2000000000 12\n"), ("42", "5 500000000 3\n")):
        (tmp_path / "40" / "task" / tid).mkdir(parents=True)
        (tmp_path / "40" / "task" / tid / "schedstat").write_text(stat)
    (tmp_path / "40" / "task" / "43").mkdir()  # a thread that ended while being read
    assert harness.cpu_wait_seconds(40, proc=tmp_path) == 2.5
    assert harness.cpu_wait_seconds(41, proc=tmp_path) is None  # no such process


def test_a_null_kme_delivers_as_many_keys_as_asked_and_returns_them_by_id(null: Any) -> None:
    status, body = null.answer("enc_keys", b'{"number": 3, "size": 256}')
    keys = json.loads(body)["keys"]
    assert status == 200 and len(keys) == 3 and len({k["key_ID"] for k in keys}) == 3
    asked = json.dumps({"key_IDs": [{"key_ID": k["key_ID"]} for k in keys[1:]]}).encode()
    status, body = null.answer("dec_keys", asked)
    assert status == 200 and json.loads(body)["keys"] == keys[1:]


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [("enc_keys", b"not json"), ("dec_keys", b"{}"), ("dec_keys", b"[]"), ("status", b"")],
)
def test_a_null_kme_answers_a_bad_request_with_400(null: Any, endpoint: str, body: bytes) -> None:
    assert null.answer(endpoint, body)[0] == 400


def test_each_load_s_twins_alternate_which_server_goes_first(bench: Any) -> None:
    runs = bench.plan(["curl"], [8], [64, 1], 2, [], 0, False)
    assert [(b, kms) for _, _, b, _, kms in runs] == [
        (64, "qkmsd"), (64, "null"), (1, "qkmsd"), (1, "null"),
        (64, "null"), (64, "qkmsd"), (1, "null"), (1, "qkmsd"),
    ]  # fmt: skip


def test_paced_windows_get_null_twins_only_with_control(bench: Any) -> None:
    plain = bench.plan(["curl", "trio"], [], [], 1, [(8, 500.0)], 2, False)
    assert [(g, kms) for g, *_, kms in plain] == [
        ("curl", "qkmsd"), ("trio", "qkmsd"), ("trio", "qkmsd"), ("curl", "qkmsd"),
    ]  # fmt: skip
    assert {(n, b, rate) for _, n, b, rate, _ in plain} == {(8, 1, 500.0)}
    twinned = bench.plan(["curl"], [], [], 1, [(8, 500.0)], 2, True)
    assert [kms for *_, kms in twinned] == ["qkmsd", "null", "null", "qkmsd"]


def test_quick_mode_is_a_short_smoke_run_that_flags_still_override(bench: Any) -> None:
    quick = bench.parse_args(["--quick"])
    assert (quick.rounds, quick.paced, quick.pairs) == (1, "", "8")
    assert quick.output.name == "etsi014_quick.json"
    assert bench.parse_args(["--quick", "--generators", "trio"]).generators == "trio"
    full = bench.parse_args([])
    assert (full.pairs, full.windows, full.output.name) == ("1,8,64", 3, "etsi014.json")


@pytest.mark.system
def test_a_window_against_the_null_kmes_counts_round_trips_and_keys(
    harness: Any, null: Any, tmp_path: Path
) -> None:
    servers = null.start_null(tmp_path, 1)
    try:
        row = harness.run_window(servers, "threads", 1, 4, 0.2)
    finally:
        servers.stop()
    assert row["kms"] == "null" and row["errors"] == {} and row["pairs_not_started"] == 0
    assert row["round_trips"] > 0
    assert row["keys_per_s"] == pytest.approx(4 * row["round_trips_per_s"])
    assert row["server"] == {}  # null KMEs have no admin socket
    assert set(row["cpu_cores"]) == {"load_generator", "KME_A", "KME_B"}


def test_the_code_version_is_read_before_the_servers_start(
    bench: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run takes minutes; a commit made meanwhile must not be recorded as the code measured.
    calls: list[str] = []
    monkeypatch.setattr(bench.harness, "code_version", lambda tree: calls.append("code"))

    def start_lab(*args: Any) -> None:
        calls.append("lab")
        raise SystemExit("stop here")

    monkeypatch.setattr(bench.harness, "start_lab", start_lab)
    with pytest.raises(SystemExit, match="stop here"):
        bench.main(["--quick"])
    assert calls == ["code", "lab"]
