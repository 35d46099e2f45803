"""The key supply agent (KSA): ETSI GS QKD 014 key delivery to SAEs.

Theory of operation
-------------------
An SAE is known by its TLS client certificate (CN = SAE id, OU = ``sae``) and
must be attached to this node (``[saes.X] kme``).  ``enc_keys`` from master M
for slave S, where S is attached to node T:

* T is a neighbour over a QKD link: cut the keys from the blocks of that link
  this node owns (exact pool bits), then ask T to consume the same bits and
  record the keys for S (``supply.reserve``) and wait for T's durable
  ``supply.result``.  Only then answer M.  If T refuses or does not answer in
  time, the cut bits are burnt, never offered again, and M gets 503.
* T is this node: the keys come from the node's CSPRNG and are recorded here.
* Otherwise: 503 until key relay fills end-to-end pools.

``dec_keys`` by S for master M hands out the recorded keys once each; a key that
exists for M but does not name S is 401; unknown or already fetched is 400.
Keys for an SAE that registered a hybrid public key are wrapped (``qkms_pqc``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from protocol import (
    MAX_KEYS_PER_RESERVATION,
    ReservedKey,
    SegmentRef,
    SupplyReserve,
    SupplyResult,
    etsi014,
)
from qkms_pqc import (
    ETSI014_CONTEXT,
    HybridPublicKey,
    PqcError,
    wrap,
    wrapped_key_extension,
)

from ..config import SaeConfig, SupplyPolicy
from ..http import Request, Response
from ..keystore import (
    RETAIN_ENDED_S,
    CutKey,
    KeySpec,
    KeyStore,
    KeyStoreError,
    Segment,
)
from ..log import get_logger
from ..storethread import StoreThread
from ._errors import (
    HANDLED,
    BadRequest,
    SupplyError,
    Unauthorised,
    Unavailable,
    error_response,
)
from ._ids import new_key_id
from ._policy import RateLimiter, derive_keys
from ._stock import PairStock

log = get_logger("qkms.supply")

SendFn = Callable[[str, Any], Awaitable[bool]]

# extension_mandatory names this KME understands.
EXT_PQC_WRAP = "qkms_pqc_wrap"
SUPPORTED_MANDATORY = frozenset({EXT_PQC_WRAP})
# Reservations from peers served at once: they share store commits (group commit).
RESERVATIONS_IN_FLIGHT = 256
# A pair's stock is not refilled again within this many seconds of a failed refill.
STOCK_RETRY_S = 1.0
# Pairs whose keys are valid for less than this keep no stock.
STOCK_MIN_VALIDITY_S = 60.0
# dec_keys for at most this many keys may run on the event loop (StoreThread.call_inline).
INLINE_FETCH_MAX_KEYS = 8
# A peer's reservation of at most this many keys (a default stock's refill) may be
# recorded on the event loop too: about 30 us of CPU a key, so up to about 1 ms.
INLINE_RECORD_MAX_KEYS = 32
# Such a recording is mostly CPU, several ms on a busy machine: only past this is it taken
# for a slow disk (see StoreThread.call_inline).
INLINE_RECORD_SLOW_S = 0.02


@dataclasses.dataclass
class _Pending:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: SupplyResult | None = None


class KeySupply:
    """Serves ETSI 014 requests from the node's key pools.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        saes: dict[str, SaeConfig],
        policy_for: Callable[[str, str], SupplyPolicy],
        store: KeyStore,
        store_thread: StoreThread,
        send: SendFn,
        link_to: dict[str, str],
        pqc_keys: dict[str, HybridPublicKey],
        reserve_timeout: float,
        retain_ended: float = RETAIN_ENDED_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self._saes = saes
        self._policy_for = policy_for
        self._store = store
        self._thread = store_thread
        self._send = send
        self._link_to = link_to
        self._pqc_keys = pqc_keys
        self._reserve_timeout = reserve_timeout
        self._retain_ended = retain_ended
        self._clock = clock
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._limits = RateLimiter(clock=trio.current_time)
        self._counts = {
            "enc_keys": 0,
            "dec_keys": 0,
            "keys_out": 0,
            "refused": 0,
            "stock_keys_in": 0,
            "stock_keys_out": 0,
        }
        self._stocks: dict[tuple[str, str], PairStock] = {}
        self._nursery: trio.Nursery | None = None
        self._reservations = trio.CapacityLimiter(RESERVATIONS_IN_FLIGHT)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve peer reservations; erase service keys past their validity.  Until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(1.0)
                expired = await self._thread.call(
                    self._store.expire_service_keys, retain_s=self._retain_ended
                )
                if expired:
                    log.info("supply.keys_expired", count=expired)

    # --- HTTP ----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Answer one ETSI 014 request.  Never raises for bad input."""
        try:
            caller = self._caller(request)
            call = etsi014.parse_api_path(request.method, request.target)
            if call.kind is etsi014.ApiKind.STATUS:
                return await self._status(caller, call.sae_id)
            if call.kind is etsi014.ApiKind.ENC_KEYS:
                req = call.key_request
                if req is None:
                    req = etsi014.decode_key_request(request.body)
                return await self._enc_keys(caller, call.sae_id, req)
            ids = call.key_ids
            if ids is None:
                ids = etsi014.decode_key_ids(request.body)
            return await self._dec_keys(caller, call.sae_id, ids)
        except HANDLED as exc:
            if not isinstance(exc, Unauthorised):
                self._counts["refused"] += 1
            return error_response(exc)

    def _caller(self, request: Request) -> str:
        peer = request.peer
        if peer is None or peer.role != "sae":
            raise Unauthorised("no SAE certificate")
        sae = self._saes.get(peer.common_name)
        if sae is None or sae.kme != self.node_id:
            raise Unauthorised(f"SAE {peer.common_name} is not attached to {self.node_id}")
        return peer.common_name

    def _target(self, master: str, slave: str) -> SaeConfig:
        if slave == master:
            raise BadRequest("master and slave SAE must differ")
        sae = self._saes.get(slave)
        if sae is None:
            raise BadRequest(f"unknown slave SAE {slave!r}")
        return sae

    async def _status(self, master: str, slave: str) -> Response:
        target = self._target(master, slave)
        policy = self._policy_for(master, slave)
        stored = 0
        if target.kme == self.node_id:
            stored = policy.max_stored_keys
        elif target.kme in self._link_to:
            pool = await self._thread.call(self._store.pool, self._link_to[target.kme])
            stock = self._stocks.get((master, slave))
            stocked = len(stock) if stock is not None else 0
            stored = min(policy.max_stored_keys, pool.owned_ready_bits // policy.key_size + stocked)
        status = etsi014.Status(
            source_KME_ID=self.node_id,
            target_KME_ID=target.kme,
            master_SAE_ID=master,
            slave_SAE_ID=slave,
            key_size=policy.key_size,
            stored_key_count=stored,
            max_key_count=policy.max_stored_keys,
            max_key_per_request=policy.max_key_per_request,
            max_key_size=policy.max_key_size,
            min_key_size=policy.min_key_size,
            max_SAE_ID_count=policy.max_sae_id_count,
        )
        return Response(200, etsi014.encode_json(status))

    async def _enc_keys(self, master: str, slave: str, req: etsi014.KeyRequest) -> Response:
        target = self._target(master, slave)
        policy = self._policy_for(master, slave)
        number = 1 if req.number is None else req.number
        size = policy.key_size if req.size is None else req.size
        if size % 8:
            raise BadRequest(etsi014.MSG_SIZE_NOT_MULTIPLE_OF_8)
        if not policy.min_key_size <= size <= policy.max_key_size:
            raise BadRequest(
                f"size {size} outside {policy.min_key_size}..{policy.max_key_size} bits"
            )
        if number > policy.max_key_per_request:
            raise BadRequest(
                f"number {number} exceeds max_key_per_request {policy.max_key_per_request}"
            )
        # Wrapping follows the SAE's registration; the extension only insists on it.
        self._check_mandatory_extensions(master, req.extension_mandatory or [])
        slaves = self._slaves(master, slave, target, req.additional_slave_SAE_IDs or [], policy)
        self._limits.take((master, slave), number, policy)

        stocked = (
            target.kme in self._link_to
            and _stock_target(policy) > 0
            and slaves == [slave]
            and size == policy.key_size
        )
        keys = self._take_stock(master, slave, number, policy) if stocked else None
        if keys is None:
            keys = await self._new_keys(master, slave, target.kme, number, size, slaves, policy)
        if stocked:
            self._refill_soon(master, slave, target.kme, policy)
        self._counts["enc_keys"] += 1
        self._counts["keys_out"] += number
        delivered = derive_keys(policy, [(k.key_id, k.key) for k in keys])
        return self._container(master, delivered)

    async def _new_keys(
        self,
        master: str,
        slave: str,
        target_kme: str,
        number: int,
        size: int,
        slaves: list[str],
        policy: SupplyPolicy,
    ) -> list[CutKey]:
        """Keys made for this request: from the CSPRNG if every SAE is here, else cut from
        the link to the target KME and reserved there."""
        key_ids = [new_key_id() for _ in range(number)]
        expires_at = self._clock() + policy.key_validity_s
        here = [s for s in slaves if self._saes[s].kme == self.node_id]
        there = [s for s in slaves if s not in here]
        if target_kme == self.node_id:
            keys = [CutKey(k, (), os.urandom(size // 8)) for k in key_ids]
            await self._thread.call(
                self._store.record_local_service_keys,
                keys,
                master_sae=master,
                local_slaves=here,
                expires_at=expires_at,
            )
            return keys
        if target_kme in self._link_to:
            return await self._cut_and_reserve(
                master, target_kme, key_ids, size, here, there, expires_at
            )
        raise Unavailable(
            f"no QKD link from {self.node_id} to {target_kme} (SAE {slave}); keys for SAEs "
            "on distant nodes need key relay, which this node does not offer yet"
        )

    def _check_mandatory_extensions(
        self, master: str, extensions: Sequence[dict[str, Any]]
    ) -> None:
        names = [name for ext in extensions for name in ext]
        unsupported = [n for n in names if n not in SUPPORTED_MANDATORY]
        if unsupported:
            raise BadRequest(
                etsi014.MSG_EXTENSION_MANDATORY_UNSUPPORTED,
                details=[{"extension_mandatory_unsupported": n} for n in unsupported],
            )
        want = any(ext.get(EXT_PQC_WRAP) for ext in extensions)
        if want and master not in self._pqc_keys:
            raise BadRequest(
                etsi014.MSG_EXTENSION_MANDATORY_UNMET,
                details=[{EXT_PQC_WRAP: f"no PQC public key registered for {master}"}],
            )

    def _slaves(
        self,
        master: str,
        slave: str,
        target: SaeConfig,
        additional: Sequence[str],
        policy: SupplyPolicy,
    ) -> list[str]:
        if len(additional) > policy.max_sae_id_count:
            raise BadRequest(
                f"{len(additional)} additional_slave_SAE_IDs exceed max_SAE_ID_count "
                f"{policy.max_sae_id_count}"
            )
        slaves = [slave]
        for extra in additional:
            sae = self._saes.get(extra)
            if sae is None:
                raise BadRequest(f"unknown additional slave SAE {extra!r}")
            if extra == master or extra in slaves:
                raise BadRequest(f"additional slave SAE {extra!r} repeats the master or a slave")
            if sae.kme not in (target.kme, self.node_id):
                raise BadRequest(
                    f"additional slave SAE {extra!r} is attached to {sae.kme}; this KME serves "
                    f"additional slaves attached to {target.kme} or {self.node_id} only"
                )
            slaves.append(extra)
        return slaves

    async def _cut_and_reserve(
        self,
        master: str,
        target_kme: str,
        key_ids: list[str],
        size: int,
        here: list[str],
        there: list[str],
        expires_at: float,
        keep: int = 0,
    ) -> list[CutKey]:
        link_id = self._link_to[target_kme]
        keys: list[CutKey] = await self._thread.call(
            self._store.cut_service_keys,
            link_id,
            [(k, size // 8) for k in key_ids],
            master_sae=master,
            local_slaves=here,
            expires_at=expires_at,
            slaves=[*here, *there],
            keep=keep,
        )
        request_id = self._next_id
        self._next_id += 1
        message = SupplyReserve(
            id=request_id,
            link_id=link_id,
            master_sae=master,
            slave_saes=there,
            expires_at=expires_at,
            keys=[
                ReservedKey(
                    key_id=k.key_id,
                    segments=[SegmentRef(s.block_id, s.offset, s.length) for s in k.segments],
                )
                for k in keys
            ],
        )
        pending = self._pending[request_id] = _Pending()
        try:
            if not await self._send(target_kme, message):
                raise Unavailable(f"target KME {target_kme} is unreachable")
            with trio.move_on_after(self._reserve_timeout):
                await pending.done.wait()
        finally:
            del self._pending[request_id]
        result = pending.result
        if result is None:
            log.warning("supply.reserve_timeout", peer=target_kme, keys=len(keys))
            raise Unavailable(f"target KME {target_kme} did not confirm the keys in time")
        if not result.ok:
            log.warning("supply.reserve_refused", peer=target_kme, code=result.code)
            raise Unavailable(f"target KME {target_kme} refused the keys: {result.message}")
        return keys

    # --- the per-pair stock (see ._stock) ----------------------------------------------

    def _stock(self, master: str, slave: str, policy: SupplyPolicy) -> PairStock:
        stock = self._stocks.get((master, slave))
        if stock is None:
            stock = self._stocks[(master, slave)] = PairStock(_stock_target(policy))
        return stock

    def _take_stock(
        self, master: str, slave: str, number: int, policy: SupplyPolicy
    ) -> list[CutKey] | None:
        keys = self._stock(master, slave, policy).take(number, now=self._clock())
        if keys is not None:
            self._counts["stock_keys_out"] += number
        return keys

    def _refill_soon(self, master: str, slave: str, target_kme: str, policy: SupplyPolicy) -> None:
        """Start topping the pair's stock up in the background, if it runs low."""
        assert self._nursery is not None, "run() first"
        stock = self._stock(master, slave, policy)
        if stock.wanted(self._clock(), retry_after=STOCK_RETRY_S):
            stock.refilling = True
            self._nursery.start_soon(self._refill, master, slave, target_kme, stock, policy)

    async def _refill(
        self, master: str, slave: str, target_kme: str, stock: PairStock, policy: SupplyPolicy
    ) -> None:
        try:
            while (want := stock.shortfall(self._clock())) > 0:
                number = min(want, MAX_KEYS_PER_RESERVATION)
                expires_at = self._clock() + policy.key_validity_s
                try:
                    keys = await self._cut_and_reserve(
                        master,
                        target_kme,
                        [new_key_id() for _ in range(number)],
                        policy.key_size,
                        [],
                        [slave],
                        expires_at,
                        # A stock takes from surplus only: at least as much stays in the
                        # pool for requests it does not cover (other pairs, other sizes).
                        keep=number * policy.key_size // 8,
                    )
                except (SupplyError, KeyStoreError) as exc:  # short pool, peer away or full
                    # Retried while requests come (at most once a second): say it once.
                    first = stock.failed_at == float("-inf")
                    stock.failed_at = self._clock()
                    (log.info if first else log.debug)(
                        "supply.stock_refill_failed",
                        master=master,
                        slave=slave,
                        reason=str(exc)[:200],
                    )
                    return
                stock.add(keys, expires_at=expires_at, validity_s=policy.key_validity_s)
                stock.failed_at = float("-inf")
                self._counts["stock_keys_in"] += number
        finally:
            stock.refilling = False

    async def _dec_keys(self, slave: str, master: str, ids: etsi014.KeyIDs) -> Response:
        key_ids = [ref.key_ID.lower() for ref in ids.key_IDs]
        if len(set(key_ids)) != len(key_ids):
            raise BadRequest("key_IDs repeats a key ID")
        # A small fetch runs on the event loop when the store is idle (see call_inline); a
        # large one on the store thread, so that it cannot hold up other requests for long.
        call = (
            self._thread.call_inline if len(key_ids) <= INLINE_FETCH_MAX_KEYS else self._thread.call
        )
        got = await call(
            self._store.fetch_service_keys, key_ids, master_sae=master, requester=slave
        )
        self._counts["dec_keys"] += 1
        self._counts["keys_out"] += len(got)
        return self._container(slave, derive_keys(self._policy_for(master, slave), got))

    def _container(self, sae: str, keys: list[tuple[str, bytes]]) -> Response:
        public = self._pqc_keys.get(sae)
        if public is None:
            container = etsi014.KeyContainer(keys=[etsi014.Key(key_ID=k, key=v) for k, v in keys])
        else:
            try:
                bundle = wrap(public, keys, context=ETSI014_CONTEXT)
            except PqcError as exc:
                raise Unavailable(f"cannot wrap keys for {sae}: {exc}") from None
            container = etsi014.KeyContainer(
                keys=[
                    etsi014.Key(
                        key_ID=w.key_id, key=w.ciphertext, key_extension=wrapped_key_extension()
                    )
                    for w in bundle.keys
                ],
                key_container_extension=bundle.container_extension(),
            )
        return Response(200, etsi014.encode_json(container))

    # --- peer messages -------------------------------------------------------------

    async def on_reserve(self, peer: str, message: SupplyReserve) -> None:
        """Record keys the peer cut for slaves attached here; answer with ``supply.result``.

        Returns at once: the reservation is served in the background so that many
        share a store commit (their byte ranges are disjoint, so order does not matter).
        """
        assert self._nursery is not None, "run() first"
        token = object()
        await self._reservations.acquire_on_behalf_of(token)
        self._nursery.start_soon(self._serve_reservation, peer, message, token)

    async def _serve_reservation(self, peer: str, message: SupplyReserve, token: object) -> None:
        try:
            await self._answer_reservation(peer, message)
        finally:
            self._reservations.release_on_behalf_of(token)

    async def _answer_reservation(self, peer: str, message: SupplyReserve) -> None:
        code, text = "", ""
        if self._link_to.get(peer) != message.link_id:
            code, text = "unknown-link", f"{message.link_id} is not our link with {peer}"
        local = [
            s for s in message.slave_saes if (c := self._saes.get(s)) and c.kme == self.node_id
        ]
        if not code and not local:
            code, text = "no-slave-here", f"none of the slave SAEs is attached to {self.node_id}"
        if not code:
            code, text = await self._record(message, local)
        if code:
            log.warning("supply.reserve_refused_here", peer=peer, code=code)
        await self._send(
            peer, SupplyResult(id=message.id, ok=not code, code=code, message=text[:1000])
        )

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
                    return "stored-keys-full", f"{slave} already holds {stored} of {limit} keys"
            self._store.record_service_keys(
                message.link_id,
                specs,
                master_sae=message.master_sae,
                local_slaves=local,
                expires_at=message.expires_at,
            )
            return "", ""

        # On the event loop when the store is idle: on the worker, a fetch arriving during
        # the recording would wait for it, its commit and two thread wake-ups.
        try:
            if len(specs) <= INLINE_RECORD_MAX_KEYS:
                return await self._thread.call_inline(record, slow_after=INLINE_RECORD_SLOW_S)
            return await self._thread.call(record)
        except KeyStoreError as exc:  # SegmentRefused, or the store failed
            return str(exc.wire_code), str(exc)

    async def on_result(self, peer: str, message: SupplyResult) -> None:
        pending = self._pending.get(message.id)
        if pending is None:
            log.warning("supply.result_unexpected", peer=peer, id=message.id)
            return
        pending.result = message
        pending.done.set()

    def statistics(self) -> dict[str, Any]:
        return dict(self._counts)


def _stock_target(policy: SupplyPolicy) -> int:
    if policy.key_validity_s < STOCK_MIN_VALIDITY_S:
        return 0  # stocked keys would go stale (half their validity) before they are used
    # Stocked keys count against the slave's max_stored_keys: leave it room.
    return min(policy.stock_keys, policy.max_stored_keys // 2)
