"""Wiring: builds the agents of one node, hands them their collaborators, runs them.

The only module that knows every agent.  Agents never import each other.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import trio

from protocol import (
    FEATURE_BURN_ACK,
    CtlAlarmEvent,
    CtlAnnounce,
    CtlBudgets,
    CtlProfile,
    CtlProfileApply,
    CtlProfileOutcome,
    CtlProfileReply,
    CtlRegister,
    CtlRegistry,
    CtlReport,
    CtlRouteAsk,
    CtlRoutes,
    ElectHeartbeat,
    ElectHeartbeatReply,
    ElectVote,
    ElectVoteReply,
    ErrorCode,
    KeyAnnounce,
    KeyConfirm,
    KeyDiscard,
    RelayHop,
    SupplyBurn,
    SupplyReserve,
)
from qkd_drivers import Driver, LinkEnd, driver_class
from qkms_pqc import HybridPublicKey, PqcError

from . import dashboard, metrics
from .admin import AdminServer
from .config import Config, LinkConfig, RelayPoolConfig
from .controller import (
    ControllerAdmin,
    ControllerAgent,
    ControllerService,
    NetworkAlarms,
    Registry,
    Reporter,
    ReportSources,
    allocate_budgets,
    refusals,
)
from .dashboard import (
    Access,
    CsrfTokens,
    Dashboard,
    DashboardSources,
    NetworkTopology,
    StreamSlots,
    dashboard_handler,
    etsi015_source,
    normalise_links,
    table_routes,
    whole_network,
)
from .errors import PeerUnavailable, StartupError
from .http import HandshakeStats, Limits, OpenConnections, serve_tcp_plain, serve_tcp_tls
from .keymanager import KeyManager
from .keystore import (
    KeyStore,
    KeyStoreError,
    MasterKeyError,
    Segment,
    load_master_key,
    open_store,
)
from .log import get_logger
from .metrics import MetricsSources, metrics_handler
from .netguard import GateLimits
from .nodeops import DeviceHooks, NodeOperations, registered_devices
from .peers import PeerManager
from .perf import PerfAgent, PerfSources, Pusher
from .profiles import ProfileAgent, ProfileBook, ProfileError
from .relay import RelayAgent, RelayedKeys, RoutingTable
from .state import Sources, StateAgent
from .status import Api, NodeStatusMethods
from .storethread import StoreThread
from .supply import (
    DirectLinkSource,
    Etsi014Front,
    LocalSource,
    PolicyBook,
    RecordedKeys,
    RelayedPoolSource,
    ReservationResponder,
    SupplyError,
)
from .systemd import Notifier
from .tls import Revocations, TlsError, api_context, collector_context, load_crl, peer_context
from .tlsgroup import TlsContexts

log = get_logger("qkms.node")

VERSION = "0.1.0"


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """What a started node tells its starter: where it listens."""

    node_id: str
    peer_port: int
    admin_socket: Path
    api_port: int | None = None
    metrics_port: int | None = None
    dashboard_port: int | None = None
    dashboard_tls_port: int | None = None


class Node:
    """One qkms node: key store, drivers, key manager, peers, key supply and admin endpoint."""

    def __init__(
        self,
        config: Config,
        *,
        notifier: Notifier | None = None,
        listen: bool = True,
        clock: Callable[[], float] = time.time,
        drivers: Mapping[str, Driver] | None = None,
        inline_store: bool = False,
    ) -> None:
        """``listen=False``: no peer listener and no dialling; whoever runs the node joins
        it to its peers with ``node.peers.serve_authenticated(stream, peer)`` (a network
        of nodes in one process over memory streams, for tests and simulation).

        For the simulator (``qkmssim``): ``clock`` is the wall clock every agent reads
        (a virtual one there); ``drivers`` replaces the drivers of the named links of
        ``config``; ``inline_store`` runs the key store on the event loop without fsync
        (``StoreThread(inline=True)``, ``KeyStore.open(durable=False)``).
        """
        self.config = config
        self._listen = listen
        self._clock = clock
        self._given_drivers = dict(drivers or {})
        self._inline_store = inline_store
        self.notifier = notifier or Notifier({})
        self.keys: KeyManager | None = None
        self.peers: PeerManager | None = None
        self.supply: Etsi014Front | None = None
        self.direct: DirectLinkSource | None = None
        self.e2e: DirectLinkSource | None = None
        self.status: NodeStatusMethods | None = None
        self.relay: RelayAgent | None = None
        self.controller: ControllerAgent | None = None
        self.service: ControllerService | None = None
        self.reporter: Reporter | None = None
        self.routes: RoutingTable | None = None
        self.api_port: int | None = None
        self.api_handshakes = HandshakeStats()
        self.api_connections = OpenConnections()
        self.store_thread: StoreThread | None = None
        self.state: StateAgent | None = None
        self.perf: PerfAgent | None = None
        self.profiles: ProfileAgent | None = None
        self.metrics: MetricsSources | None = None
        """What a Prometheus scrape reads (also without ``[listen] metrics``)."""
        self.metrics_port: int | None = None
        self.dashboard_port: int | None = None
        self.dashboard_tls_port: int | None = None
        self.revocations: Revocations | None = None
        self._tls: _NodeTls | None = None

    def reload(self) -> Revocations | None:
        """Load the TLS files again (CA, certificate, key, CRL) and apply them.

        New handshakes, on the peer port and the API, use the new files; open peer
        sessions and API connections whose certificate the new CRL revokes are closed.
        Other configuration changes need a restart.  Returns the CRL's revocations
        (``None`` without ``[tls] crl``).

        Raises ``TlsError`` naming the file if one cannot be loaded; the node then goes
        on with what it had.
        """
        if self._tls is None:
            raise TlsError("the node is not running: nothing to reload")
        fresh = _NodeTls.load(self.config)
        self._tls.adopt(fresh)
        self.revocations = revocations = fresh.revocations
        closed: list[str] = []
        api_closed = 0
        if revocations is not None:
            if self.peers is not None:
                closed = self.peers.close_revoked(revocations.serials)
            api_closed = self.api_connections.close_revoked(revocations.serials)
        log.info(
            "node.reloaded",
            revoked=len(revocations.serials) if revocations else 0,
            peers_closed=",".join(closed) or "-",
            api_connections_closed=api_closed,
        )
        return revocations

    async def run(
        self, *, task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled.  Raises ``StartupError`` if the node cannot start.

        On cancellation the agents stop, pending store calls finish and the key
        store is closed.
        """
        cfg = self.config
        clock = self._clock
        store = _open_store(cfg, clock=clock, durable=not self._inline_store)
        try:
            # The QKD links: the config file's and the devices registered at runtime.
            qkd_links = {**cfg.links, **registered_devices(cfg)}
            drivers = _make_drivers(cfg, qkd_links, self._given_drivers)
            relayed = {
                link_id: RelayedKeys(LinkEnd(link_id, cfg.node_id, pool.peer))
                for link_id, pool in cfg.relay_pools.items()
            }
            drivers.update({link_id: (d.link.peer_node, d) for link_id, d in relayed.items()})
            try:
                self._tls = tls = _NodeTls.load(cfg)
            except TlsError as exc:
                raise StartupError(str(exc)) from None
            self.revocations = tls.revocations
            self.store_thread = store_thread = StoreThread(store, inline=self._inline_store)
            self.peers = peers = PeerManager(
                node_id=cfg.node_id,
                peers={p.node_id: str(p.address) for p in cfg.peers.values()},
                listen_host=cfg.peer_listen.host,
                listen_port=cfg.peer_listen.port,
                server_context=tls.peer_server,
                client_context=tls.peer_client,
                heartbeat=cfg.sync.heartbeat_s,
                reconnect_max=cfg.sync.reconnect_max_s,
                silence=cfg.sync.silence,
                gate=GateLimits(cfg.peer.max_connections, cfg.peer.max_connections_per_source),
                handshake_timeout=cfg.peer.handshake_timeout_s,
                clock=clock,
            )
            self.keys = keys = KeyManager(
                node_id=cfg.node_id,
                store=store,
                store_thread=store_thread,
                drivers=drivers,
                send=peers.send,
                sync_timeout=cfg.sync.timeout_s,
                announce_interval=cfg.sync.announce_interval_s,
                max_block_age=cfg.policy.max_block_age_s,
                key_size=cfg.policy.key_size,
                clock=clock,
                peer_heard=peers.last_heard,
                # A healthy peer is heard at least once a heartbeat (its pings, our pongs);
                # one not heard for silence_s is declared down anyway.
                liveness_window=cfg.sync.silence,
            )
            peers.on_message(KeyAnnounce, keys.on_announce)
            peers.on_message(KeyConfirm, keys.on_confirm)
            peers.on_message(KeyDiscard, keys.on_discard)
            peers.on_connectivity(keys.peer_up, keys.peer_down)

            # Key profiles: what each node pair or SAE pair gets, and its priority.
            try:
                profiles = ProfileBook(
                    node_id=cfg.node_id,
                    sae_kme={sae.sae_id: sae.kme for sae in cfg.saes.values()},
                    path=cfg.state_dir / "profiles.json",
                    clock=time.time,
                )
            except ProfileError as exc:
                raise StartupError(str(exc)) from None

            # Key relay: end-to-end pools with distant nodes, filled hop by hop.
            qkd_link_to = {link.peer: link_id for link_id, link in reversed(qkd_links.items())}
            e2e_link_to = {pool.peer: link_id for link_id, pool in cfg.relay_pools.items()}
            all_link_to = {**qkd_link_to, **e2e_link_to}
            link_ids = set(qkd_links) | set(cfg.relay_pools)

            def can_make_pool(peer: str) -> bool:
                return (
                    cfg.relay.auto_pools
                    and peer in cfg.peers
                    and peer not in qkd_link_to
                    and "~".join(sorted((cfg.node_id, peer))) not in link_ids
                )

            async def make_pool(peer: str) -> str | None:
                """The end-to-end pool with ``peer``, made now if it can be (both ends make
                it: this one when its SAEs ask, the other when the first relay arrives)."""
                if peer in e2e_link_to:
                    return e2e_link_to[peer]
                if not can_make_pool(peer):
                    return None
                link_id = "~".join(sorted((cfg.node_id, peer)))
                pool = RelayPoolConfig(
                    peer=peer,
                    link_id=link_id,
                    route=None,
                    low_bits=cfg.relay.low_bits,
                    high_bits=cfg.relay.high_bits,
                )
                driver = RelayedKeys(LinkEnd(link_id, cfg.node_id, peer))
                e2e_link_to[peer] = all_link_to[peer] = link_id
                link_ids.add(link_id)
                await keys.add_link(link_id, peer, driver)
                relay.add_pool(pool, driver)
                log.info("relay.pool_made", peer=peer, link=link_id)
                return link_id

            def burn_link_key(peer: str, segments: list[Segment]) -> None:
                direct.burn_segments(peer, segments)

            def settle_link_key(peer: str, segments: list[Segment]) -> None:
                direct.settle_segments(peer, segments)

            self.routes = routes = RoutingTable(
                cfg.node_id,
                links=cfg.relay.topology,
                manual={p.peer: p.route for p in cfg.relay_pools.values() if p.route},
                neighbours=qkd_link_to,
                clock=clock,
            )
            self.relay = relay = RelayAgent(
                node_id=cfg.node_id,
                store=store,
                store_thread=store_thread,
                request=peers.request,
                link_to=qkd_link_to,
                pools=cfg.relay_pools,
                drivers=relayed,
                routes=routes,
                settings=cfg.relay,
                is_up=peers.is_connected,
                make_pool=make_pool,
                burn=burn_link_key,
                settled=settle_link_key,
                clock=clock,
                priority_of=lambda peer: profiles.priority_of((cfg.node_id, peer)),
            )
            peers.on_request(RelayHop, relay.handle_hop)
            peers.on_connectivity(relay.peer_up, relay.peer_down)

            # The controller role: this node's part in the election, if it is eligible; the
            # controller's work under its lease; and every node's reports to it.
            controller = None
            service: ControllerService | None = None
            if cfg.controller.eligible:
                self.controller = controller = ControllerAgent(
                    node_id=cfg.node_id,
                    electors={**cfg.controller.electors, cfg.node_id: cfg.controller.priority},
                    lease=cfg.controller.lease_s,
                    drift=cfg.controller.drift_s,
                    send=peers.send,
                    state_path=cfg.state_dir / "election.json",
                    on_change=lambda: service.wake() if service is not None else None,
                )
                peers.on_message(ElectVote, controller.on_message)
                peers.on_message(ElectVoteReply, controller.on_message)
                peers.on_message(ElectHeartbeat, controller.on_message)
                peers.on_message(ElectHeartbeatReply, controller.on_message)

            def connected() -> list[str]:
                return [p.node_id for p in peers.peers_status() if peers.is_connected(p.node_id)]

            async def ctl_send(peer: str, message: Any) -> bool:
                """To a peer, or to this node's own reporter (the controller's own node)."""
                if peer != cfg.node_id:
                    return await peers.send(peer, message)
                if isinstance(message, CtlAnnounce):
                    await reporter.on_announce(peer, message)
                elif isinstance(message, CtlRoutes):
                    await reporter.on_routes(peer, message)
                elif isinstance(message, CtlBudgets):
                    await reporter.on_budgets(peer, message)
                return True

            async def ctl_request(peer: str, message: Any) -> Any:
                """To a peer, or to this node's own controller service."""
                if peer != cfg.node_id:
                    return await peers.request(peer, message)
                if service is None:
                    raise PeerUnavailable(f"{peer} is not eligible for the controller role")
                handlers: dict[type[Any], Any] = {
                    CtlReport: service.handle_report,
                    CtlRouteAsk: service.handle_route_ask,
                    CtlRegister: service.handle_register,
                    CtlRegistry: service.handle_registry,
                    CtlProfile: service.handle_profile,
                    CtlProfileApply: apply_profile,
                }
                return await handlers[type(message)](peer, message)

            multipath = {p.peer for p in cfg.relay_pools.values() if p.paths > 1 or p.spread}

            def first_hops(destination: str) -> list[str]:
                found = routes.paths(destination)
                return list(found[0]) if found else []

            async def alarm_events(
                after: int | None, limit: int
            ) -> list[tuple[int, CtlAlarmEvent]]:
                return [(i, _ctl_alarm(e)) for i, e in await state.events_after(after, limit)]

            async def apply_profile(peer: str, message: CtlProfileApply) -> CtlProfileReply:
                """A profile change from the controller this node follows."""
                if peer != cfg.node_id and peer != reporter.following:
                    return CtlProfileReply(
                        id=message.id,
                        ok=False,
                        code=ErrorCode.NOT_CONTROLLER,
                        message=f"{cfg.node_id} follows {reporter.following or 'no controller'}"
                        f", not {peer}",
                    )
                result, text, profile = profile_agent.apply(
                    message.op, message.name, message.fields
                )
                return CtlProfileReply(
                    id=message.id,
                    ok=True,
                    outcomes=[CtlProfileOutcome(cfg.node_id, result, text[:1024])],
                    profile=profile,
                )

            peers.on_request(CtlProfileApply, apply_profile)

            def spend_budgets(budgets: dict[str, float]) -> None:
                """Budgets govern relays and the keys cut for QKD neighbours alike."""
                relay.set_budgets(budgets)
                direct.set_budgets(budgets)

            self.reporter = reporter = Reporter(
                node_id=cfg.node_id,
                electors=[*cfg.controller.electors, *([cfg.node_id] if controller else [])],
                report_s=cfg.controller.report_s,
                sources=ReportSources(
                    links=keys.links_status,
                    bits_in=lambda: {k: v.bits_in for k, v in keys.statistics().items()},
                    peers=connected,
                    demand=lambda: front.demand(),
                    relay=relay.statistics,
                    hops=first_hops,
                    spent=relay.link_spend,
                    multipath=lambda peer: peer in multipath,
                    alarm_events=alarm_events,
                ),
                request=ctl_request,
                install=routes.set_controller,
                install_disjoint=routes.set_controller_disjoint,
                spend=spend_budgets,
                has_route=routes.has_route,
                wanted=lambda: sorted(e2e_link_to),
                software=VERSION,
                location=cfg.controller.location,
            )
            peers.on_message(CtlAnnounce, reporter.on_announce)
            peers.on_message(CtlRoutes, reporter.on_routes)
            peers.on_message(CtlBudgets, reporter.on_budgets)
            peers.on_connectivity(reporter.peer_up, reporter.peer_down)
            if controller is not None:
                self.service = service = ControllerService(
                    node_id=cfg.node_id,
                    electors=controller.electors,
                    is_controller=controller.is_controller,
                    term=controller.term,
                    leader=controller.leader,
                    send=ctl_send,
                    request=ctl_request,
                    connected=connected,
                    registry=Registry(cfg.state_dir / "registry.json"),
                    report_s=cfg.controller.report_s,
                    allocate=partial(
                        allocate_budgets,
                        policy=cfg.controller.sharing,
                        relay_bits=cfg.relay.block_bits,
                    ),
                    alarms=NetworkAlarms(
                        max_age_s=cfg.controller.alarm_history_days * 86400,
                        max_events=cfg.controller.alarm_history_max,
                        clock=clock,
                    ),
                )
                peers.on_request(CtlReport, service.handle_report)
                peers.on_request(CtlRouteAsk, service.handle_route_ask)
                peers.on_request(CtlRegister, service.handle_register)
                peers.on_request(CtlRegistry, service.handle_registry)
                peers.on_request(CtlProfile, service.handle_profile)
                peers.on_connectivity(service.peer_up, service.peer_down)
            else:
                for kind, refuse in refusals(cfg.node_id).items():
                    peers.on_request(kind, refuse)

            # Key supply: the ETSI 014 front, the key sources behind it, the neighbour's side.
            recorded = RecordedKeys(
                store=store, store_thread=store_thread, retain_ended=cfg.supply.retain_ended_s
            )

            def pool_source(link_to: dict[str, str]) -> DirectLinkSource:
                return DirectLinkSource(
                    node_id=cfg.node_id,
                    saes=cfg.saes,
                    store=store,
                    store_thread=store_thread,
                    recorded=recorded,
                    request=peers.request,
                    send=peers.send,
                    is_up=peers.is_connected,
                    acks_burns=lambda peer: peers.has_feature(peer, FEATURE_BURN_ACK),
                    link_to=link_to,
                    reserve_timeout=cfg.supply.reserve_timeout_s,
                    clock=clock,
                )

            self.direct = direct = pool_source(qkd_link_to)
            self.e2e = e2e = pool_source(e2e_link_to)
            relayed_source = RelayedPoolSource(
                pools=e2e,
                top_up=relay.top_up,
                wait_s=cfg.relay.request_wait_s,
                can_make=can_make_pool,
                make_pool=make_pool,
            )
            local = LocalSource(
                node_id=cfg.node_id,
                store=store,
                store_thread=store_thread,
                recorded=recorded,
                clock=clock,
            )
            try:
                book = PolicyBook(cfg, cfg.state_dir / "policies.json")
            except SupplyError as exc:
                raise StartupError(str(exc)) from None
            # An active profile's key size and validity lie over the policy book's.
            policy_for = profiles.layer(book.policy_for)
            self.supply = front = Etsi014Front(
                node_id=cfg.node_id,
                saes=cfg.saes,
                policy_for=policy_for,
                sources=[local, direct, relayed_source],
                pqc_keys=_pqc_keys(cfg),
                served=profiles.served,
            )
            responder = ReservationResponder(
                node_id=cfg.node_id,
                saes=cfg.saes,
                policy_for=policy_for,
                store=store,
                store_thread=store_thread,
                link_to=all_link_to,
            )
            peers.on_request(SupplyReserve, responder.handle)
            peers.on_request(SupplyBurn, responder.on_burn)
            peers.on_connectivity(direct.peer_up, direct.peer_down)
            peers.on_connectivity(e2e.peer_up, e2e.peer_down)

            self.status = status = NodeStatusMethods(
                node_id=cfg.node_id,
                version=VERSION,
                peer_host=cfg.peer_listen.host,
                link_ids=link_ids,
                keys=keys,
                peers=peers,
                relay=relay,
                store_thread=store_thread,
                started_at=time.time(),
            )

            async def link_bits() -> dict[str, int]:
                return keys.bits_in_by_peer()

            async def forward_profile(
                op: str, name: str, fields: dict[str, Any]
            ) -> dict[str, Any] | None:
                """A profile change through the controller; None: the network has none."""
                if not reporter.electors:
                    return None
                try:
                    change = msgspec.convert(
                        {"id": 0, "op": op, "name": name, "fields": fields}, CtlProfile
                    )
                except msgspec.ValidationError as exc:
                    raise ProfileError(f"profile {op}: {exc}") from None
                if service is not None and service.leading:
                    reply = await service.distribute_profile(change)
                else:
                    reply = await reporter.forward_profile(change)
                if not reply.ok:
                    raise ProfileError(f"profile {op} {name}: {reply.message}")
                return {
                    "controller": reply.controller,
                    "op": op,
                    "name": name,
                    "nodes": msgspec.to_builtins(reply.outcomes),
                    "profile": dict(reply.profile) or None,
                }

            self.profiles = profile_agent = ProfileAgent(
                profiles, link_bits=link_bits, forward=forward_profile
            )

            # Operations: alarms from every agent's statistics, and Prometheus metrics.
            self.state = state = StateAgent(
                settings=cfg.alarms,
                sources=Sources(
                    links=keys.links_status,
                    peers=peers.peers_status,
                    refused=lambda: front.statistics().refused,
                    relay_failures=lambda: relay.statistics().relays_failed,
                    store_probe=partial(store_thread.call, store.verify_master_key),
                    state_dir=cfg.state_dir,
                    certificates={"cert:node": cfg.cert, "cert:ca": cfg.ca},
                    hold_link=keys.hold_link,
                    release_link=keys.release_link,
                    stop_driver=keys.stop_driver,
                    start_driver=keys.start_driver,
                    route_down=relay.route_down,
                    route_up=relay.route_up,
                    controller=(
                        (lambda: controller.status().controller) if controller is not None else None
                    ),
                ),
                history_path=cfg.alarm_history_path,
                clock=clock,
            )
            peers.on_connectivity(state.peer_up, state.peer_down)

            # Performance collection: samples of every agent, history, push to a collector.
            perf = None
            if cfg.perf.enabled:
                pusher = None
                if cfg.perf.report_url is not None:
                    try:
                        collector = collector_context(cfg.ca, cfg.cert, cfg.key)
                    except TlsError as exc:
                        raise StartupError(f"[perf] report_url: {exc}") from None
                    pusher = Pusher(cfg.perf.report_url, node_id=cfg.node_id, ssl_context=collector)
                store_files = [
                    cfg.keystore_path,
                    cfg.keystore_path.with_name("keystore.sqlite-wal"),
                ]
                self.perf = perf = PerfAgent(
                    settings=cfg.perf,
                    sources=PerfSources(
                        links=keys.links_status,
                        saes=front.sae_counts,
                        relay=relay.statistics,
                        relay_pools=relay.pool_statistics,
                        controller=service.statistics if service is not None else None,
                        store_files=store_files,
                    ),
                    history_path=cfg.perf_history_path,
                    pusher=pusher,
                    clock=clock,
                )

            async def add_device(link: LinkConfig) -> None:
                """A device registered at runtime: its driver runs and its key is served like
                a configured link's, and relays take it at once."""
                end = LinkEnd(link.link_id, cfg.node_id, link.peer)
                driver = driver_class(link.driver)(end, link.params)
                qkd_link_to[link.peer] = link.link_id
                all_link_to.setdefault(link.peer, link.link_id)
                link_ids.add(link.link_id)
                await keys.add_link(link.link_id, link.peer, driver)
                relay.add_link(link.peer, link.link_id)

            async def remove_device(link_id: str, peer: str) -> None:
                relay.remove_link(peer, link_id)
                await keys.remove_link(link_id)
                for alarm in state.alarms():  # nothing reads the link any more to clear them
                    if alarm.resource == link_id:
                        await state.clear(alarm.code, link_id, by="device-removed")
                for table in (qkd_link_to, all_link_to):
                    if table.get(peer) == link_id:
                        del table[peer]
                link_ids.discard(link_id)

            async def controller_status(params: dict[str, Any]) -> dict[str, Any]:
                if controller is None:
                    return {
                        "node_id": cfg.node_id,
                        "eligible": False,
                        "role": "not eligible",
                        "controller": reporter.following,
                        "term": reporter.term,
                        "electors": dict(cfg.controller.electors),
                        "reporting": msgspec.to_builtins(reporter.status()),
                    }
                result: dict[str, Any] = msgspec.to_builtins(controller.status())
                result["reporting"] = msgspec.to_builtins(reporter.status())
                return result

            admin_methods = {
                **status.methods(),
                **state.admin_methods(),
                **(perf.admin_methods() if perf is not None else {}),
                **profile_agent.admin_methods(),
                **NodeOperations(
                    node_id=cfg.node_id,
                    front=front,
                    book=book,
                    keys=keys,
                    config_path=cfg.source,
                    state_dir=cfg.state_dir,
                    clock=clock,
                    config=cfg,
                    device_hooks=DeviceHooks(
                        link_to=lambda: dict(all_link_to), add=add_device, remove=remove_device
                    ),
                ).methods(),
                **ControllerAdmin(service, reporter).methods(),
                "controller": controller_status,
            }
            admin = AdminServer(cfg.admin_socket, admin_methods, group=cfg.admin_group)
            async with trio.open_nursery() as nursery:
                await nursery.start(store_thread.run)
                await nursery.start(keys.run)
                await nursery.start(recorded.run)
                await nursery.start(direct.run)
                await nursery.start(e2e.run)
                await nursery.start(relay.run)
                await nursery.start(profile_agent.run)
                await nursery.start(state.run)
                if perf is not None:
                    await nursery.start(perf.run)
                if controller is not None:
                    await nursery.start(controller.run)
                if service is not None:
                    await nursery.start(service.run)
                await nursery.start(reporter.run)
                try:
                    port = await nursery.start(peers.run) if self._listen else 0
                except OSError as exc:
                    raise StartupError(
                        f"peer port {cfg.peer_listen}: {exc.strerror or exc}"
                    ) from None
                if cfg.api_listen is not None:
                    self.api_port = await self._start_api(nursery, front, tls.api)
                    status.api = Api(
                        f"{cfg.api_listen.host}:{self.api_port}", front, direct, self.api_handshakes
                    )
                self.metrics = MetricsSources(
                    status.node_status,
                    state.statistics,
                    state.alarms,
                    profile_agent.statuses,
                    relay_pools=relay.pool_statistics,
                    controller=service.statistics if service is not None else None,
                )
                if cfg.metrics_listen is not None:
                    self.metrics_port = await self._start_metrics(nursery, self.metrics)
                if cfg.dashboard_listen is not None or cfg.dashboard_tls_listen is not None:
                    board = Dashboard(
                        DashboardSources(
                            node_status=status.node_status,
                            alarms=state.alarms,
                            relays=relay.relays,
                            low_bits={
                                link_id: pool.low_bits for link_id, pool in cfg.relay_pools.items()
                            },
                            default_low_bits=cfg.alarms.pool_low_bits,
                            qber_max=cfg.alarms.qber_max,
                            topology=whole_network(partial(_topology, cfg), service),
                            controller=(
                                (lambda: controller.status().controller)
                                if controller is not None
                                else None
                            ),
                            draining=lambda: front.draining,
                            saes=front.sae_counts,
                            admin=admin_methods,
                            profiles=profile_agent.statuses,
                            routes=lambda: table_routes(cfg.node_id, relay.routes()),
                            relay_totals=lambda: (
                                relay.statistics().relays_confirmed,
                                relay.statistics().relays_failed,
                            ),
                            etsi015=etsi015_source(reporter),
                        )
                    )

                    async def poke_board(peer: str, reason: str = "") -> None:
                        board.poke()

                    peers.on_connectivity(poke_board, poke_board)
                    await self._start_dashboard(nursery, board, tls)
                await nursery.start(admin.run)
                await nursery.start(self.notifier.watchdog)
                status.started_at = time.time()
                info = NodeInfo(
                    cfg.node_id,
                    port,
                    cfg.admin_socket,
                    self.api_port,
                    self.metrics_port,
                    self.dashboard_port,
                    self.dashboard_tls_port,
                )
                log.info("node.ready", node=cfg.node_id, peer_port=port, links=len(drivers))
                self.notifier.notify(f"READY=1\nSTATUS=serving {len(drivers)} link(s)")
                task_status.started(info)
        finally:
            store.close()
            log.info("node.stopped", node=cfg.node_id)

    async def _start_api(
        self, nursery: trio.Nursery, front: Etsi014Front, contexts: TlsContexts
    ) -> int:
        cfg = self.config
        assert cfg.api_listen is not None
        try:
            port: int = await nursery.start(
                partial(
                    serve_tcp_tls,
                    stats=self.api_handshakes,
                    limits=Limits(
                        handshake_timeout=cfg.api.handshake_timeout_s,
                        request_timeout=cfg.api.request_timeout_s,
                        idle_timeout=cfg.api.idle_timeout_s,
                    ),
                    gate=GateLimits(cfg.api.max_connections, cfg.api.max_connections_per_source),
                    connections=self.api_connections,
                ),
                front.handle,
                contexts,
                cfg.api_listen.host,
                cfg.api_listen.port,
            )
        except OSError as exc:
            raise StartupError(f"ETSI 014 API {cfg.api_listen}: {exc.strerror or exc}") from None
        return port

    async def _start_metrics(self, nursery: trio.Nursery, sources: MetricsSources) -> int:
        listen = self.config.metrics_listen
        assert listen is not None
        handler = metrics_handler(sources)
        try:
            port: int = await nursery.start(
                partial(serve_tcp_plain, name="metrics", limits=metrics.LIMITS),
                handler,
                listen.host,
                listen.port,
            )
        except OSError as exc:
            raise StartupError(f"metrics {listen}: {exc.strerror or exc}") from None
        return port

    async def _start_dashboard(
        self, nursery: trio.Nursery, board: Dashboard, tls: _NodeTls
    ) -> None:
        cfg = self.config
        tokens, streams = CsrfTokens(), StreamSlots(dashboard.MAX_STREAMS)
        if cfg.dashboard_listen is not None:
            listen = cfg.dashboard_listen
            access = Access(tls=False, loopback_operations=cfg.dashboard.loopback_operations)
            handler = dashboard_handler(board, access=access, tokens=tokens, streams=streams)
            try:
                self.dashboard_port = await nursery.start(
                    partial(serve_tcp_plain, name="dashboard", limits=dashboard.LIMITS),
                    handler,
                    listen.host,
                    listen.port,
                )
            except OSError as exc:
                raise StartupError(f"dashboard {listen}: {exc.strerror or exc}") from None
        if cfg.dashboard_tls_listen is not None:
            listen = cfg.dashboard_tls_listen
            handler = dashboard_handler(
                board, access=Access(tls=True), tokens=tokens, streams=streams
            )
            try:
                self.dashboard_tls_port = await nursery.start(
                    partial(
                        serve_tcp_tls,
                        limits=dashboard.LIMITS,
                        gate=GateLimits(dashboard.MAX_STREAMS * 4, dashboard.MAX_STREAMS * 2),
                    ),
                    handler,
                    tls.api,  # the same server side: node certificate, client's required
                    listen.host,
                    listen.port,
                )
            except OSError as exc:
                raise StartupError(f"dashboard_tls {listen}: {exc.strerror or exc}") from None


def _topology(cfg: Config) -> NetworkTopology:
    """The network as the node's config knows it: ``[relay] topology``, positions."""
    links = normalise_links(cfg.relay.topology)
    nodes = frozenset(n for link in links for n in link)
    coordinates = {name: (xy[0], xy[1]) for name, xy in cfg.dashboard.positions.items()}
    return NetworkTopology(nodes, links, coordinates)


def _open_store(cfg: Config, *, clock: Callable[[], float], durable: bool) -> KeyStore:
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if cfg.master_key_file is None:
            key = load_master_key(None)
            return KeyStore.open(cfg.keystore_path, key, clock=clock, durable=durable)
        # Finishes a `qkmsd rotate-master` that a crash interrupted.
        store, finished = open_store(
            cfg.keystore_path, cfg.master_key_file, clock=clock, durable=durable
        )
        if finished:
            log.warning("keystore.rotation_finished", key_file=str(cfg.master_key_file))
        return store
    except (MasterKeyError, KeyStoreError) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"state directory {cfg.state_dir}: {exc.strerror or exc}") from None


def _make_drivers(
    cfg: Config, links: Mapping[str, LinkConfig], given: Mapping[str, Driver]
) -> dict[str, tuple[str, Driver]]:
    drivers: dict[str, tuple[str, Driver]] = {}
    for link_id, link in links.items():
        if link_id in given:
            drivers[link_id] = (link.peer, given[link_id])
            continue
        # Params were validated by load_config; build the driver from them as they are.
        drivers[link_id] = (
            link.peer,
            driver_class(link.driver)(LinkEnd(link_id, cfg.node_id, link.peer), link.params),
        )
    return drivers


def _ctl_alarm(event: Any) -> CtlAlarmEvent:
    """A state agent history event (``EventView``) as the controller report carries it."""
    return CtlAlarmEvent(
        kind=event.kind,
        code=event.code[:64],
        resource=event.resource[:256],
        severity=event.severity,
        previous=event.previous,
        at=min(max(0.0, event.at), 1e11),
        value=event.value,
        by=event.by[:128],
    )


def _pqc_keys(cfg: Config) -> dict[str, HybridPublicKey]:
    keys: dict[str, HybridPublicKey] = {}
    for sae in cfg.saes.values():
        if sae.pqc_public_key is None or sae.kme != cfg.node_id:
            continue
        try:
            keys[sae.sae_id] = HybridPublicKey.from_pem(sae.pqc_public_key.read_bytes())
        except OSError as exc:
            raise StartupError(
                f"[saes.{sae.sae_id}] pqc_public_key {sae.pqc_public_key}: {exc.strerror or exc}"
            ) from None
        except PqcError as exc:
            raise StartupError(f"[saes.{sae.sae_id}] pqc_public_key: {exc}") from None
    return keys


@dataclasses.dataclass
class _NodeTls:
    """The node's TLS contexts (peer server, peer client, API) and its CRL's revocations."""

    peer_server: TlsContexts
    peer_client: TlsContexts
    api: TlsContexts
    revocations: Revocations | None

    @classmethod
    def load(cls, cfg: Config) -> _NodeTls:
        """Raises ``TlsError`` naming the file that cannot be loaded."""
        # The CRL is checked first (signed by the CA, not expired): OpenSSL would load a
        # stale or foreign one and then refuse every handshake.
        revocations = load_crl(cfg.ca, cfg.crl) if cfg.crl is not None else None
        if revocations is not None:
            left = revocations.next_update.timestamp() - time.time()
            if left < _CRL_WARNING_S:
                log.warning(
                    "tls.crl_expires_soon",
                    crl=str(cfg.crl),
                    next_update=revocations.next_update.isoformat(),
                )
        files = (cfg.ca, cfg.cert, cfg.key)
        # Context makers rather than contexts: each side then has two, and can name each
        # handshake's key exchange group on any Python (see TlsContexts).
        return cls(
            peer_server=TlsContexts(partial(peer_context, *files, server=True, crl=cfg.crl)),
            peer_client=TlsContexts(partial(peer_context, *files, server=False, crl=cfg.crl)),
            api=TlsContexts(partial(api_context, *files, crl=cfg.crl)),
            revocations=revocations,
        )

    def adopt(self, fresh: _NodeTls) -> None:
        """New handshakes use ``fresh``'s contexts: the peer manager and the API server
        hold these objects, which take the new contexts in place."""
        self.peer_server.adopt(fresh.peer_server)
        self.peer_client.adopt(fresh.peer_client)
        self.api.adopt(fresh.api)
        self.revocations = fresh.revocations


_CRL_WARNING_S = 7 * 86400.0
"""A CRL this close to its next update is logged at start and reload: once past it, every
handshake fails until a new CRL is loaded."""
