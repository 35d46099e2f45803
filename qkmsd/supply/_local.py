"""Keys for SAE pairs whose slaves are all attached to this node: from the OS CSPRNG.

No QKD link is involved: both SAEs fetch from this KME, so the key never leaves it
except to them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from ..config import SupplyPolicy
from ..keystore import CutKey, KeyStore
from ..storethread import StoreThread
from ._ids import new_key_id
from ._recorded import RecordedKeys
from ._source import KeyOrder


class LocalSource:
    """The key source for target KME = this node."""

    def __init__(
        self,
        *,
        node_id: str,
        store: KeyStore,
        store_thread: StoreThread,
        recorded: RecordedKeys,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self._store = store
        self._thread = store_thread
        self._recorded = recorded
        self._clock = clock

    def serves(self, target_kme: str) -> bool:
        return target_kme == self.node_id

    async def new_keys(self, order: KeyOrder) -> list[CutKey]:
        keys = [
            CutKey(new_key_id(), (), os.urandom(order.size_bits // 8)) for _ in range(order.number)
        ]
        await self._thread.call(
            self._store.record_local_service_keys,
            keys,
            master_sae=order.master,
            local_slaves=list(order.slaves),
            expires_at=self._clock() + order.policy.key_validity_s,
        )
        return keys

    async def available(
        self, master: str, slave: str, target_kme: str, policy: SupplyPolicy
    ) -> int:
        return policy.max_stored_keys  # the CSPRNG does not run dry

    async def fetch(
        self, key_ids: Sequence[str], *, master: str, requester: str
    ) -> list[tuple[str, bytes]]:
        return await self._recorded.fetch(key_ids, master=master, requester=requester)
