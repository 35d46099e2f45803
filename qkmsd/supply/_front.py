"""The ETSI GS QKD 014 front: routes, SAE authorisation, request checks, answers.

Theory of operation
-------------------
An SAE is known by its TLS client certificate (CN = SAE id, OU = ``sae``) and must be
attached to this node (``[saes.X] kme``).  The front parses the request, checks it
against the standard and the pair's policy (sizes, counts, additional slaves, mandatory
extensions, rate limits), then asks the key source that serves the slave's KME for the
keys (see ``._source``): this node itself, a QKD neighbour, or, with key relay, any
node.  ``dec_keys`` by slave S for master M fetches from the source that serves M's KME.
Keys for an SAE that registered a hybrid public key are wrapped (``qkms_pqc``) on the
way out.  Every error is turned into its ETSI 014 answer once, here (``._errors``).

The front never touches the key store: the sources do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from protocol import etsi014
from qkms_pqc import (
    ETSI014_CONTEXT,
    HybridPublicKey,
    PqcError,
    wrap,
    wrapped_key_extension,
)

from ..config import SaeConfig, SupplyPolicy
from ..histogram import Histogram, HistogramSnapshot
from ..http import Request, Response
from ._errors import HANDLED, BadRequest, Unauthorised, Unavailable, error_response
from ._policy import RateLimiter, SaeRateLimiter, derive_keys
from ._source import KeyOrder, KeySource

EXT_PQC_WRAP = "qkms_pqc_wrap"
"""The ``extension_mandatory`` name this KME understands: wrap the keys for the master."""
SUPPORTED_MANDATORY = frozenset({EXT_PQC_WRAP})


class FrontStatistics(msgspec.Struct, frozen=True):
    """Counts of the ETSI 014 front since the node started."""

    enc_keys: int
    """``enc_keys`` requests answered with keys."""
    dec_keys: int
    """``dec_keys`` requests answered with keys."""
    keys_out: int
    """Keys handed to SAEs, by either call."""
    refused: int
    """Requests answered with an error other than 401."""
    latency: dict[str, HistogramSnapshot] = {}
    """Time to answer, by call (``status``, ``enc_keys``, ``dec_keys``, ``other`` for
    requests that name none), from the parsed request to the answer made."""


@dataclasses.dataclass
class SaeCounts:
    """One SAE's requests since the node started (performance collection reads them)."""

    requests: int = 0
    keys: int = 0
    bits: int = 0
    errors: dict[int, int] = dataclasses.field(default_factory=dict)
    """Requests answered with an error, by HTTP status."""


class PairDemand(msgspec.Struct, frozen=True):
    """One SAE pair's key asked for and delivered since the node started."""

    master: str
    slave: str
    kme: str
    """The slave's KME."""
    asked_bits: int
    served_bits: int


@dataclasses.dataclass
class _Counts:
    enc_keys: int = 0
    dec_keys: int = 0
    keys_out: int = 0
    refused: int = 0


class Etsi014Front:
    """Serves ETSI 014 requests from the node's key sources.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        saes: dict[str, SaeConfig],
        policy_for: Callable[[str, str], SupplyPolicy],
        sources: Sequence[KeySource],
        pqc_keys: dict[str, HybridPublicKey],
        served: Callable[[str, str, int, int], None] | None = None,
    ) -> None:
        """``served(master, slave, keys, bits)`` is told of each ``enc_keys`` answered
        with keys (the key profiles count them)."""
        self.node_id = node_id
        self._saes = saes
        self._policy_for = policy_for
        self._sources = list(sources)
        self._pqc_keys = pqc_keys
        self._served = served
        self._limits = RateLimiter(clock=trio.current_time)
        self._sae_limits = SaeRateLimiter(clock=trio.current_time)
        self._counts = _Counts()
        self._per_sae: dict[str, SaeCounts] = {}
        self.draining = False
        """Set by ``qkmsctl node drain``: new ``enc_keys`` are refused (503); ``dec_keys``
        still serves the keys already delivered to masters, and ``status`` answers."""
        self.in_flight = 0
        """Requests being answered now."""
        self._latency = {kind: Histogram() for kind in ("status", "enc_keys", "dec_keys", "other")}
        self._demand: dict[tuple[str, str, str], list[int]] = {}

    async def handle(self, request: Request) -> Response:
        """Answer one ETSI 014 request.  Never raises for bad input."""
        caller = None
        kind = "other"
        began = trio.current_time()
        self.in_flight += 1
        try:
            caller = self._caller(request)
            self._sae(caller).requests += 1
            # Before any parsing: a flooding SAE costs as little as possible.
            self._sae_limits.request(caller, self._saes[caller].limits)
            call = etsi014.parse_api_path(request.method, request.target)
            kind = call.kind.value
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
                self._counts.refused += 1
            response = error_response(exc)
            if caller is not None:
                errors = self._sae(caller).errors
                errors[response.status] = errors.get(response.status, 0) + 1
            return response
        finally:
            self.in_flight -= 1
            self._latency[kind].observe(trio.current_time() - began)

    def statistics(self) -> FrontStatistics:
        latency = {kind: h.snapshot() for kind, h in self._latency.items()}
        return FrontStatistics(**dataclasses.asdict(self._counts), latency=latency)

    def sae_counts(self) -> dict[str, SaeCounts]:
        """Per attached SAE that has asked, its counts (live objects: read, do not keep)."""
        return self._per_sae

    def _sae(self, name: str) -> SaeCounts:
        counts = self._per_sae.get(name)
        if counts is None:
            counts = self._per_sae[name] = SaeCounts()
        return counts

    def demand(self) -> list[PairDemand]:
        """Per SAE pair served here: key bits asked for (``enc_keys``) and delivered."""
        return [
            PairDemand(master, slave, kme, asked, served)
            for (master, slave, kme), (asked, served) in sorted(self._demand.items())
        ]

    # --- who asks, for whom, from where ---------------------------------------------

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

    def _source(self, kme: str, sae: str) -> KeySource:
        for source in self._sources:
            if source.serves(kme):
                return source
        raise Unavailable(
            f"no QKD link from {self.node_id} to {kme} (SAE {sae}); keys for SAEs "
            "on distant nodes need key relay, which this node does not offer yet"
        )

    # --- the three calls ------------------------------------------------------------

    async def _status(self, master: str, slave: str) -> Response:
        target = self._target(master, slave)
        policy = self._policy_for(master, slave)
        stored = 0
        source = next((s for s in self._sources if s.serves(target.kme)), None)
        if source is not None:
            available = await source.available(master, slave, target.kme, policy)
            stored = min(policy.max_stored_keys, available)
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
        if self.draining:
            raise Unavailable(
                f"{self.node_id} is draining for maintenance: it takes no new key requests"
                " (keys already delivered can still be fetched with dec_keys)"
            )
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
        self._sae_limits.keys(master, number, self._saes[master].limits)
        self._limits.take((master, slave), number, policy)
        demand = self._demand.setdefault((master, slave, target.kme), [0, 0])
        demand[0] += number * size
        source = self._source(target.kme, slave)
        keys = await source.new_keys(
            KeyOrder(master, tuple(slaves), target.kme, number, size, policy)
        )
        demand[1] += number * size
        self._counts.enc_keys += 1
        self._counts.keys_out += number
        delivered = derive_keys(policy, [(k.key_id, k.key) for k in keys])
        response = self._container(master, delivered)
        self._delivered(master, delivered)
        if self._served is not None:
            self._served(master, slave, len(delivered), 8 * sum(len(k) for _, k in delivered))
        return response

    async def _dec_keys(self, slave: str, master: str, ids: etsi014.KeyIDs) -> Response:
        key_ids = [ref.key_ID.lower() for ref in ids.key_IDs]
        if len(set(key_ids)) != len(key_ids):
            raise BadRequest("key_IDs repeats a key ID")
        master_sae = self._saes.get(master)
        source = None
        if master_sae is not None:
            source = next((s for s in self._sources if s.serves(master_sae.kme)), None)
        if source is None:  # no key from that master can have reached this node
            raise BadRequest(etsi014.MSG_KEYS_NOT_FOUND)
        self._sae_limits.keys(slave, len(key_ids), self._saes[slave].limits)
        got = await source.fetch(key_ids, master=master, requester=slave)
        self._counts.dec_keys += 1
        self._counts.keys_out += len(got)
        delivered = derive_keys(self._policy_for(master, slave), got)
        response = self._container(slave, delivered)
        self._delivered(slave, delivered)
        return response

    def _delivered(self, sae: str, keys: list[tuple[str, bytes]]) -> None:
        counts = self._sae(sae)
        counts.keys += len(keys)
        counts.bits += 8 * sum(len(key) for _, key in keys)

    # --- checks and answers ---------------------------------------------------------

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
