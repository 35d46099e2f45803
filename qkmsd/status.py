"""The node's admin methods: ``status``, ``peers``, ``links``, ``check``.

Reads the agents' ``statistics()`` and status calls and puts them together in the typed
structures below; the admin endpoint sends them as plain maps.  Nothing here changes
state, and nothing here holds key material: pools are counts, a check is ids and a
24-bit key check value.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Collection
from typing import Annotated, Any

import msgspec
import trio

from protocol import ErrorCode

from .admin import AdminParamsError
from .histogram import HistogramSnapshot
from .http import HandshakeStats, TlsStatistics
from .keymanager import KeyManager, LinkStatus
from .peers import PeerManager, PeerState
from .relay import RelayAgent, RelayFailed, RelayRecord, RelayStatistics
from .storethread import StoreStatistics, StoreThread
from .supply import DirectLinkSource, Etsi014Front
from .tls import hybrid_pq_groups_available


class SupplyStatistics(msgspec.Struct, frozen=True):
    """The ETSI 014 front's counts and the direct-link stocks' counts together."""

    enc_keys: int
    dec_keys: int
    keys_out: int
    refused: int
    stock_keys_in: int
    stock_keys_out: int
    latency: dict[str, HistogramSnapshot] = {}
    burns_acked: int = 0
    """Burnt ranges of QKD link key the neighbours acknowledged."""
    burns_dropped: int = 0
    """Unacknowledged burnt ranges dropped over the bound (see docs/reliability.md)."""
    """The front's time to answer, by call."""


class ApiStatus(msgspec.Struct, frozen=True):
    listen: str
    hybrid_pq_tls_groups: bool
    """Whether this platform's TLS offers the hybrid ML-KEM group to SAEs."""
    tls: TlsStatistics
    """The API's handshakes (counts by TLS version and key exchange group) and its
    connection gate."""
    supply: SupplyStatistics


class NodeStatus(msgspec.Struct, frozen=True):
    """What ``qkmsctl status`` shows."""

    node_id: str
    version: str
    pid: int
    uptime_s: float
    peer_listen: str
    peers: list[PeerState]
    links: list[LinkStatus]
    store: StoreStatistics
    relay: RelayStatistics
    api: ApiStatus | None


class RelayTestParams(msgspec.Struct, forbid_unknown_fields=True):
    destination: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 24)]
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0
    """How long a relay that finds a link short of key (the pools' own relays draw on
    the links too) is tried again before the test fails."""


class HopSpend(msgspec.Struct, frozen=True):
    hop: str
    """``A-B``: the link between two nodes of the path."""
    bytes: int
    """Link key spent on it: the pads and the one-time MAC keys."""


class RelayTestResult(msgspec.Struct, frozen=True):
    destination: str
    e2e_link_id: str
    relays: int
    shares: int
    """Node-disjoint paths each key was split over (1: no split)."""
    bytes: int
    """End-to-end key relayed (without the confirmation keys)."""
    seconds: float
    hops: list[HopSpend]
    pool_ready_bits: int
    """The end-to-end pool's ready bits when the test ended (synchronisation may still be
    making the last relays ready)."""


class CheckParams(msgspec.Struct, forbid_unknown_fields=True):
    link_id: str
    first: Annotated[int, msgspec.Meta(ge=0)]
    last: Annotated[int, msgspec.Meta(ge=0)]


@dataclasses.dataclass
class Api:
    """The ETSI 014 side of a node, once it listens."""

    listen: str
    front: Etsi014Front
    direct: DirectLinkSource
    handshakes: HandshakeStats


class NodeStatusMethods:
    """The admin methods of one node, over its running agents."""

    def __init__(
        self,
        *,
        node_id: str,
        version: str,
        peer_host: str,
        link_ids: Collection[str],
        keys: KeyManager,
        peers: PeerManager,
        relay: RelayAgent,
        store_thread: StoreThread,
        started_at: float,
    ) -> None:
        self._node_id = node_id
        self._version = version
        self._peer_host = peer_host
        self._link_ids = link_ids
        self._keys = keys
        self._peers = peers
        self._relay = relay
        self._store_thread = store_thread
        self.started_at = started_at
        self.api: Api | None = None

    def methods(self) -> dict[str, Any]:
        """``{method name: handler}`` for the admin endpoint."""
        return {
            "status": self.status,
            "peers": self.peers,
            "links": self.links,
            "check": self.check,
            "routes": self.routes,
            "relays": self.relays,
            "relay_test": self.relay_test,
        }

    async def node_status(self) -> NodeStatus:
        api = None
        if self.api is not None:
            front, stock = self.api.front.statistics(), self.api.direct.statistics()
            api = ApiStatus(
                listen=self.api.listen,
                hybrid_pq_tls_groups=hybrid_pq_groups_available(),
                tls=self.api.handshakes.snapshot(),
                supply=SupplyStatistics(
                    enc_keys=front.enc_keys,
                    dec_keys=front.dec_keys,
                    keys_out=front.keys_out,
                    refused=front.refused,
                    stock_keys_in=stock.stock_keys_in,
                    stock_keys_out=stock.stock_keys_out,
                    latency=front.latency,
                    burns_acked=stock.burns_acked,
                    burns_dropped=stock.burns_dropped,
                ),
            )
        return NodeStatus(
            node_id=self._node_id,
            version=self._version,
            pid=os.getpid(),
            uptime_s=round(time.time() - self.started_at, 3),
            peer_listen=f"{self._peer_host}:{self._peers.port}",
            peers=self._peers.peers_status(),
            links=await self._keys.links_status(),
            store=self._store_thread.statistics(),
            relay=self._relay.statistics(),
            api=api,
        )

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        status: dict[str, Any] = _plain(await self.node_status())
        return status

    async def peers(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"peers": _plain(self._peers.peers_status())}

    async def links(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"links": _plain(await self._keys.links_status())}

    async def routes(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"routes": _plain(self._relay.routes()), "split": _plain(self._relay.split_paths())}

    async def relays(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"relays": _plain(self._relay.relays())}

    async def relay_test(self, params: dict[str, Any]) -> dict[str, Any]:
        """Relay ``bytes`` of key into the end-to-end pool with ``destination``, now."""
        try:
            p = msgspec.convert(params, RelayTestParams)
        except msgspec.ValidationError as exc:
            raise AdminParamsError(f"relay_test: {exc}") from None
        link_id = self._relay.pool_of(p.destination)
        if link_id is None:
            raise AdminParamsError(
                f"relay_test: no end-to-end pool with {p.destination!r} here"
                " (configure [relay.pools] at both ends)"
            )
        block = self._relay.block_bits // 8
        count = -(-p.bytes // block)
        started = time.monotonic()
        records: list[RelayRecord] = []
        deadline = trio.current_time() + p.wait_s
        while len(records) < count:
            try:
                records.append(await self._relay.relay(link_id))
            except RelayFailed as exc:
                if exc.code != ErrorCode.INSUFFICIENT_KEY or trio.current_time() > deadline:
                    raise AdminParamsError(
                        f"relay_test: relay {len(records) + 1} of {count} failed: {exc}"
                    ) from None
                await trio.sleep(0.1)  # the links gain key every block the devices make
        seconds = time.monotonic() - started
        # A key split into shares crossed one path per share: count every share's hops.
        shares = [
            r
            for first in records
            for r in self._relay.relays()
            if r.role == "source"
            and (r.relay_id == first.relay_id or _base(r.relay_id) == _base(first.relay_id))
        ]
        spent: dict[str, int] = {}
        for record in shares:
            for a, b in itertools.pairwise(record.path):
                # Each hop: the key and its confirmation key padded, and a MAC key.
                hop = f"{a}-{b}"
                spent[hop] = spent.get(hop, 0) + record.bits // 8 + 2 * 32
        ready = next(
            (
                link.ready_bits
                for link in await self._keys.links_status()
                if link.link_id == link_id
            ),
            0,
        )
        result: dict[str, Any] = _plain(
            RelayTestResult(
                destination=p.destination,
                e2e_link_id=link_id,
                relays=len(records),
                shares=len(shares) // max(len(records), 1),
                bytes=sum(r.bits for r in records) // 8,
                seconds=round(seconds, 6),
                hops=[HopSpend(hop, n) for hop, n in spent.items()],
                pool_ready_bits=ready,
            )
        )
        return result

    async def check(self, params: dict[str, Any]) -> dict[str, Any]:
        """Ready block ids of a link in [first, last] and their key check value."""
        try:
            p = msgspec.convert(params, CheckParams)
        except msgspec.ValidationError as exc:
            raise AdminParamsError(f"check: {exc}") from None
        if p.last < p.first:
            raise AdminParamsError("check: last must be at least first")
        if p.link_id not in self._link_ids:
            known = ", ".join(sorted(self._link_ids)) or "none"
            raise AdminParamsError(f"check: unknown link {p.link_id!r} (known: {known})")
        return await self._keys.check(p.link_id, p.first, p.last)


def _base(relay_id: str) -> str:
    """The relay id of the key a share (``...#n``) belongs to."""
    return relay_id.split("#", 1)[0]


def _plain(value: Any) -> Any:
    result: Any = msgspec.to_builtins(value)
    return result
