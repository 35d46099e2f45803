"""The direct-link key source: keys cut from the link at KME_A, reserved at KME_B, and the
per-pair stock that reserves ahead of demand."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from protocol import SegmentRef, SupplyBurn, SupplyReserve, SupplyResult
from qkmsd.config import SupplyPolicy
from qkmsd.errors import PeerUnavailable
from qkmsd.keystore import BURNS_KEPT, KeyState, KeyStore, KeyStoreError, Segment
from qkmsd.supply import KeyOrder, Unavailable
from qkmsd.supply._direct import BURN_RESEND_S

from .conftest import BLOCK_BYTES, LINK, LinkEnds


def order(
    ends: LinkEnds,
    number: int = 1,
    *,
    size_bits: int | None = None,
    slaves: tuple[str, ...] = ("SAE_B",),
    master: str = "SAE_A",
) -> KeyOrder:
    policy = ends.policy(master, slaves[0])
    size = policy.key_size if size_bits is None else size_bits
    return KeyOrder(master, slaves, "KME_B", number, size, policy)


async def test_keys_cut_here_are_the_keys_the_slave_fetches_at_the_neighbour(
    ends: LinkEnds,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        keys = await ends.source.new_keys(order(ends, 3, size_bits=512))
        fetched = await ends.recorded_b.fetch(
            [k.key_id for k in keys], master="SAE_A", requester="SAE_B"
        )
        assert fetched == [(k.key_id, k.key) for k in keys]
        assert [len(k.key) for k in keys] == [64, 64, 64]
        nursery.cancel_scope.cancel()


async def test_a_refused_reservation_is_503_and_its_cut_bits_are_never_offered_again(
    ends: LinkEnds,
) -> None:
    async def refuse(peer: str, message: SupplyReserve) -> SupplyResult:
        return SupplyResult(id=message.id, ok=False, code="store-error", message="disk full")

    ends.answer = refuse
    before = ends.owned_ready_bits()
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable, match="target KME KME_B refused the keys: disk full"):
            await ends.source.new_keys(order(ends, 2, size_bits=512))
        assert ends.owned_ready_bits() == before - 2 * 512
        nursery.cancel_scope.cancel()


async def test_a_neighbour_that_does_not_answer_in_time_is_503(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    async def silent(peer: str, message: SupplyReserve) -> SupplyResult:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    ends.answer = silent
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable, match="did not confirm the keys in time"):
            await ends.source.new_keys(order(ends, 1, size_bits=512))
        nursery.cancel_scope.cancel()


# --- the per-pair stock ---------------------------------------------------------------------


async def test_a_pair_that_asked_once_gets_a_stock_and_is_then_served_with_no_round_trip(
    ends: LinkEnds,
) -> None:
    target = SupplyPolicy().stock_keys
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        first = await ends.source.new_keys(order(ends))  # no stock yet: reserved on request
        await trio.testing.wait_all_tasks_blocked()
        assert ends.source.statistics().stock_keys_in == target
        asked = len(ends.requests)
        stocked = await ends.source.new_keys(order(ends, 3))
        assert len(ends.requests) == asked  # no reservation for these
        assert ends.source.statistics().stock_keys_out == 3
        # The slave's KME already holds them, and no key goes out twice.
        fetched = await ends.recorded_b.fetch(
            [k.key_id for k in first + stocked], master="SAE_A", requester="SAE_B"
        )
        assert dict(fetched) == {k.key_id: k.key for k in first + stocked}
        assert len({k.key for k in first + stocked}) == 4
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "ask",
    [
        {"size_bits": 512},
        {"slaves": ("SAE_B", "SAE_C")},
        {"number": SupplyPolicy().stock_keys + 1},
    ],
    ids=["another size", "additional slaves", "more than the stock"],
)
async def test_requests_the_stock_was_not_cut_for_are_reserved_on_request(
    ends: LinkEnds, ask: dict[str, object]
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        await ends.source.new_keys(order(ends))
        await trio.testing.wait_all_tasks_blocked()
        asked = len(ends.requests)
        await ends.source.new_keys(order(ends, **ask))  # type: ignore[arg-type]
        assert len(ends.requests) > asked
        assert ends.source.statistics().stock_keys_out == 0
        nursery.cancel_scope.cancel()


async def test_a_stock_the_pool_cannot_fill_takes_nothing_and_the_pool_still_serves(
    ends: LinkEnds,
) -> None:
    # 4096 keys of 4096 bits: far more than the link holds; the refill fails whole.
    ends.policies[("SAE_A", "SAE_B")] = SupplyPolicy(key_size=4096, stock_keys=4096)
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        await ends.source.new_keys(order(ends))
        await trio.testing.wait_all_tasks_blocked()
        assert ends.source.statistics().stock_keys_in == 0
        left = ends.owned_ready_bits()
        assert left == 8 * BLOCK_BYTES * 8 - 4096  # nothing cut for the failed stock
        assert len(await ends.source.new_keys(order(ends, 2))) == 2
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "policy",
    [SupplyPolicy(stock_keys=0), SupplyPolicy(key_validity_s=30.0)],
    ids=["stock_keys = 0", "keys valid under a minute"],
)
async def test_a_pair_can_keep_no_stock(ends: LinkEnds, policy: SupplyPolicy) -> None:
    ends.policies[("SAE_A", "SAE_B")] = policy
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        for _ in range(3):
            await ends.source.new_keys(order(ends))
        await trio.testing.wait_all_tasks_blocked()
        assert ends.source.statistics().stock_keys_in == 0
        assert len(ends.requests) == 3  # one reservation per request, none ahead
        nursery.cancel_scope.cancel()


async def test_the_stock_counts_in_the_keys_available_to_the_pair(ends: LinkEnds) -> None:
    policy = ends.policy()
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        await ends.source.new_keys(order(ends))
        await trio.testing.wait_all_tasks_blocked()
        available = await ends.source.available("SAE_A", "SAE_B", "KME_B", policy)
        in_pool = ends.owned_ready_bits() // policy.key_size
        assert available == in_pool + policy.stock_keys
        nursery.cancel_scope.cancel()


async def test_bytes_cut_for_a_failed_reservation_are_burnt_at_the_neighbour_too(
    ends: LinkEnds,
) -> None:
    # A whole block cut, then refused: the block is used up at both ends, not READY at B.
    async def refuse(peer: str, message: SupplyReserve) -> SupplyResult:
        return SupplyResult(id=message.id, ok=False, code="store-error", message="disk full")

    ends.answer = refuse
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        assert ends.store_a.states(LINK, [0]) == {0: KeyState.ERASED}
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        nursery.cancel_scope.cancel()


async def test_burn_notices_wait_for_the_neighbour_to_come_back(ends: LinkEnds) -> None:
    async def unreachable(peer: str, message: SupplyReserve) -> SupplyResult:
        raise PeerUnavailable("peer KME_B is not connected")

    ends.answer, ends.up = unreachable, False
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable, match="unreachable"):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.READY}
        ends.up = True
        await ends.source.peer_up("KME_B")
        await trio.testing.wait_all_tasks_blocked()  # its flush, in the background
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        assert len(ends.sent) == 1
        nursery.cancel_scope.cancel()


async def test_a_burn_notice_lost_with_its_session_is_sent_again_at_the_next(
    ends: LinkEnds,
) -> None:
    # Found with the fault proxy: a notice sent as the session broke never arrived, and
    # the block stayed READY at B while used up at A.
    async def unreachable(peer: str, message: SupplyReserve) -> SupplyResult:
        raise PeerUnavailable("the session with KME_B ended before it answered")

    ends.answer, ends.delivers = unreachable, False
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        assert len(ends.sent) == 1
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.READY}
        ends.delivers = True
        await ends.source.peer_up("KME_B")
        await trio.testing.wait_all_tasks_blocked()  # its flush, in the background
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        await ends.source.peer_up("KME_B")  # and again: B skips what it burnt
        await trio.testing.wait_all_tasks_blocked()  # its flush, in the background
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        nursery.cancel_scope.cancel()


async def test_a_burn_notice_cut_short_by_a_cancelled_caller_is_sent_later(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    # Found with the cutevery fault: a request gave up (or its session was replaced)
    # while its burn notice was being sent; the bytes taken for that notice were neither
    # told nor kept, and the block stayed READY at B while used up at A.
    async def unreachable(peer: str, message: SupplyReserve) -> SupplyResult:
        raise PeerUnavailable("the session with KME_B ended before it answered")

    ends.answer = unreachable
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        await ends.source.peer_up("KME_B")  # the session the request then runs in
        await trio.testing.wait_all_tasks_blocked()
        ends.stalls = True
        with trio.move_on_after(1.0) as gave_up:
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        assert gave_up.cancelled_caught  # cancelled inside the burn notice's send
        assert ends.sent == [] and ends.store_b.states(LINK, [0]) == {0: KeyState.READY}
        ends.stalls = False
        await ends.source.peer_up("KME_B")
        await trio.testing.wait_all_tasks_blocked()  # its flush, in the background
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        nursery.cancel_scope.cancel()


async def test_a_burn_notice_cut_short_is_sent_while_the_session_lasts(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    # No new session comes: the periodic resend flushes what the cancelled one left.
    async def unreachable(peer: str, message: SupplyReserve) -> SupplyResult:
        raise PeerUnavailable("the session with KME_B ended before it answered")

    ends.answer, ends.stalls = unreachable, True
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with trio.move_on_after(1.0):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        ends.stalls = False
        await trio.sleep(BURN_RESEND_S * 1.5)
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        nursery.cancel_scope.cancel()


async def test_a_burn_notice_lost_twice_is_told_again_at_every_new_session(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    # Sessions cut every 600 ms: the notice and its resend two seconds later were both
    # lost in flight, and the next sessions never heard of those bytes.
    async def unreachable(peer: str, message: SupplyReserve) -> SupplyResult:
        raise PeerUnavailable("the session with KME_B ended before it answered")

    ends.answer = unreachable
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        await ends.source.peer_up("KME_B")  # the session the request then runs in
        await trio.testing.wait_all_tasks_blocked()
        ends.delivers = False
        with pytest.raises(Unavailable):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        await trio.sleep(BURN_RESEND_S * 1.5)
        assert len(ends.sent) == 2  # told, then once more: both lost
        for _ in range(2):  # lost again, twice
            await ends.source.peer_up("KME_B")
            await trio.testing.wait_all_tasks_blocked()  # its flush, in the background
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.READY}
        ends.delivers = True
        await ends.source.peer_up("KME_B")
        await trio.testing.wait_all_tasks_blocked()  # its flush, in the background
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        nursery.cancel_scope.cancel()


async def test_burns_not_told_before_a_restart_are_told_after_it(ends: LinkEnds) -> None:
    # A node killed while its neighbour was away forgot the burns it had not told: B's
    # copy of those bytes stayed READY, unused, until the block expired.
    async def unreachable(peer: str, message: SupplyReserve) -> SupplyResult:
        raise PeerUnavailable("peer KME_B is not connected")

    ends.answer, ends.up = unreachable, False
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable, match="unreachable"):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        nursery.cancel_scope.cancel()  # the node stops before B is back
    assert ends.sent == [] and ends.store_b.states(LINK, [0]) == {0: KeyState.READY}
    restarted, ends.up = ends.restart(), True
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        await restarted.peer_up("KME_B")
        await trio.testing.wait_all_tasks_blocked()  # its flush, in the background
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        nursery.cancel_scope.cancel()


async def test_a_burn_while_the_node_stops_is_told_and_does_not_fail_the_source(
    ends: LinkEnds,
) -> None:
    # Found by the integration tests: a relay hop burnt as the node stopped, after its
    # store thread had stopped, failed the source's task and with it the node's stop.
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        ends.thread_a.stopped = True
        ends.source.burn_segments("KME_B", [Segment(0, 0, 64)])
        await trio.testing.wait_all_tasks_blocked()
        assert len(ends.sent) == 1
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.READY}  # 64 of 1024 bytes
        nursery.cancel_scope.cancel()


async def test_a_burn_notice_skips_bytes_the_neighbour_already_recorded(ends: LinkEnds) -> None:
    # A reservation that timed out at A but was recorded at B: the keys stay fetchable.
    keys = await ends.source.new_keys(order(ends, 2, size_bits=512))
    segments = [s for k in keys for s in k.segments]
    burnt = ends.store_b.burn_link_key(LINK, segments)
    assert burnt == 0
    fetched = await ends.recorded_b.fetch(
        [k.key_id for k in keys], master="SAE_A", requester="SAE_B"
    )
    assert dict(fetched) == {k.key_id: k.key for k in keys}


async def test_nothing_is_cut_for_a_neighbour_without_a_session(ends: LinkEnds) -> None:
    ends.source._is_up = lambda peer: False
    before = ends.owned_ready_bits()
    with pytest.raises(Unavailable, match="KME_B is unreachable: not connected"):
        await ends.source.new_keys(order(ends, 1, size_bits=512))
    assert ends.owned_ready_bits() == before and ends.requests == []


# --- the controller's budget ------------------------------------------------------------------


async def test_keys_cut_for_a_neighbour_keep_to_the_controllers_budget(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    """A budget of 512 bit/s holds two seconds' worth (1,024 bits), and starts full: two
    keys of 512 bits at once, then 503 naming the budget, and one more a second later;
    nothing is cut for a refusal.  Without a budget the same request is served."""
    ends.source.set_budgets({"KME_B": 512.0})
    assert ends.source.budget("KME_B") == 512.0
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        await ends.source.new_keys(order(ends, 2, size_bits=512))
        before = ends.owned_ready_bits()
        with pytest.raises(Unavailable, match="budget of 512 bit/s"):
            await ends.source.new_keys(order(ends, 1, size_bits=512))
        assert ends.owned_ready_bits() == before
        await trio.sleep(1.0)
        await ends.source.new_keys(order(ends, 1, size_bits=512))
        ends.source.set_budgets({})
        assert ends.source.budget("KME_B") is None
        await ends.source.new_keys(order(ends, 2, size_bits=512))
        nursery.cancel_scope.cancel()


# --- acknowledged burns (a neighbour that announces FEATURE_BURN_ACK) ---------------------------
# The tests above with ``ends.acks`` false are those of a neighbour of an older version: one-way
# notices, told again at every new session.


async def _unreachable(peer: str, message: SupplyReserve) -> SupplyResult:
    raise PeerUnavailable("the session with KME_B ended before it answered")


async def test_an_acknowledged_burn_is_not_told_again_and_leaves_the_store(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    ends.acks, ends.answer = True, _unreachable
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        await trio.testing.wait_all_tasks_blocked()
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        assert len(ends.burn_requests) == 1 and ends.burn_requests[0].id is not None
        assert ends.store_a.kept_burns(LINK) == []  # acknowledged: forgotten
        await trio.sleep(BURN_RESEND_S * 3)
        await ends.source.peer_up("KME_B")
        await trio.testing.wait_all_tasks_blocked()
        assert len(ends.burn_requests) == 1  # never told again
        assert ends.source.statistics().burns_acked == 1
        assert ends.source.unsettled() == 0
        nursery.cancel_scope.cancel()


async def test_an_unacknowledged_burn_is_told_again_until_the_neighbour_answers(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    # The neighbour's store fails (or the answer never comes): told every BURN_RESEND_S
    # while it is connected, and kept in the store, until the answer says it is durable.
    ends.acks, ends.answer = True, _unreachable
    real_burn = ends.store_b.burn_link_key

    def failing_burn(link_id: str, segments: object) -> int:
        raise KeyStoreError("disk I/O error")

    ends.store_b.burn_link_key = failing_burn  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        await trio.sleep(BURN_RESEND_S * 2.5)
        assert len(ends.burn_requests) == 3  # at once, then twice more: none taken
        assert ends.store_a.kept_burns(LINK) == [Segment(0, 0, BLOCK_BYTES)]
        assert ends.source.unsettled() == 1
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.READY}
        ends.store_b.burn_link_key = real_burn  # type: ignore[method-assign]
        await trio.sleep(BURN_RESEND_S * 1.5)
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        assert ends.store_a.kept_burns(LINK) == [] and ends.source.unsettled() == 0
        told = len(ends.burn_requests)
        await trio.sleep(BURN_RESEND_S * 3)
        assert len(ends.burn_requests) == told
        nursery.cancel_scope.cancel()


async def test_a_burn_whose_answer_is_lost_is_told_again_and_applied_once(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    ends.acks, ends.answer, ends.burn_answers = True, _unreachable, False
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        with pytest.raises(Unavailable):
            await ends.source.new_keys(order(ends, 1, size_bits=BLOCK_BYTES * 8))
        await trio.testing.wait_all_tasks_blocked()
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}  # applied there
        assert ends.store_a.kept_burns(LINK) == [Segment(0, 0, BLOCK_BYTES)]  # not known here
        ends.burn_answers = True
        await ends.source.peer_up("KME_B")  # the next session
        await trio.testing.wait_all_tasks_blocked()
        assert len(ends.burn_requests) == 2
        assert ends.store_a.kept_burns(LINK) == []
        # Applied once: B consumed the block's bytes once, the second telling skipped them.
        assert ends.store_b.burn_link_key(LINK, [Segment(0, 0, BLOCK_BYTES)]) == 0
        nursery.cancel_scope.cancel()


async def test_unacknowledged_burns_are_bounded_and_the_oldest_dropped_are_counted(
    ends: LinkEnds,
) -> None:
    ends.acks, ends.up = True, False
    ends.source._is_up = lambda peer: False
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        ends.source.burn_segments("KME_B", [Segment(b, 0, 8) for b in range(100, 100 + BURNS_KEPT)])
        ends.source.burn_segments("KME_B", [Segment(b, 0, 8) for b in range(1, 4)])  # older ids
        ends.source.burn_segments("KME_B", [Segment(10**6, 0, 8)])
        await trio.testing.wait_all_tasks_blocked()
        assert ends.source.statistics().burns_dropped == 4
        assert ends.source.unsettled() == BURNS_KEPT
        kept = ends.store_a.kept_burns(LINK)
        assert len(kept) == BURNS_KEPT and Segment(10**6, 0, 8) in kept
        nursery.cancel_scope.cancel()


async def test_a_reservation_in_flight_when_the_node_was_killed_is_burnt_after_its_restart(
    ends: LinkEnds,
) -> None:
    # Killed while the reservation waited for its answer: the outcome was never known
    # here, and nothing had been noted as burnt.  B's copy stayed READY after the restart.
    async def hangs(peer: str, message: SupplyReserve) -> SupplyResult:
        await trio.sleep_forever()
        raise AssertionError

    ends.acks, ends.answer = True, hangs
    with trio.move_on_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(ends.source.run)
            nursery.start_soon(ends.source.new_keys, order(ends, 1, size_bits=BLOCK_BYTES * 8))
            await trio.testing.wait_all_tasks_blocked()
            assert len(ends.requests) == 1
            ends.store_a.close()  # the kill: nothing more reaches the disk
            nursery.cancel_scope.cancel()
    assert ends.store_b.states(LINK, [0]) == {0: KeyState.READY}
    ends.store_a = KeyStore.open(ends.path_a, ends.key_a)
    restarted = ends.restart()
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        await restarted.peer_up("KME_B")
        await trio.testing.wait_all_tasks_blocked()
        assert ends.store_b.states(LINK, [0]) == {0: KeyState.ERASED}
        assert ends.store_a.kept_burns(LINK) == []
        nursery.cancel_scope.cancel()


async def test_an_answered_reservation_is_forgotten_in_the_store_and_not_burnt(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    ends.acks = True
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        keys = await ends.source.new_keys(order(ends, 2, size_bits=512))
        await trio.sleep(BURN_RESEND_S * 1.5)  # the batch that forgets bytes answered for
        nursery.cancel_scope.cancel()
    ends.store_a.close()
    ends.store_a = KeyStore.open(ends.path_a, ends.key_a)  # a restart tells nothing
    assert ends.store_a.kept_burns(LINK) == []
    fetched = await ends.recorded_b.fetch(
        [k.key_id for k in keys], master="SAE_A", requester="SAE_B"
    )
    assert dict(fetched) == {k.key_id: k.key for k in keys}


# --- the neighbour's side of a burn -------------------------------------------------------------


async def test_a_burn_for_a_link_that_is_not_ours_is_refused_with_a_code(ends: LinkEnds) -> None:
    burn = SupplyBurn(link_id="X~Y", segments=[SegmentRef(0, 0, 8)], id=7)
    result = await ends.responder.on_burn("KME_A", burn)
    assert (result.id, result.ok, result.code) == (7, False, "unknown-link")
    assert ends.store_b.states(LINK, [0]) == {0: KeyState.READY}


async def test_a_burn_outside_its_block_is_refused_and_the_rest_burnt(ends: LinkEnds) -> None:
    burn = SupplyBurn(
        link_id=LINK,
        segments=[SegmentRef(0, 0, BLOCK_BYTES), SegmentRef(1, BLOCK_BYTES - 8, 64)],
        id=8,
    )
    result = await ends.responder.on_burn("KME_A", burn)
    assert (result.id, result.ok, result.code) == (8, False, "segment-refused")
    assert "outside the block's 1024 bytes" in result.message
    assert ends.store_b.states(LINK, [0, 1]) == {0: KeyState.ERASED, 1: KeyState.READY}


async def test_a_refused_burn_is_not_told_again(
    ends: LinkEnds, autojump_clock: trio.testing.MockClock
) -> None:
    ends.acks = True
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        ends.source.burn_segments("KME_B", [Segment(2, BLOCK_BYTES - 8, 64)])
        await trio.sleep(BURN_RESEND_S * 2.5)
        assert len(ends.burn_requests) == 1 and ends.source.unsettled() == 0
        assert ends.store_a.kept_burns(LINK) == []
        nursery.cancel_scope.cancel()
