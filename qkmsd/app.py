"""Wiring: builds the agents of one node, hands them their collaborators, runs them.

The only module that knows every agent.  Agents never import each other.
"""

from __future__ import annotations

import dataclasses
import os
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import msgspec
import trio

from protocol import KeyAnnounce, KeyConfirm, KeyDiscard, SupplyReserve, SupplyResult
from qkd_drivers import Driver, driver_class
from qkms_pqc import HybridPublicKey, PqcError

from .admin import AdminParamsError, AdminServer
from .config import Config
from .errors import StartupError
from .http import HandshakeStats, Limits, serve_tcp_tls
from .keymanager import KeyManager
from .keystore import KeyStore, KeyStoreError, MasterKeyError, load_master_key
from .log import get_logger
from .netguard import GateLimits
from .peers import PeerManager
from .storethread import StoreThread
from .supply import KeySupply
from .systemd import Notifier
from .tls import TlsError, api_context, hybrid_pq_groups_available, peer_context
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


class Node:
    """One qkms node: key store, drivers, key manager, peers and admin endpoint."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier({})
        self.started_at = time.time()
        self.keys: KeyManager | None = None
        self.peers: PeerManager | None = None
        self.supply: KeySupply | None = None
        self.api_port: int | None = None
        self.api_handshakes = HandshakeStats()
        self.store_thread: StoreThread | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled.  Raises ``StartupError`` if the node cannot start.

        On cancellation the agents stop, pending store calls finish and the key
        store is closed.
        """
        cfg = self.config
        store = _open_store(cfg)
        try:
            drivers = _make_drivers(cfg)
            server_ctx, client_ctx = _peer_contexts(cfg)
            self.store_thread = store_thread = StoreThread(store)
            self.keys = keys = KeyManager(
                node_id=cfg.node_id,
                store=store,
                store_thread=store_thread,
                drivers=drivers,
                send=self._send_to_peer,
                sync_timeout=cfg.sync.timeout_s,
                announce_interval=cfg.sync.announce_interval_s,
                max_block_age=cfg.policy.max_block_age_s,
                key_size=cfg.policy.key_size,
                peer_heard=self._peer_heard,
                # A healthy peer is heard at least once a heartbeat (its pings, our pongs).
                liveness_window=2 * cfg.sync.heartbeat_s,
            )
            self.supply = supply = KeySupply(
                node_id=cfg.node_id,
                saes=cfg.saes,
                policy_for=cfg.policy_for,
                store=store,
                store_thread=store_thread,
                send=self._send_to_peer,
                link_to={link.peer: link_id for link_id, link in reversed(cfg.links.items())},
                pqc_keys=_pqc_keys(cfg),
                reserve_timeout=cfg.supply.reserve_timeout_s,
                retain_ended=cfg.supply.retain_ended_s,
            )
            self.peers = peers = PeerManager(
                node_id=cfg.node_id,
                peers={p.node_id: str(p.address) for p in cfg.peers.values()},
                listen_host=cfg.peer_listen.host,
                listen_port=cfg.peer_listen.port,
                server_context=server_ctx,
                client_context=client_ctx,
                handlers={
                    KeyAnnounce: keys.on_announce,
                    KeyConfirm: keys.on_confirm,
                    KeyDiscard: keys.on_discard,
                    SupplyReserve: supply.on_reserve,
                    SupplyResult: supply.on_result,
                },
                on_up=keys.peer_up,
                on_down=keys.peer_down,
                heartbeat=cfg.sync.heartbeat_s,
                reconnect_max=cfg.sync.reconnect_max_s,
                gate=GateLimits(cfg.peer.max_connections, cfg.peer.max_connections_per_source),
                handshake_timeout=cfg.peer.handshake_timeout_s,
            )
            admin = AdminServer(
                cfg.admin_socket,
                {
                    "status": self._status,
                    "peers": self._peers,
                    "links": self._links,
                    "check": self._check,
                },
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(store_thread.run)
                await nursery.start(keys.run)
                try:
                    port = await nursery.start(peers.run)
                except OSError as exc:
                    raise StartupError(
                        f"peer port {cfg.peer_listen}: {exc.strerror or exc}"
                    ) from None
                await nursery.start(supply.run)
                if cfg.api_listen is not None:
                    self.api_port = await self._start_api(nursery, supply)
                await nursery.start(admin.run)
                await nursery.start(self.notifier.watchdog)
                self.started_at = time.time()
                info = NodeInfo(cfg.node_id, port, cfg.admin_socket, self.api_port)
                log.info("node.ready", node=cfg.node_id, peer_port=port, links=len(drivers))
                self.notifier.notify(f"READY=1\nSTATUS=serving {len(drivers)} link(s)")
                task_status.started(info)
        finally:
            store.close()
            log.info("node.stopped", node=cfg.node_id)

    async def _start_api(self, nursery: trio.Nursery, supply: KeySupply) -> int:
        cfg = self.config
        assert cfg.api_listen is not None
        # A context maker rather than a context: the server then makes two, and can name
        # each handshake's key exchange group on any Python (see TlsContexts).
        make_context = partial(api_context, cfg.ca, cfg.cert, cfg.key)
        try:
            port: int = await nursery.start(
                partial(
                    serve_tcp_tls,
                    stats=self.api_handshakes,
                    limits=Limits(handshake_timeout=cfg.api.handshake_timeout_s),
                    gate=GateLimits(cfg.api.max_connections, cfg.api.max_connections_per_source),
                ),
                supply.handle,
                make_context,
                cfg.api_listen.host,
                cfg.api_listen.port,
            )
        except TlsError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"ETSI 014 API {cfg.api_listen}: {exc.strerror or exc}") from None
        return port

    async def _send_to_peer(self, peer: str, message: Any) -> bool:
        assert self.peers is not None
        return await self.peers.send(peer, message)

    def _peer_heard(self, peer: str) -> float | None:
        return self.peers.last_heard(peer) if self.peers is not None else None

    # --- admin methods -------------------------------------------------------------

    async def _status(self, params: dict[str, Any]) -> dict[str, Any]:
        assert self.keys is not None and self.peers is not None
        return {
            "node_id": self.config.node_id,
            "version": VERSION,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "peer_listen": f"{self.config.peer_listen.host}:{self.peers.port}",
            "peers": self.peers.peers_status(),
            "links": await self.keys.links_status(),
            "store": self.store_thread.statistics() if self.store_thread else {},
            "api": None
            if self.api_port is None
            else {
                "listen": f"{self.config.api_listen.host if self.config.api_listen else ''}:"
                f"{self.api_port}",
                "hybrid_pq_tls_groups": hybrid_pq_groups_available(),
                "tls": self.api_handshakes.snapshot(),
                "supply": self.supply.statistics() if self.supply else {},
            },
        }

    async def _peers(self, params: dict[str, Any]) -> dict[str, Any]:
        assert self.peers is not None
        return {"peers": self.peers.peers_status()}

    async def _links(self, params: dict[str, Any]) -> dict[str, Any]:
        assert self.keys is not None
        return {"links": await self.keys.links_status()}

    async def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        """Ready block ids of a link in [first, last] and their key check value."""
        assert self.keys is not None
        try:
            p = msgspec.convert(params, CheckParams)
        except msgspec.ValidationError as exc:
            raise AdminParamsError(f"check: {exc}") from None
        if not 0 <= p.last - p.first < MAX_CHECK_SPAN:
            raise AdminParamsError(f"check: last - first must be in 0..{MAX_CHECK_SPAN - 1}")
        if p.link_id not in self.config.links:
            known = ", ".join(sorted(self.config.links)) or "none"
            raise AdminParamsError(f"check: unknown link {p.link_id!r} (known: {known})")
        return await self.keys.check(p.link_id, p.first, p.last)


class CheckParams(msgspec.Struct, forbid_unknown_fields=True):
    link_id: str
    first: Annotated[int, msgspec.Meta(ge=0)]
    last: Annotated[int, msgspec.Meta(ge=0)]


MAX_CHECK_SPAN = 10_000


def _open_store(cfg: Config) -> KeyStore:
    try:
        master_key = load_master_key(cfg.master_key_file)
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return KeyStore.open(cfg.keystore_path, master_key)
    except (MasterKeyError, KeyStoreError) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"state directory {cfg.state_dir}: {exc.strerror or exc}") from None


def _make_drivers(cfg: Config) -> dict[str, tuple[str, Driver]]:
    drivers: dict[str, tuple[str, Driver]] = {}
    for link_id, link in cfg.links.items():
        # Params were validated by load_config; build the driver from them as they are.
        drivers[link_id] = (
            link.peer,
            driver_class(link.driver)(cfg.link_end(link_id), link.params),
        )
    return drivers


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


def _peer_contexts(cfg: Config) -> tuple[TlsContexts, TlsContexts]:
    # Context makers rather than contexts: each side then has two, and can name each
    # handshake's key exchange group on any Python (see TlsContexts).
    try:
        return (
            TlsContexts(partial(peer_context, cfg.ca, cfg.cert, cfg.key, server=True)),
            TlsContexts(partial(peer_context, cfg.ca, cfg.cert, cfg.key, server=False)),
        )
    except TlsError as exc:
        raise StartupError(str(exc)) from None
