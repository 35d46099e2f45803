"""The live dashboard: this node, its peers and its links drawn as an SVG graph, the active
alarms and the recent relays, over plain HTTP on ``[listen] dashboard`` (loopback only).

Routes: ``GET /`` the page (rendered here, server side, with ~40 lines of inline vanilla
JavaScript: no build step, no CDN, works offline); ``GET /state.json`` the same data as
JSON; ``GET /view`` the page's live part (graph, alarms, relays) as an HTML fragment.

Live updates are long polls, not server-sent events: our HTTP shell answers with whole
bodies and has no streaming response.  ``/state.json?after=N`` and ``/view?after=N``
answer at once when the state's version is not ``N``, else as soon as it changes (the
sources are read every ``POLL_S``), else after ``HOLD_S`` with the unchanged state.  The
page asks again as soon as it has an answer, so a change shows within ``POLL_S`` plus a
round trip.

Only ids, states, counts and levels are shown: never key material, key ids or block ids.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qs

import msgspec
import trio

from .http import Limits, Request, Response
from .log import get_logger
from .relay import RelayRecord
from .state import AlarmView
from .status import NodeStatus

log = get_logger("qkms.dashboard")

LIMITS = Limits(max_body_bytes=0, idle_timeout=30.0)
POLL_S = 0.2
"""How often a waiting long poll reads the sources again."""
HOLD_S = 1.0
"""How long a long poll waits for a change before it answers with the same state."""
RECENT_RELAYS = 10

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
NODE_COLOURS = {"up": "#2ca02c", "down": "#7f7f7f"}


class NodeView(msgspec.Struct, frozen=True):
    node_id: str
    role: str
    """``self`` or ``peer``."""
    up: bool
    state: str
    """The peer session's state (``connected``, ``disconnected``...); ``self`` is ``up``."""


class LinkView(msgspec.Struct, frozen=True):
    link_id: str
    peer: str
    kind: str
    """``qkd`` (a QKD link) or ``e2e`` (an end-to-end pool of relayed key)."""
    level: str
    """``empty`` (no owned ready key), ``low`` (below ``low_bits``) or ``normal``."""
    owned_ready_bits: int
    low_bits: int
    driver_state: str
    synchronised: bool
    qber: float | None


class AlarmItem(msgspec.Struct, frozen=True):
    code: str
    resource: str
    severity: str
    raised_at: float
    acknowledged: bool


class RelayItem(msgspec.Struct, frozen=True):
    relay_id: str
    e2e_link_id: str
    path: list[str]
    role: str
    state: str


class DashboardState(msgspec.Struct, frozen=True):
    """What the page shows (``/state.json``)."""

    version: int
    node_id: str
    nodes: list[NodeView]
    links: list[LinkView]
    alarms: list[AlarmItem]
    relays: list[RelayItem]


@dataclasses.dataclass
class DashboardSources:
    """Where the dashboard reads from (handed in by ``app.py``).

    ``low_bits`` holds each end-to-end pool's low watermark by link id; other links use
    ``default_low_bits`` (the ``pool-low`` alarm's threshold).
    """

    node_status: Callable[[], Awaitable[NodeStatus]]
    alarms: Callable[[], list[AlarmView]] | None = None
    relays: Callable[[], list[RelayRecord]] | None = None
    low_bits: Mapping[str, int] = dataclasses.field(default_factory=dict)
    default_low_bits: int = 16384


def link_level(owned_ready_bits: int, low_bits: int) -> str:
    if owned_ready_bits <= 0:
        return "empty"
    return "low" if owned_ready_bits < low_bits else "normal"


class Dashboard:
    """The dashboard's state, versioned: the version grows each time what it shows changes."""

    def __init__(self, sources: DashboardSources) -> None:
        self._sources = sources
        self._version = 0
        self._last: DashboardState | None = None

    async def read(self) -> DashboardState:
        """Read the sources now; a new version if anything shown changed."""
        s = self._sources
        status = await s.node_status()
        nodes = [NodeView(status.node_id, "self", True, "up")]
        nodes += [
            NodeView(p.node_id, "peer", p.state == "connected", p.state)
            for p in sorted(status.peers, key=lambda p: p.node_id)
        ]
        links = []
        for link in sorted(status.links, key=lambda link: link.link_id):
            low = s.low_bits.get(link.link_id, s.default_low_bits)
            links.append(
                LinkView(
                    link_id=link.link_id,
                    peer=link.peer,
                    kind="e2e" if link.e2e else "qkd",
                    level=link_level(link.owned_ready_bits, low),
                    owned_ready_bits=link.owned_ready_bits,
                    low_bits=low,
                    driver_state=link.driver_state,
                    synchronised=link.synchronised,
                    qber=link.qber,
                )
            )
        alarms = [
            AlarmItem(a.code, a.resource, a.severity, a.raised_at, a.acknowledged)
            for a in (s.alarms() if s.alarms else [])
        ]
        records = s.relays() if s.relays else []
        recent = sorted(records, key=lambda r: r.started_at)[-RECENT_RELAYS:]
        relays = [
            RelayItem(r.relay_id, r.e2e_link_id, list(r.path), r.role, r.state)
            for r in reversed(recent)
        ]
        state = DashboardState(self._version, status.node_id, nodes, links, alarms, relays)
        if self._last is None or msgspec.structs.replace(state, version=0) != (
            msgspec.structs.replace(self._last, version=0)
        ):
            self._version += 1
            state = msgspec.structs.replace(state, version=self._version)
            self._last = state
        return self._last

    async def wait(self, after: int | None) -> DashboardState:
        """The state once its version is not ``after`` (see the module docstring)."""
        state = await self.read()
        if after is None or state.version != after:
            return state
        with trio.move_on_after(HOLD_S):
            while state.version == after:
                await trio.sleep(POLL_S)
                state = await self.read()
        return state


# --- rendering ---------------------------------------------------------------------------

_W, _H = 640, 400


def _positions(state: DashboardState) -> dict[str, tuple[float, float]]:
    cx, cy, r = _W / 2, _H / 2, 150.0
    peers = [n.node_id for n in state.nodes if n.role == "peer"]
    pos = {state.node_id: (cx, cy)}
    for i, peer in enumerate(peers):
        angle = math.pi + 2 * math.pi * i / max(len(peers), 1)
        pos[peer] = (round(cx + r * math.cos(angle), 1), round(cy + r * math.sin(angle), 1))
    return pos


def render_svg(state: DashboardState) -> str:
    e = html.escape
    pos = _positions(state)
    parts = [
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}"'
        f' width="{_W}" height="{_H}" role="img" aria-label="topology">'
    ]
    counts: dict[str, int] = {}
    for link in state.links:
        if link.peer not in pos:
            continue
        (x1, y1), (x2, y2) = pos[state.node_id], pos[link.peer]
        # A QKD link and an end-to-end pool to the same peer are drawn side by side.
        n = counts[link.peer] = counts.get(link.peer, 0) + 1
        shift = (n - 1) * 8.0
        dash = ' stroke-dasharray="8 5"' if link.kind == "e2e" else ""
        parts.append(
            f'<g class="link" data-link="{e(link.link_id)}" data-peer="{e(link.peer)}"'
            f' data-kind="{link.kind}" data-level="{link.level}">'
            f'<line x1="{x1}" y1="{y1 + shift}" x2="{x2}" y2="{y2 + shift}"'
            f' stroke="{LEVEL_COLOURS[link.level]}" stroke-width="6"{dash}/>'
            f"<title>{e(link.link_id)} ({link.kind})</title>"
            f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 + shift - 10}" text-anchor="middle"'
            f' font-size="10">{link.owned_ready_bits} bit {link.level}</text></g>'
        )
    for node in state.nodes:
        x, y = pos[node.node_id]
        status = "up" if node.up else "down"
        parts.append(
            f'<g class="node" data-node="{e(node.node_id)}" data-role="{node.role}"'
            f' data-state="{status}"><circle cx="{x}" cy="{y}" r="26"'
            f' fill="{NODE_COLOURS[status]}" stroke="#333" stroke-width="2"/>'
            f'<text x="{x}" y="{y + 4}" text-anchor="middle" font-size="12"'
            f' fill="#fff">{e(node.node_id)}</text>'
            f'<text x="{x}" y="{y + 42}" text-anchor="middle" font-size="11">{status}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_view(state: DashboardState) -> str:
    """The page's live part: graph, alarms, relays; ``data-version`` on the outer element."""
    e = html.escape
    alarms = "".join(
        f'<li class="alarm" data-code="{e(a.code)}" data-severity="{e(a.severity)}"'
        f' style="border-left:8px solid {SEVERITY_COLOURS.get(a.severity, "#999")}">'
        f"<b>{e(a.severity)}</b> {e(a.code)} on {e(a.resource)}"
        f"{' (acknowledged)' if a.acknowledged else ''}</li>"
        for a in state.alarms
    )
    relays = "".join(
        f'<tr class="relay" data-state="{e(r.state)}"><td>{e(r.relay_id)}</td>'
        f"<td>{e(r.e2e_link_id)}</td><td>{e(' → '.join(r.path))}</td>"
        f"<td>{e(r.role)}</td><td>{e(r.state)}</td></tr>"
        for r in state.relays
    )
    return (
        f'<div id="view" data-version="{state.version}">{render_svg(state)}'
        f'<h2>Active alarms ({len(state.alarms)})</h2><ul id="alarms">'
        f"{alarms or '<li>none</li>'}</ul>"
        f'<h2>Recent relays</h2><table id="relays"><tr><th>relay</th><th>pool</th>'
        f"<th>path</th><th>role</th><th>state</th></tr>{relays}</table></div>"
    )


_SCRIPT = """
(function () {
  var live = document.getElementById("live");
  function poll() {
    var current = document.getElementById("view");
    fetch("view?after=" + encodeURIComponent(current.dataset.version), {cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (text) {
        var box = document.createElement("div");
        box.innerHTML = text;
        var fresh = box.firstElementChild;
        current = document.getElementById("view");
        if (fresh && fresh.dataset.version !== current.dataset.version) {
          current.replaceWith(fresh);
        }
        live.textContent = "live";
        live.className = "ok";
        poll();
      })
      .catch(function () {
        live.textContent = "node unreachable: retrying";
        live.className = "bad";
        setTimeout(poll, 1000);
      });
  }
  poll();
})();
"""

_STYLE = """
body{font-family:sans-serif;margin:1em 2em;color:#222}
#live.ok{color:#2ca02c}#live.bad{color:#d62728;font-weight:bold}
#alarms{list-style:none;padding:0}#alarms li{margin:2px 0;padding:2px 8px;background:#f4f4f4}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}
.legend span{display:inline-block;margin-right:1em}
"""


def render_page(state: DashboardState) -> str:
    e = html.escape
    legend = "".join(
        f'<span><b style="color:{colour}">&#9632;</b> {level}</span>'
        for level, colour in LEVEL_COLOURS.items()
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>qkms {e(state.node_id)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>qkms node {e(state.node_id)} <small id="live">loading</small></h1>'
        f'<p class="legend">owned ready key: {legend} (dashed: end-to-end pool)</p>'
        f"{render_view(state)}<script>{_SCRIPT}</script></body></html>"
    )


# --- HTTP --------------------------------------------------------------------------------


def _after(query: str) -> int | None:
    values = parse_qs(query).get("after")
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


def dashboard_handler(dashboard: Dashboard) -> Callable[[Request], Awaitable[Response]]:
    """The HTTP handler: ``/``, ``/state.json``, ``/view``; anything else 404 or 405."""
    html_type = "text/html; charset=utf-8"

    async def handle(request: Request) -> Response:
        if request.path not in ("/", "/state.json", "/view"):
            return Response(404, b'{"message":"not found: try /, /state.json or /view"}')
        if request.method not in ("GET", "HEAD"):
            return Response(405, headers=(("allow", "GET, HEAD"),))
        if request.path == "/":
            return Response(200, render_page(await dashboard.read()).encode(), html_type)
        state = await dashboard.wait(_after(request.query))
        if request.path == "/view":
            return Response(200, render_view(state).encode(), html_type)
        return Response(200, msgspec.json.encode(state))

    return handle
