"""Where the whole-network view comes from: the controller's topology on the node that
holds the role, this node's config and routing table elsewhere.

``controller_topology`` turns the controller's soft state (node reports merged, routes
computed) into a ``NetworkTopology``: every node with its state, every QKD link with its
state, key rate, QBER and the ready key each end may hand out, the end-to-end pools as
their ends reported them, and the routes (best path and alternates per node pair).
``table_routes`` turns this node's routing table into the same route items.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from protocol import CtlRoute

from ..controller import ControllerService, Reporter, Topology, node_etsi015
from ..relay import Route
from ._model import EdgeView, NetworkTopology, PathItem, PoolItem, RouteItem

CONTROLLER_EVERY_S = 1.0
"""The controller's topology is read at most this often (its reports come every
``[controller] report_s``; at 200 nodes a read takes milliseconds: docs/operations.md)."""


def whole_network(
    configured: Callable[[], NetworkTopology], service: ControllerService | None
) -> Callable[[], NetworkTopology]:
    """``DashboardSources.topology``: the controller's topology while this node holds the
    role (with what the config knows and no node has reported yet), else ``configured``."""
    kept: list[tuple[float, NetworkTopology]] = []

    def read() -> NetworkTopology:
        config = configured()
        if service is None or not service.leading:
            kept.clear()
            return config
        now = trio.current_time()
        if kept and now - kept[0][0] < CONTROLLER_EVERY_S:
            return kept[0][1]
        view = controller_topology(
            service.topology, service.routes(), service.now(), config.coordinates
        )
        states = dict(view.link_states)
        for pair in config.links - view.links:
            states[pair] = EdgeView(*pair)
        merged = NetworkTopology(
            view.nodes | config.nodes,
            view.links | config.links,
            config.coordinates,
            from_controller=True,
            node_states=view.node_states,
            link_states=states,
            pools=view.pools,
            routes=view.routes,
        )
        kept[:] = [(now, merged)]
        return merged

    return read


def etsi015_source(reporter: Reporter) -> Callable[[], Awaitable[dict[str, Any]]]:
    """``DashboardSources.etsi015``: this node's ``qkd_node`` from the report it would send
    its controller now (a look: it changes nothing of the reporting)."""

    async def read() -> dict[str, Any]:
        report = await reporter.build_report(peek=True)
        return node_etsi015(report, trio.current_time(), time.time())

    return read


def controller_topology(
    topology: Topology,
    routes: Sequence[CtlRoute],
    now: float,
    coordinates: Mapping[str, tuple[float, float]],
) -> NetworkTopology:
    """The controller's view at ``now`` (its clock)."""
    states: dict[tuple[str, str], EdgeView] = {}
    for link in topology.links(now):
        states[(link.a, link.b)] = EdgeView(
            link.a,
            link.b,
            state=link.state,
            link_id=link.link_id,
            rate_bps=round(link.rate_bps, 3),
            qber=link.qber,
            ready_a=link.ready_bits(link.a) if link.ends else None,
            ready_b=link.ready_bits(link.b) if link.ends else None,
        )
    pools = [
        PoolItem(
            pool.link_id,
            node,
            pool.peer,
            pool.ready_here,
            pool.ready_there,
            pool.up,
            list(pool.hops),
        )
        for node, pool in topology.virtual_links()
    ]
    items = [
        RouteItem(
            r.source,
            r.destination,
            [PathItem(list(p.nodes), round(p.cost, 3)) for p in r.paths],
            "controller",
        )
        for r in routes
    ]
    return NetworkTopology(
        frozenset(topology.node_ids()),
        frozenset(states),
        coordinates,
        from_controller=True,
        node_states={n: topology.node_state(n, now) for n in topology.node_ids()},
        link_states=states,
        pools=pools,
        routes=items,
    )


def table_routes(node_id: str, routes: Iterable[Route]) -> list[RouteItem]:
    """This node's routing table as route items, one per destination: the paths in the
    order the relay tries them; the origin is the first path's (``manual``,
    ``controller`` or ``computed``)."""
    paths: dict[str, list[PathItem]] = {}
    origin: dict[str, str] = {}
    for route in routes:
        paths.setdefault(route.destination, []).append(
            PathItem(list(route.path), float(route.cost))
        )
        origin.setdefault(route.destination, route.source)
    return [RouteItem(node_id, dst, paths[dst], origin[dst]) for dst in sorted(paths)]
