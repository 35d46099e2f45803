"""The controller at work: four real ``Node``s in a ring, joined by memory streams.

A ring of QKD links KME_A~KME_B~KME_C~KME_D~KME_A; KME_A and KME_C keep an end-to-end
pool; KME_B, KME_D and KME_E (a node with no QKD link) are eligible; KME_A and KME_C are
not and report to whoever holds the role.  Every node has a session with every other.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing

from protocol import CtlAck, CtlLink, CtlRelayLoad, CtlReport, ErrorCode
from qkmsd.app import Node
from qkmsd.controller import ControllerService, NoController
from qkmsd.metrics import render

from ..conftest import ConfigFactory

RING = ("KME_A", "KME_B", "KME_C", "KME_D")
NODES = (*RING, "KME_E")
LINKS = [("KME_A", "KME_B"), ("KME_B", "KME_C"), ("KME_C", "KME_D"), ("KME_A", "KME_D")]
ELIGIBLE = {"KME_B": 40, "KME_D": 100, "KME_E": 50}
E2E = "KME_A~KME_C"
FAST = {"rate_bps": 2e6, "block_bits": 65536}
NOWHERE = "127.0.0.1:1"
REPORT_S = 2.0
BAD_SEQ = 10**6
"""The sequence number of the reports the tests make up (the nodes' own count from 1)."""


class Ring:
    def __init__(self, nodes: dict[str, Node], nursery: trio.Nursery) -> None:
        self.nodes = nodes
        self.nursery = nursery
        self.node_scopes: dict[str, trio.CancelScope] = {}
        self.link_scopes: dict[frozenset[str], trio.CancelScope] = {}

    def service(self, kme: str) -> ControllerService:
        service = self.nodes[kme].service
        assert service is not None
        return service

    async def join(self, a: str, b: str) -> None:
        left, right = trio.testing.memory_stream_pair()
        self.link_scopes[frozenset((a, b))] = await self.nursery.start(
            _serve, self.nodes[a], left, b, self.nodes[b], right, a
        )

    def cut(self, a: str, b: str) -> None:
        self.link_scopes.pop(frozenset((a, b))).cancel()

    def kill(self, kme: str) -> None:
        self.node_scopes.pop(kme).cancel()
        for pair in [p for p in self.link_scopes if kme in p]:
            self.link_scopes.pop(pair).cancel()

    def alive(self) -> list[str]:
        return sorted(self.node_scopes)

    async def controller(self) -> str:
        """Until one live node leads, and every live node reports to it."""
        while True:
            leading = [k for k in self.alive() if self.nodes[k].service and self.service(k).leading]
            if len(leading) == 1:
                (leader,) = leading
                following = {self.nodes[k].reporter.following for k in self.alive()}  # type: ignore[union-attr]
                if following == {leader}:
                    return leader
            await trio.sleep(0.02)


async def _serve(
    a: Node, left: Any, b_id: str, b: Node, right: Any, a_id: str, *, task_status: Any
) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.peers.serve_authenticated, left, b_id)  # type: ignore[union-attr]
            nursery.start_soon(b.peers.serve_authenticated, right, a_id)  # type: ignore[union-attr]
            task_status.started(scope)


async def _run(node: Node, *, task_status: Any) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            task_status.started(scope)


@contextlib.asynccontextmanager
async def ring(
    node_config: ConfigFactory, *, high_bits: int = 32768, a_pool: dict[str, Any] | None = None
) -> AsyncIterator[Ring]:
    nodes: dict[str, Node] = {}
    for kme in NODES:
        links = {}
        for a, b in LINKS:
            if kme in (a, b):
                link_id = f"{a}~{b}"
                peer = b if kme == a else a
                links[link_id] = (peer, "paired", {**FAST, "seed": link_id.ljust(32, "x")})
        pools = {"KME_A": {"KME_C": a_pool or {}}, "KME_C": {"KME_A": {}}}.get(kme, {})
        controller: dict[str, Any] = {"report_s": REPORT_S}
        if kme in ELIGIBLE:
            controller |= {
                "eligible": True,
                "priority": ELIGIBLE[kme],
                "lease_s": 0.5,
                "drift_s": 0.05,
                "electors": {n: p for n, p in ELIGIBLE.items() if n != kme},
            }
        else:
            controller["electors"] = dict(ELIGIBLE)
        cfg = node_config(
            kme,
            peers={p: NOWHERE for p in NODES if p != kme},
            links=links,
            relay={
                "block_bits": 4096,
                "low_bits": 16384,
                "high_bits": high_bits,
                "link_reserve_bits": 0,
                "auto_pools": False,
                "pools": pools,
            },
            controller=controller,
        )
        nodes[kme] = Node(cfg, listen=False)
    async with trio.open_nursery() as nursery:
        r = Ring(nodes, nursery)
        for kme, node in nodes.items():
            r.node_scopes[kme] = await nursery.start(_run, node)
        for i, a in enumerate(NODES):
            for b in NODES[i + 1 :]:
                await r.join(a, b)
        yield r
        nursery.cancel_scope.cancel()


async def wait_for(check: Callable[[], Any]) -> Any:
    while not (result := check()):  # noqa: ASYNC110 - the nodes' state has no event to wait on
        await trio.sleep(0.02)
    return result


def topology_complete(service: ControllerService, nodes: list[str]) -> bool:
    view = service.topology_view()
    up = {n["node_id"] for n in view["nodes"] if n["state"] == "up"}
    return up >= set(nodes)


def controller_paths(node: Node, destination: str) -> list[list[str]]:
    assert node.routes is not None
    return [r.path for r in node.routes.routes([destination]) if r.source == "controller"]


async def scrape(node: Node) -> dict[str, float]:
    """The node's Prometheus exposition, each sample by its name and labels."""
    assert node.metrics is not None
    text = render(await node.metrics.snapshot()).decode()
    return {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")
        )
    }


def report(node: str, links: list[CtlLink], **kwargs: Any) -> CtlReport:
    fields: dict[str, Any] = dict(
        id=0,
        node=node,
        seq=BAD_SEQ,
        period_s=REPORT_S,
        software="test",
        links=links,
        peers=[],
        demand=[],
        relay=CtlRelayLoad(),
    )
    return CtlReport(**(fields | kwargs))


async def test_reports_build_the_topology_routes_reach_every_node_on_them_and_a_cut_reroutes(
    node_config: ConfigFactory,
) -> None:
    with trio.fail_after(60):
        async with ring(node_config) as r:
            leader = await r.controller()
            service = r.service(leader)
            await wait_for(lambda: topology_complete(service, list(NODES)))
            view = service.topology_view()
            qkd = {link["link_id"]: link for link in view["links"] if link["kind"] == "qkd"}
            assert set(qkd) == {f"{a}~{b}" for a, b in LINKS}
            await wait_for(
                lambda: all(
                    link["state"] == "up"
                    for link in service.topology_view()["links"]
                    if link["kind"] == "qkd"
                )
            )
            virtual = [
                link for link in service.topology_view()["links"] if link["kind"] == "virtual"
            ]
            assert {(v["a"], v["b"]) for v in virtual} >= {("KME_A", "KME_C"), ("KME_C", "KME_A")}

            # Both ways round the ring, pushed to both ends and to both intermediates.
            both = [["KME_A", "KME_B", "KME_C"], ["KME_A", "KME_D", "KME_C"]]

            def settings(kme: str) -> int:
                return r.nodes[kme].reporter.status().route_settings  # type: ignore[union-attr]

            # The controller pushes to one node after another: wait until all have theirs.
            await wait_for(
                lambda: (
                    len(controller_paths(r.nodes["KME_A"], "KME_C")) == 2
                    and len(controller_paths(r.nodes["KME_C"], "KME_A")) == 2
                    and all(settings(kme) == 2 for kme in RING)
                )
            )
            assert sorted(controller_paths(r.nodes["KME_A"], "KME_C")) == both
            assert sorted(controller_paths(r.nodes["KME_C"], "KME_A")) == [
                ["KME_C", "KME_B", "KME_A"],
                ["KME_C", "KME_D", "KME_A"],
            ]
            # A->C and C->A cross every node of the ring, and no other.
            assert r.nodes["KME_E"].reporter.status().route_settings == 0  # type: ignore[union-attr]

            # The relay takes them: a confirmed relay on one of the controller's paths.
            relay_a = r.nodes["KME_A"].relay
            assert relay_a is not None
            await wait_for(
                lambda: any(
                    rec.state == "confirmed" and rec.role == "source" for rec in relay_a.relays()
                )
            )
            assert all(rec.path in both for rec in relay_a.relays() if rec.role == "source")

            # A report that is refused changes nothing.
            peers_a = r.nodes["KME_A"].peers
            assert peers_a is not None
            bad = [
                report("KME_A", [CtlLink("KME_A~KME_B", "KME_B", True, qber=0.9)]),
                report("KME_B", []),
                report("KME_A", [CtlLink("KME_B~KME_C", "KME_D", True)]),
                report("KME_A", [CtlLink("KME_A~KME_B", "KME_A", True)]),
            ]
            words_of = ["QBER 0.9", "names node KME_B", "joins KME_B and KME_C", "to itself"]
            for message, words in zip(bad, words_of, strict=True):
                ack = await peers_a.request(leader, message)
                assert isinstance(ack, CtlAck) and not ack.ok
                assert ack.code == ErrorCode.BAD_REPORT and words in ack.message
            # (A's own reports go on meanwhile; none of the refused ones' content is kept.)
            assert all(view.seq != BAD_SEQ for view in service.topology.nodes.values())
            a_links = service.topology.nodes["KME_A"].links
            assert a_links["KME_A~KME_B"].qber != 0.9 and "KME_B~KME_C" not in a_links
            assert service.topology.nodes["KME_B"].links  # not emptied by A's report for B

            # Prometheus: the controller's own figures where it runs, the pool's relays at A.
            exported = await scrape(r.nodes[leader])
            assert exported["qkms_controller_leading"] == 1
            assert exported["qkms_controller_reports_total"] > 0
            assert exported["qkms_controller_reports_refused_total"] >= len(bad)
            assert 0 < exported["qkms_controller_nodes_alive"] <= len(NODES)
            at_a = await scrape(r.nodes["KME_A"])
            assert "qkms_controller_leading" not in at_a  # not eligible
            assert at_a['qkms_relay_pool_relays_confirmed_total{pool="KME_A~KME_C"}'] >= 1
            assert at_a['qkms_relay_pool_latency_seconds_sum{pool="KME_A~KME_C"}'] > 0
            follower = next(n for n in ELIGIBLE if n != leader)
            assert (await scrape(r.nodes[follower]))["qkms_controller_leading"] == 0

            # A cut link: its ends report it down, the controller routes round the other side.
            r.cut("KME_A", "KME_B")
            await wait_for(
                lambda: (
                    controller_paths(r.nodes["KME_A"], "KME_C") == [["KME_A", "KME_D", "KME_C"]]
                    and controller_paths(r.nodes["KME_C"], "KME_A") == [["KME_C", "KME_D", "KME_A"]]
                )
            )
            states = {link["link_id"]: link["state"] for link in service.topology_view()["links"]}
            assert states["KME_A~KME_B"] == "down"
            r.nursery.cancel_scope.cancel()


async def test_a_pool_that_splits_keys_gets_the_controller_s_disjoint_set_and_splits_over_it(
    node_config: ConfigFactory,
) -> None:
    with trio.fail_after(60):
        async with ring(node_config, a_pool={"paths": "disjoint"}) as r:
            leader = await r.controller()
            table_a, table_c = r.nodes["KME_A"].routes, r.nodes["KME_C"].routes
            assert table_a is not None and table_c is not None
            both = [("KME_A", "KME_B", "KME_C"), ("KME_A", "KME_D", "KME_C")]
            await wait_for(lambda: sorted(table_a.pushed_disjoint("KME_C")) == both)
            # C's pool keeps keys whole on one path: the controller computes no set for it.
            routes = {(x.source, x.destination): x for x in r.service(leader).routes()}
            assert routes["KME_C", "KME_A"].disjoint == [] and not table_c.pushed_disjoint("KME_A")
            relay_a = r.nodes["KME_A"].relay
            assert relay_a is not None
            # What `qkmsctl routes` shows: the pool's paths now, and that they are pushed.
            [split] = relay_a.split_paths()
            assert (split.destination, split.source) == ("KME_C", "controller")
            assert sorted(map(tuple, split.paths)) == both
            # A splits each key over both sides of the ring.
            await wait_for(
                lambda: (
                    {
                        tuple(rec.path)
                        for rec in relay_a.relays()
                        if rec.state == "confirmed" and rec.role == "source"
                    }
                    >= set(both)
                )
            )
            r.nursery.cancel_scope.cancel()


async def test_a_new_controller_rebuilds_in_a_period_keeps_registrations_and_loses_no_key(
    node_config: ConfigFactory,
) -> None:
    with trio.fail_after(90):
        async with ring(node_config, high_bits=1 << 22) as r:
            first = await r.controller()
            await wait_for(lambda: topology_complete(r.service(first), list(NODES)))

            # Registrations through a node that is not the controller are forwarded to it.
            from cli._admin import AdminClient

            def admin(kme: str, method: str, **params: Any) -> dict[str, Any]:
                return AdminClient(r.nodes[kme].config.admin_socket).call(method, **params)

            added = await trio.to_thread.run_sync(
                lambda: admin(
                    "KME_C", "register", kind="link", action="add", name="", a="KME_A", b="KME_C"
                )
            )
            assert added["controller"] == first
            await trio.to_thread.run_sync(
                lambda: admin("KME_B", "register", kind="node", action="add", name="KME_X")
            )
            # The registered link is routable: the controller's best path A->C is now direct.
            await wait_for(
                lambda: any(
                    route.paths[0].nodes == ["KME_A", "KME_C"]
                    for route in r.service(first).routes()
                )
            )

            # Relays run; then the controller goes in the middle of them.
            store_a = r.nodes["KME_A"].store_thread._store  # type: ignore[union-attr]
            store_c = r.nodes["KME_C"].store_thread._store  # type: ignore[union-attr]
            await wait_for(lambda: store_a.pool(E2E).ready_bits >= 16384)
            r.kill(first)
            second = await r.controller()
            assert second != first
            service = r.service(second)
            await wait_for(lambda: topology_complete(service, r.alive()))
            # Every node reported to it before its first quiet report period went by.
            assert service.periods_in_office == 0
            names = {(e.kind, e.name) for e in service.registry.listing()}
            assert {("link", "KME_A~KME_C"), ("node", "KME_X")} <= names
            await wait_for(lambda: service._registry_ready)
            assert {n["node_id"] for n in service.topology_view()["nodes"]} >= {"KME_X"}

            # Relays went on over KME_B; both ends hold the same key under the same ids.
            level = store_a.pool(E2E).ready_bits
            await wait_for(lambda: store_a.pool(E2E).ready_bits >= level + 16384)
            ready_a = set(store_a.ready_ids(E2E, 0, 2**63 - 1, limit=100_000))
            ready_c = set(store_c.ready_ids(E2E, 0, 2**63 - 1, limit=100_000))
            common = ready_a & ready_c
            assert common
            for block_id in common:
                assert store_a.read_block(E2E, block_id) == store_c.read_block(E2E, block_id)
            r.nursery.cancel_scope.cancel()


async def test_topology_on_a_node_that_is_not_the_controller_says_whom_to_ask(
    node_config: ConfigFactory,
) -> None:
    with trio.fail_after(30):
        async with ring(node_config) as r:
            leader = await r.controller()
            from qkmsd.controller import ControllerAdmin

            admin = ControllerAdmin(None, r.nodes["KME_C"].reporter)  # type: ignore[arg-type]
            with pytest.raises(NoController, match=f"ask {leader}"):
                await admin.topology({})
            r.nursery.cancel_scope.cancel()
