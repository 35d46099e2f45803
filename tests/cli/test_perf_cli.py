"""``qkmsctl perf``: a node's performance history over a (fake) admin socket."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import qkmsctl
from cli.perf import parse_duration, sparkline
from protocol import Error

from .fake_admin import fake_admin

NOW = time.time()


def point(at: float, mean: float) -> dict[str, float]:
    return {"at": at, "mean": mean, "low": mean - 1, "high": mean + 1, "n": 1}


PERF = {
    "now": NOW,
    "since": NOW - 3600,
    "bucket_s": 10.0,
    "series": {
        "link:KME_A~KME_B": {
            "key_rate_bps": [point(NOW - 30, 4096.0), point(NOW - 20, 2048.0)],
            "qber": [point(NOW - 30, 0.02), point(NOW - 20, 0.03)],
        }
    },
}


@pytest.fixture
def sock() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="qkmsctl-"))
    yield directory / "admin.sock"
    shutil.rmtree(directory)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(qkmsctl, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_perf_asks_for_the_resource_and_period_and_prints_a_row_per_series(sock: Path) -> None:
    with fake_admin(sock, {"perf": PERF}) as node:
        result = invoke("perf", "KME_A~KME_B", "--since", "15m", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    assert node.requests == [("perf", {"resource": "KME_A~KME_B", "since_s": 900.0})]
    rows = [line.split() for line in result.stdout.splitlines()[3:]]
    assert rows[0][:6] == ["link:KME_A~KME_B", "key_rate_bps", "2048", "3072", "2047", "4097"]
    assert rows[1][:3] == ["link:KME_A~KME_B", "qber", "0.03"]


def test_perf_json_is_the_daemon_s_answer(sock: Path) -> None:
    with fake_admin(sock, {"perf": PERF}):
        result = invoke("perf", "--socket", str(sock), "--json")
    assert json.loads(result.stdout) == json.loads(json.dumps(PERF))


def test_perf_plot_draws_a_png(sock: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "perf.png"
    with fake_admin(sock, {"perf": PERF}):
        result = invoke("perf", "--socket", str(sock), "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_resource_is_the_daemon_s_error(sock: Path) -> None:
    refusal = Error(code="bad-message", message="perf: no samples of 'X' (have: node)", id=1)
    with fake_admin(sock, {"perf": refusal}):
        result = invoke("perf", "X", "--socket", str(sock))
    assert result.exit_code != 0 and "no samples of 'X'" in result.output


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("30", 30)]
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_duration_is_a_usage_error(sock: Path) -> None:
    result = invoke("perf", "--since", "soon", "--socket", str(sock))
    assert result.exit_code == 2 and "90s, 15m, 1h or 7d" in result.output


def test_a_sparkline_spans_its_values_low_to_high() -> None:
    assert sparkline([0, 2, 14]) == "▁▂█"
    assert sparkline([5, 5]) == "▁▁"
    assert len(sparkline(list(range(100)))) == 40
