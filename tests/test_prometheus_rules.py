"""docs/monitoring: the alert rules load, pass their unit tests and name real metrics; the
Grafana dashboard is valid JSON whose queries name real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qkmsd.metrics import Snapshot, render

from .qkmsd.test_metrics import ACTIVE, ALARMS, STATUS

RULES = Path(__file__).parents[1] / "docs" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)


@needs_promtool
def test_the_rules_are_valid() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", "qkms-rules.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_rules_fire_as_their_unit_tests_say() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", "qkms-rules.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_the_rules_use_is_exported() -> None:
    exported = set(
        re.findall(r"^(qkms_\w+)", render(Snapshot(STATUS, ALARMS, ACTIVE)).decode(), re.M)
    )
    used = set(re.findall(r"\b(qkms_\w+)", (RULES / "qkms-rules.yml").read_text()))
    assert used and used <= exported, used - exported


def test_every_metric_the_grafana_dashboard_queries_is_exported() -> None:
    text = render(Snapshot(STATUS, ALARMS, ACTIVE)).decode()
    exported = set(re.findall(r"^(qkms_\w+)", text, re.M))
    dashboard = json.loads((RULES / "grafana-qkms.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b(qkms_\w+)", e)}
    assert len(dashboard["panels"]) >= 8 and used and used <= exported, used - exported
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
