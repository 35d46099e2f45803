"""``qkmsctl bb84``: simulate and sweep, tested against the click group directly."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.bb84 import bb84

KEYS = {
    "qber",
    "sifted_bits",
    "secret_bits",
    "secret_key_rate_per_pulse",
    "ec_efficiency",
    "ec_messages",
    "aborted",
    "abort_reason",
    "analytic_key_rate_per_pulse",
}


def test_simulate_json_has_every_stage_figure() -> None:
    out = CliRunner().invoke(
        bb84, ["simulate", "--params", "lim2014", "--distance-km", "5", "--pulses", "1e8", "--json"]
    )
    assert out.exit_code == 0, out.output
    figures = json.loads(out.output)
    assert KEYS <= figures.keys()
    assert figures["aborted"] is False and figures["secret_bits"] > 0


def test_simulate_table_names_each_stage() -> None:
    out = CliRunner().invoke(bb84, ["simulate", "--pulses", "1e6", "--mode", "pulse"])
    assert out.exit_code == 0, out.output
    for stage in ("sifting", "estimation", "cascade", "verification", "finite key"):
        assert f"{stage}:" in out.output


def test_simulate_reports_the_abort_reason_under_full_intercept_resend() -> None:
    out = CliRunner().invoke(
        bb84, ["simulate", "--pulses", "1e8", "--eve", "intercept-resend=1", "--json"]
    )
    figures = json.loads(out.output)
    assert figures["aborted"] is True
    assert "QBER" in figures["abort_reason"]


def test_bad_eve_is_a_clean_error() -> None:
    out = CliRunner().invoke(bb84, ["simulate", "--eve", "mallory"])
    assert out.exit_code != 0
    assert "intercept-resend=F" in out.output


def test_params_file_overrides_a_named_set(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('base = "gys"\nmisalignment = 0.01\n')
    out = CliRunner().invoke(bb84, ["simulate", "--params", str(f), "--pulses", "1e7", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["qber"] < 0.03


def test_sweep_prints_rows_and_draws_a_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "rate.png"
    out = CliRunner().invoke(
        bb84,
        [
            "sweep",
            "--to-km",
            "160",
            "--step-km",
            "80",
            "--block-bits",
            "4096",
            "--plot",
            str(png),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output[out.output.index("[") :])
    assert [r["distance_km"] for r in rows] == [0.0, 80.0, 160.0]
    assert rows[-1]["infinite_decoy_rate"] == 0.0
    assert png.stat().st_size > 0
