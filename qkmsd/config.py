"""Node configuration: one TOML file per node, validated once with clear errors.

Every error names the file, the key and the fix, e.g.::

    config qkmsd.toml: [links.A~B] driver "bb48" unknown (known: paired)
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from protocol import LINK_ID_RE, MAX_RELAY_PATH, NODE_ID_PATTERN, NODE_ID_RE, SAE_ID_RE, etsi014
from qkd_drivers import DriverConfigError, LinkEnd, driver_class

from .disruptions import CODES, Action
from .errors import EXIT_CONFIG, QkmsError

NodeId = Annotated[str, msgspec.Meta(pattern=NODE_ID_PATTERN)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400 * 365)]


class ConfigError(QkmsError):
    """The configuration is invalid.  ``str()`` is the one line to show the operator."""

    exit_code = EXIT_CONFIG


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class NodeSection(_Section, frozen=True):
    id: NodeId
    state_dir: str
    master_key_file: str | None = None


class TlsSection(_Section, frozen=True):
    ca: str
    cert: str
    key: str
    crl: str | None = None


class ListenSection(_Section, frozen=True):
    peer: str
    admin_socket: str
    api: str | None = None
    admin_group: str | None = None
    metrics: str | None = None
    dashboard: str | None = None
    dashboard_tls: str | None = None


class PeerSection(_Section, frozen=True):
    address: str


class LinkSection(_Section, frozen=True):
    peer: NodeId
    driver: str
    params: dict[str, Any] = {}


class SyncSection(_Section, frozen=True):
    timeout_s: Seconds = 30.0
    announce_interval_s: Seconds = 0.2
    heartbeat_s: Seconds = 0.25
    silence_s: Seconds | None = None
    """A peer that sends nothing for this long is declared down; unset: 4 heartbeats."""
    reconnect_max_s: Seconds = 2.0

    @property
    def silence(self) -> float:
        """The silence limit in force: ``silence_s``, or four heartbeats (1 s by default)."""
        return self.silence_s if self.silence_s is not None else 4 * self.heartbeat_s


Connections = Annotated[int, msgspec.Meta(ge=1, le=1 << 20)]


class ApiSection(_Section, frozen=True):
    """Caps on the ETSI 014 listener's connections and requests (``[api]``)."""

    max_connections: Connections = 4096
    max_connections_per_source: Connections = 256
    handshake_timeout_s: Seconds = 10.0
    request_timeout_s: Seconds = 10.0
    """From a request's first byte until its whole body is in; then 408 and close."""
    idle_timeout_s: Seconds = 60.0
    """How long a kept-alive connection may wait for its next request."""


class PeerListenerSection(_Section, frozen=True):
    """Caps on the peer listener's connections (``[peer]``)."""

    max_connections: Connections = 256
    max_connections_per_source: Connections = 64
    handshake_timeout_s: Seconds = 10.0


class PolicySection(_Section, frozen=True):
    key_size: Annotated[int, msgspec.Meta(ge=8, le=1 << 16)] = 256
    max_block_age_s: Seconds = 7 * 86400.0


class ControllerSection(_Section, frozen=True):
    """The controller role (``[controller]``): whether this node may hold it, and the
    election among the nodes that may."""

    eligible: bool = False
    priority: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    electors: dict[str, Annotated[int, msgspec.Meta(ge=0, le=1000)]] = {}
    """The other eligible nodes and their priorities (each must be in ``[peers]``); the
    same set, this node included, at every eligible node.  On a node that is not
    eligible: the eligible nodes, whose controller it reports to."""
    report_s: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] = 2.0
    """How often this node reports to the controller (and the controller looks again);
    a node silent for three periods is lost to routing."""
    location: Annotated[str, msgspec.Meta(max_length=128)] = ""
    """Where the node stands (a site name), as the controller shows it."""
    sharing: Literal["max-min", "proportional", "throughput"] = "max-min"
    """How the controller shares each link's key rate among the node pairs whose routes
    cross it (``qkmsd.sharing``): the per-pair relay budgets it pushes."""
    lease_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 2.0
    """How long a majority's answers keep the controller in office."""
    drift_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.1
    """Clock-rate margin added to every promise a node makes to a controller."""
    alarm_history_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 7.0
    """The controller keeps the network's alarm events this long (in memory)."""
    alarm_history_max: Annotated[int, msgspec.Meta(ge=100, le=1_000_000)] = 20_000
    """... and at most this many (the oldest go first)."""


class SaeLimits(_Section, frozen=True):
    """Rate limits on one SAE's ETSI 014 calls (token buckets; ``None``: no limit).

    ``requests_per_s`` counts every call (status, enc_keys, dec_keys); ``keys_per_s``
    counts the keys asked for by enc_keys and dec_keys.  A bucket holds up to its burst;
    a call over the limit is answered 429 with ``Retry-After``.
    """

    requests_per_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    burst_requests: Annotated[int, msgspec.Meta(ge=1, le=1 << 20)] = 32
    keys_per_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    burst_keys: Annotated[int, msgspec.Meta(ge=1, le=1 << 24)] = 1024


class SaeLimitsOverride(_Section, frozen=True):
    """``[saes.X.limits]``: any field set replaces ``[supply.sae_limits]``'s."""

    requests_per_s: float | None = None
    burst_requests: int | None = None
    keys_per_s: float | None = None
    burst_keys: int | None = None


class SaeSection(_Section, frozen=True):
    kme: NodeId
    pqc_public_key: str | None = None
    limits: SaeLimitsOverride = SaeLimitsOverride()


class SupplyPolicy(_Section, frozen=True):
    """What one master SAE may ask for one slave SAE (ETSI 014 Status fields)."""

    key_size: Annotated[int, msgspec.Meta(ge=8, le=1 << 16, multiple_of=8)] = 256
    min_key_size: Annotated[int, msgspec.Meta(ge=8, le=1 << 16, multiple_of=8)] = 64
    max_key_size: Annotated[int, msgspec.Meta(ge=8, le=1 << 16, multiple_of=8)] = 8192
    max_key_per_request: Annotated[int, msgspec.Meta(ge=1, le=etsi014.MAX_KEYS_PER_REQUEST)] = 128
    max_stored_keys: Annotated[int, msgspec.Meta(ge=1, le=1 << 24)] = 100_000
    max_sae_id_count: Annotated[int, msgspec.Meta(ge=0, le=etsi014.MAX_SLAVE_SAE_IDS)] = 8
    key_validity_s: Seconds = 3600.0
    rate_keys_per_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    burst_keys: Annotated[int, msgspec.Meta(ge=1)] = 1024
    derive: str = "none"
    stock_keys: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 32


class SupplyPairSection(_Section, frozen=True):
    master: NodeId
    slave: NodeId
    key_size: int | None = None
    min_key_size: int | None = None
    max_key_size: int | None = None
    max_key_per_request: int | None = None
    max_stored_keys: int | None = None
    max_sae_id_count: int | None = None
    key_validity_s: float | None = None
    rate_keys_per_s: float | None = None
    burst_keys: int | None = None
    derive: str | None = None
    stock_keys: int | None = None


class SupplySection(_Section, frozen=True):
    default: SupplyPolicy = SupplyPolicy()
    sae_limits: SaeLimits = SaeLimits()
    """The rate limits of every SAE without its own ``[saes.X.limits]``."""
    pairs: list[SupplyPairSection] = []
    reserve_timeout_s: Seconds = 5.0
    # How long a delivered or expired key's row (no material) outlives the key's validity.
    retain_ended_s: Seconds = 86_400.0


class LogSection(_Section, frozen=True):
    level: str = "info"
    format: str = "kv"


class RelayPoolSection(_Section, frozen=True):
    """An end-to-end pool with a distant node (``[relay.pools.<node>]``)."""

    link_id: str | None = None
    """The pool's (virtual) link id; by default ``<lower id>~<higher id>``."""
    route: list[NodeId] | None = None
    """A manual route: the intermediate nodes, in order from this node."""
    low_bits: Bits | None = None
    """This pool's own low watermark (default: ``[relay] low_bits``)."""
    high_bits: Bits | None = None
    """This pool's own high watermark (default: ``[relay] high_bits``)."""
    spread: bool = False
    """Spread relays over the node-disjoint paths in turn (for throughput: up to the
    max-flow of the links between the two ends), instead of the first route first."""
    paths: Annotated[int, msgspec.Meta(ge=1, le=8)] | Literal["disjoint"] = 1
    """1: each key over one route.  N or ``"disjoint"``: each key split into XOR shares,
    one over each of up to N (or ``max_paths``) node-disjoint paths, so that no single
    intermediate node learns it."""


Bits = Annotated[int, msgspec.Meta(ge=0, le=1 << 40)]
MAX_DISJOINT_PATHS = 8
"""What ``paths = "disjoint"`` means: as many node-disjoint paths as exist, up to this."""


class RelaySection(_Section, frozen=True):
    """Key relay: the end-to-end pools this node keeps, and how (``[relay]``)."""

    block_bits: Annotated[int, msgspec.Meta(ge=256, le=(1 << 19) - 256, multiple_of=8)] = 8192
    """Key carried by one relay (a block of the end-to-end pool)."""
    low_bits: Bits = 65536
    """Relays start when the pool's ready bits fall below this..."""
    high_bits: Bits = 262144
    """...and go on until they reach this."""
    timeout_s: Seconds = 5.0
    """One relay, from the source to the destination's confirmation."""
    in_flight: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    """Relays under way at once for one pool."""
    link_reserve_bits: Bits = 65536
    """Link key relays leave on each QKD link for the SAE pairs across it: a relay takes
    no pad from a link whose owned ready key would fall below this."""
    auto_pools: bool = True
    """Make an end-to-end pool on demand with a node of ``[peers]`` that is no QKD
    neighbour, when an SAE asks for keys to an SAE there (or its relays arrive), besides
    the pools named in ``[relay.pools]``."""
    request_wait_s: Seconds = 3.0
    """How long an ``enc_keys`` that finds the end-to-end pool short waits for relays
    before it gets 503."""
    topology: list[Annotated[list[NodeId], msgspec.Meta(min_length=2, max_length=2)]] = []
    """The network's QKD links as node pairs, for computed routes."""
    pools: dict[str, RelayPoolSection] = {}


class AlarmsSection(_Section, frozen=True):
    """Disruption detection: thresholds, hold-down, history, actions (``[alarms]``)."""

    interval_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 1.0
    """How often the state agent looks at the other agents' statistics (a look costs about
    1 ms of CPU: ``benchmarks/dashboard_bench.py --part look``)."""
    down_grace_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.5
    """``peer-down`` and ``link-down`` raise once a peer or driver is down this long."""
    hold_down_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 60.0
    """An alarm clears (or moves to a lower severity) only after its condition has been
    gone this long: no flapping."""
    qber_max: Annotated[float, msgspec.Meta(gt=0, le=0.5)] = 0.11
    qber_clear: Literal["auto", "operator"] = "auto"
    """``qber-high`` clears when the QBER recovers (auto) or only by ``alarm_clear``."""
    pool_low_bits: Bits = 16384
    cert_warn_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    relay_failures_per_min: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 6.0
    disk_free_min_mib: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 256
    key_rate_min_bps: Annotated[float, msgspec.Meta(ge=0, le=1e12)] = 0.0
    """``key-rate-low``: a QKD link's key rate below this (bits/s), averaged over
    ``key_rate_period_s``; 0 turns the code off (a link's normal rate depends on its
    device and fibre, so there is no useful default)."""
    key_rate_period_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 300.0
    controller_lost_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 10.0
    clock_skew_max_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 1.0
    """``clock-skew``: a peer's wall clock differs from ours by more than this."""
    """``controller-lost``: seconds without a controller this node knows of."""
    history_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 90.0
    history_max: Annotated[int, msgspec.Meta(ge=10, le=10_000_000)] = 100_000
    actions: dict[str, str] = {}
    """Per disruption code, the action instead of its default."""

    def action(self, code: str) -> Action:
        """The action of ``code`` (validated by ``load_config``)."""
        return Action(self.actions.get(code, CODES[code].action))


class DashboardSection(_Section, frozen=True):
    """The dashboard (``[dashboard]``); where it listens is ``[listen] dashboard`` and
    ``dashboard_tls``."""

    loopback_operations: bool = False
    """Whether the loopback page may operate (acknowledge, clear, drain): every local user
    of the node can reach it, so it is off by default; the operator is logged as
    ``loopback``.  Operator certificates on ``dashboard_tls`` do not need it."""
    positions: dict[str, Annotated[list[float], msgspec.Meta(min_length=2, max_length=2)]] = {}
    """Where nodes are drawn: ``NODE = [x, y]``, x east and y north in any unit
    (longitude and latitude in degrees work); nodes not named are placed by springs."""


class PerfSection(_Section, frozen=True):
    """Performance collection (``[perf]``): sampling, history, pushing to a collector."""

    enabled: bool = True
    interval_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 10.0
    """How often the node samples itself."""
    raw_keep_s: Annotated[float, msgspec.Meta(ge=60, le=86400 * 31)] = 3600.0
    """Samples are kept as taken this long."""
    minute_keep_s: Annotated[float, msgspec.Meta(ge=3600, le=86400 * 366)] = 2 * 86400.0
    """5-minute buckets (mean, min, max) are kept this long."""
    hour_keep_s: Annotated[float, msgspec.Meta(ge=86400, le=86400 * 3660)] = 400 * 86400.0
    """1-hour buckets are kept this long."""
    report_url: str | None = None
    """``https://`` URL of a collector the samples are POSTed to as JSON (mutual TLS with
    the node's certificate; the collector's checked against ``[tls] ca``); None: none."""
    report_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 60.0
    push_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0


class _RawConfig(_Section, frozen=True):
    node: NodeSection
    tls: TlsSection
    listen: ListenSection
    peers: dict[str, PeerSection] = {}
    links: dict[str, LinkSection] = {}
    sync: SyncSection = SyncSection()
    policy: PolicySection = PolicySection()
    controller: ControllerSection = ControllerSection()
    log: LogSection = LogSection()
    saes: dict[str, SaeSection] = {}
    supply: SupplySection = SupplySection()
    api: ApiSection = ApiSection()
    peer: PeerListenerSection = PeerListenerSection()
    relay: RelaySection = RelaySection()
    alarms: AlarmsSection = AlarmsSection()
    perf: PerfSection = PerfSection()
    dashboard: DashboardSection = DashboardSection()


class HostPort(msgspec.Struct, frozen=True):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class LinkConfig(msgspec.Struct, frozen=True):
    link_id: str
    peer: str
    driver: str
    params: Any  # the driver's validated Params struct


class PeerConfig(msgspec.Struct, frozen=True):
    node_id: str
    address: HostPort


class SaeConfig(msgspec.Struct, frozen=True):
    sae_id: str
    kme: str
    pqc_public_key: Path | None
    limits: SaeLimits = SaeLimits()


class RelayPoolConfig(msgspec.Struct, frozen=True):
    """An end-to-end pool with ``peer``, kept filled by relays over ``route`` (or a computed
    one); the end with the lower node id starts the relays."""

    peer: str
    link_id: str
    route: tuple[str, ...] | None
    """Manual: the intermediate nodes in order from this node, or None to compute."""
    paths: int = 1
    """Node-disjoint paths each key is split over at most (1: no split)."""
    paths_required: int = 1
    """Paths a split needs: N for ``paths = N``; 1 for ``"disjoint"`` (with one path up,
    keys go whole over it rather than not at all)."""
    spread: bool = False
    """Relays take the node-disjoint paths in turn."""
    low_bits: int = 65536
    high_bits: int = 262144
    """The pool's watermarks: each end keeps its own ready share between them."""


class Config(msgspec.Struct, frozen=True):
    """A validated node configuration with absolute paths."""

    source: Path
    node_id: str
    state_dir: Path
    master_key_file: Path | None
    ca: Path
    cert: Path
    key: Path
    peer_listen: HostPort
    admin_socket: Path
    peers: dict[str, PeerConfig]
    links: dict[str, LinkConfig]
    sync: SyncSection
    policy: PolicySection
    controller: ControllerSection
    log: LogSection
    api_listen: HostPort | None = None
    saes: dict[str, SaeConfig] = {}
    supply: SupplySection = SupplySection()
    api: ApiSection = ApiSection()
    peer: PeerListenerSection = PeerListenerSection()
    relay: RelaySection = RelaySection()
    relay_pools: dict[str, RelayPoolConfig] = {}
    """End-to-end pools by link id."""
    alarms: AlarmsSection = AlarmsSection()
    perf: PerfSection = PerfSection()
    metrics_listen: HostPort | None = None
    dashboard_listen: HostPort | None = None
    """The live dashboard's plain HTTP address; loopback only."""
    dashboard_tls_listen: HostPort | None = None
    """The dashboard over HTTPS for operator certificates; any address."""
    dashboard: DashboardSection = DashboardSection()

    pair_policies: dict[tuple[str, str], SupplyPolicy] = {}
    crl: Path | None = None
    """The network CA's CRL (``[tls] crl``): revoked peers and SAEs are refused."""
    admin_group: str | None = None
    """The group that may use the admin socket (mode 0660); ``None``: 0600, owner only."""

    def policy_for(self, master: str, slave: str) -> SupplyPolicy:
        """The policy of ``[[supply.pairs]]`` for this pair, else ``[supply.default]``."""
        return self.pair_policies.get((master, slave), self.supply.default)

    @property
    def keystore_path(self) -> Path:
        return self.state_dir / "keystore.sqlite"

    @property
    def alarm_history_path(self) -> Path:
        return self.state_dir / "alarms.sqlite"

    @property
    def perf_history_path(self) -> Path:
        return self.state_dir / "perf.sqlite"

    def link_end(self, link_id: str) -> LinkEnd:
        link = self.links[link_id]
        return LinkEnd(link_id=link_id, local_node=self.node_id, peer_node=link.peer)


def parse_host_port(text: str) -> HostPort:
    """``host:port`` or ``[v6]:port``.  Raises ``ValueError``."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not host:port (use [::1]:7001 for IPv6)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    if match.group(1):
        ipaddress.IPv6Address(host)
    return HostPort(host, port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _where(exc: msgspec.ValidationError) -> tuple[str, str]:
    """Turn msgspec's ``... - at `$.links.x.driver``` into a TOML location and a message."""
    text = str(exc)
    match = re.search(r" - at `\$(.*)`$", text)
    if not match:
        return "", text
    path = match.group(1)
    parts = re.findall(r"\.([^.\[\]]+)|\[(\d+)\]|\[\.\.\.\]", path)
    keys = [a or b for a, b in parts]
    message = text[: match.start()]
    if len(keys) <= 1:
        return (f"[{keys[0]}]" if keys else ""), message
    return f"[{'.'.join(keys[:-1])}] {keys[-1]}", message


def load_config(path: Path | str) -> Config:
    """Read and validate a node config.  Raises ``ConfigError`` with one clear line."""
    source = Path(path)
    label = f"config {source}"
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML: {exc}") from None
    return config_from_mapping(data, source=source)


def config_from_mapping(data: Mapping[str, Any], *, source: Path) -> Config:
    """Validate already-parsed TOML.  Raises ``ConfigError``."""
    label = f"config {source}"
    try:
        raw = msgspec.convert(dict(data), _RawConfig, strict=True)
    except msgspec.ValidationError as exc:
        where, message = _where(exc)
        message = (
            message.replace("Object contains unknown field", "unknown key")
            .replace("Object missing required field", "missing required key")
            .replace("Expected", "expected")
        )
        raise ConfigError(f"{label}: {where + ': ' if where else ''}{message}") from None

    base = source.parent.resolve()

    def resolve(p: str) -> Path:
        return (base / Path(p).expanduser()).resolve()

    def fail(where: str, message: str) -> ConfigError:
        return ConfigError(f"{label}: {where} {message}")

    try:
        peer_listen = parse_host_port(raw.listen.peer)
    except ValueError as exc:
        raise fail("[listen] peer:", str(exc)) from None
    peers: dict[str, PeerConfig] = {}
    for node_id, peer in raw.peers.items():
        if not NODE_ID_RE.fullmatch(node_id):
            raise fail(f"[peers.{node_id}]", "is not a valid node id (1-64 of A-Z a-z 0-9 _ . : -)")
        if node_id == raw.node.id:
            raise fail(f"[peers.{node_id}]", "is this node itself; remove it")
        try:
            peers[node_id] = PeerConfig(node_id, parse_host_port(peer.address))
        except ValueError as exc:
            raise fail(f"[peers.{node_id}] address:", str(exc)) from None
    links: dict[str, LinkConfig] = {}
    for link_id, link in raw.links.items():
        if not LINK_ID_RE.fullmatch(link_id):
            raise fail(
                f"[links.{link_id}]", "is not a valid link id (1-129 of A-Z a-z 0-9 _ . : ~ -)"
            )
        if link.peer not in peers:
            known = ", ".join(sorted(peers)) or "none"
            raise fail(
                f"[links.{link_id}] peer:",
                f"{link.peer!r} is not in [peers] (known: {known}); add [peers.{link.peer}]",
            )
        try:
            cls = driver_class(link.driver)
            raw_params = dict(link.params)
            for name in cls.path_params:
                if isinstance(raw_params.get(name), str):
                    raw_params[name] = str(resolve(raw_params[name]))
            params = cls.parse_params(raw_params)
        except DriverConfigError as exc:
            raise fail(f"[links.{link_id}]", str(exc)) from None
        links[link_id] = LinkConfig(link_id, link.peer, link.driver, params)
    if raw.log.level not in ("debug", "info", "warning", "error"):
        raise fail(
            "[log] level:", f"{raw.log.level!r} unknown (known: debug, info, warning, error)"
        )
    if raw.log.format not in ("kv", "json"):
        raise fail("[log] format:", f"{raw.log.format!r} unknown (known: kv, json)")
    if raw.sync.heartbeat_s * 2 > raw.sync.timeout_s:
        raise fail("[sync] timeout_s:", "must be at least twice heartbeat_s")
    if raw.sync.silence < 2 * raw.sync.heartbeat_s:
        raise fail(
            "[sync] silence_s:",
            f"{raw.sync.silence:g} s is less than two heartbeats"
            f" (heartbeat_s = {raw.sync.heartbeat_s:g}): one late heartbeat would drop a"
            " healthy peer; raise silence_s or lower heartbeat_s",
        )
    if raw.sync.silence > raw.sync.timeout_s:
        raise fail("[sync] silence_s:", "must be at most timeout_s")
    if raw.sync.reconnect_max_s < 0.5:
        raise fail("[sync] reconnect_max_s:", "must be at least 0.5 (the first back-off)")
    for name, caps in (("api", raw.api), ("peer", raw.peer)):
        if caps.max_connections_per_source > caps.max_connections:
            raise fail(f"[{name}] max_connections_per_source:", "must be at most max_connections")

    def address(key: str, text: str | None) -> HostPort | None:
        if text is None:
            return None
        try:
            return parse_host_port(text)
        except ValueError as exc:
            raise fail(f"[listen] {key}:", str(exc)) from None

    api_listen = address("api", raw.listen.api)
    metrics_listen = address("metrics", raw.listen.metrics)
    dashboard_listen = address("dashboard", raw.listen.dashboard)
    if dashboard_listen is not None:
        if not _is_loopback(dashboard_listen.host):
            raise fail(
                "[listen] dashboard:",
                f"{dashboard_listen.host!r} is not a loopback address: plain HTTP has no"
                " login, so it listens on loopback only (use 127.0.0.1 or [::1]); for remote"
                " access set [listen] dashboard_tls, which asks for an operator TLS"
                " certificate (qkmsctl pki operator NAME)",
            )
    dashboard_tls_listen = address("dashboard_tls", raw.listen.dashboard_tls)
    _check_alarm_actions(raw.alarms, fail)
    saes: dict[str, SaeConfig] = {}
    for sae_id, sae in raw.saes.items():
        if not SAE_ID_RE.fullmatch(sae_id):
            raise fail(f"[saes.{sae_id}]", "is not a valid SAE id (1-64 of A-Z a-z 0-9 _ . : -)")
        key = resolve(sae.pqc_public_key) if sae.pqc_public_key else None
        changes = {
            f: getattr(sae.limits, f)
            for f in SaeLimits.__struct_fields__
            if getattr(sae.limits, f) is not None
        }
        try:
            limits = msgspec.convert(
                {**msgspec.structs.asdict(raw.supply.sae_limits), **changes},
                SaeLimits,
                strict=True,
            )
        except msgspec.ValidationError as exc:
            raise fail(f"[saes.{sae_id}.limits]", str(exc)) from None
        saes[sae_id] = SaeConfig(sae_id, sae.kme, key, limits)
    for i, pair in enumerate(raw.supply.pairs):
        for role in ("master", "slave"):
            if getattr(pair, role) not in saes:
                raise fail(
                    f"[[supply.pairs]] #{i + 1} {role}:",
                    f"{getattr(pair, role)!r} is not in [saes]; add [saes.{getattr(pair, role)}]",
                )
    pair_policies: dict[tuple[str, str], SupplyPolicy] = {}
    for i, pair in enumerate(raw.supply.pairs):
        where = f"[[supply.pairs]] #{i + 1}"
        try:
            pair_policies[(pair.master, pair.slave)] = _merged(raw.supply.default, pair)
        except msgspec.ValidationError as exc:
            raise fail(where, str(exc)) from None
    for where, policy in [
        ("[supply.default]", raw.supply.default),
        *((f"[[supply.pairs]] {m}->{s}", p) for (m, s), p in pair_policies.items()),
    ]:
        problem = policy_problem(policy)
        if problem:
            raise fail(where, problem)

    relay_pools = _relay_pools(raw, peers, links, fail)
    if raw.perf.report_url is not None:
        url = urlsplit(raw.perf.report_url)
        if url.scheme != "https" or not url.hostname:
            raise fail(
                "[perf] report_url:", f"must be an https:// URL, not {raw.perf.report_url!r}"
            )
    for node in raw.controller.electors:
        if node not in peers:
            raise fail(
                f"[controller.electors] {node}:",
                f"is not in [peers]; eligible nodes talk directly: add [peers.{node}]",
            )

    return Config(
        source=source.resolve(),
        node_id=raw.node.id,
        state_dir=resolve(raw.node.state_dir),
        master_key_file=resolve(raw.node.master_key_file) if raw.node.master_key_file else None,
        ca=resolve(raw.tls.ca),
        cert=resolve(raw.tls.cert),
        key=resolve(raw.tls.key),
        crl=resolve(raw.tls.crl) if raw.tls.crl else None,
        admin_group=raw.listen.admin_group,
        peer_listen=peer_listen,
        admin_socket=resolve(raw.listen.admin_socket),
        peers=peers,
        links=links,
        sync=raw.sync,
        policy=raw.policy,
        controller=raw.controller,
        log=raw.log,
        api_listen=api_listen,
        saes=saes,
        supply=raw.supply,
        api=raw.api,
        peer=raw.peer,
        relay=raw.relay,
        relay_pools=relay_pools,
        alarms=raw.alarms,
        perf=raw.perf,
        metrics_listen=metrics_listen,
        dashboard_listen=dashboard_listen,
        dashboard_tls_listen=dashboard_tls_listen,
        dashboard=raw.dashboard,
        pair_policies=pair_policies,
    )


def _check_alarm_actions(alarms: AlarmsSection, fail: Callable[[str, str], ConfigError]) -> None:
    for code, action in alarms.actions.items():
        where = f"[alarms.actions] {code}:"
        row = CODES.get(code)
        if row is None:
            known = ", ".join(sorted(CODES))
            raise fail(where, f"unknown disruption code (known: {known})")
        allowed = ", ".join(sorted(a.value for a in row.actions))
        if action not in {a.value for a in Action}:
            raise fail(where, f"action {action!r} unknown (known for {code}: {allowed})")
        if Action(action) not in row.actions:
            raise fail(where, f"action {action!r} is not available for this code (use: {allowed})")


def _relay_pools(
    raw: _RawConfig,
    peers: dict[str, PeerConfig],
    links: dict[str, LinkConfig],
    fail: Callable[[str, str], ConfigError],
) -> dict[str, RelayPoolConfig]:
    relay = raw.relay
    if relay.low_bits > relay.high_bits:
        raise fail("[relay] low_bits:", "must be at most high_bits")
    for i, (a, b) in enumerate(relay.topology):
        if a == b:
            raise fail(f"[relay] topology[{i}]:", f"a link joins two different nodes, not {a}-{a}")
    pools: dict[str, RelayPoolConfig] = {}
    for peer, pool in relay.pools.items():
        where = f"[relay.pools.{peer}]"
        if peer not in peers:
            raise fail(
                where,
                f"{peer!r} is not in [peers]: the two ends of an end-to-end pool talk directly;"
                f" add [peers.{peer}]",
            )
        link_id = pool.link_id or "~".join(sorted((raw.node.id, peer)))
        if not LINK_ID_RE.fullmatch(link_id):
            raise fail(f"{where} link_id:", f"{link_id!r} is not a valid link id")
        if link_id in links or link_id in pools:
            raise fail(f"{where} link_id:", f"{link_id!r} is already a link of this node")
        if pool.route is not None and ({raw.node.id, peer} & set(pool.route)):
            raise fail(f"{where} route:", "names the intermediate nodes only, not the two ends")
        if pool.route is not None and len(set(pool.route)) != len(pool.route):
            raise fail(f"{where} route:", "names a node twice; a relay visits each node once")
        if pool.route is not None and len(pool.route) > MAX_RELAY_PATH - 2:
            raise fail(f"{where} route:", f"at most {MAX_RELAY_PATH - 2} intermediate nodes")
        route = tuple(pool.route) if pool.route is not None else None
        paths = MAX_DISJOINT_PATHS if pool.paths == "disjoint" else pool.paths
        if pool.spread and paths > 1:
            raise fail(
                f"{where} spread:",
                "spreads whole keys over the paths; with paths > 1 each key is split"
                " over them already",
            )
        low = relay.low_bits if pool.low_bits is None else pool.low_bits
        high = relay.high_bits if pool.high_bits is None else pool.high_bits
        if low > high:
            raise fail(f"{where} low_bits:", "must be at most high_bits")
        required = 1 if pool.paths == "disjoint" else paths
        pools[link_id] = RelayPoolConfig(
            peer=peer,
            link_id=link_id,
            route=route,
            paths=paths,
            paths_required=required,
            spread=pool.spread,
            low_bits=low,
            high_bits=high,
        )
    return pools


def _merged(default: SupplyPolicy, pair: SupplyPairSection) -> SupplyPolicy:
    """The default with the pair's overrides, validated.  Raises ValidationError."""
    changes = {
        f: getattr(pair, f) for f in SupplyPolicy.__struct_fields__ if getattr(pair, f) is not None
    }
    return msgspec.convert(
        {**msgspec.structs.asdict(default), **changes}, SupplyPolicy, strict=True
    )


def policy_problem(policy: SupplyPolicy) -> str:
    """What is wrong with a whole policy (fields valid alone, not together), or ""."""
    if not policy.min_key_size <= policy.key_size <= policy.max_key_size:
        return "needs min_key_size <= key_size <= max_key_size"
    if policy.derive not in ("none", "hkdf-sha256"):
        return f"derive {policy.derive!r} unknown (known: none, hkdf-sha256)"
    return ""
