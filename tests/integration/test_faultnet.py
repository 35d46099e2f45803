"""The fault soak's comparison of both ends of each pool (``faultnet.settled_pools``):
a difference seen while a relay hop, a reservation or a burn is under way passes once the
network is quiet and the ends agree; a difference that lasts while it is quiet fails."""

from __future__ import annotations

from typing import Any, cast

import trio
import trio.testing

from .faultnet import FaultNet, PoolComparison, Settling, settled_pools

LASTS = {"KME_A~KME_B": 7}


class Script:
    """A network seen ``busy_looks`` times busy, whose ends differ in ``differing`` of
    the comparisons (the first ones) made while it is quiet."""

    def __init__(self, busy_looks: int, differing: int) -> None:
        self.busy_looks = busy_looks
        self.differing = differing
        self.compared_busy = 0
        self.busy_now = False

    def busy(self, net: FaultNet) -> list[str]:
        self.busy_now = self.busy_looks > 0
        self.busy_looks -= 1
        return ["KME_A: 1 relay hops under way"] if self.busy_now else []

    def compare(self, net: FaultNet, link_id: str, last: int) -> PoolComparison:
        self.compared_busy += self.busy_now
        problems = ["block 7: READY at one end only"] if self.differing > 0 else []
        self.differing -= 1
        return PoolComparison(link_id, last + 1, last, 0, problems)


async def settle(script: Script, limit_s: float) -> tuple[dict[str, Any] | None, Settling]:
    seen = Settling()
    found = None
    with trio.move_on_after(limit_s):
        found = await settled_pools(
            cast(FaultNet, None), LASTS, busy=script.busy, compare=script.compare, seen=seen
        )
    return found, seen


async def test_a_network_busy_for_a_while_is_compared_once_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script(busy_looks=100, differing=0)
    found, seen = await settle(script, 25.0)
    assert found is not None and not found["KME_A~KME_B"].problems
    assert script.compared_busy == 0
    assert seen.quiet_looks == 1


async def test_a_difference_that_ends_while_quiet_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    found, seen = await settle(Script(busy_looks=3, differing=4), 25.0)
    assert found is not None
    assert seen.quiet_looks == 5


async def test_a_difference_that_lasts_while_quiet_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    found, seen = await settle(Script(busy_looks=3, differing=10**9), 25.0)
    assert found is None
    assert not seen.busy and seen.quiet_looks > 100
    assert "still differing" in str(seen) and "block 7" in str(seen)


async def test_a_network_never_quiet_fails_and_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    found, seen = await settle(Script(busy_looks=10**9, differing=0), 25.0)
    assert found is None
    assert seen.quiet_looks == 0
    assert "never quiet" in str(seen) and "relay hops under way" in str(seen)
