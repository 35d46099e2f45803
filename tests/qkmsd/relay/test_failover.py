"""Routes around failures: links whose session closed, paths on which relays failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import ErrorCode, RelayHop
from qkmsd.errors import PeerUnavailable
from qkmsd.relay import RelayFailed, RoutingTable
from qkmsd.relay._routes import HOLD_S

from .conftest import A, B, C, D, link_id, open_net

RING = [(A, B), (B, C), (C, D), (A, D)]
AC = link_id(A, C)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ring_table(clock: Clock) -> RoutingTable:
    return RoutingTable(A, links=RING, manual={}, neighbours=[B, D], clock=clock)


def test_a_link_marked_down_is_in_no_path_until_it_is_up_again() -> None:
    table = ring_table(Clock())
    assert table.paths(C) == [(A, B, C), (A, D, C)]
    assert table.link_down(A, B)
    assert table.paths(C) == [(A, D, C)]
    assert table.disjoint_paths(C, 2) == [(A, D, C)]
    assert table.links_down() == [(A, B)]
    assert table.link_up(B, A)
    assert table.paths(C) == [(A, B, C), (A, D, C)]
    assert len(table.disjoint_paths(C, 2)) == 2


def test_a_manual_route_over_a_link_marked_down_is_not_offered() -> None:
    table = RoutingTable(A, links=RING, manual={C: [B]}, neighbours=[B, D])
    table.link_down(A, B)
    assert table.paths(C) == [(A, D, C)]


def test_a_held_path_comes_last_stays_out_of_splits_and_comes_back_after_the_hold() -> None:
    clock = Clock()
    table = ring_table(clock)
    table.hold((A, B, C))
    assert table.paths(C) == [(A, D, C), (A, B, C)]
    assert table.disjoint_paths(C, 2) == [(A, D, C)]
    held = {tuple(r.path): r.held_s for r in table.routes([C])}
    assert held == {(A, B, C): HOLD_S, (A, D, C): 0.0}
    clock.now += HOLD_S
    assert table.paths(C) == [(A, B, C), (A, D, C)]
    assert len(table.disjoint_paths(C, 2)) == 2


def test_with_every_path_held_a_split_still_gets_them_all() -> None:
    table = ring_table(Clock())
    table.hold((A, B, C))
    table.hold((A, D, C))
    assert len(table.disjoint_paths(C, 2)) == 2


def test_a_link_up_again_ends_the_holds_on_paths_over_it() -> None:
    table = ring_table(Clock())
    table.hold((A, B, C))
    table.link_down(A, B)
    table.link_up(A, B)
    assert table.paths(C)[0] == (A, B, C)


async def test_a_disjoint_pool_whose_far_link_is_cut_sends_the_key_whole_round_the_other_side(
    tmp_path: Path,
) -> None:
    async with open_net(tmp_path, links=RING, pools=[(A, C)], paths=(2, 1)) as net:

        async def cut_b_c(sender: str, receiver: str, hop: RelayHop) -> RelayHop:
            if {sender, receiver} == {B, C}:
                raise PeerUnavailable(f"the session of {sender} with {receiver} ended")
            return hop

        net.wire.on_hop = cut_b_c
        # A sees both its neighbours up: only the failed share tells it about B~C.
        record = await net[A].agent.relay(AC)

        assert record.path == [A, D, C] and "#" not in record.relay_id
        at_a, at_c = await net.delivered(A, C), await net.delivered(C, A)
        assert len(at_a) == len(at_c) == 1 and at_a[0].key == at_c[0].key
        assert net[A].agent.statistics().relays_failed == 0
        # The next relays go whole round the working side at once, not through B first.
        before = len(net.wire.hops(A, B))
        await net[A].agent.relay(AC)
        assert len(net.wire.hops(A, B)) == before


async def test_a_neighbour_declared_down_takes_its_link_out_of_new_relays(
    tmp_path: Path,
) -> None:
    async with open_net(tmp_path, links=RING, pools=[(A, C)], paths=(2, 1)) as net:
        await net[A].agent.peer_down(B, "silent for 1 s (no heartbeat or message)")
        record = await net[A].agent.relay(AC)
        assert record.path == [A, D, C]
        assert net.wire.hops(A, B) == []
        await net[A].agent.peer_up(B)
        record = await net[A].agent.relay(AC)
        assert "#" in record.relay_id  # split again over both sides
        assert {tuple(h.path) for h in net.wire.hops(A, B)} == {(A, B, C)}


async def test_a_path_short_of_link_key_is_not_held_but_one_with_a_node_out_of_reach_is(
    tmp_path: Path,
) -> None:
    async with open_net(tmp_path, links=RING, pools=[(A, C)], link_blocks=()) as net:
        for a, b in [(B, C), (C, D), (A, D)]:
            net.add_link_key(a, b, range(8))  # A~B has none: the first path is short of key
        record = await net[A].agent.relay(AC)
        assert record.path == [A, D, C]
        assert all(r.held_s == 0 for r in net[A].agent.routes())

        async def b_cannot_reach_c(sender: str, receiver: str, hop: RelayHop) -> RelayHop:
            if (sender, receiver) == (B, C):
                raise PeerUnavailable("the session of B with C ended")
            return hop

        net.wire.on_hop = b_cannot_reach_c
        net.add_link_key(A, B, range(8))
        record = await net[A].agent.relay(AC)  # A-B-C first: B cannot reach C; then A-D-C
        assert record.path == [A, D, C]
        held = {tuple(r.path): r.held_s for r in net[A].agent.routes()}
        assert held[(A, B, C)] > 0 and held[(A, D, C)] == 0
        before = len(net.wire.hops(A, B))
        record = await net[A].agent.relay(AC)
        assert record.path == [A, D, C] and len(net.wire.hops(A, B)) == before


async def test_a_node_whose_next_session_is_down_says_unreachable_even_when_short_of_key(
    tmp_path: Path,
) -> None:
    # B's session with C is down (a silent cut B noticed), and B owns no B~C key: no key
    # comes over a dead session.  "Short of key" would keep A splitting over B, spending
    # A~D key on shares that never pair (a ring lab's SAE pair got no relayed key for 60 s).
    async with open_net(tmp_path, links=RING, pools=[(A, C)], paths=(2, 1), link_blocks=()) as net:
        for a, b in [(A, B), (C, D), (A, D)]:
            net.add_link_key(a, b, range(8))
        net.add_link_key(B, C, [1, 3, 5])  # all C's: B owns none of B~C
        net.wire.down.add((B, C))

        record = await net[A].agent.relay(AC)

        assert record.path == [A, D, C] and "#" not in record.relay_id
        refused = [s.result for s in net.wire.sent if (s.sender, s.receiver) == (A, B)]
        assert [r.code for r in refused if r is not None] == [ErrorCode.PEER_UNREACHABLE]
        held = {tuple(r.path): r.held_s for r in net[A].agent.routes()}
        assert held[(A, B, C)] > 0 and held[(A, D, C)] == 0
        before = len(net.wire.hops(A, B))
        await net[A].agent.relay(AC)
        assert len(net.wire.hops(A, B)) == before


async def test_a_share_that_got_through_ends_its_paths_hold(tmp_path: Path) -> None:
    # Both sides were out of reach (both paths held); D's side is back, B's not.  With every
    # path held a split goes over both; the share over D gets through, which must end D's
    # hold, or every split until the holds run out fails on B's side again.
    async with open_net(tmp_path, links=RING, pools=[(A, C)], paths=(2, 1)) as net:
        net.wire.down |= {(B, C), (D, C)}
        with pytest.raises(RelayFailed):
            await net[A].agent.relay(AC)
        held = {tuple(r.path): r.held_s for r in net[A].agent.routes()}
        assert held[(A, B, C)] > 0 and held[(A, D, C)] > 0
        net.wire.down.discard((D, C))

        record = await net[A].agent.relay(AC)

        assert record.path == [A, D, C] and "#" not in record.relay_id
        held = {tuple(r.path): r.held_s for r in net[A].agent.routes()}
        assert held[(A, B, C)] > 0 and held[(A, D, C)] == 0


# --- links added and removed while the node runs -------------------------------------------


def test_a_neighbour_added_at_runtime_carries_paths_and_one_removed_carries_none() -> None:
    # The topology does not know A~B yet: a device registered at A and B adds it.
    table = RoutingTable(A, links=[(B, C), (C, D), (A, D)], manual={}, neighbours=[D])
    assert table.paths(C) == [(A, D, C)]
    table.add_neighbour(B)
    assert table.paths(C) == [(A, B, C), (A, D, C)]
    assert table.paths(B)[0] == (A, B)
    table.link_down(A, D)
    table.hold((A, D, C))
    table.remove_neighbour(D)
    assert table.paths(C) == [(A, B, C)]
    assert table.links_down() == []  # a removed link's marks go with it
    table.add_neighbour(D)  # added again: usable at once, not held or down
    assert table.paths(C) == [(A, B, C), (A, D, C)]
    assert table.disjoint_paths(C, 2) == [(A, B, C), (A, D, C)]


async def test_a_relay_agent_takes_a_link_added_at_runtime_and_drops_one_removed(
    tmp_path: Path,
) -> None:
    async with open_net(tmp_path, links=[(A, B), (B, C)], pools=[(A, C)]) as net:
        net[A].agent.remove_link(B, link_id(A, B))
        with pytest.raises(RelayFailed, match="no route to KME_C"):
            await net[A].agent.relay(AC)
        net[A].agent.remove_link(B, "KME_A~KME_B.other")  # not its link with B: nothing
        net[A].agent.add_link(B, link_id(A, B))
        record = await net[A].agent.relay(AC)
        assert record.state == "confirmed" and record.path == [A, B, C]
        # B forgets its link with A: A's next hop on it is refused there.
        net[B].agent.remove_link(A, link_id(A, B))
        with pytest.raises(RelayFailed):
            await net[A].agent.relay(AC)
        net[B].agent.add_link(A, link_id(A, B))
        assert (await net[A].agent.relay(AC)).state == "confirmed"


async def test_a_link_added_without_a_session_is_down_until_the_peer_is_up(
    tmp_path: Path,
) -> None:
    async with open_net(tmp_path, links=[(A, B), (B, C)], pools=[(A, C)]) as net:
        net[A].agent.remove_link(B, link_id(A, B))
        net.wire.down.add((A, B))
        net[A].agent.add_link(B, link_id(A, B))
        with pytest.raises(RelayFailed, match="no route"):
            await net[A].agent.relay(AC)
        net.wire.down.discard((A, B))
        await net[A].agent.peer_up(B)
        assert (await net[A].agent.relay(AC)).state == "confirmed"
