"""docs/operations.md shows the disruption code table that the code holds."""

from __future__ import annotations

from pathlib import Path

from qkmsd.disruptions import CODES

DOC = Path(__file__).parents[3] / "docs" / "operations.md"


def test_the_disruption_table_in_the_operations_guide_is_the_code_table() -> None:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("| code | kind | resource | meaning | default severity | default action |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    expected = [
        [
            f"`{r.code}`",
            str(r.kind),
            r.resource,
            r.meaning + ("" if r.detected else " (not detected yet)"),
            str(r.severity),
            f"`{r.action}`",
        ]
        for r in CODES.values()
    ]
    assert rows == expected
