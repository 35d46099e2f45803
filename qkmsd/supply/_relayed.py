"""Keys for SAE pairs across an end-to-end pool: relayed key, served like a QKD link's.

An end-to-end pool with a distant node is a link whose blocks come from key relay; keys
are cut from it and reserved at the far node exactly as across a QKD link (the inner
``DirectLinkSource``, over the direct session between the two nodes).  What differs is
an empty pool: instead of refusing at once, the request asks relay for more key
(``top_up``) and waits for it up to ``wait_s``; if that fails, the 503 names why (no
route, a relay failed, or the pool stayed empty).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from ..config import SupplyPolicy
from ..errors import QkmsError
from ..keystore import CutKey, InsufficientKey
from ._direct import DirectLinkSource
from ._errors import Unavailable
from ._source import KeyOrder

TopUpFn = Callable[[str, int], Awaitable[None]]
MakePoolFn = Callable[[str], Awaitable[str | None]]
"""``make_pool(kme)``: the pool's link id with ``kme``, made now if it can be; else None."""
"""``top_up(kme, bits)``: relay until this node owns ``bits`` more ready end-to-end key
with ``kme``.  Raises an exception whose message says why it could not."""


class RelayedPoolSource:
    """The key source for target KMEs this node shares an end-to-end pool with."""

    def __init__(
        self,
        *,
        pools: DirectLinkSource,
        top_up: TopUpFn,
        wait_s: float,
        can_make: Callable[[str], bool] = lambda kme: False,
        make_pool: MakePoolFn | None = None,
    ) -> None:
        self._pools = pools
        self._top_up = top_up
        self._wait_s = wait_s
        self._can_make = can_make
        self._make_pool = make_pool

    def serves(self, target_kme: str) -> bool:
        return self._pools.serves(target_kme) or self._can_make(target_kme)

    async def available(
        self, master: str, slave: str, target_kme: str, policy: SupplyPolicy
    ) -> int:
        if not self._pools.serves(target_kme):
            return 0  # no pool yet: the first request makes one
        return await self._pools.available(master, slave, target_kme, policy)

    async def fetch(
        self, key_ids: Sequence[str], *, master: str, requester: str
    ) -> list[tuple[str, bytes]]:
        return await self._pools.fetch(key_ids, master=master, requester=requester)

    async def new_keys(self, order: KeyOrder) -> list[CutKey]:
        if not self._pools.serves(order.target_kme) and self._make_pool is not None:
            await self._make_pool(order.target_kme)
        if not self._pools.serves(order.target_kme):
            raise Unavailable(f"no end-to-end pool with {order.target_kme} could be made")
        try:
            return await self._pools.new_keys(order)
        except InsufficientKey:
            pass
        cause = f"the end-to-end pool with {order.target_kme} stayed empty"
        with trio.move_on_after(self._wait_s):
            try:
                await self._top_up(order.target_kme, order.number * order.size_bits)
            except QkmsError as exc:  # the relay's own reason, for the SAE
                cause = f"key relay to {order.target_kme} failed: {exc}"
            else:
                try:
                    return await self._pools.new_keys(order)
                except InsufficientKey:
                    pass
        raise Unavailable(f"not enough key for {order.target_kme}: {cause}")
