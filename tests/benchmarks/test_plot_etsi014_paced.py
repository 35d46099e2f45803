"""The day plot of paced windows: which results it reads, and when each window ran."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from . import load_benchmark


@pytest.fixture(scope="module")
def plot_module() -> Any:
    return load_benchmark("plot_etsi014_paced")


def result(path: Path, rows: list[dict[str, Any]], **extra: Any) -> Path:
    body = {
        "benchmark": "etsi014",
        "machine": {"date": "2026-11-26T21:00:00+00:00"},
        "lab": {"link": {"driver": "paired", "rate_bps": 5e6, "block_bits": 1 << 20}},
        "rows": rows,
        **extra,
    }
    path.write_text(json.dumps(body))
    return path


def window(
    generator: str, p99: float, *, paced: bool = True, rate: float = 500.0, pairs: int = 8
) -> dict[str, Any]:
    return {
        "generator": generator,
        "paced_round_trips_per_s": rate if paced else None,
        "pairs": pairs,
        "p99_ms": p99,
        "seconds": 5,
    }


def test_paced_windows_are_placed_after_the_rows_that_ran_before_them(
    plot_module: Any, tmp_path: Path
) -> None:
    path = result(
        tmp_path / "etsi014.json",
        [window("curl", 90.0, paced=False), window("curl", 12.0), window("trio", 25.0)],
    )
    got = plot_module.paced_windows([path])
    start = dt.datetime(2026, 11, 26, 21, tzinfo=dt.UTC)
    assert [(w.at - start, w.generator, w.p99_ms) for w in got] == [
        (dt.timedelta(seconds=5), "curl", 12.0),
        (dt.timedelta(seconds=10), "trio", 25.0),
    ]


def test_other_benchmarks_other_links_and_broken_files_are_left_out(
    plot_module: Any, tmp_path: Path
) -> None:
    paths = [
        result(tmp_path / "null.json", [window("curl", 3.0)], benchmark="etsi014_null_kms"),
        result(
            tmp_path / "slow_link.json",
            [window("curl", 16.0)],
            lab={"link": {"driver": "paired", "rate_bps": 1e6, "block_bits": 1 << 20}},
        ),
        tmp_path / "broken.json",
        result(tmp_path / "ok.json", [window("threads", 18.0)]),
    ]
    paths[2].write_text("{not json")
    assert [w.source for w in plot_module.paced_windows(paths)] == ["ok.json"]


def test_only_windows_at_the_target_s_load_are_plotted(plot_module: Any, tmp_path: Path) -> None:
    rows = [
        window("curl", 14.0, rate=250.0),  # a sweep of rates
        window("curl", 19.0, pairs=4),
        window("curl", 4.0) | {"kms": "null"},  # a control window against null KMEs
        window("curl", 21.0),
    ]
    got = plot_module.paced_windows([result(tmp_path / "sweep.json", rows)])
    assert [w.p99_ms for w in got] == [21.0]


def test_the_plot_is_written(plot_module: Any, tmp_path: Path) -> None:
    path = result(tmp_path / "etsi014.json", [window("curl", 12.0), window("threads", 30.0)])
    out = tmp_path / "p99.png"
    plot_module.plot(plot_module.paced_windows([path]), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
