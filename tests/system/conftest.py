"""Fixtures for the system tests: real daemons in a lab directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli._lab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """An empty lab directory; whatever runs in it is stopped afterwards."""
    lab = Lab(tmp_path / "lab")
    yield lab
    if lab.manifest_path.exists():
        lab.down()
        # Shown by pytest only when the test failed: what the nodes said.
        for node, kme in lab.manifest()["kmes"].items():
            log = Path(kme["log"])
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            print(f"--- {node} {log} (last 40 lines)", *lines[-40:], sep="\n")
