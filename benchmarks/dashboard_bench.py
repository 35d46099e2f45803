"""The dashboard's live path on real daemons: how long a node killed -9 and its peer-down
alarm take to reach an open event stream, what a look of the state agent costs, and what
the page costs to read at 17 and 200 nodes.

Parts:

- ``look``: the paper's 3-node lab; KME1 runs with ``[alarms] interval_s`` at the default
  5 s and at 0.1 s in turn (restarted between windows); the daemon's CPU time over each
  window (``/proc/PID/stat``) and the difference per extra look.  This is what a shorter
  default look interval would cost; the daemon does not need one, since a peer coming or
  going makes the agent look at once (and 1 s later).
- ``live``: the 17-node kreonet17 lab; an event stream (``/events?format=json``) opened
  on KME_SEOUL; each of its neighbours killed -9 in turn; the time from the kill until an
  event shows the neighbour down, and until one lists its ``peer-down`` alarm; then the
  neighbour started again.  With ``--screenshot``, the page is photographed in headless
  Chromium to ``docs/dashboard-kreonet17.png`` while one neighbour is down.
- ``shots``: the 17-node kreonet17 lab photographed for docs/operations.md once every
  node is up and the controller has routes: the controller's page (the whole network
  from its topology) with the node pair of its first route picked, to
  ``docs/dashboard-kreonet17-controller.png``; KME_SEOUL's page with one neighbour killed
  -9, to ``docs/dashboard-kreonet17.png``.
- ``render``: ``/view`` rendering of synthetic networks of 3, 17 and 200 nodes (no
  daemons), and the spring layout of 200 nodes.

Run: ``python benchmarks/dashboard_bench.py [--part look|live|shots|render|all] [--screenshot]``
(``all`` takes about five minutes).  Figures are printed and written to
``benchmarks/results/dashboard_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cli._lab import Lab
from cli._topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dashboard_bench.json"
WINDOW_S = 20.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _set_interval(config: Path, interval: float | None) -> None:
    text = re.sub(r"\n\[alarms\]\ninterval_s = [0-9.]+\n", "\n", config.read_text())
    if interval is not None:
        text += f"\n[alarms]\ninterval_s = {interval}\n"
    config.write_text(text)


def part_look(base: Path) -> dict[str, Any]:
    lab = Lab(base / "look")
    lab.up(load_topology(ROOT / "examples" / "paper-3node.toml"))
    config = Path(lab.manifest()["kmes"]["KME1"]["config"])
    windows: dict[str, list[float]] = {"5.0": [], "0.1": []}
    try:
        for _ in range(2):
            for interval in ("5.0", "0.1"):
                lab.kill("KME1")
                _set_interval(config, None if interval == "5.0" else float(interval))
                pid = lab.start("KME1")
                time.sleep(5.0)  # sessions back, key flowing again
                before = _cpu_s(pid)
                time.sleep(WINDOW_S)
                windows[interval].append((_cpu_s(pid) - before) / WINDOW_S * 100)
                print(f"  interval {interval} s: KME1 CPU {windows[interval][-1]:.2f} %")
    finally:
        lab.down()
    slow, fast = statistics.mean(windows["5.0"]), statistics.mean(windows["0.1"])
    extra_looks = 1 / 0.1 - 1 / 5.0
    per_look_ms = (fast - slow) / 100 / extra_looks * 1000
    result = {
        "cpu_percent_interval_5s": windows["5.0"],
        "cpu_percent_interval_0.1s": windows["0.1"],
        "cpu_ms_per_look": round(per_look_ms, 3),
        "cpu_percent_at_1s_interval_extra": round(per_look_ms / 1000 * (1 - 0.2) * 100, 3),
    }
    print(
        f"look: {per_look_ms:.2f} ms CPU per look; a 1 s interval instead of 5 s would add"
        f" {result['cpu_percent_at_1s_interval_extra']:.2f} % of a core"
    )
    return result


class _Events:
    """A raw client of one event stream (chunked transfer decoded)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.sendall(b"GET /events?format=json HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        self.raw = b""
        self.body = b""
        self.head = False

    def next(self, timeout: float) -> dict[str, Any] | None:
        self.sock.settimeout(timeout)
        while True:
            if not self.head and b"\r\n\r\n" in self.raw:
                self.raw = self.raw.split(b"\r\n\r\n", 1)[1]
                self.head = True
            while self.head and b"\r\n" in self.raw:
                size_line, rest = self.raw.split(b"\r\n", 1)
                size = int(size_line, 16)
                if len(rest) < size + 2:
                    break
                self.body += rest[:size]
                self.raw = rest[size + 2 :]
            while b"\n\n" in self.body:
                event, self.body = self.body.split(b"\n\n", 1)
                if event.startswith(b"event: state\n"):
                    return dict(json.loads(event.split(b"data: ", 1)[1]))
            data = self.sock.recv(65536)
            if not data:
                return None
            self.raw += data


def part_live(base: Path, screenshot: bool) -> dict[str, Any]:
    lab = Lab(base / "live")
    topo = load_topology(ROOT / "examples" / "kreonet17.toml")
    started = time.monotonic()
    lab.up(topo)
    print(f"  kreonet17 up in {time.monotonic() - started:.0f} s")
    me = "KME_SEOUL"
    url = lab.dashboard_url(me)
    neighbours = sorted(topo.neighbours(me))
    down_ms: list[float] = []
    alarm_ms: list[float] = []
    try:
        events = _Events(url)

        def settled(state: dict[str, Any]) -> bool:
            # Every neighbour connected and no peer-down alarm left from the start (an
            # alarm clears only after [alarms] hold_down_s, 60 s, without its condition).
            ups = {n["node_id"]: n["up"] for n in state["nodes"]}
            return all(ups.get(n) for n in neighbours) and not any(
                a["code"] == "peer-down" for a in state["alarms"]
            )

        for victim in neighbours:
            deadline = time.monotonic() + 180
            while True:
                state = events.next(30)
                assert state is not None, "event stream ended"
                if settled(state):
                    break
                assert time.monotonic() < deadline, "the network did not settle"
            killed = time.monotonic()
            lab.kill(victim)
            seen_down = seen_alarm = None
            while seen_alarm is None:
                state = events.next(30)
                assert state is not None, "event stream ended"
                now = time.monotonic()
                ups = {n["node_id"]: n["up"] for n in state["nodes"]}
                if seen_down is None and ups.get(victim) is False:
                    seen_down = now
                if any(
                    a["code"] == "peer-down" and a["resource"] == victim for a in state["alarms"]
                ):
                    seen_alarm = now
            assert seen_down is not None
            down_ms.append((seen_down - killed) * 1000)
            alarm_ms.append((seen_alarm - killed) * 1000)
            print(
                f"  {victim} killed: down after {down_ms[-1]:.0f} ms,"
                f" alarm after {alarm_ms[-1]:.0f} ms"
            )
            if screenshot and victim == neighbours[0]:
                _photograph(url, ROOT / "docs" / "dashboard-kreonet17.png")
            lab.start(victim)
    finally:
        lab.down()
    return {
        "node": me,
        "neighbours": neighbours,
        "down_ms": [round(v, 1) for v in down_ms],
        "alarm_ms": [round(v, 1) for v in alarm_ms],
    }


def _photograph(url: str, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#live.ok", timeout=30000)
        page.click('#links tr.pick[data-resource^="link:"]')
        page.wait_for_selector("figure.plot", timeout=30000)
        page.screenshot(path=str(path), full_page=True)
        browser.close()
    print(f"  wrote {path}")


def _state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "state.json", timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def part_shots(base: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    lab = Lab(base / "shots")
    topo = load_topology(ROOT / "examples" / "kreonet17.toml")
    lab.up(topo)
    try:
        me = "KME_SEOUL"
        deadline = time.monotonic() + 300
        while True:
            controller = _state(lab.dashboard_url(me))["controller"]
            if controller:
                state = _state(lab.dashboard_url(controller))
                ups = [n for n in state["nodes"] if n["up"]]
                if (
                    state["view_of"] == "controller"
                    and state["routes"]
                    and len(ups) == len(topo.nodes)
                ):
                    break
            assert time.monotonic() < deadline, "the controller never saw the whole network"
            time.sleep(1.0)
        route = state["routes"][0]
        pair = (route["source"], route["destination"])
        print(f"  controller {controller}: {len(state['routes'])} routes; picked {pair}")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab.dashboard_url(controller))
            page.wait_for_selector("#live.ok", timeout=30000)
            page.select_option("#pair-a", pair[0])
            page.select_option("#pair-b", pair[1])
            page.wait_for_selector('#pair-info li.path[data-rank="current"]', timeout=30000)
            shot = ROOT / "docs" / "dashboard-kreonet17-controller.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"  wrote {shot}")
            victim = next(n for n in sorted(topo.neighbours(me)) if n != controller)
            lab.kill(victim)
            page.goto(lab.dashboard_url(me))
            page.wait_for_selector(
                f'g.node[data-node="{victim}"][data-state="down"]', timeout=30000
            )
            page.wait_for_selector(f'li.alarm[data-resource="{victim}"]', timeout=30000)
            page.click('#links tr.pick[data-resource^="link:"]')
            page.wait_for_selector("figure.plot", timeout=30000)
            shot = ROOT / "docs" / "dashboard-kreonet17.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"  wrote {shot}")
            browser.close()
    finally:
        lab.down()
    return {"controller": controller, "pair": list(pair), "victim": victim}


def part_render() -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(ROOT))
    from qkmsd.dashboard._layout import _layout, layout
    from qkmsd.dashboard._render import render_view
    from tests.system.test_dashboard import _network

    out: dict[str, Any] = {}
    for n in (3, 17, 200):
        state = _network(n)
        runs = []
        for _ in range(20):
            t = time.perf_counter()
            html = render_view(state, can_operate=True)
            runs.append((time.perf_counter() - t) * 1000)
        out[f"render_view_ms_{n}"] = round(statistics.median(runs), 3)
        out[f"view_bytes_{n}"] = len(html.encode())
        print(
            f"  {n} nodes: /view rendered in {out[f'render_view_ms_{n}']:.2f} ms, {len(html)} bytes"
        )
    names = [f"N{i}" for i in range(200)]
    edges = [(names[i], names[(i + 1) % 200]) for i in range(200)]
    _layout.cache_clear()
    t = time.perf_counter()
    layout(names, edges)
    out["layout_200_ms"] = round((time.perf_counter() - t) * 1000, 1)
    print(f"  spring layout of 200 nodes: {out['layout_200_ms']:.0f} ms (once per topology)")
    out["controller_topology_200_ms"] = _controller_read_ms(200)
    print(
        f"  the controller's topology of 200 nodes read for the page:"
        f" {out['controller_topology_200_ms']:.2f} ms (at most once a second)"
    )
    return out


def _controller_read_ms(n: int) -> float:
    """Median time of ``controller_topology`` over a controller's topology of ``n``
    nodes (a ring with one random chord per node), every node reporting its links."""
    import random

    from protocol import CtlLink, CtlRelayLoad, CtlReport
    from qkmsd.controller import Topology
    from qkmsd.dashboard import controller_topology

    rng = random.Random(7)
    names = [f"N{i:03d}" for i in range(n)]
    pairs = {tuple(sorted((names[i], names[(i + 1) % n]))) for i in range(n)}
    pairs |= {tuple(sorted((names[i], names[rng.randrange(n)]))) for i in range(n)}
    pairs = {p for p in pairs if p[0] != p[1]}
    topo = Topology(lost_after=10.0)
    for node in names:
        links = [
            CtlLink(f"{a}~{b}", b if node == a else a, True, ready_here=4096, rate_bps=1e3)
            for a, b in sorted(pairs)
            if node in (a, b)
        ]
        report = CtlReport(
            id=0, node=node, seq=1, period_s=1.0, software="bench", links=links, peers=[],
            demand=[], relay=CtlRelayLoad(),
        )  # fmt: skip
        topo.apply_report(node, report, 0.0)
    runs = []
    for _ in range(20):
        t = time.perf_counter()
        controller_topology(topo, [], 1.0, {})
        runs.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(runs), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["look", "live", "shots", "render", "all"], default="all")
    parser.add_argument("--screenshot", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory(prefix="qkms-dash-bench-") as tmp:
        if args.part in ("render", "all"):
            results["render"] = part_render()
        if args.part in ("look", "all"):
            results["look"] = part_look(Path(tmp))
        if args.part in ("live", "all"):
            results["live"] = part_live(Path(tmp), args.screenshot)
        if args.part == "shots":
            results["shots"] = part_shots(Path(tmp))
    results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["load_average"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
