"""The dashboard's HTTP routes.

=========================== ============================================================
``GET /``                   the page (with a fresh CSRF token)
``GET /state.json``         what the page shows, as JSON; ``?after=N``: a long poll
``GET /view``               the page's live part as HTML; ``?after=N``: a long poll
``GET /events``             server-sent events: ``event: view`` (``?format=json``:
                            ``event: state``) now and at each change; at most
                            ``max_streams`` at once (then 503: the page long-polls)
``GET /plots?resource=R``   SVG plots of ``link:<id>``, ``pool:<id>``, ``sae:<id>`` or
                            ``relay`` over the last hour, from the performance history
``GET /history``            alarm history, filtered by ``severity``, ``code``,
                            ``resource`` (substring), ``limit``
``GET /pair?a=A&b=B``       a node pair: its current route and alternates each way,
                            its end-to-end pool (HTML the page highlights the graph from)
``POST /op/<method>``       ``alarm_ack``, ``alarm_clear`` (JSON body ``code``,
                            ``resource``), ``profile_activate``, ``profile_deactivate``
                            (JSON body ``name``), ``node_drain``, ``node_undrain``: the
                            admin methods ``qkmsctl`` calls, with the operator's name;
                            CSRF token in ``x-csrf-token``
=========================== ============================================================

On the operator TLS listener only (mutual TLS, ``operator`` or ``operator-ro``):

================================================ =========================================
``GET /restconf/data/etsi-qkd-sdn-node:qkd_node``  this node's ETSI GS QKD 015 ``qkd_node``
                                                   as YANG JSON (read-only)
``GET /.well-known/host-meta``                     where the RESTCONF root is (RFC 8040)
================================================ =========================================
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qs

import msgspec

from ..errors import QkmsError
from ..http import Limits, Request, Response, StreamingResponse
from ._access import Access, CsrfTokens, Denied, Operator
from ._model import Dashboard, log
from ._render import PLOTS, render_history, render_page, render_pair, render_plots, render_view

LIMITS = Limits(max_body_bytes=4096, idle_timeout=30.0)
MAX_STREAMS = 8
"""Event streams open at once, per dashboard (both listeners together)."""
HISTORY_LIMIT = 200
"""Events shown at most."""
HISTORY_SCANNED = 2000
"""Newest events of the history the filters look through."""
OPERATIONS = (
    "alarm_ack",
    "alarm_clear",
    "profile_activate",
    "profile_deactivate",
    "node_drain",
    "node_undrain",
)
_HTML = "text/html; charset=utf-8"
_ROUTES = ("/", "/state.json", "/view", "/events", "/plots", "/history", "/pair")
ETSI015_PATH = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
"""This node's ETSI GS QKD 015 view (RESTCONF data resource, RFC 8040 §3.3)."""
HOST_META_PATH = "/.well-known/host-meta"
YANG_JSON = "application/yang-data+json"
_HOST_META = (
    b'<XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">'
    b'<Link rel="restconf" href="/restconf"/></XRD>'
)


class _OpBody(msgspec.Struct, forbid_unknown_fields=True):
    code: str | None = None
    resource: str | None = None
    name: str | None = None


class StreamSlots:
    """A cap on open event streams: each takes a slot, given back when it ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> Callable[[], None] | None:
        """A release function, or None when every slot is taken."""
        if self.open >= self.limit:
            return None
        self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open -= 1

        return release


def _json(status: int, message: str) -> Response:
    return Response(status, msgspec.json.encode({"message": message}))


def _query(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.query).items() if v}


def _after(query: dict[str, str]) -> int | None:
    try:
        return int(query["after"])
    except (KeyError, ValueError):
        return None


def sse_event(name: str, data: str) -> bytes:
    """One server-sent event; every line of ``data`` becomes a ``data:`` line."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {name}\n{lines}\n".encode()


def dashboard_handler(
    dashboard: Dashboard,
    *,
    access: Access | None = None,
    tokens: CsrfTokens | None = None,
    streams: StreamSlots | None = None,
) -> Callable[[Request], Awaitable[Response | StreamingResponse]]:
    """The HTTP handler of one listener; ``access`` says who may do what there (default:
    loopback, read-only).  Listeners of the same dashboard share ``tokens`` and
    ``streams``."""
    access = access or Access(tls=False)
    tokens = tokens or CsrfTokens()
    streams = streams or StreamSlots(MAX_STREAMS)

    async def handle(request: Request) -> Response | StreamingResponse:
        who = access.operator(request)
        if isinstance(who, Denied):
            return _json(who.status, who.message)
        if request.path.startswith("/op/"):
            if request.method != "POST":
                return Response(405, headers=(("allow", "POST"),))
            return await _operate(request, who)
        if request.path in (ETSI015_PATH, HOST_META_PATH):
            return await _restconf(request)
        if request.path not in _ROUTES:
            return _json(404, "not found: try /, /state.json, /view, /events")
        if request.method not in ("GET", "HEAD"):
            return Response(405, headers=(("allow", "GET, HEAD"),))
        query = _query(request)
        if request.path == "/":
            page = render_page(
                await dashboard.read(),
                token=tokens.issue(who),
                operator=who.name,
                can_operate=who.can_operate,
            )
            return Response(200, page.encode(), _HTML)
        if request.path == "/events":
            release = streams.take()
            if release is None:
                return _json(503, "too many event streams open: the page long-polls instead")
            as_json = query.get("format") == "json"
            return StreamingResponse(lambda: _events(as_json, who), release=release)
        if request.path == "/plots":
            return await _plots(query.get("resource", ""))
        if request.path == "/history":
            return await _history(query)
        if request.path == "/pair":
            state = await dashboard.read()
            pair = render_pair(state, query.get("a", "")[:64], query.get("b", "")[:64])
            return Response(200, pair.encode(), _HTML)
        state = await dashboard.wait(_after(query))
        if request.path == "/view":
            return Response(200, render_view(state, can_operate=who.can_operate).encode(), _HTML)
        return Response(200, msgspec.json.encode(state))

    async def _restconf(request: Request) -> Response:
        if not access.tls:
            return _json(403, "the ETSI 015 view is served over mutual TLS only: [listen]"
                         " dashboard_tls, with an operator certificate")  # fmt: skip
        if request.method not in ("GET", "HEAD"):
            return Response(405, headers=(("allow", "GET, HEAD"),))
        if request.path == HOST_META_PATH:
            return Response(200, _HOST_META, "application/xrd+xml")
        source = dashboard.sources.etsi015
        if source is None:
            return _json(404, "this node has no ETSI 015 view")
        try:
            node = await source()
        except QkmsError as exc:
            return _json(503, f"ETSI 015 view: {exc}")
        return Response(200, msgspec.json.encode({"etsi-qkd-sdn-node:qkd_node": node}), YANG_JSON)

    async def _events(as_json: bool, who: Operator) -> AsyncGenerator[bytes, None]:
        yield b"retry: 1000\n\n"
        async with aclosing(dashboard.changes()) as changes:
            async for state in changes:
                if state is None:
                    yield b": still here\n\n"
                elif as_json:
                    yield sse_event("state", msgspec.json.encode(state).decode())
                else:
                    yield sse_event("view", render_view(state, can_operate=who.can_operate))

    async def _plots(resource: str) -> Response:
        kind = resource.split(":", 1)[0]
        if kind not in PLOTS or len(resource) > 200:
            return _json(400, f"resource: give one of {', '.join(k + ':<id>' for k in PLOTS)}")
        try:
            found = await dashboard.admin("perf", {"resource": resource, "since_s": 3600.0})
        except QkmsError:
            found = None  # no history, or no samples of it yet: empty plots
        return Response(200, render_plots(resource, found, time.time()).encode(), _HTML)

    async def _history(query: dict[str, str]) -> Response:
        found = await dashboard.admin("alarms", {"limit": HISTORY_SCANNED})
        events = list((found or {}).get("history", []))
        for field in ("severity", "code"):
            if query.get(field):
                events = [ev for ev in events if ev.get(field) == query[field]]
        if query.get("resource"):
            events = [ev for ev in events if query["resource"] in str(ev.get("resource"))]
        try:
            shown = max(1, min(int(query.get("limit", HISTORY_LIMIT)), HISTORY_LIMIT))
        except ValueError:
            shown = HISTORY_LIMIT
        return Response(200, render_history(events, shown=shown).encode(), _HTML)

    async def _operate(request: Request, who: Operator) -> Response:
        method = request.path.removeprefix("/op/")
        if method not in OPERATIONS:
            return _json(404, f"no operation {method[:40]!r}: one of {', '.join(OPERATIONS)}")
        if not who.can_operate:
            return _json(403, f"{who.name} may view, not operate")
        denied = tokens.check(who, request.header("x-csrf-token"))
        if denied is not None:
            log.warning("dashboard.refused", operator=who.name, method=method, why="csrf")
            return _json(denied.status, denied.message)
        try:
            body = msgspec.json.decode(request.body or b"{}", type=_OpBody)
        except msgspec.DecodeError as exc:
            return _json(400, f"body: {exc}")
        params: dict[str, Any] = {}
        if method.startswith("alarm_"):
            if body.code is None or body.resource is None:
                return _json(400, "body: give code and resource")
            params = {"code": body.code, "resource": body.resource, "by": f"dashboard {who.name}"}
        elif method.startswith("profile_"):
            if body.name is None:
                return _json(400, "body: give the profile's name")
            params = {"name": body.name}
        try:
            result = await dashboard.admin(method, params)
        except QkmsError as exc:
            log.warning("dashboard.operation_failed", operator=who.name, method=method)
            return _json(400, str(exc))
        if result is None:
            return _json(501, f"this node has no {method}")
        log.warning(
            "dashboard.operation",
            operator=who.name,
            method=method,
            **{k: v for k, v in params.items() if k != "by"},
        )
        dashboard.poke()
        what = f" {body.code} on {body.resource}" if method.startswith("alarm_") else ""
        if method.startswith("profile_"):
            what = f" {body.name}"
        return _json(200, f"{method}{what} by {who.name}")

    return handle
