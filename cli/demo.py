"""``qkmsctl demo``: the paper's verification (Table 5) on loopback, narrated for a newcomer.

Three trusted nodes in a line, KME1 - KME2 - KME3; SAE1 on KME1 and SAE3 on KME3, which
share no QKD link.  The demo walks the five steps of the paper's Table 5: QKD key on each
link, reformatted into service keys, relayed KME1 -> KME2 -> KME3, held alike by KME1 and
KME3, and handed to SAE1 and SAE3 over ETSI GS QKD 014.  The topology is embedded so the
demo needs nothing but the installed package; ``--topology`` runs the same steps between
the two SAE-bearing nodes of another network that lie farthest apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import sys
import tempfile
import textwrap
import time
import tomllib
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import click

from qkms_client import Etsi014Client, Etsi014Error
from qkms_pqc import HybridPrivateKey

from ._admin import AdminClient, AdminError
from ._errors import CliError, Command
from ._lab import Lab
from ._render import bits, node_status, path_text, relay_hops_table
from ._topology import Topology, load_topology, topology_from_mapping

DEMO_TOPOLOGY = """
name = "paper-3node"
description = "KME1-KME2-KME3 in a line (paper Fig. 4); SAE1 on KME1, SAE3 on KME3"

[defaults]
driver = "paired"
params = { rate_bps = 16384.0, block_bits = 4096 }

[nodes.KME1]
controller = true
priority = 50

[nodes.KME2]
controller = true
priority = 100

[nodes.KME3]
controller = true
priority = 50

[[links]]
a = "KME1"
b = "KME2"
distance_km = 25.0

[[links]]
a = "KME2"
b = "KME3"
distance_km = 25.0

[saes.SAE1]
kme = "KME1"

[saes.SAE3]
kme = "KME3"
"""

STEPS = 5
WIDTH = 88
WATCH_SECONDS = 3
RELAY_BYTES = 1024
"""Key relayed in step 3: two relays of the lab's 4096-bit relay blocks."""
WAIT_S = 60.0
"""The longest the demo waits for anything (sessions, routes, key) before giving up."""

ROUTE_ORIGIN = {"computed": "computed from the network's topology", "manual": "set by hand"}

T = TypeVar("T")


def say(text: str = "", **style: Any) -> None:
    click.secho(text, **style)


def para(text: str, **style: Any) -> None:
    """Narration, wrapped to the demo's width."""
    say(textwrap.fill(" ".join(text.split()), width=WIDTH, break_on_hyphens=False), **style)


def step(n: int | str, title: str) -> None:
    say()
    say(f"[{n}/{STEPS}] {title}" if isinstance(n, int) else f"[{n}] {title}", bold=True)


# --- what to show: pure functions of the topology and the nodes' answers -------------


class Ends(NamedTuple):
    """The two nodes of the demo; the source has the lower id (the end that starts relays)."""

    source: str
    destination: str


def fibre_distances(topo: Topology, start: str) -> dict[str, float]:
    """Shortest distance from ``start`` to every node along the links (a link without
    ``distance_km`` counts 1 km)."""
    graph: dict[str, list[tuple[str, float]]] = {n: [] for n in topo.nodes}
    for link in topo.links:
        km = 1.0 if link.distance_km is None else link.distance_km
        graph[link.a].append((link.b, km))
        graph[link.b].append((link.a, km))
    best = {start: 0.0}
    queue = [(0.0, start)]
    while queue:
        km, node = heapq.heappop(queue)
        if km > best[node]:
            continue
        for peer, length in graph[node]:
            if km + length < best.get(peer, float("inf")):
                best[peer] = km + length
                heapq.heappush(queue, (km + length, peer))
    return best


def farthest_ends(topo: Topology, *, label: str) -> Ends:
    """The two SAE-bearing nodes without a QKD link between them that lie farthest apart.

    Raises ``CliError`` when no such pair exists (then nothing needs relay).
    """
    centres = sorted({spec.kme for spec in topo.saes.values()})
    pairs = [
        (fibre_distances(topo, a).get(b, float("inf")), a, b)
        for i, a in enumerate(centres)
        for b in centres[i + 1 :]
        if b not in topo.neighbours(a)
    ]
    reachable = [p for p in pairs if p[0] != float("inf")]
    if not reachable:
        raise CliError(
            f"topology {label}: no two nodes with SAEs lack a QKD link between them and are "
            "connected through others, so nothing needs relay; add SAEs to distant nodes"
        )
    _, a, b = max(reachable)
    return Ends(a, b)


def first_sae(topo: Topology, node: str) -> str:
    return min(sae for sae, spec in topo.saes.items() if spec.kme == node)


def hop_links(path: Sequence[str]) -> list[str]:
    """The QKD link ids along a path of nodes."""
    return ["~".join(sorted(pair)) for pair in zip(path, path[1:], strict=False)]


def hop_link_id(hop: dict[str, Any], nodes: Collection[str]) -> str:
    """A ``relay_test`` hop's link id: given, or made from its ``A-B`` (node ids may hold
    ``-``, so the split is the one whose both sides are nodes)."""
    if hop.get("link_id"):
        return str(hop["link_id"])
    text = str(hop["hop"])
    for i, char in enumerate(text):
        if char == "-" and text[:i] in nodes and text[i + 1 :] in nodes:
            return "~".join(sorted((text[:i], text[i + 1 :])))
    return text


def relay_trace(
    relays_by_node: dict[str, list[dict[str, Any]]], relay_id: str
) -> list[tuple[str, dict[str, Any] | None]]:
    """One relay as each node along its path saw it (``None`` where a node has no record)."""
    out: list[tuple[str, dict[str, Any] | None]] = []
    for node, relays in relays_by_node.items():
        out.append((node, next((r for r in relays if r["relay_id"] == relay_id), None)))
    return out


def trace_line(node: str, record: dict[str, Any] | None) -> str:
    if record is None:
        return f"  {node}: no record of it"
    took = (
        ""
        if record["ended_at"] is None
        else f" after {(record['ended_at'] - record['started_at']) * 1e3:.0f} ms"
    )
    error = f" ({record['error']})" if record["error"] else ""
    return (
        f"  {node}: {record['role']:<12} {record['state']}{took}, "
        f"{record['bits']} bits of key{error}"
    )


def same_check(checks: Sequence[dict[str, Any]]) -> bool:
    """Whether every end reports the same ready blocks, at least one, and key check value."""
    first = checks[0]
    return bool(first["ready_ids"]) and all(
        (c["ready_ids"], c["kcv"]) == (first["ready_ids"], first["kcv"]) for c in checks
    )


def check_line(node: str, check: dict[str, Any]) -> str:
    ids = check["ready_ids"]
    if not ids:
        return f"  {node}: no ready blocks in the window"
    return f"  {node}: {len(ids)} ready blocks, ids {ids[0]}..{ids[-1]}, KCV {check['kcv']}"


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


# --- the command ----------------------------------------------------------------------


@contextlib.contextmanager
def _lab_dir(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="qkms-demo-") as tmp:
        yield Path(tmp)


@click.command(cls=Command)
@click.option(
    "--topology",
    type=click.Path(dir_okay=False, path_type=Path),
    help="another network, e.g. examples/kreonet17.toml (default: the paper's 3-node line)",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="keep the lab here instead of a temporary directory",
)
@click.option("--keep", is_flag=True, help="leave the lab running at the end (needs --dir)")
def demo(topology: Path | None, directory: Path | None, keep: bool) -> None:
    """Relay QKD key across a trusted node to two applications, and explain each step."""
    if keep and directory is None:
        raise click.UsageError("--keep needs --dir, so that you can find the lab afterwards")
    if topology is None:
        topo = topology_from_mapping(tomllib.loads(DEMO_TOPOLOGY), label="embedded demo topology")
    else:
        topo = load_topology(topology)
    ends = farthest_ends(topo, label=str(topology or "embedded"))
    saes = first_sae(topo, ends.source), first_sae(topo, ends.destination)
    say("qkms demo: key relay in a quantum key management network", bold=True, fg="cyan")
    para(
        f"Network {topo.name!r}: {len(topo.nodes)} trusted nodes (KMEs) and "
        f"{len(topo.links)} QKD links. {saes[0]} on {ends.source} and {saes[1]} on "
        f"{ends.destination} want shared keys, but no QKD link joins {ends.source} and "
        f"{ends.destination}. The nodes between them relay key: each hop encrypts it with "
        "a one-time pad of that link's QKD key, so the key crosses the network while only "
        "trusted nodes ever see it. These are the five steps of the paper's verification "
        "(Table 5). The QKD devices are simulated by the 'paired' driver: both ends of a "
        "link derive the same key from a shared seed (a stand-in for key management, "
        "not physics)."
    )
    with _lab_dir(directory) as where:
        lab = Lab(where)
        step("setup", "Network PKI, node configuration, one qkmsd per node")
        para(
            "A certificate authority for this network signs one certificate per node and "
            "one per application (SAE); nodes authenticate each other with mutual TLS 1.3. "
            f"{ends.source} and {ends.destination} are configured with an end-to-end pool: "
            "a direct session between them, kept filled with relayed key, that serves "
            "applications like a QKD link would."
        )
        started = time.monotonic()
        manifest = lab.up(topo, progress=lambda s: say(f"  - {s}", dim=True))
        url = lab.dashboard_url(ends.source)
        say(f"  Dashboard of {ends.source} (open it in a browser to watch live): {url}", bold=True)
        try:
            _Narration(manifest, topo, ends, saes).run()
            if keep:
                say()
                say(f"The lab keeps running. Try: qkmsctl lab status --dir {where}", bold=True)
                return
            hold_for_viewer(url, interactive=interactive())
        finally:
            if not keep:
                step("end", "Shutting the lab down")
                stopped = lab.down()
                say(f"  stopped {len(stopped)} node(s) with SIGTERM (graceful shutdown)")
        say()
        say(f"Demo finished in {time.monotonic() - started:.0f} s.", bold=True, fg="green")


def interactive() -> bool:
    """Whether a person runs the demo at a terminal (not CI, not a pipe)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def hold_for_viewer(
    url: str, *, interactive: bool, wait: Callable[[], object] = sys.stdin.readline
) -> None:
    """At a terminal, keep the lab up until Enter so that its dashboard can be looked at;
    elsewhere (CI) go on at once."""
    say()
    if not interactive:
        say(f"The dashboard was at {url} (not waiting: no terminal).", dim=True)
        return
    say(f"The lab stays up: watch it at {url}", bold=True)
    say("Press Enter to shut it down.", bold=True)
    try:
        wait()
    except (EOFError, KeyboardInterrupt):
        pass


def _client(manifest: dict[str, Any], sae: str) -> Etsi014Client:
    entry = manifest["saes"][sae]
    pqc = HybridPrivateKey.load(entry["pqc_key"]) if "pqc_key" in entry else None
    return Etsi014Client(
        manifest["kmes"][entry["kme"]]["url"],
        ca=manifest["ca"],
        cert=entry["cert"],
        key=entry["key"],
        pqc_private_key=pqc,
    )


def _wait(what: str, probe: Callable[[], T | None], *, timeout: float = WAIT_S) -> T:
    """Poll ``probe`` until it returns something; ``CliError`` naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise CliError(f"demo: {what} not within {timeout:g} s; see the nodes' logs")
        time.sleep(0.1)


class _Narration:
    """The five steps, against a running lab."""

    def __init__(
        self,
        manifest: dict[str, Any],
        topo: Topology,
        ends: Ends,
        saes: tuple[str, str],
    ) -> None:
        self.manifest = manifest
        self.topo = topo
        self.ends = ends
        self.saes = saes
        self.admin = {n: AdminClient(k["admin_socket"]) for n, k in manifest["kmes"].items()}

    def run(self) -> None:
        self.sessions()
        route = self.route()
        path = list(route["path"])
        self.qkd_key(path)
        self.service_keys(path)
        pool = self.relay(route)
        self.same_key(pool)
        self.applications()
        say()
        say("The two ends, as `qkmsctl status --lab DIR --node N` shows them:", bold=True)
        for node in self.ends:
            say(node_status(self.admin[node].call("status")))
            say()

    # --- helpers ---------------------------------------------------------------------

    def link(self, node: str, link_id: str) -> dict[str, Any] | None:
        links = self.admin[node].call("links")["links"]
        return next((link for link in links if link["link_id"] == link_id), None)

    def pool_of(self, node: str, peer: str) -> dict[str, Any] | None:
        links = self.admin[node].call("links")["links"]
        return next((x for x in links if x.get("e2e") and x["peer"] == peer), None)

    def check(self, link_id: str, nodes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Both ends' check up to the newest block both have, retried while blocks are in
        flight (READY at one end, not yet at the other)."""
        checks: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 5
        while True:
            newest = [(self.link(n, link_id) or {}).get("newest_block_id") for n in nodes]
            if None not in newest:
                last = min(int(x) for x in newest if x is not None)
                window = {"link_id": link_id, "first": 0, "last": last}
                checks = {n: self.admin[n].call("check", **window) for n in nodes}
                if same_check(list(checks.values())) or time.monotonic() > deadline:
                    return checks
            elif time.monotonic() > deadline:
                raise CliError(f"demo: link {link_id} has no blocks at {', '.join(nodes)}")
            time.sleep(0.3)

    # --- the steps -----------------------------------------------------------------

    def sessions(self) -> None:
        def all_connected() -> bool | None:
            try:
                states = [p["state"] for c in self.admin.values() for p in c.call("peers")["peers"]]
            except AdminError:
                return None
            return True if all(s == "connected" for s in states) else None

        _wait("every node's sessions to open", all_connected)
        say(f"  all {len(self.admin)} nodes are up and connected to their peers:")
        for node in self.ends:
            for peer in self.admin[node].call("peers")["peers"]:
                kind = (
                    "QKD link"
                    if peer["node_id"] in self.topo.neighbours(node)
                    else "direct session of the end-to-end pool"
                )
                say(f"  {node} -> {peer['node_id']}: {peer['state']} ({kind})")

    def route(self) -> dict[str, Any]:
        source, destination = self.ends

        def found() -> dict[str, Any] | None:
            routes = self.admin[source].call("routes")["routes"]
            return next((r for r in routes if r["destination"] == destination), None)

        return _wait(f"a route from {source} to {destination}", found)

    def qkd_key(self, path: list[str]) -> None:
        step(1, "QKD key arrives on each link of the route and is synchronised")
        para(
            f"The relay route from {path[0]} to {path[-1]} is {path_text(path)}: "
            f"{len(path) - 1} QKD link(s). Each link's two nodes store the key their devices "
            "produce (encrypted under the node's master key) and agree, block by block, on "
            "which key both hold before any may be used. The QBER is the error rate the "
            "devices measured while making the key."
        )
        width = max(len(link_id) for link_id in hop_links(path))
        for second in range(1, WATCH_SECONDS + 1):
            time.sleep(1)
            for link_id in hop_links(path):
                ends = [self.link(n, link_id) or {} for n in link_id.split("~")]
                levels = " / ".join(f"{bits(e.get('ready_bits', 0)):>9}" for e in ends)
                qber = ends[0].get("qber")
                say(
                    f"  t={second}s  {link_id:<{width}}  {levels} ready at its two ends  "
                    f"QBER {'-' if qber is None else f'{qber:.1%}'}"
                )
        para(
            "Synchronised means the same key at both ends. Each node reports the ids of its "
            "ready blocks in a window and a key check value (24 bits of a keyed hash over those "
            "blocks: equal values mean equal key, and 24 bits say nothing useful about it):"
        )
        for link_id in hop_links(path):
            checks = self.check(link_id, link_id.split("~"))
            verdict = "same key at both ends" if same_check(list(checks.values())) else "DIFFER"
            say(f"  {link_id}: {verdict}")
            for node, check in checks.items():
                say("  " + check_line(node, check))

    def service_keys(self, path: list[str]) -> None:
        step(2, "The key is reformatted into service keys")
        key_size = self.key_size()
        para(
            "A QKD device delivers key in blocks; applications get keys of one fixed size over "
            f"ETSI GS QKD 014 (here {key_size} bits). Each node cuts its ready blocks into keys "
            "of that size; each block belongs to one end (by a rule both compute), so the two "
            "ends can serve keys at the same time without handing out the same bits."
        )
        for link_id in hop_links(path):
            levels = {}
            for node in link_id.split("~"):
                link = self.link(node, link_id) or {}
                levels[node] = (link.get("ready_blocks", 0), link.get("ready_bits", 0))
            where = {"both ends": levels[node]} if len(set(levels.values())) == 1 else levels
            for at, (blocks, ready) in where.items():
                say(
                    f"  {link_id} ({at}): {blocks} ready blocks, {ready} bits "
                    f"= {ready // key_size} keys of {key_size} bits"
                )

    def key_size(self) -> int:
        sae, peer = self.saes
        try:
            with _client(self.manifest, sae) as client:
                return client.status(peer).key_size
        except Etsi014Error:
            return 256  # the policy's default, when the pool is not there yet

    def relay(self, route: dict[str, Any]) -> dict[str, Any]:
        source, destination = self.ends
        step(3, f"A key is relayed {path_text(route['path'])}")
        para(
            f"The route was {ROUTE_ORIGIN.get(route['source'], route['source'])} (cost "
            f"{route['cost']}). {source} draws fresh "
            f"key, XORs it with key of the first link (a one-time pad), tags it with a Poly1305 "
            "key also taken from that link, and sends it on. Each intermediate node checks the "
            "tag, removes the pad and pads the key again with key of its next link; only "
            f"{destination} keeps it, and confirms to {source}. Each relay spends on each hop "
            "a pad as long as its key, plus 64 bytes: a pad for the confirmation key and the "
            "one-time MAC key. Relaying "
            f"{RELAY_BYTES} bytes ({RELAY_BYTES * 8} bits) now:"
        )
        since = time.time()
        result = self.relay_test()
        shares = int(result.get("shares", 1))
        if shares > 1:
            para(
                f"This pool splits each key into {shares} shares: random strings whose XOR "
                f"is the key, each relayed over its own node-disjoint path. No intermediate "
                "node sees more than one share, and one share says nothing about the key; the "
                "destination keeps the key only once every share has arrived."
            )
        say(
            f"  {result['relays']} relay(s) carried {result['bytes']} bytes in "
            f"{result['seconds']:.2f} s. Link key spent, hop by hop:"
        )
        hops = [{**h, "link_id": hop_link_id(h, self.topo.nodes)} for h in result["hops"]]
        for line in relay_hops_table({**result, "hops": hops}).splitlines():
            say(f"    {line}")
        pool = _wait(
            f"{source}'s end-to-end pool with {destination}",
            lambda: self.pool_of(source, destination),
        )
        mine = [
            r
            for r in self.admin[source].call("relays")["relays"]
            if r["role"] == "source"
            and r["e2e_link_id"] == pool["link_id"]
            and r["started_at"] >= since - 1
        ]
        if mine:
            relay = mine[-1]  # newest first: the test's first relay is last
            say(f"  One of them, relay {relay['relay_id']}, as each node on the path saw it:")
            relays_by_node = {n: self.admin[n].call("relays")["relays"] for n in relay["path"]}
            for node, record in relay_trace(relays_by_node, relay["relay_id"]):
                say(trace_line(node, record))
        para(
            f"The end-to-end pool {pool['link_id']} holds {bits(pool['ready_bits'])} ready now "
            "(less what the ETSI 014 front has stocked for the SAEs); relays keep it filled in "
            "the background."
        )
        return pool

    def relay_test(self) -> dict[str, Any]:
        """``relay_test`` at the source, tried again while links lack key: in a network
        with many end-to-end pools the relays that fill them compete for link key."""
        source, destination = self.ends
        client = AdminClient(self.manifest["kmes"][source]["admin_socket"], timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                return client.call("relay_test", destination=destination, bytes=RELAY_BYTES)
            except AdminError as exc:
                if exc.code in ("unreachable", "protocol") or time.monotonic() > deadline:
                    raise
                say(f"  not yet: {exc}", dim=True)
                say("  (relays leave each link a reserve for its own SAEs, and the relays that")
                say("  fill the end-to-end pools draw on the links too; trying again in 2 s)")
                time.sleep(2)

    def same_key(self, pool: dict[str, Any]) -> None:
        source, destination = self.ends
        step(4, f"{source} and {destination} hold the same end-to-end key")
        para(
            f"The end-to-end pool {pool['link_id']} works like a QKD link's pool: the same "
            "check, asked of both ends over the same window of block ids:"
        )
        checks = self.check(pool["link_id"], self.ends)
        for node, check in checks.items():
            say(check_line(node, check))
        if same_check(list(checks.values())):
            say(
                f"  Identical at both ends: {source} and {destination} share this key, though "
                "no QKD link joins them.",
                fg="green",
            )
        else:
            say("  The ends differ in this window (a relay may still be in flight).", fg="yellow")

    def applications(self) -> None:
        (sae_a, sae_b), (kme_a, kme_b) = self.saes, self.ends
        step(5, f"{sae_a} and {sae_b} get the same keys over ETSI GS QKD 014")
        para(
            f"{sae_a} asks {kme_a} for two keys to share with {sae_b} (enc_keys); {kme_a} cuts "
            "them from the end-to-end pool and has "
            f"{kme_b} record the key IDs. {sae_b} then asks {kme_b} for those IDs "
            "(dec_keys). Keys are shown by fingerprint (a hash), never as key material."
        )
        try:
            with _client(self.manifest, sae_a) as enc, _client(self.manifest, sae_b) as dec:

                def stocked() -> int | None:
                    try:
                        count = enc.status(sae_b).stored_key_count
                    except Etsi014Error:
                        return None
                    return count if count >= 2 else None

                count = _wait(f"keys for {sae_a} -> {sae_b}", stocked)
                status = enc.status(sae_b)
                say(
                    f"  status: {count} keys of {status.key_size} bits ready for "
                    f"{sae_a} -> {sae_b} (at most {status.max_key_per_request} per request)"
                )
                delivery = enc.get_key(sae_b, number=2, size=status.key_size)
                for key in delivery:
                    say(f"  {sae_a} got key {key.key_id}  fingerprint {fingerprint(key.key)}")
                fetched = dec.get_key_with_ids(sae_a, [k.key_id for k in delivery])
                for key in fetched:
                    say(f"  {sae_b} got key {key.key_id}  fingerprint {fingerprint(key.key)}")
                same = [a.key for a in delivery] == [b.key for b in fetched]
                say(
                    f"  {sae_a} and {sae_b} hold the same keys." if same else "  The keys DIFFER.",
                    fg="green" if same else "red",
                )
                try:
                    dec.get_key_with_ids(sae_a, [delivery[0].key_id])
                except Etsi014Error as exc:
                    say(f"  {sae_b} asks again: refused ({exc}): a key is delivered once.")
        except Etsi014Error as exc:
            raise CliError(f"demo: ETSI 014: {exc}") from None
