"""A node's side of the controller: whom it follows, which pushed routes it installs, and
that it keeps them when the controller goes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from protocol import (
    CtlAck,
    CtlAnnounce,
    CtlEntry,
    CtlPath,
    CtlRoute,
    CtlRouteAsk,
    CtlRouteReply,
    CtlRoutes,
    ErrorCode,
)
from qkmsd.controller import NoController, Reporter, ReportSources
from qkmsd.relay import RoutingTable


class FakeController:
    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []
        self.answer: Any = None

    async def request(self, peer: str, message: Any) -> Any:
        self.asked.append((peer, message))
        return self.answer or CtlAck(id=0, ok=True)


async def _none() -> list[Any]:
    return []


def reporter(routes: RoutingTable, fake: FakeController) -> Reporter:
    return Reporter(
        node_id="A",
        electors=["B", "D"],
        report_s=1.0,
        sources=ReportSources(
            links=_none,
            bits_in=dict,
            peers=list,
            demand=list,
            relay=lambda: type(
                "S",
                (),
                dict.fromkeys(
                    [
                        "relays_confirmed",
                        "relays_failed",
                        "hops_forwarded",
                        "bits_relayed",
                        "link_bits_spent",
                    ],
                    0,
                ),
            )(),
            hops=lambda dst: [],
        ),  # fmt: skip
        request=fake.request,
        install=routes.set_controller,
        install_disjoint=routes.set_controller_disjoint,
        has_route=routes.has_route,
        wanted=lambda: ["C"],
        software="test",
    )


def table() -> RoutingTable:
    # The node's own computation knows only A-B-C.
    return RoutingTable("A", links=[("A", "B"), ("B", "C")], manual={}, neighbours=["B", "D"])


SETTINGS = [
    CtlRoute("A", "C", [CtlPath(["A", "D", "C"], 2.0), CtlPath(["A", "B", "C"], 2.0)]),
    CtlRoute("B", "D", [CtlPath(["B", "A", "D"], 2.0)]),  # A only passes this one on
]


async def test_pushed_routes_come_before_the_node_s_own_and_stay_when_the_controller_goes() -> None:
    routes, fake = table(), FakeController()
    node = reporter(routes, fake)
    assert routes.paths("C") == [("A", "B", "C")]
    await node.on_announce("D", CtlAnnounce(term=3))
    assert node.following == "D"
    await node.on_routes("D", CtlRoutes(term=3, routes=SETTINGS))
    assert routes.paths("C") == [("A", "D", "C"), ("A", "B", "C")]
    assert [r.source for r in routes.routes(["C"])] == ["controller", "controller"]
    assert not routes.has_route("D")  # B->D passes A; A does not relay to D on it
    assert node.status().route_settings == 2 and node.status().routes_installed == ["C"]
    await node.peer_down("D")  # the controller goes
    assert node.following is None
    assert routes.paths("C") == [("A", "D", "C"), ("A", "B", "C")]
    with pytest.raises(NoController, match="knows no controller"):
        await node.forward(CtlEntry("node", "X"))


async def test_a_pushed_disjoint_set_is_what_the_node_splits_over() -> None:
    routes, fake = table(), FakeController()
    node = reporter(routes, fake)
    assert routes.disjoint_paths("C", 8) == [("A", "B", "C")]  # its own graph: one path
    await node.on_announce("D", CtlAnnounce(term=3))
    both = [CtlPath(["A", "B", "C"], 2.0), CtlPath(["A", "D", "C"], 2.5)]
    pushed = [CtlRoute("A", "C", SETTINGS[0].paths, disjoint=both), SETTINGS[1]]
    await node.on_routes("D", CtlRoutes(term=3, routes=pushed))
    assert routes.disjoint_paths("C", 8) == [("A", "B", "C"), ("A", "D", "C")]
    await node.on_routes("D", CtlRoutes(term=3, routes=SETTINGS))  # a set without one
    assert routes.disjoint_paths("C", 8) == [("A", "B", "C")]


async def test_routes_from_a_node_it_does_not_follow_or_an_older_term_are_ignored() -> None:
    routes, fake = table(), FakeController()
    node = reporter(routes, fake)
    await node.on_announce("X", CtlAnnounce(term=9))  # not eligible
    assert node.following is None
    await node.on_announce("D", CtlAnnounce(term=3))
    await node.on_announce("B", CtlAnnounce(term=2))  # an older term
    assert node.following == "D"
    await node.on_routes("B", CtlRoutes(term=3, routes=SETTINGS))
    assert routes.paths("C") == [("A", "B", "C")]
    await node.on_announce("B", CtlAnnounce(term=4))  # a newer controller
    assert (node.following, node.term) == ("B", 4)


async def test_a_report_answered_not_controller_stops_following() -> None:
    routes, fake = table(), FakeController()
    node = reporter(routes, fake)
    await node.on_announce("D", CtlAnnounce(term=3))
    fake.answer = CtlAck(id=0, ok=False, code=ErrorCode.NOT_CONTROLLER, message="no")
    await node._report("D")
    ((peer, sent),) = fake.asked
    assert peer == "D" and sent.node == "A" and sent.seq == 1
    assert node.following is None and node.status().reports_refused == 1


async def test_a_set_pushed_in_parts_is_taken_once_whole_and_dropped_if_a_part_is_missing() -> None:
    routes, fake = table(), FakeController()
    node = reporter(routes, fake)
    await node.on_announce("D", CtlAnnounce(term=3))
    first, second = SETTINGS[:1], SETTINGS[1:]
    await node.on_routes("D", CtlRoutes(term=3, routes=second, part=1, last=True))
    assert not routes.has_route("C")  # part 0 never came
    await node.on_routes("D", CtlRoutes(term=3, routes=first, part=0, last=False))
    assert not routes.has_route("C")  # not whole yet
    await node.on_routes("D", CtlRoutes(term=3, routes=second, part=1, last=True))
    assert routes.has_route("C") and node.status().route_settings == 2


async def test_a_node_without_a_route_asks_the_controller_and_installs_the_answer() -> None:
    routes, fake = table(), FakeController()
    routes = RoutingTable("A", links=[], manual={}, neighbours=["D"])
    node = reporter(routes, fake)
    await node.on_announce("D", CtlAnnounce(term=3))
    fake.answer = CtlRouteReply(id=0, ok=True, routes=SETTINGS[:1])
    await node._ask_routes("D")
    ((peer, ask),) = fake.asked
    assert peer == "D" and isinstance(ask, CtlRouteAsk) and ask.destination == "C"
    assert routes.paths("C") == [("A", "D", "C")]  # A-B-C: B is no neighbour here
    node._has_route = lambda destination: False  # asks again (an answer raced a push)
    await node._ask_routes("D")
    assert node.status().route_settings == 1  # the answer replaced the setting, no duplicate


def test_a_large_route_set_is_pushed_in_parts_that_each_fit_a_frame() -> None:
    from protocol import DEFAULT_MAX_FRAME_SIZE, to_wire
    from qkmsd.controller._service import PUSH_PART_BYTES, _parts

    long = [f"N{i:060d}" for i in range(30)]
    many = [CtlRoute(long[0], long[-1], [CtlPath(long, 29.0)] * 3) for _ in range(400)]
    parts = _parts(many)
    assert len(parts) > 1 and sum(len(p) for p in parts) == len(many)
    for part in parts:
        size = len(to_wire(CtlRoutes(term=1, routes=part, part=0, last=False)))
        assert size <= PUSH_PART_BYTES + 8192 < DEFAULT_MAX_FRAME_SIZE
    assert _parts([]) == [[]]


async def test_a_peek_at_the_report_changes_neither_its_sequence_nor_its_rates() -> None:
    import dataclasses

    from ..test_metrics import LINK

    link = msgspec.structs.replace(LINK, link_id="A~B", peer="B")
    bits, now = {"A~B": 0}, [0.0]

    async def links() -> list[Any]:
        return [link]

    rep = reporter(table(), FakeController())
    rep._sources = dataclasses.replace(rep._sources, links=links, bits_in=lambda: dict(bits))
    rep._clock = lambda: now[0]
    first = await rep.build_report()
    now[0], bits["A~B"] = 10.0, 10_000
    peek = await rep.build_report(peek=True)
    assert peek.seq == first.seq and peek.links[0].rate_bps == 0.0  # the last report's rate
    second = await rep.build_report()
    # The peek moved no baseline: the rate is over the 10 s since the first report.
    assert second.seq == first.seq + 1 and second.links[0].rate_bps == pytest.approx(1000.0)
    assert (await rep.build_report(peek=True)).links[0].rate_bps == pytest.approx(1000.0)
