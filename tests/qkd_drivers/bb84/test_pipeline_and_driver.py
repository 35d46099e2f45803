"""One block end to end, and the bb84sim driver that serves both ends of a link."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import trio

from qkd_drivers import DriverConfigError, LinkEnd, LinkState
from qkd_drivers.bb84 import LIM2014, run_block
from qkd_drivers.bb84._driver import Bb84SimDriver, Bb84SimParams

SEED = "0123456789abcdef-shared-seed"


def driver(local: str, peer: str, **params: object) -> Bb84SimDriver:
    raw = {"seed": SEED, "params": "lim2014", "distance_km": 5.0, "block_bits": 1 << 20, **params}
    link = LinkEnd("a-b", local, peer)
    return Bb84SimDriver(link, Bb84SimDriver.parse_params(raw), clock=trio.current_time)


def test_a_block_runs_every_stage_and_yields_a_verified_key() -> None:
    rng = np.random.Generator(np.random.PCG64(1))
    result = run_block(LIM2014, 5.0, 100_000_000, rng)
    assert not result.aborted, result.abort_reason
    assert result.verified and result.residual_errors == 0
    assert 0 < result.secret_bits < result.key_bits_before_ec
    assert len(result.key) == result.secret_bits // 8
    assert 1.0 < result.ec_efficiency < 1.2
    assert 0 < result.secret_key_rate_per_pulse < result.analytic_key_rate_per_pulse


def test_block_figures_never_include_the_key() -> None:
    rng = np.random.Generator(np.random.PCG64(2))
    result = run_block(LIM2014, 5.0, 100_000_000, rng)
    assert "key" not in result.figures()
    assert result.key.hex() not in repr(result)


def test_both_ends_compute_identical_keys_for_a_block_id() -> None:
    a, b = driver("a", "b"), driver("b", "a")
    ra, rb = a.run_block(7), b.run_block(7)
    assert not ra.aborted, ra.abort_reason
    assert ra.key == rb.key
    assert a.run_block(8).key != ra.key


async def test_driver_yields_blocks_with_qber_and_rate(autojump_clock: trio.abc.Clock) -> None:
    d = driver("a", "b")
    async with d:
        stream = d.blocks()
        block = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
    assert block.size_bits > 0
    assert 0 < block.qber < 0.02
    assert block.secret_key_rate is not None and block.secret_key_rate > 0
    assert d.health().blocks_produced == 1


async def test_aborted_blocks_yield_nothing_and_take_the_link_down(
    autojump_clock: trio.abc.Clock,
) -> None:
    d = driver("a", "b", eve="intercept-resend=1", block_bits=1 << 14)
    got = []

    async def consume() -> None:
        async for block in d.blocks():
            got.append(block)

    async with d, trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        with trio.fail_after(3600):
            while d.health().state is not LinkState.DOWN:  # noqa: ASYNC110 - a snapshot
                await trio.sleep(d.interval)
        health = d.health()
        nursery.cancel_scope.cancel()
    assert got == []
    assert health.state is LinkState.DOWN
    assert "QBER" in health.detail


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"eve": "pn"}, "intercept-resend=F"),
        ({"params": "nope"}, "not a named set"),
        ({"distance": 3}, "distance"),
    ],
)
def test_bad_link_parameters_are_config_errors(params: dict[str, object], match: str) -> None:
    with pytest.raises(DriverConfigError, match=match):
        Bb84SimDriver.parse_params({"seed": SEED, **params})


def test_params_struct_has_the_documented_defaults() -> None:
    p = Bb84SimParams(seed=SEED)
    assert (p.params, p.pulse_rate_hz, p.mode, p.eve) == ("gys", 1e9, "event", None)


def test_an_eve_schedule_attacks_the_blocks_that_start_after_its_time_at_both_ends(
    tmp_path: Path,
) -> None:
    """Blocks too small for a key (cheap to run) abort for the finite-key length without
    Eve, and for the QBER with her: that tells which blocks she attacked."""
    schedule = tmp_path / "eve.json"
    a = driver("a", "b", eve_schedule=str(schedule), block_bits=1 << 14)
    b = driver("b", "a", eve_schedule=str(schedule), block_bits=1 << 14)
    start = 100 * a.interval
    schedule.write_text(json.dumps([{"at": start, "eve": "intercept-resend=1"}]))
    assert "QBER" not in a.run_block(99).abort_reason
    assert "QBER" in a.run_block(100).abort_reason
    assert [str(d.eve_of(i)) for d in (a, b) for i in (99, 100)] == [
        "none", "intercept-resend=1", "none", "intercept-resend=1"
    ]  # fmt: skip
    stop = start + 5 * a.interval
    changes = [{"at": start, "eve": "intercept-resend=1"}, {"at": stop, "eve": "none"}]
    schedule.write_text(json.dumps(changes))
    os.utime(schedule, (start + 1, start + 1))  # a new modification time: read again
    assert [str(d.eve_of(i)) for d in (a, b) for i in (104, 105)] == [
        "intercept-resend=1", "none", "intercept-resend=1", "none"
    ]  # fmt: skip
    assert "QBER" not in a.run_block(105).abort_reason


def test_a_broken_eve_schedule_keeps_the_last_good_one_and_says_so(tmp_path: Path) -> None:
    schedule = tmp_path / "eve.json"
    d = driver("a", "b", eve_schedule=str(schedule), block_bits=1 << 14)
    schedule.write_text(json.dumps([{"at": 0, "eve": "intercept-resend=1"}]))
    assert str(d.eve_of(10)) == "intercept-resend=1"
    schedule.write_text("[{")
    os.utime(schedule, (12345, 12345))
    assert str(d.eve_of(11)) == "intercept-resend=1"
    assert d._schedule is not None and "eve schedule" in d._schedule.problem
