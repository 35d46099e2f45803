"""Pools that compete for one link's key are topped up by priority (key profiles)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from qkd_drivers import KeyBlock
from qkmsd.keystore import NewBlock
from qkmsd.relay import RelayFailed

from .conftest import HOP_BYTES, SETTINGS, A, B, C, D, Net, link_id, open_net

TARGET_BITS = 4 * 256
"""Each pool's low and high watermark: four relayed keys."""


async def _store_as_ready(net: Net, order: list[str], relays: int, done: trio.Event) -> None:
    """What A's key manager would do: keep each key A's pools' drivers hand on as READY
    (A relayed it: A owns it), and note which pool got it."""
    seen = {lid: 0 for lid in net[A].delivered}
    while True:
        await trio.sleep(0.01)
        for lid, blocks in net[A].delivered.items():
            fresh: list[KeyBlock] = blocks[seen[lid] :]
            seen[lid] = len(blocks)
            if fresh:
                net[A].store.add_blocks(
                    [NewBlock(lid, b.block_id, b.key, 0.0, 1.0, True) for b in fresh]
                )
                net[A].store.mark_ready(lid, [b.block_id for b in fresh])
                order.extend(lid for _ in fresh)
        if len(order) >= relays:
            done.set()


async def _run_until_quiet(net: Net, relays: int) -> list[str]:
    order: list[str] = []
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_store_as_ready, net, order, relays, done)
        await nursery.start(net[A].agent.run)
        with trio.move_on_after(60):  # autojump: the link's key is long gone by then
            await done.wait()
        await trio.sleep(30)  # room for any relay beyond the ones the link paid for
        nursery.cancel_scope.cancel()
    return order


async def test_when_a_shared_link_is_short_the_higher_priority_pool_gets_its_target_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # A~C (priority 5) and A~D (priority 1) both start on link A~B, whose key A owns
    # pays for six relays: the high pool's four first, then the low pool gets the rest.
    priorities = {C: 5.0, D: 1.0}
    async with open_net(
        tmp_path,
        links=[(A, B), (B, C), (B, D)],
        pools=[(A, C), (A, D)],
        link_blocks=range(2),
        block_bytes=6 * HOP_BYTES,
        watermarks=(TARGET_BITS, TARGET_BITS),
        priority_of=lambda node, peer: priorities.get(peer, 0.0),
    ) as net:
        order = await _run_until_quiet(net, relays=6)
        assert net.owned_ready_bytes(A, B) < HOP_BYTES  # the link's key is all spent
    high, low = link_id(A, C), link_id(A, D)
    assert order[:4] == [high] * 4
    assert order.count(low) == 2 and len(order) == 6


async def test_a_high_priority_pool_out_of_reach_does_not_starve_the_others(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # C is out of reach (its relays fail in the middle, not for want of A's key): A~C,
    # of higher priority, pauses after failing, and A~D, of lower priority, fills up.
    async with open_net(
        tmp_path,
        links=[(A, B), (B, C), (B, D)],
        pools=[(A, C), (A, D)],
        watermarks=(TARGET_BITS, TARGET_BITS),
        priority_of=lambda node, peer: 5.0 if peer == C else 1.0,
    ) as net:
        net.wire.agents.pop(C)  # C is gone: hops to it fail as unreachable
        order = await _run_until_quiet(net, relays=4)
    assert order.count(link_id(A, D)) == 4


async def test_a_pool_on_a_short_link_relays_as_key_arrives_without_bursts_of_failures(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_net(
        tmp_path,
        links=[(A, B), (B, C)],
        pools=[(A, C)],
        link_blocks=range(1),  # block 0, A's: one relay's worth
        block_bytes=HOP_BYTES,
        watermarks=(2 * TARGET_BITS, 2 * TARGET_BITS),
    ) as net:
        net.add_link_key(B, C, range(10, 20), size=4 * HOP_BYTES)

        async def trickle() -> None:
            for block_id in range(2, 16, 2):  # A's ids: one relay's worth a second
                await trio.sleep(1.0)
                net.add_link_key(A, B, [block_id], size=HOP_BYTES)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            order = await _run_until_quiet(net, relays=8)
            nursery.cancel_scope.cancel()
        failed = net[A].agent.statistics().relays_failed
    assert len(order) == 8
    assert failed <= 2  # the first burst found the link empty; then one relay per block


async def test_after_a_relay_found_the_first_link_short_top_up_starts_none_until_key_lands(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An SAE's request tops the pool up; its relay finds A~B empty and fails at A (nothing
    spent).  While the link stays short, the next requests' top-ups start no relay (none
    could do better): each is refused at once, naming the short link.  Once a block lands,
    a top-up relays again, with no further failure."""
    async with open_net(
        tmp_path, links=[(A, B), (B, C)], pools=[(A, C)], link_blocks=range(0)
    ) as net:
        net.add_link_key(B, C, range(10, 20))
        agent = net[A].agent
        with trio.fail_after(5), pytest.raises(RelayFailed):
            await agent.top_up(C, 256)
        failed = agent.statistics().relays_failed
        assert 1 <= failed <= SETTINGS.in_flight  # the first burst
        for _ in range(3):
            with trio.fail_after(1), pytest.raises(RelayFailed, match="short of key"):
                await agent.top_up(C, 256)
        assert agent.statistics().relays_failed == failed
        net.add_link_key(A, B, range(0, 8, 2))  # A's blocks
        order: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_store_as_ready, net, order, 10**9, trio.Event())
            with trio.fail_after(10):
                await agent.top_up(C, 256)
            nursery.cancel_scope.cancel()
        assert agent.statistics().relays_failed == failed
        assert order


async def _relays_in(net: Net, seconds: float) -> int:
    """Relays A's background loop makes into its pools in ``seconds`` (virtual)."""
    order: list[str] = []
    never = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_store_as_ready, net, order, 10**9, never)
        await nursery.start(net[A].agent.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return len(order)


async def test_a_budget_from_the_controller_paces_a_pool_s_background_relays(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Plenty of link key, a pool that wants 64 relayed keys: unbudgeted it relays as fast
    # as relays go; at 256 bits/s (one 256-bit key a second) it relays a key a second, after
    # a burst of two seconds' worth.
    counts = {}
    for budget in (None, 256.0):
        root = tmp_path / str(budget)
        root.mkdir()
        async with open_net(
            root,
            links=[(A, B), (B, C)],
            pools=[(A, C)],
            link_blocks=range(4),
            block_bytes=64 * HOP_BYTES,
            watermarks=(64 * 256, 64 * 256),
        ) as net:
            if budget is not None:
                net[A].agent.set_budgets({C: budget})
            counts[budget] = await _relays_in(net, 10.0)
    assert counts[None] >= 30
    assert 8 <= counts[256.0] <= 2 + 10 + 1


async def test_under_budgets_forwarded_hops_keep_no_reserve_and_a_new_rate_keeps_tokens(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The reserve protects a link's own SAE pairs from relays; under budgets the
    allocation does (the keys cut for them are budgeted too), so a hop forwarded for
    another node's relay keeps none, and only a relay's first hop keeps it.  A rate
    that changes every report keeps the tokens earned: 1 s at 256 bits/s, then 1 s at 512,
    is 768 bits, three 256-bit relays."""
    settings = msgspec.structs.replace(SETTINGS, link_reserve_bits=4096)
    async with open_net(
        tmp_path, links=[(A, B), (B, C)], pools=[(A, C)], link_blocks=range(4), settings=settings
    ) as net:
        agent = net[A].agent
        assert agent.link_reserve() == 4096
        agent.set_budgets({})
        assert agent.link_reserve() == 4096  # a relay's own first hop keeps it
        assert agent.link_reserve(first_hop=False) == 0
        agent.set_budgets({C: 256.0})
        await trio.sleep(1.0)
        agent.set_budgets({C: 512.0})
        await trio.sleep(1.0)
        pool = next(iter(agent._pools.values()))
        assert [agent._budget_wait(pool, 256) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert agent._budget_wait(pool, 256) > 0
