"""``qkmsctl sim`` runs the simulator as a subprocess and passes its report through."""

from __future__ import annotations

import json
import subprocess
import sys

QKMSCTL = [sys.executable, "-c", "from cli.main import main; main()"]


def test_qkmsctl_sim_prints_a_report_and_its_json_parses() -> None:
    """The table itself is checked in tests/qkmssim/test_sim.py (``render``)."""
    args = ["sim", "--topology", "star:3", "--seconds", "4", "--demand", "paced:512"]
    out = subprocess.run([*QKMSCTL, *args, "--json"], capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["nodes"] == 3 and report["pairs"] == 6 and report["served_twice"] == 0
    assert {p["master"] for p in report["per_pair"]} == {"N0", "N1", "N2"}


def test_qkmsctl_sim_refuses_a_bad_fault_with_status_2() -> None:
    args = ["sim", "--topology", "ring:4", "--seconds", "4", "--fault", "link-down@1:N0-N2"]
    out = subprocess.run([*QKMSCTL, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no link 'N0-N2'" in out.stderr
