"""packaging/prometheus: the alert rules load, pass their unit tests, and name real metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qkmsd.metrics import Snapshot, render

from .qkmsd.test_metrics import ACTIVE, ALARMS, STATUS

RULES = Path(__file__).parents[1] / "packaging" / "prometheus"
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
