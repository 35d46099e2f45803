"""The peer side of ``supply.reserve``: record keys a neighbour cut for slaves attached here.

The neighbour cut the keys from blocks it owns and names them as segments; this node
consumes exactly those bytes of its copy of the blocks (refusing any overlap with bytes
already used) and records the keys for its slaves, durably, before it answers.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol import ErrorCode, SupplyBurn, SupplyReserve, SupplyResult

from ..config import SaeConfig, SupplyPolicy
from ..keystore import KeySpec, KeyStore, KeyStoreError, Segment
from ..log import get_logger
from ..storethread import StoreThread

log = get_logger("qkms.supply")

INLINE_RECORD_MAX_KEYS = 32
"""A reservation of at most this many keys (a default stock's refill) may be recorded on the
event loop when the store is idle (``StoreThread.call_inline``), so that fetches arriving
meanwhile need not wait behind it on the worker."""
INLINE_RECORD_SLOW_S = 0.02
"""Such a recording is mostly CPU (tens of microseconds a key): only past this is it taken
for a slow disk."""


class ReservationResponder:
    """Answers a neighbour's ``supply.reserve`` and ``supply.burn`` with ``supply.result``."""

    def __init__(
        self,
        *,
        node_id: str,
        saes: dict[str, SaeConfig],
        policy_for: Callable[[str, str], SupplyPolicy],
        store: KeyStore,
        store_thread: StoreThread,
        link_to: dict[str, str],
    ) -> None:
        self.node_id = node_id
        self._saes = saes
        self._policy_for = policy_for
        self._store = store
        self._thread = store_thread
        self._link_to = link_to

    async def handle(self, peer: str, message: SupplyReserve) -> SupplyResult:
        """Record the keys, or refuse with a code; never raises for what the peer asked."""
        code, text = "", ""
        if self._link_to.get(peer) != message.link_id:
            code, text = ErrorCode.UNKNOWN_LINK, f"{message.link_id} is not our link with {peer}"
        local = [
            s for s in message.slave_saes if (c := self._saes.get(s)) and c.kme == self.node_id
        ]
        if not code and not local:
            code = ErrorCode.NO_SLAVE_HERE
            text = f"none of the slave SAEs is attached to {self.node_id}"
        if not code:
            code, text = await self._record(message, local)
        if code:
            log.warning("supply.reserve_refused_here", peer=peer, code=code)
        return SupplyResult(id=message.id, ok=not code, code=code, message=text[:1000])

    async def on_burn(self, peer: str, message: SupplyBurn) -> SupplyResult:
        """The peer burnt bytes of its blocks (keys we never recorded, a relay hop it got
        no answer for): consume them here too, so that a block it used up is used up at
        this end as well.  Answered once the burn is durable (a peer that sent no ``id``
        gets no answer); bytes used here already are skipped, so a burn told twice is
        applied once.  Refused, never raised: a link that is not ours with the peer
        (``unknown-link``, nothing burnt), ranges outside their blocks or in blocks we own
        (``segment-refused``, the others burnt)."""
        answer_id = message.id or 0
        if self._link_to.get(peer) != message.link_id:
            log.warning("supply.burn_unknown_link", peer=peer, link=message.link_id)
            text = f"{message.link_id} is not our link with {peer}"
            return SupplyResult(id=answer_id, ok=False, code=ErrorCode.UNKNOWN_LINK, message=text)
        segments = [Segment(s.block_id, s.offset, s.length) for s in message.segments]

        def burn() -> tuple[int, list[str]]:
            wrong = self._store.misplaced_burns(message.link_id, segments)
            return self._store.burn_link_key(message.link_id, segments), wrong

        try:
            burnt, wrong = await self._thread.call(burn)
        except KeyStoreError as exc:  # the store failed: the peer tells it again later
            log.error("supply.burn_failed", peer=peer, error=str(exc)[:200])
            return SupplyResult(
                id=answer_id, ok=False, code=str(exc.wire_code), message=str(exc)[:1000]
            )
        log.info("supply.burnt", peer=peer, link=message.link_id, segments=burnt)
        if wrong:
            log.warning("supply.burn_refused_here", peer=peer, refused=len(wrong))
            text = f"{len(wrong)} of {len(segments)} ranges refused: {wrong[0]}"
            return SupplyResult(
                id=answer_id, ok=False, code=ErrorCode.SEGMENT_REFUSED, message=text[:1000]
            )
        return SupplyResult(id=answer_id, ok=True)

    async def _record(self, message: SupplyReserve, local: list[str]) -> tuple[str, str]:
        limits = {s: self._policy_for(message.master_sae, s).max_stored_keys for s in local}
        specs = [
            KeySpec(k.key_id, tuple(Segment(s.block_id, s.offset, s.length) for s in k.segments))
            for k in message.keys
        ]

        def record() -> tuple[str, str]:
            # One store call: no other call can record keys between the check and the record.
            for slave, limit in limits.items():
                stored = self._store.stored_service_keys(message.master_sae, slave)
                if stored + len(specs) > limit:
                    full = f"{slave} already holds {stored} of {limit} keys"
                    return ErrorCode.STORED_KEYS_FULL, full
            self._store.record_service_keys(
                message.link_id,
                specs,
                master_sae=message.master_sae,
                local_slaves=local,
                expires_at=message.expires_at,
            )
            return "", ""

        try:
            if len(specs) <= INLINE_RECORD_MAX_KEYS:
                return await self._thread.call_inline(record, slow_after=INLINE_RECORD_SLOW_S)
            return await self._thread.call(record)
        except KeyStoreError as exc:  # SegmentRefused, or the store failed
            return str(exc.wire_code), str(exc)
