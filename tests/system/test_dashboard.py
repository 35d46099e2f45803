"""The dashboard in a real browser: the paper's 3-node lab seen from KME1, KME2 killed -9
and started again, the page following without a reload.

Headless Chromium from Debian's ``chromium`` package, driven by Playwright for Python
(``executable_path``: no browser download).  Skips where either is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli._lab import Lab
from cli._topology import load_topology
from cli.main import qkmsctl

pytestmark = pytest.mark.system

CHROMIUM = "/usr/bin/chromium"
PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper-3node.toml"
LIVE_MS = 2000
"""A node going down must reach an open page within 2 s."""
SETTLE_MS = 30000

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"{CHROMIUM} is absent: `apt-get install chromium` (Debian) to run the browser test",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser.new_page(viewport={"width": 900, "height": 800})
        finally:
            browser.close()


def test_the_dashboard_shows_a_neighbour_killed_and_back_without_a_reload(
    lab: Lab, page: Any, tmp_path: Path
) -> None:
    lab.up(load_topology(PAPER))
    result = CliRunner().invoke(qkmsctl, ["dashboard", "--lab", str(lab.dir), "--node", "KME1"])
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith("http://127.0.0.1:")

    page.goto(url)
    # KME1, its neighbour KME2 and its end-to-end partner KME3; the QKD link and the pool.
    for node in ("KME1", "KME2", "KME3"):
        page.wait_for_selector(f'g.node[data-node="{node}"][data-state="up"]', timeout=SETTLE_MS)
    links = page.locator("g.link")
    assert links.count() == 2
    assert page.locator('g.link[data-link="KME1~KME2"][data-kind="qkd"]').count() == 1
    assert page.locator('g.link[data-peer="KME3"][data-kind="e2e"]').count() == 1
    for i in range(links.count()):
        assert links.nth(i).get_attribute("data-level") in ("empty", "low", "normal")
    page.wait_for_selector("#live.ok", timeout=SETTLE_MS)

    lab.kill("KME2")
    page.wait_for_selector('g.node[data-node="KME2"][data-state="down"]', timeout=LIVE_MS)
    page.screenshot(path=str(tmp_path / "dashboard-kme2-down.png"), full_page=True)
    # The alarm for it comes after the state agent's hold-down.
    page.wait_for_selector('li.alarm[data-code^="peer"]', timeout=SETTLE_MS)

    lab.start("KME2")
    page.wait_for_selector('g.node[data-node="KME2"][data-state="up"]', timeout=SETTLE_MS)
    page.screenshot(path=str(tmp_path / "dashboard-kme2-back.png"), full_page=True)
    assert (tmp_path / "dashboard-kme2-down.png").stat().st_size > 0
