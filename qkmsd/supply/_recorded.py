"""Service keys recorded at this node: fetched once each by their slaves, swept when stale.

Every key source records the keys its slaves here will fetch in the node's key store;
this is the one place that fetches them and erases them past their validity.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..keystore import RETAIN_ENDED_S, KeyStore, KeyStoreError
from ..log import get_logger
from ..storethread import StoreThread

log = get_logger("qkms.supply")

INLINE_FETCH_MAX_KEYS = 8
"""A fetch of at most this many keys may run on the event loop (``StoreThread.call_inline``);
a larger one always goes to the store thread, so that it cannot hold up other requests."""
SWEEP_INTERVAL_S = 1.0


class RecordedKeys:
    """Fetch and expiry of the service keys recorded in this node's store."""

    def __init__(
        self, *, store: KeyStore, store_thread: StoreThread, retain_ended: float = RETAIN_ENDED_S
    ) -> None:
        self._store = store
        self._thread = store_thread
        self._retain_ended = retain_ended

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Erase service keys past their validity, every second, until cancelled."""
        task_status.started()
        failing = False
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            try:
                expired = await self._thread.call(
                    self._store.expire_service_keys, retain_s=self._retain_ended
                )
            except KeyStoreError as exc:  # a full or read-only disk: try again, say it once
                if not failing:
                    log.error("supply.sweep_failed", error=str(exc)[:300])
                failing = True
                continue
            failing = False
            if expired:
                log.info("supply.keys_expired", count=expired)

    async def fetch(
        self, key_ids: Sequence[str], *, master: str, requester: str
    ) -> list[tuple[str, bytes]]:
        """See ``KeySource.fetch``."""
        call = (
            self._thread.call_inline if len(key_ids) <= INLINE_FETCH_MAX_KEYS else self._thread.call
        )
        return await call(
            self._store.fetch_service_keys, key_ids, master_sae=master, requester=requester
        )
