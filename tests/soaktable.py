"""The table `make soak` prints at its end: one row per long test (what was tried, how many
cases or cycles, what it found), beside the test's outcome.

A test asks for the ``soak_table`` fixture and calls it once with its figures; the rows are
printed after pytest's own summary (``pytest_terminal_summary`` in tests/conftest.py) and,
when ``QKMS_SOAK_REPORT`` names a file, written there as JSON. Figures only: never key
material.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest


@dataclasses.dataclass
class Row:
    test: str
    tried: str
    cases: str
    found: str
    outcome: str = "running"


ROWS: dict[str, Row] = {}

Record = Callable[..., None]


@pytest.fixture
def soak_table(request: pytest.FixtureRequest) -> Record:
    """``soak_table(tried=..., cases=..., found=...)``: this test's row of the table."""

    def record(*, tried: str, cases: str, found: str) -> None:
        ROWS[request.node.nodeid] = Row(request.node.nodeid, tried, cases, found)

    return record


def note_outcome(report: pytest.TestReport) -> None:
    row = ROWS.get(report.nodeid)
    if row is None or report.when == "setup":
        return
    if report.failed or report.when == "call":
        row.outcome = "failed" if report.failed else report.outcome


def render() -> list[str]:
    """The rows as a Markdown table (the form docs/reliability.md keeps them in)."""
    lines = [
        "| test | what was tried | cases / cycles | found | outcome |",
        "|---|---|---|---|---|",
    ]
    for row in ROWS.values():
        name = row.test.rsplit("::", 1)[-1]
        lines.append(f"| `{name}` | {row.tried} | {row.cases} | {row.found} | {row.outcome} |")
    return lines


def write_report() -> None:
    path = os.environ.get("QKMS_SOAK_REPORT")
    if path and ROWS:
        Path(path).write_text(json.dumps([dataclasses.asdict(r) for r in ROWS.values()], indent=1))
