"""The dashboard in a real browser: the paper's 3-node lab seen from KME1 over server-sent
events, the pair KME1-KME3 picked with its route and pool highlighted, a key profile
activated from the page, KME2 killed -9 and started again, an alarm acknowledged and
cleared from the page, the CSRF token required, no key material on the page; a 200-node
network drawn readably; on a fake controller, a pair's current route and alternate drawn
apart.

Headless Chromium from Debian's ``chromium`` package, driven by Playwright for Python
(``executable_path``: no browser download).  Skips where either is missing.  With
``QKMS_DOCS_SCREENSHOTS=1`` the screenshots are written to ``docs/`` (as
``docs/operations.md`` shows them), else under the test's temporary directory.
"""

from __future__ import annotations

import base64
import json
import math
import os
import queue
import random
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from cli._lab import Lab
from cli._topology import load_topology
from cli.demo import _client
from cli.main import qkmsctl
from qkms_client import Etsi014Error
from qkmsd.dashboard import (
    LIMITS,
    Access,
    Dashboard,
    DashboardState,
    StreamSlots,
    dashboard_handler,
)
from qkmsd.dashboard._layout import layout
from qkmsd.dashboard._model import EdgeView, LinkView, NodeView
from qkmsd.dashboard._render import render_page
from qkmsd.http import serve_tcp_plain

from ..qkmsd.test_dashboard import FakeNode

pytestmark = pytest.mark.system

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "examples" / "paper-3node.toml"
SETTLE_MS = 30000
"""A generous bound on waits: the 2 s a change takes to reach the page is measured and
printed (a loaded machine must not fail the test), not asserted."""

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"{CHROMIUM} is absent: `apt-get install chromium` (Debian) to run the browser test",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)

# Records, in the page's own clock, when each watched thing first shows.
WATCH = """
(watch) => {
  window.__seen = {};
  const check = () => {
    for (const [name, selector] of Object.entries(watch)) {
      if (!(name in window.__seen) && document.querySelector(selector)) {
        window.__seen[name] = performance.now();
      }
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true,
                                                      attributes: true});
  check();
}
"""


def _shots(tmp_path: Path) -> Path:
    return ROOT / "docs" if os.environ.get("QKMS_DOCS_SCREENSHOTS") == "1" else tmp_path


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def _delivered_keys(lab: Lab) -> list[tuple[str, bytes]]:
    """Keys SAE1 (on KME1) and SAE3 (on KME3) share, relayed through KME2."""
    manifest = lab.manifest()
    deadline = time.monotonic() + SETTLE_MS / 1000
    while True:
        try:
            with _client(manifest, "SAE1") as client:
                keys = client.get_key("SAE3", number=2)
            break
        except Etsi014Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # the end-to-end pool is still being filled by relays
    with _client(manifest, "SAE3") as client:
        client.get_key_with_ids("SAE1", [k.key_id for k in keys])
    return [(k.key_id, k.key) for k in keys]


def test_the_page_follows_a_node_killed_and_back_and_operates_with_its_token(
    lab: Lab, page: Any, tmp_path: Path
) -> None:
    lab.up(load_topology(PAPER))
    result = CliRunner().invoke(qkmsctl, ["dashboard", "--lab", str(lab.dir), "--node", "KME1"])
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith("http://127.0.0.1:")
    keys = _delivered_keys(lab)

    page.goto(url)
    # KME1, its neighbour KME2 and its end-to-end partner KME3; the QKD link and the pool.
    for node in ("KME1", "KME2", "KME3"):
        page.wait_for_selector(f'g.node[data-node="{node}"][data-state="up"]', timeout=SETTLE_MS)
    assert page.locator('g.link[data-link="KME1~KME2"][data-kind="qkd"]').count() == 1
    assert page.locator('g.link[data-peer="KME3"][data-kind="e2e"]').count() == 1
    assert page.locator("line.edge").count() == 1  # KME2-KME3, known from the topology
    for i in range(page.locator("g.link").count()):
        assert page.locator("g.link").nth(i).get_attribute("data-level") in (
            "empty", "low", "normal"
        )  # fmt: skip
    page.wait_for_selector("#live.ok", timeout=SETTLE_MS)
    assert "events" in page.inner_text("#live")  # server-sent events, not the long poll

    # A node pair picked on the graph: its route drawn over KME2, its end-to-end pool.
    page.click('g.node[data-node="KME1"]')
    page.click('g.node[data-node="KME3"]')
    page.wait_for_selector(
        '#pair-info li.path[data-rank="current"][data-path="KME1 KME2 KME3"]', timeout=SETTLE_MS
    )
    assert page.locator('g.link[data-link="KME1~KME2"][data-route="current"]').count() == 1
    assert page.locator('line.edge[data-route="current"]').count() == 1  # KME2-KME3
    assert page.locator('g.link[data-kind="e2e"][data-route="pool"]').count() == 1
    assert page.get_attribute("#pair-pool", "data-pool")
    # SAE1 asked KME1 for keys: its requests and errors by status are listed.
    assert page.locator('#saes tr.pick[data-resource="sae:SAE1"]').count() == 1
    shots = _shots(tmp_path)
    page.screenshot(path=str(shots / "dashboard-3node-pair.png"), full_page=True)

    # A key profile activated from the page, as `qkmsctl profile activate` does.
    lab_node = ["--lab", str(lab.dir), "--node", "KME1"]
    added = CliRunner().invoke(qkmsctl, ["profile", "add", "gold", "--node-pair", "KME1",
                                         "KME3", *lab_node])  # fmt: skip
    assert added.exit_code == 0, added.output
    page.click('button[data-op="profile_activate"][data-name="gold"]', timeout=SETTLE_MS)
    page.wait_for_selector('tr.profile[data-name="gold"][data-active="true"]', timeout=SETTLE_MS)
    shown = CliRunner().invoke(qkmsctl, ["profile", "show", "gold", "--json", *lab_node])
    assert json.loads(shown.output)["active"] is True

    page.evaluate(
        WATCH,
        {
            "down": 'g.node[data-node="KME2"][data-state="down"]',
            "alarm": 'li.alarm[data-code="peer-down"][data-resource="KME2"]',
        },
    )
    killed = page.evaluate("performance.now()")
    lab.kill("KME2")
    page.wait_for_function("'down' in window.__seen && 'alarm' in window.__seen", timeout=SETTLE_MS)
    seen = page.evaluate("window.__seen")
    print(
        f"\nKME2 killed -9: shown down after {seen['down'] - killed:.0f} ms, "
        f"its peer-down alarm after {seen['alarm'] - killed:.0f} ms (target: 2000 ms)"
    )
    # Over time: the link's plots, from the performance history, refreshed as it grows.
    page.click('#links tr.pick[data-resource="link:KME1~KME2"]')
    page.wait_for_selector(
        '#plots[data-resource="link:KME1~KME2"] figure[data-metric="qber"]'
        ':not([data-points="0"]):not([data-points="1"])',
        timeout=SETTLE_MS,
    )
    page.screenshot(path=str(shots / "dashboard-3node-kme2-down.png"), full_page=True)

    # Acknowledged from the page: the page sends its CSRF token.
    alarm = 'li.alarm[data-code="peer-down"][data-resource="KME2"]'
    page.click(f'{alarm} button[data-op="alarm_ack"]')
    page.wait_for_selector(f'{alarm}[data-acknowledged="true"]', timeout=SETTLE_MS)
    page.wait_for_selector('#history-table tr.event:has-text("acknowledged")', timeout=SETTLE_MS)
    # The same request without the token is refused, and changes nothing.
    body = json.dumps({"code": "peer-down", "resource": "KME2"})
    refused = page.request.post(
        url + "op/alarm_clear", data=body, headers={"content-type": "application/json"}
    )
    assert refused.status == 403 and "CSRF" in refused.text()
    assert page.locator(alarm).count() == 1

    lab.start("KME2")
    page.wait_for_selector('g.node[data-node="KME2"][data-state="up"]', timeout=SETTLE_MS)
    page.click(f'{alarm} button[data-op="alarm_clear"]')
    page.wait_for_selector(alarm, state="detached", timeout=SETTLE_MS)
    page.screenshot(path=str(shots / "dashboard-3node-kme2-back.png"), full_page=True)

    # Nothing on the page or behind it carries a delivered key or its id.
    scraped = page.content() + "".join(
        page.request.get(url + path).text()
        for path in (
            "state.json",
            "view",
            "history",
            "plots?resource=pool:KME1~KME3",
            "pair?a=KME1&b=KME3",
        )
    )
    for key_id, key in keys:
        for form in (key_id, key.hex(), base64.b64encode(key).decode(), key.decode("latin-1")):
            assert form not in scraped


def _network(n: int, *, seed: int = 7) -> DashboardState:
    """A synthetic network of ``n`` nodes seen from the first: a ring with chords."""
    rng = random.Random(seed)
    names = [f"KME_{i:03d}" for i in range(n)]
    pairs = {tuple(sorted((names[i], names[(i + 1) % n]))) for i in range(n)}
    pairs |= {tuple(sorted((names[i], names[rng.randrange(n)]))) for i in range(n)}
    pairs = {p for p in pairs if p[0] != p[1]}
    at = layout(names, pairs)
    me = names[0]
    mine = sorted(p for p in pairs if me in p)
    peers = [b if a == me else a for a, b in mine]
    nodes = [
        NodeView(
            name,
            "self" if name == me else "peer" if name in peers else "remote",
            True if name == me or name in peers else None,
            "up" if name == me or name in peers else "unknown",
            *at[name],
        )
        for name in names
    ]
    links = [
        LinkView(f"{me}~{p}", p, "qkd", "normal", 50000, 16384, "paired", "up", True, 0.02, False)
        for p in peers
    ]
    edges = [EdgeView(a, b) for a, b in sorted(pairs) if me not in (a, b)]
    return DashboardState(1, me, False, me, nodes, links, edges, [], [], [])


def test_a_200_node_network_is_drawn_with_no_node_hidden_under_another(
    page: Any, tmp_path: Path
) -> None:
    state = _network(200)
    page.set_content(render_page(state, token="t", operator="loopback", can_operate=False))
    circles = page.locator("g.node circle")
    assert circles.count() == 200
    centres = page.evaluate(
        "() => [...document.querySelectorAll('g.node circle')].map(c => "
        "[+c.getAttribute('cx'), +c.getAttribute('cy'), +c.getAttribute('r')])"
    )
    radius = centres[0][2]
    closest = min(math.dist(a[:2], b[:2]) for i, a in enumerate(centres) for b in centres[i + 1 :])
    print(f"\n200 nodes: radius {radius:.1f}, closest centres {closest:.1f} (SVG units)")
    assert closest > 2 * radius
    page.screenshot(path=str(_shots(tmp_path) / "dashboard-200-nodes.png"), full_page=True)


class _FakeServer:
    """A dashboard over fake sources on a loopback port, in a trio run on a thread."""

    def __init__(self, node: Any, **handler_options: Any) -> None:
        self.node = node
        self.options = handler_options
        self.port: queue.Queue[int] = queue.Queue()
        self.token: trio.lowlevel.TrioToken | None = None
        self.stop: trio.Event | None = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.stop = trio.Event()
        handler = dashboard_handler(Dashboard(self.node.sources()), **self.options)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_tcp_plain, name="dashboard", limits=LIMITS),
                handler,
                "127.0.0.1",
                0,
            )
            self.port.put(port)
            await self.stop.wait()
            nursery.cancel_scope.cancel()

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.port.get(timeout=30)}/"

    def __exit__(self, *exc: object) -> None:
        assert self.token is not None and self.stop is not None
        trio.from_thread.run_sync(self.stop.set, trio_token=self.token)
        self.thread.join(timeout=30)


def test_without_event_streams_the_page_long_polls_and_still_operates(page: Any) -> None:
    node = FakeNode()
    access = Access(tls=False, loopback_operations=True)
    with _FakeServer(node, access=access, streams=StreamSlots(0)) as url:
        page.goto(url)
        page.wait_for_selector("#live.ok", timeout=SETTLE_MS)
        assert "polling" in page.inner_text("#live")  # /events answered 503
        node.set_peer("KME_B", "disconnected")
        page.wait_for_selector('g.node[data-node="KME_B"][data-state="down"]', timeout=SETTLE_MS)
        page.click('button[data-op="node_drain"]')
        page.wait_for_selector("#op-result.ok", timeout=SETTLE_MS)
    assert ("node_drain", {}) in node.calls


class _ControllerNode:
    """The fake node of ``tests/qkmsd`` as the controller of the ring A-B-C-D-A."""

    def __init__(self) -> None:
        from ..qkmsd.test_dashboard import _as_node, _ring_topology

        self.node = FakeNode()
        _as_node(self.node, "A", {"B": "connected", "D": "connected"})
        self.network = _ring_topology()

    def sources(self) -> Any:
        sources = self.node.sources()
        sources.topology = lambda: self.network
        return sources


def test_a_picked_pair_draws_its_current_route_and_its_alternate_apart(page: Any) -> None:
    with _FakeServer(_ControllerNode()) as url:
        page.goto(url)
        page.wait_for_selector("#live.ok", timeout=SETTLE_MS)
        page.select_option("#pair-a", "C")
        page.select_option("#pair-b", "A")
        page.wait_for_selector('#pair-info li.path[data-rank="alternate"]', timeout=SETTLE_MS)
        routes = page.evaluate(
            "() => [...document.querySelectorAll('#graph [data-route]')].map(el =>"
            " [el.dataset.node || el.dataset.a + '-' + el.dataset.b, el.dataset.route])"
        )
    marked = dict(routes)
    # A-B-C is the current route, A-D-C the alternate; A and C are on both: current wins.
    assert marked["B"] == "current" and marked["B-C"] == "current"
    assert marked["D"] == "alternate" and marked["C-D"] == "alternate"
    assert marked["A"] == "current" and marked["C"] == "current"
    assert marked["A-B"] == "current" and marked["A-D"] == "alternate"
