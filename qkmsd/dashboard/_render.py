"""The page, rendered here on the server: an SVG graph, lists, SVG plots, and ~100 lines
of inline vanilla JavaScript.  No build step, no CDN: it works offline."""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._model import (
    DashboardState,
    EdgeView,
    LinkView,
    NodeView,
    PoolItem,
    RelayItem,
    RouteItem,
)

SEVERITY_COLOURS = {
    # The usual X.733 alarm colours.
    "critical": "#d62728",
    "major": "#ff7f0e",
    "minor": "#e6c700",
    "warning": "#1f9bcf",
    "indeterminate": "#9467bd",
    "cleared": "#2ca02c",
}
LEVEL_COLOURS = {"empty": "#d62728", "low": "#e6c700", "normal": "#2ca02c"}
NODE_COLOURS = {"up": "#2ca02c", "down": "#7f7f7f", "unknown": "#9bb5cf"}
LEVEL_WIDTH = {"empty": 3.0, "low": 5.0, "normal": 7.0}

PLOTS: dict[str, tuple[tuple[str, str], ...]] = {
    # resource kind: (metric, label with unit) in the order they are drawn
    "link": (("key_rate_bps", "key rate (bit/s)"), ("qber", "QBER")),
    "pool": (("level_bits", "pool level (bit)"), ("outflow_bps", "key used (bit/s)")),
    "sae": (("keys_per_s", "keys delivered (1/s)"), ("requests_per_s", "requests (1/s)")),
    "relay": (("bits_per_s", "relay throughput (bit/s)"),),
}

e = html.escape


def _size(n: int) -> tuple[int, int, float, int]:
    """Canvas width and height, node radius and label font size for ``n`` nodes."""
    if n <= 8:
        return 560, 460, 24.0, 12
    if n <= 30:
        return 760, 700, 15.0, 10
    side = int(min(1500, 760 * math.sqrt(n / 30)))
    return side, side, max(5.0, 15.0 * math.sqrt(30 / n)), 8


def render_svg(state: DashboardState) -> str:
    n = len(state.nodes)
    width, height, radius, font = _size(n)
    margin = radius + 40
    # One scale for both axes (positions keep their shape), centred on the canvas.
    scale = min(width, height) - 2 * margin
    left, top = (width - scale) / 2, (height - scale) / 2
    pos = {
        node.node_id: (round(left + node.x * scale, 1), round(top + node.y * scale, 1))
        for node in state.nodes
    }
    parts = [
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}"'
        f' width="100%" style="max-width:{width}px" role="img" aria-label="topology"'
        f' data-nodes="{n}">'
    ]
    for edge in state.edges:
        if edge.a in pos and edge.b in pos:
            parts.append(_edge(edge, pos[edge.a], pos[edge.b], n))
    for link in state.links:
        if link.peer in pos:
            parts.append(_link(link, state.node_id, pos[state.node_id], pos[link.peer], n))
    for node in state.nodes:
        parts.append(_node(node, pos[node.node_id], radius, font, n))
    parts.append("</svg>")
    return "".join(parts)


EDGE_COLOURS = {"down": "#7f7f7f", "removed": "#d0d0d0", "registered": "#9bb5cf"}


def _edge(edge: EdgeView, a: tuple[float, float], b: tuple[float, float], n: int) -> str:
    """A QKD link between two other nodes: thin grey when its state is not known here;
    from the controller's topology, coloured by the scarcer end's ready key when up."""
    (x1, y1), (x2, y2) = a, b
    colour, width = "#c8d2dc", 2.0
    if edge.state == "up" and edge.ready_a is not None and edge.ready_b is not None:
        level = "empty" if min(edge.ready_a, edge.ready_b) <= 0 else "normal"
        colour, width = LEVEL_COLOURS[level], LEVEL_WIDTH[level] * (0.6 if n <= 30 else 0.4)
    elif edge.state in EDGE_COLOURS:
        colour = EDGE_COLOURS[edge.state]
    if edge.state == "unknown":
        what = f"state known at {e(edge.a)} and {e(edge.b)}"
    else:
        qber = f"{edge.qber:.3f}" if edge.qber is not None else "-"
        rate = f"{edge.rate_bps:.0f} bit/s" if edge.rate_bps is not None else "-"
        what = (
            f"{e(edge.link_id)} {edge.state} (controller): key rate {rate}, QBER {qber},"
            f" ready {_maybe(edge.ready_a)} bit at {e(edge.a)},"
            f" {_maybe(edge.ready_b)} bit at {e(edge.b)}"
        )
    return (
        f'<line class="edge" data-a="{e(edge.a)}" data-b="{e(edge.b)}"'
        f' data-state="{e(edge.state)}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}"'
        f' stroke="{colour}" stroke-width="{width}"><title>{e(edge.a)} - {e(edge.b)}: {what}'
        f"</title></line>"
    )


def _maybe(bits: int | None) -> str:
    return "?" if bits is None else str(bits)


def _link(link: LinkView, me: str, a: tuple[float, float], b: tuple[float, float], n: int) -> str:
    (x1, y1), (x2, y2) = a, b
    colour = LEVEL_COLOURS[link.level]
    width = LEVEL_WIDTH[link.level] * (1.0 if n <= 30 else 0.6)
    if link.kind == "e2e":
        # An end-to-end pool: a dashed arc, so it does not hide the QKD links under it.
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        dx, dy = x2 - x1, y2 - y1
        cx, cy = round(mx - dy * 0.2, 1), round(my + dx * 0.2, 1)
        shape = (
            f'<path d="M{x1},{y1} Q{cx},{cy} {x2},{y2}" fill="none" stroke="{colour}"'
            f' stroke-width="{width}" stroke-dasharray="8 5"/>'
        )
        lx, ly = (mx + cx) / 2, (my + cy) / 2
    else:
        shape = (
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}"'
            f' stroke-width="{width}"/>'
        )
        lx, ly = (x1 + x2) / 2, (y1 + y2) / 2
    qber = f"{link.qber:.3f}" if link.qber is not None else "-"
    badge = (
        f'<circle class="qber-badge" cx="{lx}" cy="{ly}" r="7" fill="#d62728"/>'
        f'<text x="{lx}" y="{ly + 4}" text-anchor="middle" font-size="10" fill="#fff">Q</text>'
        if link.qber_high
        else ""
    )
    label = (
        f'<text x="{lx}" y="{ly - 8}" text-anchor="middle" font-size="10">'
        f"{_bits(link.owned_ready_bits)}</text>"
        if n <= 30
        else ""
    )
    return (
        f'<g class="link" data-link="{e(link.link_id)}" data-peer="{e(link.peer)}"'
        f' data-kind="{link.kind}" data-level="{link.level}" data-a="{e(me)}"'
        f' data-b="{e(link.peer)}" tabindex="0">{shape}'
        f"<title>{e(link.link_id)} ({link.kind}, {e(link.driver)} {e(link.driver_state)}):"
        f" {link.owned_ready_bits} bit owned ready, low mark {link.low_bits} bit,"
        f" QBER {qber}</title>{label}{badge}</g>"
    )


def _node(node: NodeView, at: tuple[float, float], radius: float, font: int, n: int) -> str:
    x, y = at
    status = "unknown" if node.up is None else ("up" if node.up else "down")
    ring = ' stroke="#1f4e9c" stroke-width="4"' if node.role == "self" else ' stroke="#333"'
    if node.draining:
        ring = ' stroke="#ff7f0e" stroke-width="4" stroke-dasharray="4 3"'
    crown = (
        f'<text x="{x}" y="{y - radius - 4}" text-anchor="middle" font-size="{font}"'
        f' class="controller-mark">&#9733; controller</text>'
        if node.controller
        else ""
    )
    name = node.node_id.removeprefix("KME_") if n > 10 else node.node_id
    under = "" if n > 60 else f" {status}{' draining' if node.draining else ''}"
    return (
        f'<g class="node" data-node="{e(node.node_id)}" data-role="{node.role}"'
        f' data-state="{status}" data-draining="{str(node.draining).lower()}" tabindex="0">'
        f'<circle cx="{x}" cy="{y}" r="{radius}" fill="{NODE_COLOURS[status]}"{ring}/>'
        f"<title>{e(node.node_id)}: {e(node.role)}, {e(node.state)}</title>{crown}"
        f'<text x="{x}" y="{y + radius + font + 2}" text-anchor="middle"'
        f' font-size="{font}">{e(name)}{under}</text></g>'
    )


def _bits(n: int) -> str:
    for unit, size in (("Mbit", 1 << 20), ("kbit", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bit"


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M:%S")


def render_view(state: DashboardState, *, can_operate: bool) -> str:
    """The page's live part; ``data-version`` on the outer element."""
    alarms = "".join(
        f'<li class="alarm" data-code="{e(a.code)}" data-resource="{e(a.resource)}"'
        f' data-severity="{e(a.severity)}" data-acknowledged="{str(a.acknowledged).lower()}"'
        f' style="border-left:8px solid {SEVERITY_COLOURS.get(a.severity, "#999")}">'
        f"<b>{e(a.severity)}</b> {e(a.code)} on {e(a.resource)} since {_when(a.raised_at)}"
        f"{' (acknowledged)' if a.acknowledged else ''}"
        + (
            f' <button class="op" data-op="alarm_ack" data-code="{e(a.code)}"'
            f' data-resource="{e(a.resource)}">acknowledge</button>'
            f' <button class="op" data-op="alarm_clear" data-code="{e(a.code)}"'
            f' data-resource="{e(a.resource)}">clear</button>'
            if can_operate
            else ""
        )
        + "</li>"
        for a in state.alarms
    )
    relays = "".join(_relay_row(r) for r in state.relays)
    flying = state.relays_in_flight
    in_flight = "".join(_relay_row(r) for r in flying)
    failures = "".join(_relay_row(r, error=True) for r in state.relay_failures)
    totals = state.relay_totals
    links = "".join(
        f'<tr class="pick" data-resource="{"pool" if lk.kind == "e2e" else "link"}:'
        f'{e(lk.link_id)}"><td>{e(lk.link_id)}</td><td>{lk.kind}</td>'
        f'<td style="color:{LEVEL_COLOURS[lk.level]}">{lk.level}</td>'
        f"<td>{lk.owned_ready_bits}</td><td>{e(lk.driver)} {e(lk.driver_state)}</td>"
        f"<td>{'-' if lk.qber is None else f'{lk.qber:.3f}'}{' ⚠' if lk.qber_high else ''}</td>"
        f"</tr>"
        for lk in state.links
    )
    saes = "".join(
        f'<tr class="pick" data-resource="sae:{e(s.sae_id)}"><td>{e(s.sae_id)}</td>'
        f"<td>{s.requests}</td><td>{s.delivered}</td><td>{s.errors}</td>"
        f"<td>{e(', '.join(f'{code}: {n}' for code, n in s.errors_by_status.items()) or '-')}"
        f"</td></tr>"
        for s in state.saes
    )
    profiles = "".join(
        f'<tr class="profile" data-name="{e(p.name)}" data-active="{str(p.active).lower()}">'
        f"<td>{e(p.name)}</td><td>{'active' if p.active else 'inactive'}</td>"
        f"<td>{e(', '.join(p.node_pairs + p.sae_pairs) or 'every pair')}</td>"
        f"<td>{p.served}</td><td>{p.served_bits}</td>"
        f"<td>{p.target_bits or '-'}</td><td>{p.shortfall_bits or '-'}</td>"
        + (
            f'<td><button class="op" data-op="profile_{"deactivate" if p.active else "activate"}"'
            f' data-name="{e(p.name)}">{"deactivate" if p.active else "activate"}</button></td>'
            if can_operate
            else ""
        )
        + "</tr>"
        for p in state.profiles
    )
    node_ops = ""
    if can_operate:
        op, label = ("node_undrain", "undrain") if state.draining else ("node_drain", "drain")
        node_ops = f' <button class="op" data-op="{op}">{label} this node</button>'
    return (
        f'<div id="view" data-version="{state.version}">'
        f'<p id="node-line">node {e(state.node_id)}: '
        f"{'<b class=drain>draining</b> (new enc_keys refused)' if state.draining else 'serving'}"
        f"; controller {e(state.controller or 'unknown')}{node_ops}</p>"
        f'<p id="view-of" data-view-of="{state.view_of}">'
        + (
            "the whole network from this node's controller topology (node reports merged)"
            if state.view_of == "controller"
            else "the network as this node and its peer sessions know it"
        )
        + "</p>"
        f'<div class="cols{" stacked" if len(state.nodes) > 30 else ""}">'
        f'<div>{render_svg(state)}</div><div class="side">'
        f'<h2>Active alarms ({len(state.alarms)})</h2><ul id="alarms">'
        f"{alarms or '<li>none</li>'}</ul>"
        f'<h2>Links and pools</h2><table id="links"><tr><th>link</th><th>kind</th>'
        f"<th>level</th><th>owned bits</th><th>driver</th><th>QBER</th></tr>{links}</table>"
        f'<h2>SAEs</h2><table id="saes"><tr><th>SAE</th><th>requests</th><th>keys</th>'
        f"<th>errors</th><th>by status</th></tr>"
        f"{saes or '<tr><td colspan=5>none has asked</td></tr>'}</table>"
        f'<h2>Key profiles</h2><table id="profiles"><tr><th>profile</th><th>state</th>'
        f"<th>pairs</th><th>keys served</th><th>bits served</th><th>target bits</th>"
        f"<th>shortfall bits</th>{'<th></th>' if can_operate else ''}</tr>"
        f"{profiles or '<tr><td colspan=7>none registered</td></tr>'}</table>"
        f"</div></div>"
        f'<h2>Relays</h2><p id="relay-totals">started here since the node started:'
        f" {totals.confirmed} confirmed, {totals.failed} failed; {totals.in_flight} in flight"
        f"</p>"
        f'<h3>In flight ({totals.in_flight})</h3><table id="relays-in-flight">{_RELAY_HEAD}'
        f"{in_flight or '<tr><td colspan=6>none</td></tr>'}</table>"
        f"<h3>Recent failures ({len(state.relay_failures)})</h3>"
        f'<table id="relay-failures">{_RELAY_HEAD.replace("</tr>", "<th>why</th></tr>")}'
        f"{failures or '<tr><td colspan=7>none</td></tr>'}</table>"
        f'<h3>Recent relays</h3><table id="relays">{_RELAY_HEAD}{relays}</table>'
        f"{_routes_data(state.routes, state.pools)}</div>"
    )


_RELAY_HEAD = (
    "<tr><th>started (UTC)</th><th>relay</th><th>pool</th><th>path</th><th>role</th>"
    "<th>state</th></tr>"
)


def _relay_row(r: RelayItem, *, error: bool = False) -> str:
    why = f"<td>{e(r.error) or '-'}</td>" if error else ""
    return (
        f'<tr class="relay" data-state="{e(r.state)}"><td>{_when(r.started_at)}</td>'
        f"<td>{e(r.relay_id)}</td><td>{e(r.e2e_link_id)}</td><td>{e(' → '.join(r.path))}</td>"
        f"<td>{e(r.role)}</td><td>{e(r.state)}</td>{why}</tr>"
    )


def _routes_data(routes: Sequence[RouteItem], pools: Sequence[PoolItem]) -> str:
    """How many routes and pools the page can show for a node pair (the pair panel
    fetches them from ``/pair``)."""
    return f'<p id="pair-known" data-routes="{len(routes)}" data-pools="{len(pools)}"></p>'


def render_pair(state: DashboardState, a: str, b: str) -> str:
    """A node pair: its current route and alternates each way, its end-to-end pool; the
    ``li`` of each path carries its nodes for the page to highlight."""
    known = {n.node_id for n in state.nodes}
    if a not in known or b not in known or a == b:
        return (
            '<div id="pair-info" data-a="" data-b=""><p>pick two different nodes of the'
            " graph</p></div>"
        )
    parts = [f'<div id="pair-info" data-a="{e(a)}" data-b="{e(b)}"><h3>{e(a)} and {e(b)}</h3>']
    where = (
        "the controller's routes"
        if state.view_of == "controller"
        else f"{e(state.node_id)}'s routing table (routes from this node only)"
    )
    found = False
    for src, dst in ((a, b), (b, a)):
        route = next((r for r in state.routes if r.source == src and r.destination == dst), None)
        if route is None or not route.paths:
            continue
        found = True
        items = "".join(
            f'<li class="path" data-rank="{"current" if i == 0 else "alternate"}"'
            f' data-path="{e(" ".join(p.nodes))}">'
            f"{'current' if i == 0 else 'alternate'}: {e(' → '.join(p.nodes))}"
            f" (cost {p.cost:g})</li>"
            for i, p in enumerate(route.paths)
        )
        parts.append(
            f"<p>from {e(src)} to {e(dst)} ({e(route.origin)}):</p>"
            f'<ol class="routes" data-source="{e(src)}">{items}</ol>'
        )
    if not found:
        parts.append(f"<p>no route is set for this pair in {where}.</p>")
    else:
        parts.append(f"<p><small>from {where}</small></p>")
    pool = next((p for p in state.pools if {p.a, p.b} == {a, b}), None)
    if pool is None:
        parts.append(
            '<p id="pair-pool" data-pool="">no end-to-end pool between them is known here.</p>'
        )
    else:
        hops = f", relayed over {e(' → '.join(pool.hops))}" if pool.hops else ""
        state_word = {True: "up", False: "down", None: "state unknown"}[pool.up]
        parts.append(
            f'<p id="pair-pool" data-pool="{e(pool.link_id)}">end-to-end pool'
            f" {e(pool.link_id)} ({state_word}{hops}): {_maybe(pool.ready_a)} bit ready owned"
            f" by {e(pool.a)}, {_maybe(pool.ready_b)} bit owned by {e(pool.b)}</p>"
        )
    parts.append("</div>")
    return "".join(parts)


def render_history(events: Sequence[Mapping[str, Any]], *, shown: int) -> str:
    rows = "".join(
        f'<tr class="event" data-severity="{e(str(ev.get("severity", "")))}">'
        f"<td>{_when(float(ev.get('at', 0.0)))}</td><td>{e(str(ev.get('kind', '')))}</td>"
        f'<td style="color:{SEVERITY_COLOURS.get(str(ev.get("severity")), "#222")}">'
        f"{e(str(ev.get('severity', '')))}</td><td>{e(str(ev.get('code', '')))}</td>"
        f"<td>{e(str(ev.get('resource', '')))}</td></tr>"
        for ev in events[:shown]
    )
    return (
        '<table id="history-table"><tr><th>time (UTC)</th><th>event</th><th>severity</th>'
        f"<th>code</th><th>resource</th></tr>"
        f"{rows or '<tr><td colspan=5>no events match</td></tr>'}</table>"
    )


def render_plots(resource: str, found: Mapping[str, Any] | None, now: float) -> str:
    """Small SVG line plots of ``resource``'s series over the last hour."""
    kind = resource.split(":", 1)[0]
    series = (found or {}).get("series", {}).get(resource, {})
    plots = []
    for metric, label in PLOTS.get(kind, ()):
        points = [(float(p["at"]), float(p["mean"])) for p in series.get(metric, [])]
        plots.append(_plot(metric, label, points, now))
    body = "".join(plots) or "<p>no plots for this resource</p>"
    return (
        f'<div id="plots" data-resource="{e(resource)}">'
        f"<h3>{e(resource)}, last hour</h3>{body}</div>"
    )


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _plot(metric: str, label: str, points: list[tuple[float, float]], now: float) -> str:
    w, h, left, bottom = 300, 90, 46, 16
    # The last hour, or less while the history is younger: the plot is never mostly empty.
    start = max(now - 3600.0, min(at for at, _ in points)) if points else now - 3600.0
    width_s = max(now - start, 1.0)
    head = f'<figure class="plot" data-metric="{e(metric)}" data-points="{len(points)}">'
    if not points:
        return f"{head}<figcaption>{e(label)}: no samples yet</figcaption></figure>"
    top = max(v for _, v in points)
    low = min(0.0, min(v for _, v in points))
    span = (top - low) or 1.0

    def xy(at: float, v: float) -> str:
        x = left + (at - start) / width_s * (w - left - 4)
        y = 4 + (1 - (v - low) / span) * (h - bottom - 8)
        return f"{x:.1f},{y:.1f}"

    shown = [xy(at, v) for at, v in points if at >= start]
    line = " ".join(shown)
    dots = (
        "".join(
            f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2" fill="#1f77b4"/>'
            for p in shown
        )
        if len(shown) <= 60
        else ""
    )
    last = points[-1][1]
    return (
        f"{head}<figcaption>{e(label)}: {last:.4g} now</figcaption>"
        f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}">'
        f'<rect x="{left}" y="4" width="{w - left - 4}" height="{h - bottom - 8}"'
        f' fill="#f7f7f7"/><polyline points="{line}" fill="none" stroke="#1f77b4"'
        f' stroke-width="1.5"/>{dots}<text x="{left - 4}" y="12" text-anchor="end"'
        f' font-size="9">{top:.3g}</text><text x="{left - 4}" y="{h - bottom - 2}"'
        f' text-anchor="end" font-size="9">{low:.3g}</text><text x="{left}" y="{h - 2}"'
        f' font-size="9">-{_span(width_s)}</text><text x="{w - 4}" y="{h - 2}" text-anchor="end"'
        f' font-size="9">now</text></svg></figure>'
    )


_SCRIPT = """
(function () {
  var live = document.getElementById("live");
  var token = document.querySelector('meta[name="csrf-token"]').content;
  var picked = null;
  function swap(text) {
    var box = document.createElement("div");
    box.innerHTML = text;
    var fresh = box.firstElementChild, current = document.getElementById("view");
    if (fresh && fresh.dataset.version !== current.dataset.version) {
      current.replaceWith(fresh);
      mark();
      if (pair.length === 2) pairInfo();
    }
  }
  function ok(how) { live.textContent = "live (" + how + ")"; live.className = "ok"; }
  function bad() { live.textContent = "node unreachable: retrying"; live.className = "bad"; }
  function poll() {
    var current = document.getElementById("view");
    fetch("view?after=" + encodeURIComponent(current.dataset.version), {cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (text) { swap(text); ok("polling"); poll(); })
      .catch(function () { bad(); setTimeout(poll, 1000); });
  }
  if (window.EventSource) {
    var source = new EventSource("events"), opened = false;
    source.addEventListener("view", function (ev) { swap(ev.data); ok("events"); });
    source.onopen = function () { opened = true; ok("events"); };
    source.onerror = function () {
      // The browser reconnects by itself; a stream that never opened (a proxy that
      // buffers, too many streams) falls back to long polls.
      if (!opened) { source.close(); poll(); } else { bad(); }
    };
  } else { poll(); }
  function post(op, body) {
    return fetch("op/" + op, {method: "POST", cache: "no-store",
      headers: {"content-type": "application/json", "x-csrf-token": token},
      body: JSON.stringify(body || {})})
      .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
      .then(function (res) {
        var out = document.getElementById("op-result");
        out.textContent = (res[0] === 200 ? "done: " : "refused: ") + res[1].message;
        out.className = res[0] === 200 ? "ok" : "bad";
        history();
      });
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button.op");
    if (b) { post(b.dataset.op, b.dataset.code ? {code: b.dataset.code,
               resource: b.dataset.resource} : b.dataset.name ? {name: b.dataset.name} : {});
             return; }
    var node = ev.target.closest("g.node");
    if (node) {
      pair = pair.length === 1 && pair[0] !== node.dataset.node ?
        [pair[0], node.dataset.node] : [node.dataset.node];
      pick();
      return;
    }
    var row = ev.target.closest("[data-resource].pick, g.link");
    if (row) {
      picked = row.dataset.resource ||
        ((row.dataset.kind === "e2e" ? "pool:" : "link:") + row.dataset.link);
      plots();
    }
  });
  function plots() {
    if (!picked) return;
    fetch("plots?resource=" + encodeURIComponent(picked), {cache: "no-store"})
      .then(function (r) { return r.text(); })
      .then(function (t) { document.getElementById("plots").outerHTML = t; });
  }
  setInterval(plots, 5000);
  // A node pair: two nodes clicked in the graph, or picked in the two lists.
  var pair = [], paths = [];
  var ends = [document.getElementById("pair-a"), document.getElementById("pair-b")];
  function pick() {
    ends[0].value = pair[0] || ""; ends[1].value = pair[1] || "";
    if (pair.length === 2) { pairInfo(); } else { paths = []; mark();
      document.getElementById("pair-info").innerHTML =
        "<p>" + pair[0] + " picked: pick the other end</p>"; }
  }
  ends.forEach(function (s) { s.addEventListener("change", function () {
    pair = [ends[0].value, ends[1].value].filter(Boolean); pick(); }); });
  function pairInfo() {
    fetch("pair?a=" + encodeURIComponent(pair[0]) + "&b=" + encodeURIComponent(pair[1]),
          {cache: "no-store"})
      .then(function (r) { return r.text(); })
      .then(function (t) {
        document.getElementById("pair-info").outerHTML = t;
        paths = [].map.call(document.querySelectorAll("#pair-info li.path"), function (li) {
          return [li.dataset.rank, li.dataset.path.split(" ")];
        });
        mark();
      });
  }
  // Marks the picked ends, and every node and QKD link on the pair's routes: the current
  // route wins over an alternate where they share a hop.
  function mark() {
    document.querySelectorAll("#graph [data-route], #graph [data-end]").forEach(function (el) {
      el.removeAttribute("data-route"); el.removeAttribute("data-end"); });
    pair.forEach(function (n) {
      var el = document.querySelector('g.node[data-node="' + CSS.escape(n) + '"]');
      if (el) el.setAttribute("data-end", "true");
    });
    ["alternate", "current"].forEach(function (rank) {
      paths.forEach(function (p) {
        if (p[0] !== rank) return;
        var nodes = p[1];
        nodes.forEach(function (n) {
          var el = document.querySelector('g.node[data-node="' + CSS.escape(n) + '"]');
          if (el) el.setAttribute("data-route", rank);
        });
        for (var i = 0; i + 1 < nodes.length; i++) {
          var a = CSS.escape(nodes[i]), b = CSS.escape(nodes[i + 1]);
          document.querySelectorAll(
            'g.link[data-kind="qkd"][data-a="' + a + '"][data-b="' + b + '"],' +
            'g.link[data-kind="qkd"][data-a="' + b + '"][data-b="' + a + '"],' +
            'line.edge[data-a="' + a + '"][data-b="' + b + '"],' +
            'line.edge[data-a="' + b + '"][data-b="' + a + '"]')
            .forEach(function (el) { el.setAttribute("data-route", rank); });
        }
      });
    });
    if (pair.length === 2) {
      var a = CSS.escape(pair[0]), b = CSS.escape(pair[1]);
      document.querySelectorAll(
        'g.link[data-kind="e2e"][data-a="' + a + '"][data-b="' + b + '"],' +
        'g.link[data-kind="e2e"][data-a="' + b + '"][data-b="' + a + '"]')
        .forEach(function (el) { el.setAttribute("data-route", "pool"); });
    }
  }
  var form = document.getElementById("filters");
  function history() {
    var q = new URLSearchParams(new FormData(form)).toString();
    fetch("history?" + q, {cache: "no-store"}).then(function (r) { return r.text(); })
      .then(function (t) { document.getElementById("history-table").outerHTML = t; });
  }
  form.addEventListener("change", history);
  form.addEventListener("submit", function (ev) { ev.preventDefault(); history(); });
  history();
  setInterval(history, 15000);
})();
"""

_STYLE = """
body{font-family:sans-serif;margin:1em 2em;color:#222}
#live.ok,.ok{color:#2ca02c}#live.bad,.bad{color:#d62728;font-weight:bold}
.cols{display:flex;flex-wrap:wrap;gap:1.5em}.cols>div:first-child{flex:3 1 560px}
.side{flex:1 1 320px}.stacked{display:block}
#alarms{list-style:none;padding:0}#alarms li{margin:2px 0;padding:2px 8px;background:#f4f4f4}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}
tr.pick{cursor:pointer}tr.pick:hover{background:#eef}g.link{cursor:pointer}
.legend span{display:inline-block;margin-right:1em}.drain{color:#ff7f0e}
figure.plot{display:inline-block;margin:4px 12px 4px 0}figcaption{font-size:12px}
button{font-size:11px}g.node{cursor:pointer}
g.node[data-end] circle{stroke:#000;stroke-width:5}
g.node[data-route=current] circle{stroke:#1f4e9c;stroke-width:5}
g.link[data-route=current] line,line.edge[data-route=current]{stroke:#1f4e9c;stroke-width:9}
g.link[data-route=alternate] line,line.edge[data-route=alternate]{stroke:#9467bd;
stroke-width:6;stroke-dasharray:6 4}
g.link[data-route=pool] path{stroke:#1f4e9c;stroke-width:7}
#pair-panel{background:#f4f7fb;padding:4px 8px;margin:6px 0}#pair-info h3{margin:4px 0}
#pair-info p,#pair-info ol{margin:2px 0}
li.path[data-rank=current]{color:#1f4e9c;font-weight:bold}li.path[data-rank=alternate]{color:#9467bd}
"""


def render_page(state: DashboardState, *, token: str, operator: str, can_operate: bool) -> str:
    legend = "".join(
        f'<span><b style="color:{colour}">&#9632;</b> {level}</span>'
        for level, colour in LEVEL_COLOURS.items()
    )
    severities = "".join(f"<option>{s}</option>" for s in SEVERITY_COLOURS)
    choices = "".join(f"<option>{e(n.node_id)}</option>" for n in state.nodes)
    mode = "view and operate" if can_operate else "view only"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="csrf-token" content="{e(token)}">'
        f"<title>qkms {e(state.node_id)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>qkms node {e(state.node_id)} <small id="live">loading</small></h1>'
        f'<p class="legend">owned ready key: {legend} (dashed arc: end-to-end pool; thin grey:'
        " a link between two other nodes, its state not known here; Q: QBER over"
        " threshold) &mdash;"
        f' <span id="operator">{e(operator)}: {mode}</span> <span id="op-result"></span></p>'
        '<div id="pair-panel"><b>Node pair</b>: click two nodes of the graph, or pick'
        f' them: <select id="pair-a"><option value="">-</option>{choices}</select> and'
        f' <select id="pair-b"><option value="">-</option>{choices}</select>; the current'
        " route is drawn blue, its alternates dashed purple, their end-to-end pool thick"
        ' blue.<div id="pair-info"></div></div>'
        f"{render_view(state, can_operate=can_operate)}"
        "<h2>Over time</h2><p>Pick a link, pool or SAE in the tables or the graph.</p>"
        '<div id="plots"></div>'
        '<h2>Alarm history</h2><form id="filters">severity <select name="severity">'
        f'<option value="">any</option>{severities}</select> code <input name="code" size="12">'
        ' resource <input name="resource" size="12"> <button>filter</button></form>'
        f"{render_history([], shown=0)}"
        f"<script>{_SCRIPT}</script></body></html>"
    )
