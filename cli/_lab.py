"""A lab network on one machine: PKI, configs, and one ``qkmsd`` subprocess per node.

Layout of a lab directory ``D``::

    D/lab.json                      what runs where (the contract with tests and tools)
    D/pki/                          the network CA, node and SAE certificates
    D/nodes/<id>/qkmsd.toml         the node's config
    D/nodes/<id>/master.key         its master key (0600)
    D/nodes/<id>/state/             its key store
    D/nodes/<id>/admin.sock         its admin socket
    D/nodes/<id>/qkmsd.log          its log

Nodes listen on free loopback ports chosen at ``up`` and kept in ``lab.json``,
so ``start`` brings a killed node back on the same ports with the same state.  With
``netns=True`` each node runs in a network namespace of its own, joined to the nodes it
talks to by veth pairs that ``cut`` and ``heal`` take down and up (``cli/_netns.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qkd_drivers import driver_class
from qkd_drivers.bb84 import Bb84ParamsError, parse_eve
from qkms_pqc import generate_keypair, write_private_key

from . import _labdevices, _netns
from ._admin import AdminClient, AdminError
from ._errors import CliError
from ._files import private_dir, write_private
from ._pki import init_ca, issue_node, issue_sae
from ._topology import Topology

READY_TIMEOUT_S = 30.0
FIRST_LAB_PORT = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
STOP_TIMEOUT_S = 10.0

# Relay in a lab: small relays and low watermarks, so that end-to-end pools fill within
# seconds from the examples' simulated links (8 to 16 kbit/s, shared by every pool whose
# route crosses them).  A production node keeps the daemon's defaults.
LAB_RELAY: dict[str, Any] = {
    "block_bits": 4096,
    "low_bits": 16384,
    "high_bits": 32768,
    "timeout_s": 5.0,
    "in_flight": 4,
    # The lab's SAE pairs are few and mostly far apart: a small reserve for the pairs across
    # a QKD link, so relays start within a second of the links' first key.
    "link_reserve_bits": 8192,
}


class LabError(CliError):
    """The lab cannot do what was asked; the message says why and what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """One free port (see ``free_ports`` when you need several)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` comes from the range it also uses for
    outgoing connections, so between choosing it and the node binding it, another node's
    dial to a peer may take it (a 17-node lab lost that race now and then).  Ports below
    the range are handed out only on request.  All stay bound until all are chosen: a port
    closed at once may be chosen again.
    """
    low = _ephemeral_range()[0]
    candidates = random.sample(range(FIRST_LAB_PORT, low), k=low - FIRST_LAB_PORT)
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in itertools.chain(candidates, itertools.repeat(0)):
            if len(ports) == count:
                break
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError:
                continue
            ports.append(int(sock.getsockname()[1]))
        return ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return max(low, FIRST_LAB_PORT), high


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise LabError(f"cannot write {type(value).__name__} to TOML")


def _table(name: str, values: dict[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def relay_partners(topo: Topology, node: str) -> list[str]:
    """The nodes ``node`` keeps an end-to-end pool with: both ends have SAEs attached and
    no QKD link joins them, so their SAEs get keys only through relay."""
    with_saes = {spec.kme for spec in topo.saes.values()}
    if node not in with_saes:
        return []
    return sorted(with_saes - {node} - set(topo.neighbours(node)))


def electors_of(topo: Topology, node: str) -> dict[str, int]:
    """The eligible nodes other than ``node``: the ones it elects the controller with if it
    is eligible, and the ones it reports to (whichever holds the role) either way."""
    return {
        other: spec.priority
        for other, spec in topo.nodes.items()
        if spec.controller and other != node
    }


def talks_to(topo: Topology, node: str) -> list[str]:
    """The nodes ``node`` keeps a peer session with: its QKD neighbours, the far ends of its
    end-to-end pools, and every eligible node; an eligible node talks with every node (any
    of them may report to it)."""
    partners = relay_partners(topo, node)
    direct = [n for n in topo.nodes if n != node] if topo.nodes[node].controller else []
    return sorted({*topo.neighbours(node), *partners, *electors_of(topo, node), *direct})


def talking_pairs(topo: Topology) -> list[tuple[str, str]]:
    """Every pair of nodes with a peer session, each once."""
    return sorted({(a, b) for a in topo.nodes for b in talks_to(topo, a) if a < b})


def node_config(
    topo: Topology,
    node: str,
    *,
    lab: Path,
    ports: dict[str, dict[str, int]],
    seeds: dict[str, str],
    netns: _netns.NetnsPlan | None = None,
    via: dict[tuple[str, str], str] | None = None,
    devices: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The TOML config of one lab node (in its own namespace with ``netns``).
    ``via[(node, peer)]`` is an address to dial ``peer`` at instead of its own (a fault
    proxy, see ``_labfaults``).  ``devices`` are the device emulators of ``vendor-tcp``
    links (``_labdevices``): each end's driver dials its own."""
    home = lab / "nodes" / node
    spec = topo.nodes[node]
    plain_http = {
        kind: f"127.0.0.1:{ports[node][kind]}"
        for kind in ("metrics", "dashboard")
        if kind in ports[node]
    }
    parts = [
        f"# qkmsd config for {node}, written by `qkmsctl lab up` (topology {topo.name!r})\n",
        _table(
            "node",
            {
                "id": node,
                "state_dir": str(home / "state"),
                "master_key_file": str(home / "master.key"),
            },
        ),
        _table(
            "tls",
            {
                "ca": str(lab / "pki" / "ca.pem"),
                "cert": str(lab / "pki" / "nodes" / f"{node}.pem"),
                "key": str(lab / "pki" / "nodes" / f"{node}.key"),
            },
        ),
        _table(
            "listen",
            {
                "peer": f"{'0.0.0.0' if netns else '127.0.0.1'}:{ports[node]['peer']}",
                "api": f"127.0.0.1:{ports[node]['api']}",
                "admin_socket": str(home / "admin.sock"),
            }
            | plain_http,
        ),
        # The daemon's heartbeat and silence limit (0.25 s, 1 s): a cut is seen within 1 s.
        _table("sync", {"timeout_s": 20.0, "announce_interval_s": 0.1}),
    ]
    # The eligible nodes elect the controller among themselves, over direct sessions; every
    # other node knows them too, and reports to the one that holds the role.
    electors = electors_of(topo, node)
    controller = _table("controller", {"eligible": spec.controller, "priority": spec.priority})
    if electors:
        controller += _table("controller.electors", electors)
    parts.insert(-1, controller)
    partners = relay_partners(topo, node)
    # An end-to-end pool's two ends talk directly (a peer session without a QKD link), and
    # so do eligible nodes with every node.
    for peer in talks_to(topo, node):
        host = netns.address_of(peer, seen_from=node) if netns else "127.0.0.1"
        address = (via or {}).get((node, peer), f"{host}:{ports[peer]['peer']}")
        parts.append(_table(f'peers."{peer}"', {"address": address}))
    for sae, sae_spec in topo.saes.items():
        entry: dict[str, Any] = {"kme": sae_spec.kme}
        if sae_spec.pqc:
            entry["pqc_public_key"] = str(lab / "pki" / "saes" / f"{sae}.pqc.pub.pem")
        parts.append(_table(f'saes."{sae}"', entry))
        if sae_spec.limits:
            limits = {
                k: int(v) if k.startswith("burst_") else v for k, v in sae_spec.limits.items()
            }
            parts.append(_table(f'saes."{sae}".limits', limits))
    for link in topo.links:
        if node not in (link.a, link.b):
            continue
        peer = link.b if link.a == node else link.a
        parts.append(
            _table(f'links."{link.link_id}"', {"peer": peer, "driver": topo.driver_of(link)})
        )
        params = topo.params_of(link, seed=seeds[link.link_id])
        if "eve_schedule" in driver_class(topo.driver_of(link)).Params.__struct_fields__:
            params.setdefault("eve_schedule", str(eve_schedule_path(lab, link.link_id)))
        if devices and link.link_id in devices:
            params = {**_labdevices.driver_params(devices[link.link_id][node]), **params}
        parts.append(_table(f'links."{link.link_id}".params', params))
    topology = [sorted((link.a, link.b)) for link in topo.links]
    parts.append(_table("relay", {**LAB_RELAY, "topology": topology}))
    if topo.alarms:
        parts.append(_table("alarms", topo.alarms))
    # A lab is one person's machine: its loopback dashboards may operate; performance is
    # sampled often enough for the dashboard's plots to move while one watches.
    parts.append(_table("dashboard", {"loopback_operations": True}))
    parts.append(_table("perf", {"interval_s": 2.0}))
    positions = {
        name: list(other.coordinates)
        for name, other in topo.nodes.items()
        if other.coordinates is not None
    }
    if positions:
        parts.append(_table("dashboard.positions", positions))
    pool = {} if topo.relay.paths == 1 else {"paths": topo.relay.paths}
    for peer in partners:  # routes are computed from the topology
        parts.append(_table(f'relay.pools."{peer}"', pool))
    return "\n".join(parts)


def eve_schedule_path(lab: Path, link_id: str) -> Path:
    """Where a lab keeps a ``bb84sim`` link's eavesdropper schedule (both ends read it)."""
    return lab / "eve" / f"{link_id}.json"


class Lab:
    """A lab directory and the daemons it describes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()

    @property
    def manifest_path(self) -> Path:
        return self.dir / "lab.json"

    def manifest(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.manifest_path.read_text()))
        except FileNotFoundError:
            raise LabError(
                f"{self.manifest_path}: no lab here (run `qkmsctl lab up` first)"
            ) from None
        except (OSError, ValueError) as exc:
            raise LabError(f"{self.manifest_path}: unreadable: {exc}") from None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.replace(self.manifest_path)

    # --- up / down -----------------------------------------------------------------

    def up(
        self,
        topo: Topology,
        *,
        progress: Callable[[str], None] = lambda s: None,
        netns: bool = False,
        faults: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Create PKI, configs and state; start every node; wait until all are ready.

        With ``netns``, each node in a network namespace of its own where namespaces can be
        made; where not, on loopback, after saying why through ``progress``.  ``faults`` are
        ``--fault PAIR=SPEC`` options (see ``_labfaults``): fault proxies on loopback, so
        not with ``netns``.
        """
        from . import _labfaults

        if netns and faults:
            raise LabError(
                "--fault and --netns do not combine: the fault proxies run on loopback, which"
                " nodes in their own namespaces cannot reach (cut links with `lab cut`)"
            )
        if netns and any(topo.driver_of(k) in _labdevices.DEVICE_DRIVERS for k in topo.links):
            raise LabError(
                "vendor-tcp links and --netns do not combine: the device emulators listen on"
                " loopback, which nodes in their own namespaces cannot reach"
            )
        pairs = _labfaults.session_pairs(topo)
        fault_specs = _labfaults.parse_fault_options(faults, pairs)
        if self.manifest_path.exists():
            old = self.manifest()
            if any(_alive(k["pid"], k["config"]) for k in old["kmes"].values()):
                raise LabError(
                    f"{self.dir}: a lab is already running here (`qkmsctl lab down` first)"
                )
            _labfaults.stop(old.get("faults"))
        self.dir.mkdir(parents=True, exist_ok=True)
        plan = self._netns_plan(topo, progress) if netns else None
        pki = self.dir / "pki"
        progress(f"making the network PKI in {pki}")
        init_ca(pki, common_name=f"qkms lab CA ({topo.name})", force=True)
        kinds = ("peer", "api", "metrics", "dashboard")
        chosen = free_ports(len(kinds) * len(topo.nodes))
        ports = {
            node: dict(zip(kinds, chosen[len(kinds) * i : len(kinds) * (i + 1)], strict=True))
            for i, node in enumerate(topo.nodes)
        }
        proxy = _labfaults.plan(
            fault_specs,
            {n: p["peer"] for n, p in ports.items()},
            free_ports(len(fault_specs)),
            pairs,
        )
        via = _labfaults.dial_addresses(proxy)
        seeds = {link.link_id: secrets.token_hex(32) for link in topo.links}
        device_links = [
            (link.link_id, link.a, link.b, topo.driver_of(link))
            for link in topo.links
            if topo.driver_of(link) in _labdevices.DEVICE_DRIVERS
        ]
        devices = _labdevices.plan(
            device_links,
            free_ports(2 * len(device_links)),
            {link.link_id: dict(link.device) for link in topo.links},
        )
        manifest: dict[str, Any] = {
            "topology": topo.name,
            "ca": str(pki / "ca.pem"),
            "kmes": {},
            "saes": {},
            "links": [sorted((link.a, link.b)) for link in topo.links],
            "drivers": {link.link_id: topo.driver_of(link) for link in topo.links},
        }
        for node, spec in topo.nodes.items():
            home = self.dir / "nodes" / node
            private_dir(home)  # master.key, and the config with the drivers' seeds
            private_dir(home / "state")
            issue_node(pki, node, hosts=spec.hosts, force=True)
            key_file = home / "master.key"
            if not key_file.exists():
                _generate_master_key(key_file)
            config = home / "qkmsd.toml"
            # The config holds the paired drivers' seeds: private.
            write_private(
                config,
                node_config(
                    topo,
                    node,
                    lab=self.dir,
                    ports=ports,
                    seeds=seeds,
                    netns=plan,
                    via=via,
                    devices=devices,
                ).encode(),
            )
            manifest["kmes"][node] = {
                "url": f"https://127.0.0.1:{ports[node]['api']}",
                "admin_socket": str(home / "admin.sock"),
                "metrics_url": f"http://127.0.0.1:{ports[node]['metrics']}/metrics",
                "dashboard_url": f"http://127.0.0.1:{ports[node]['dashboard']}/",
                "peer_address": f"{'0.0.0.0' if plan else '127.0.0.1'}:{ports[node]['peer']}",
                "pid": None,
                "config": str(config),
                "log": str(home / "qkmsd.log"),
            }
            if plan is not None:
                manifest["kmes"][node]["netns"] = plan.namespaces[node]
        if plan is not None:
            manifest["netns"] = plan.to_json()
        for sae, sae_spec in topo.saes.items():
            files = issue_sae(pki, sae, force=True)
            manifest["saes"][sae] = {
                "kme": sae_spec.kme,
                "cert": str(files.cert),
                "key": str(files.key),
            }
            if sae_spec.pqc:
                manifest["saes"][sae]["pqc_key"] = str(_pqc_keypair(pki / "saes", sae))
        if fault_specs:
            progress(f"starting the fault proxy on {len(fault_specs)} peer session(s)")
            manifest["faults"] = proxy
            _labfaults.start(self.dir, proxy)
        if devices:
            manifest["devices"] = devices
            progress(f"starting {2 * len(devices)} device emulator(s)")
            try:
                for link_id, ends in devices.items():
                    write_private(self._seed_path(link_id), seeds[link_id].encode())
                    _labdevices.start(self.dir, link_id, ends, seeds[link_id])
            except _labdevices.LabDeviceError:
                for ends in devices.values():
                    for end in ends.values():
                        _labdevices.stop(end)
                raise
        self._write_manifest(manifest)
        if plan is not None:
            progress(f"making {len(plan.namespaces)} network namespace(s) {plan.prefix}*")
            try:
                _netns.apply(plan.up_commands())
            except _netns.NetnsError:
                _netns.remove(plan.prefix)
                raise
        progress(f"starting {len(topo.nodes)} qkmsd node(s)")
        for node in topo.nodes:
            manifest["kmes"][node]["pid"] = self._spawn(manifest["kmes"][node])
        self._write_manifest(manifest)
        try:
            self.wait_ready(manifest, list(topo.nodes))
        except LabError:
            self.down()
            raise
        return manifest

    def _netns_plan(
        self, topo: Topology, progress: Callable[[str], None]
    ) -> _netns.NetnsPlan | None:
        """The lab's namespaces, or None (said through ``progress``) where none can be made."""
        reason = _netns.unavailable()
        if reason is not None:
            progress(f"--netns: {reason}; the lab runs on loopback instead (no cut/heal)")
            return None
        stale = _netns.remove(_netns.lab_prefix(self.dir))  # a lab here that crashed
        if stale:
            progress(f"removed {len(stale)} namespace(s) left by an earlier lab here")
        return _netns.plan(self.dir, list(topo.nodes), talking_pairs(topo))

    def _spawn(self, kme: dict[str, Any]) -> int:
        log = open(kme["log"], "ab")  # noqa: SIM115 - handed to the child
        # ``ip netns exec`` execs the program: the pid is the daemon's.
        where = ["ip", "netns", "exec", kme["netns"]] if kme.get("netns") else []
        try:
            proc = subprocess.Popen(
                [*where, sys.executable, "-m", "qkmsd", "--config", kme["config"]],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            log.close()
        return proc.pid

    def wait_ready(
        self, manifest: dict[str, Any], nodes: Sequence[str], *, timeout: float = READY_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            kme = manifest["kmes"][node]
            client = AdminClient(kme["admin_socket"], timeout=2.0)
            while True:
                try:
                    client.call("status")
                    break
                except AdminError:
                    pass
                if not _alive(kme["pid"], kme["config"]):
                    raise LabError(
                        f"node {node} exited during start-up:\n{_tail(Path(kme['log']))}"
                    )
                if time.monotonic() > deadline:
                    raise LabError(
                        f"node {node} not ready after {timeout:g} s:\n{_tail(Path(kme['log']))}"
                    )
                time.sleep(0.05)

    def down(self) -> list[str]:
        """Stop every node: SIGTERM, then SIGKILL after the deadline.  Returns those stopped.

        Then deletes the lab's network namespaces, also those of a lab that crashed before
        it wrote ``lab.json``.
        """
        try:
            manifest = self.manifest()
        except LabError:
            if _netns.remove(_netns.lab_prefix(self.dir)):
                return []
            raise
        stopped = [n for n, k in manifest["kmes"].items() if self._signal(k, signal.SIGTERM)]
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for kme in manifest["kmes"].values():
            while _alive(kme["pid"], kme["config"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(kme["pid"], kme["config"]):
                self._signal(kme, signal.SIGKILL)
            _reap(kme["pid"])
            kme["pid"] = None
        from . import _labfaults

        if _labfaults.stop(manifest.get("faults")):
            manifest["faults"]["pid"] = None
        for ends in manifest.get("devices", {}).values():
            for end in ends.values():
                _labdevices.stop(end)
        self._write_manifest(manifest)
        _netns.remove(_netns.lab_prefix(self.dir))
        return stopped

    # --- the links between namespaces ---------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between nodes ``a`` and ``b``, silently (a netns lab only)."""
        _netns.apply(self._plan(a, b).cut_commands(a, b))

    def heal(self, a: str, b: str) -> None:
        """Carry packets between ``a`` and ``b`` again after ``cut``."""
        _netns.apply(self._plan(a, b).heal_commands(a, b))

    def eve(self, a: str, b: str, spec: str, *, delay_s: float) -> float:
        """Put an eavesdropper (``spec``: ``intercept-resend=F``, ``pns``, ``beam-splitting``,
        or ``none`` to take her away) on the simulated link ``a``-``b`` from ``delay_s``
        from now; returns that time.  Both ends read the schedule and agree block by block.
        Raises ``LabError`` for a link that is not a ``bb84sim`` link of this lab."""
        link_id = "~".join(sorted((a, b)))
        driver = self.manifest().get("drivers", {}).get(link_id)
        if driver is None:
            raise LabError(f"{self.dir}: no link {link_id} in this lab")
        if driver != "bb84sim":
            raise LabError(
                f"link {link_id} runs the {driver!r} driver: only 'bb84sim' links simulate"
                " an eavesdropper"
            )
        try:
            parse_eve(spec)
        except Bb84ParamsError as exc:
            raise LabError(str(exc)) from None
        path = eve_schedule_path(self.dir, link_id)
        changes = json.loads(path.read_text()) if path.exists() else []
        at = time.time() + delay_s
        changes.append({"at": at, "eve": spec})
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(changes, indent=1))
        os.replace(tmp, path)
        return at

    # --- device emulators (vendor-tcp links) -----------------------------------------

    def _seed_path(self, link_id: str) -> Path:
        private_dir(self.dir / "devices")
        return self.dir / "devices" / f"{link_id}.seed"

    def _device_ends(
        self, manifest: dict[str, Any], a: str, b: str, end: str | None
    ) -> tuple[str, dict[str, dict[str, Any]]]:
        link_id = "~".join(sorted((a, b)))
        if link_id not in manifest.get("drivers", {}):
            raise LabError(f"{self.dir}: no link {link_id} in this lab")
        ends: dict[str, dict[str, Any]] | None = manifest.get("devices", {}).get(link_id)
        if ends is None:
            driver = manifest["drivers"][link_id]
            raise LabError(
                f"link {link_id} runs the {driver!r} driver inside its nodes: only"
                f" {', '.join(sorted(_labdevices.DEVICE_DRIVERS))} links have device processes"
            )
        if end is not None:
            if end not in ends:
                raise LabError(f"{end!r} is not an end of link {link_id} (ends: {a}, {b})")
            ends = {end: ends[end]}
        return link_id, ends

    def device_stop(self, a: str, b: str, *, end: str | None = None) -> list[str]:
        """Stop the device emulators of link ``a``-``b`` (only ``end``'s, if given), as a
        device failure would.  Returns the ends stopped (those running)."""
        manifest = self.manifest()
        link_id, ends = self._device_ends(manifest, a, b, end)
        stopped = [node for node, e in ends.items() if _labdevices.stop(e)]
        manifest["devices"][link_id].update(ends)
        self._write_manifest(manifest)
        return stopped

    def device_start(self, a: str, b: str, *, end: str | None = None) -> list[str]:
        """Start the stopped device emulators of link ``a``-``b`` (only ``end``'s, if
        given) on their ports.  Returns the ends started."""
        manifest = self.manifest()
        link_id, ends = self._device_ends(manifest, a, b, end)
        seed = self._seed_path(link_id).read_text().strip()
        stopped = {node: e for node, e in ends.items() if not _labdevices.alive(e)}
        _labdevices.start(self.dir, link_id, stopped, seed)
        started = list(stopped)
        manifest["devices"][link_id].update(ends)
        self._write_manifest(manifest)
        return started

    def netns(self, node: str) -> str:
        """The network namespace ``node`` runs in.  Raises ``LabError`` on a loopback lab."""
        manifest = self.manifest()
        ns = self._kme(manifest, node).get("netns")
        if not ns:
            raise LabError(f"{self.dir}: not a netns lab (`qkmsctl lab up --netns`)")
        return str(ns)

    def _plan(self, a: str, b: str) -> _netns.NetnsPlan:
        manifest = self.manifest()
        for node in (a, b):
            self._kme(manifest, node)
        if not manifest.get("netns"):
            raise LabError(
                f"{self.dir}: cut and heal need a lab whose nodes run in network namespaces"
                " (`qkmsctl lab up --netns`, as root)"
            )
        return _netns.NetnsPlan.from_json(manifest["netns"])

    # --- one node ------------------------------------------------------------------

    def kill(self, node: str) -> int:
        """SIGKILL one node (a crash, for failover experiments).  Returns the pid killed."""
        manifest = self.manifest()
        kme = self._kme(manifest, node)
        pid = kme["pid"]
        if not self._signal(kme, signal.SIGKILL):
            raise LabError(f"node {node} is not running")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid, kme["config"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        _reap(pid)
        kme["pid"] = None
        self._write_manifest(manifest)
        return int(pid)

    def start(self, node: str) -> int:
        """Start one node again, on its ports and state.  Returns its new pid."""
        manifest = self.manifest()
        kme = self._kme(manifest, node)
        if kme["pid"] and _alive(kme["pid"], kme["config"]):
            raise LabError(f"node {node} is already running (pid {kme['pid']})")
        kme["pid"] = self._spawn(kme)
        self._write_manifest(manifest)
        self.wait_ready(manifest, [node])
        return int(kme["pid"])

    def status(self) -> dict[str, dict[str, Any]]:
        """Every node's admin status, or ``{"error": ...}`` for nodes that do not answer."""
        out: dict[str, dict[str, Any]] = {}
        for node, kme in self.manifest()["kmes"].items():
            try:
                out[node] = AdminClient(kme["admin_socket"], timeout=5.0).call("status")
            except AdminError as exc:
                running = kme["pid"] and _alive(kme["pid"], kme["config"])
                out[node] = {"error": str(exc) if running else "not running"}
        return out

    def dashboard_url(self, node: str) -> str:
        """The URL of ``node``'s dashboard (loopback)."""
        kme = self._kme(self.manifest(), node)
        if "dashboard_url" not in kme:
            raise LabError(
                f"{self.manifest_path}: {node} has no dashboard (an older lab: `lab up` again)"
            )
        return str(kme["dashboard_url"])

    def admin_socket(self, node: str) -> str:
        """The admin socket of one node of this lab.  Raises ``LabError``."""
        return str(self._kme(self.manifest(), node)["admin_socket"])

    def _kme(self, manifest: dict[str, Any], node: str) -> dict[str, Any]:
        try:
            kme: dict[str, Any] = manifest["kmes"][node]
            return kme
        except KeyError:
            known = ", ".join(sorted(manifest["kmes"]))
            raise LabError(f"no node {node!r} in this lab (known: {known})") from None

    def _signal(self, kme: dict[str, Any], signum: int) -> bool:
        pid = kme.get("pid")
        if not pid or not _alive(pid, kme["config"]):
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True


def _pqc_keypair(directory: Path, sae: str) -> Path:
    """A hybrid PQC key pair for an SAE: private key (0600) and public key beside it."""
    private = directory / f"{sae}.pqc.pem"
    public = directory / f"{sae}.pqc.pub.pem"
    for stale in (private, public):
        stale.unlink(missing_ok=True)
    key = generate_keypair()
    write_private_key(private, key)
    public.write_bytes(key.public_key().to_pem())
    return private


def _generate_master_key(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qkmsd", "--generate-master-key", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"cannot create master key {path}: {result.stderr.strip()}")


def _alive(pid: int | None, config: str) -> bool:
    """Whether ``pid`` is a qkmsd for ``config`` that has not finished exiting.

    A zombie has finished.  A process whose command line is already empty is still
    exiting (the kernel clears it before the process lets go of its files, such as
    the key store lock and its ports), so it counts as alive.  A non-empty command
    line without ``config`` is a recycled pid.
    """
    if not pid:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if status.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return not raw or config.encode() in raw.split(b"\0")


def _reap(pid: int | None) -> None:
    """Collect an exited child of ours, if it is one; other processes are reaped by init."""
    if not pid:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
