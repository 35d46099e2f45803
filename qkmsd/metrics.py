"""Prometheus metrics: every agent's typed statistics, read at scrape time, served over
plain HTTP on ``[listen] metrics`` (our HTTP shell, ``prometheus_client``'s text format).

No global state: each scrape gathers one snapshot (the node status that ``qkmsctl status``
shows, the state agent's alarms, the relay agent's per-pool counters and, on the node
holding the controller role, the controller's own counters), builds a fresh
``CollectorRegistry`` holding one collector over that snapshot, and renders it.  Only
counts, levels, states and QBER are exported, labelled by node, link, pool and peer ids
and alarm codes: never key material, key ids or block ids.  The metric names are listed
in ``docs/operations.md`` (a test checks the list against what is exported).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from .http import Limits, Request, Response
from .log import get_logger
from .profiles import ProfileStatus
from .relay import RelayPoolStatistics
from .state import AlarmView, StateStatistics
from .status import NodeStatus

log = get_logger("qkms.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LIMITS = Limits(max_body_bytes=0)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What one scrape exports."""

    status: NodeStatus
    alarms: StateStatistics | None = None
    active: tuple[AlarmView, ...] = ()
    profiles: tuple[ProfileStatus, ...] = ()
    relay_pools: Mapping[str, RelayPoolStatistics] = dataclasses.field(default_factory=dict)
    """Per end-to-end pool (by link id), its relays (``RelayAgent.pool_statistics()``)."""
    controller_eligible: bool = False
    """True on a node that may hold the controller role."""
    controller: Mapping[str, float] | None = None
    """The controller's own counters while this node holds the role, else None
    (``ControllerService.statistics()``: ``reports``, ``reports_refused``, ``nodes_alive``,
    ``alarm_events``)."""


@dataclasses.dataclass
class MetricsSources:
    """Where a scrape reads from (handed in by ``app.py``)."""

    node_status: Callable[[], Awaitable[NodeStatus]]
    alarm_statistics: Callable[[], StateStatistics] | None = None
    alarms: Callable[[], list[AlarmView]] | None = None
    profiles: Callable[[], list[ProfileStatus]] | None = None
    relay_pools: Callable[[], Mapping[str, RelayPoolStatistics]] | None = None
    controller: Callable[[], Mapping[str, float] | None] | None = None
    """None on a node not eligible for the controller role."""

    async def snapshot(self) -> Snapshot:
        return Snapshot(
            status=await self.node_status(),
            alarms=self.alarm_statistics() if self.alarm_statistics else None,
            active=tuple(self.alarms()) if self.alarms else (),
            profiles=tuple(self.profiles()) if self.profiles else (),
            relay_pools=self.relay_pools() if self.relay_pools else {},
            controller_eligible=self.controller is not None,
            controller=self.controller() if self.controller else None,
        )


class NodeCollector:
    """A ``prometheus_client`` collector over one ``Snapshot``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._s = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._s.status
        node = s.node_id
        info = GaugeMetricFamily("qkms_node_info", "This node.", labels=["node", "version"])
        info.add_metric([node, s.version], 1)
        yield info
        yield _gauge("qkms_uptime_seconds", "Seconds since the node started.", s.uptime_s)
        yield from self._peers(s)
        yield from self._links(s)
        yield from self._store_and_relay(s)
        yield from self._relay_pools()
        yield from self._api(s)
        yield from self._alarms()
        yield from self._profiles()
        yield from self._controller()

    def _peers(self, s: NodeStatus) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "qkms_peer_up", "1 if a session with the peer is open.", labels=["peer"]
        )
        connects = CounterMetricFamily(
            "qkms_peer_connects", "Sessions opened with the peer.", labels=["peer"]
        )
        refused = CounterMetricFamily(
            "qkms_peer_refused",
            "Connections with the peer refused (TLS or identity).",
            labels=["peer"],
        )
        for peer in s.peers:
            up.add_metric([peer.node_id], 1 if peer.state == "connected" else 0)
            connects.add_metric([peer.node_id], peer.connects)
            refused.add_metric([peer.node_id], peer.refused)
        connected = sum(1 for p in s.peers if p.state == "connected")
        return [
            up,
            connects,
            refused,
            _gauge("qkms_peers_connected", "Peers with an open session.", connected),
            _gauge("qkms_peers_configured", "Peers in the configuration.", len(s.peers)),
        ]

    def _links(self, s: NodeStatus) -> Iterable[Metric]:
        labels = ["link", "peer"]
        gauges = {
            "ready_bits": "Ready key bits in the link's pool.",
            "owned_ready_bits": "Ready key bits this end may hand out.",
            "ready_blocks": "Ready blocks in the link's pool.",
            "unconfirmed_blocks": "Blocks received, not yet confirmed by the peer.",
            "discarded_blocks": "Blocks discarded (tombstones kept in the store).",
            "expired_blocks": "Blocks expired (tombstones kept in the store).",
        }
        families = {
            name: GaugeMetricFamily(f"qkms_link_{name}", doc, labels=labels)
            for name, doc in gauges.items()
        }
        qber = GaugeMetricFamily("qkms_link_qber", "QBER of the link's last block.", labels=labels)
        up = GaugeMetricFamily(
            "qkms_link_driver_up",
            "1 if the link's driver reports up.",
            labels=[*labels, "driver", "state"],
        )
        synced = GaugeMetricFamily(
            "qkms_link_synchronised", "1 if synchronisation with the peer runs.", labels=labels
        )
        held = GaugeMetricFamily(
            "qkms_link_held", "1 if the link's new blocks are kept out of its pool.", labels=labels
        )
        e2e = GaugeMetricFamily(
            "qkms_link_end_to_end", "1 for an end-to-end (relayed) pool.", labels=labels
        )
        key_in = CounterMetricFamily(
            "qkms_link_key_in_bits",
            "Key bits stored from the link's driver since the node started.",
            labels=labels,
        )
        for link in s.links:
            values = [link.link_id, link.peer]
            for name, family in families.items():
                family.add_metric(values, getattr(link, name))
            if link.qber is not None:
                qber.add_metric(values, link.qber)
            up.add_metric(
                [*values, link.driver, link.driver_state], 1 if link.driver_state == "up" else 0
            )
            synced.add_metric(values, 1 if link.synchronised else 0)
            held.add_metric(values, 1 if link.held else 0)
            e2e.add_metric(values, 1 if link.e2e else 0)
            key_in.add_metric(values, link.bits_in)
        return [*families.values(), qber, up, synced, held, e2e, key_in]

    def _store_and_relay(self, s: NodeStatus) -> Iterable[Metric]:
        r = s.relay
        return [
            _counter("qkms_store_commits", "Key store transactions committed.", s.store.batches),
            _counter("qkms_store_calls", "Store calls those commits carried.", s.store.calls),
            _counter("qkms_store_inline_calls", "Store calls run inline.", s.store.inline),
            _counter("qkms_relays_confirmed", "Relays confirmed.", r.relays_confirmed),
            _counter("qkms_relays_failed", "Relays started here that failed.", r.relays_failed),
            _counter("qkms_relay_hops_forwarded", "Relay hops forwarded.", r.hops_forwarded),
            _counter("qkms_relay_hops_received", "Relay hops received.", r.hops_received),
            _counter("qkms_relay_hops_refused", "Relay hops refused.", r.hops_refused),
            _counter("qkms_relay_bits", "End-to-end key bits relayed.", r.bits_relayed),
            _counter("qkms_relay_link_bits_spent", "Link key spent on hops.", r.link_bits_spent),
        ]

    def _relay_pools(self) -> Iterable[Metric]:
        label = ["pool"]
        confirmed = CounterMetricFamily(
            "qkms_relay_pool_relays_confirmed",
            "Relays this node started into the end-to-end pool that the destination confirmed.",
            labels=label,
        )
        failed = CounterMetricFamily(
            "qkms_relay_pool_relays_failed",
            "Relays this node started into the end-to-end pool that failed.",
            labels=label,
        )
        bits = CounterMetricFamily(
            "qkms_relay_pool_bits",
            "End-to-end key bits relayed into the pool (started here, confirmed).",
            labels=label,
        )
        latency = SummaryMetricFamily(
            "qkms_relay_pool_latency_seconds",
            "Start-to-confirm time of the pool's confirmed relays.",
            labels=label,
        )
        spent = CounterMetricFamily(
            "qkms_relay_pool_link_bits_spent",
            "Link key this node spent on the pool's hops (as source or intermediate).",
            labels=label,
        )
        for pool, p in sorted(self._s.relay_pools.items()):
            confirmed.add_metric([pool], p.relays_confirmed)
            failed.add_metric([pool], p.relays_failed)
            bits.add_metric([pool], p.bits_relayed)
            latency.add_metric([pool], count_value=p.relays_confirmed, sum_value=p.latency_s_total)
            spent.add_metric([pool], p.link_bits_spent)
        return [confirmed, failed, bits, latency, spent]

    def _controller(self) -> Iterable[Metric]:
        if not self._s.controller_eligible:
            return []
        c = self._s.controller
        leading = _gauge(
            "qkms_controller_leading",
            "1 while this node holds the controller role (on nodes eligible for it).",
            0 if c is None else 1,
        )
        if c is None:
            return [leading]
        return [
            leading,
            _counter("qkms_controller_reports", "Node reports taken.", c["reports"]),
            _counter(
                "qkms_controller_reports_refused", "Node reports refused.", c["reports_refused"]
            ),
            _gauge(
                "qkms_controller_nodes_alive",
                "Nodes that reported within three report periods.",
                c["nodes_alive"],
            ),
            _gauge(
                "qkms_controller_alarm_events",
                "Alarm events kept in the network's alarm history.",
                c["alarm_events"],
            ),
        ]

    def _api(self, s: NodeStatus) -> Iterable[Metric]:
        if s.api is None:
            return []
        sup, tls = s.api.supply, s.api.tls
        requests = CounterMetricFamily(
            "qkms_etsi014_requests", "ETSI 014 requests answered with keys.", labels=["call"]
        )
        requests.add_metric(["enc_keys"], sup.enc_keys)
        requests.add_metric(["dec_keys"], sup.dec_keys)
        latency = HistogramMetricFamily(
            "qkms_etsi014_request_seconds",
            "Time to answer an ETSI 014 request, from the parsed request to the answer.",
            labels=["call"],
        )
        for call, h in sorted(sup.latency.items()):
            cumulative = list(itertools.accumulate(h.counts))
            bounds = [*(repr(float(b)) for b in h.buckets), "+Inf"]
            latency.add_metric([call], list(zip(bounds, cumulative, strict=True)), h.sum)
        return [
            requests,
            latency,
            _counter("qkms_etsi014_keys", "Keys handed to SAEs.", sup.keys_out),
            _counter("qkms_etsi014_refused", "Requests refused (not 401).", sup.refused),
            _counter("qkms_etsi014_stock_keys_in", "Keys put in stocks.", sup.stock_keys_in),
            _counter("qkms_etsi014_stock_keys_out", "Keys served from stocks.", sup.stock_keys_out),
            _counter(
                "qkms_supply_burns_acked", "Burnt link key ranges acknowledged.", sup.burns_acked
            ),
            _counter(
                "qkms_supply_burns_dropped",
                "Unacknowledged burnt link key ranges dropped over the bound.",
                sup.burns_dropped,
            ),
            _counter("qkms_api_tls_handshakes", "API TLS handshakes completed.", tls.handshakes),
            _counter("qkms_api_tls_failed", "API TLS handshakes failed.", tls.failed),
            _counter("qkms_api_tls_timed_out", "API TLS handshakes timed out.", tls.timed_out),
        ]

    def _alarms(self) -> Iterable[Metric]:
        stats = self._s.alarms
        if stats is None:
            return []
        by_severity = GaugeMetricFamily(
            "qkms_alarms_active", "Active alarms by severity.", labels=["severity"]
        )
        for severity, count in stats.active.items():
            by_severity.add_metric([severity], count)
        active = GaugeMetricFamily(
            "qkms_alarm_active",
            "1 for each active alarm.",
            labels=["code", "resource", "severity", "acknowledged"],
        )
        for alarm in self._s.active:
            active.add_metric(
                [alarm.code, alarm.resource, alarm.severity, str(alarm.acknowledged).lower()], 1
            )
        return [
            by_severity,
            active,
            _counter("qkms_alarms_raised", "Alarms raised.", stats.raised),
            _counter("qkms_alarms_cleared", "Alarms cleared.", stats.cleared),
            _counter("qkms_faults", "Faults (one-off events).", stats.faults),
        ]

    def _profiles(self) -> Iterable[Metric]:
        if not self._s.profiles:
            return []
        label = ["profile"]
        gauges = {
            "active": "1 if the key profile is active.",
            "priority": "The key profile's priority (higher first when key is short).",
            "period_served_keys": "Keys served to the profile's pairs in the current period.",
            "period_served_bits": "Key bits served to the profile's pairs in the current period.",
            "period_generated_bits": "Key bits into the profile's pools in the current period.",
            "period_target_bits": "Key bits the profile's target asks for so far this period.",
            "shortfall_bits": "Target bits minus bits served in the current period (>= 0).",
        }
        families = {
            name: GaugeMetricFamily(f"qkms_profile_{name}", doc, labels=label)
            for name, doc in gauges.items()
        }
        total = CounterMetricFamily(
            "qkms_profile_served_keys",
            "Keys served to the profile's pairs while active, since the node started.",
            labels=label,
        )
        for p in self._s.profiles:
            values = {
                "active": 1 if p.active else 0,
                "priority": p.profile.priority,
                "period_served_keys": p.keys_served,
                "period_served_bits": p.bits_served,
                "period_generated_bits": p.bits_generated,
                "period_target_bits": p.target_bits,
                "shortfall_bits": p.shortfall_bits,
            }
            for name, family in families.items():
                family.add_metric([p.profile.name], values[name])
            total.add_metric([p.profile.name], p.keys_served_total)
        return [*families.values(), total]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def render(snapshot: Snapshot) -> bytes:
    """The text exposition of ``snapshot``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(snapshot))
    return generate_latest(registry)


def metrics_handler(sources: MetricsSources) -> Callable[[Request], Awaitable[Response]]:
    """The HTTP handler: ``GET /metrics`` is the exposition, anything else 404 or 405."""

    async def handle(request: Request) -> Response:
        if request.path != "/metrics":
            return Response(404, b'{"message":"not found: try /metrics"}')
        if request.method not in ("GET", "HEAD"):
            return Response(405, headers=(("allow", "GET, HEAD"),))
        body = render(await sources.snapshot())
        return Response(200, b"" if request.method == "HEAD" else body, content_type=CONTENT_TYPE)

    return handle
