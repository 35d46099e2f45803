"""Key relay throughput on a line of nodes against the slowest link's key rate.

Each scenario runs a line of real nodes (``qkmsd.app.Node``) in this one trio process,
over mutual TLS on loopback, every QKD link a ``paired`` simulated link at a set rate: a
line of 3 nodes (2 hops, all links at R) and one of 5 nodes (4 hops, the middle link at
R/2).  The first node keeps an end-to-end pool with the last and relays into it without
pause (watermarks far above what a run makes, ``in_flight`` relays at once).  After a
warm-up, one window measures:

- end-to-end key made READY per second at the destination (and confirmed at the source);
- link key spent per second on each link (pads, confirmation keys, MAC keys), from the
  sending node's relay statistics;
- efficiency = end-to-end rate x (block_bits + 512) / block_bits / the bottleneck link's
  key rate (target >= 0.9); also against the half of that rate the sending end owns
  (each end of a link allocates only from the blocks it owns: the lower id the even ids);
- the relay latency at the source and what ``in_flight`` relays of that latency can carry;
- CPU of the whole process (all nodes, their store threads).

On the 3-node line, after the relay window, ETSI 014 single-key requests in a closed loop:
SAE_A for SAE_C (the end-to-end pool) alternated with SAE_A for SAE_B (the QKD link A~B),
keys/s of each and the ratio.

The ring scenario: KME_A-KME_B-KME_C-KME_D-KME_A with the end-to-end pool A~C, the side
A-B-C at R and the side A-D-C at R/2 (``--ring-slow``).  Both ends relay without pause
(``link_reserve_bits = 0``) in each of three pool modes, each on fresh nodes:

- ``spread``: ``spread = true``, whole keys over the two node-disjoint paths in turn;
- ``disjoint``: ``paths = "disjoint"``, each key split into XOR shares, one per path;
- ``default``: the routes in order (the first, then the next when a relay fails on it).

Figures: end-to-end rate, efficiency = rate x 1.0625 / the max-flow between A and C of the
link key rates (networkx ``maximum_flow_value``; target >= 0.8 for ``spread``) and against
each side's bottleneck, link key spent per link (both ends' hops), relays per path and
failed by code, relay latency, CPU.

Default run: about two and a half minutes (``--hops ""`` or ``--ring-modes ""`` leave a
part out).  ``--window-s 60 --warmup-s 10`` for steadier figures.
Writes ``benchmarks/results/relay_throughput.json``.
"""

# ruff: noqa: E402

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import trio
from _etsi014_harness import code_version, machine
from _relay_common import (
    RELAY_OVERHEAD_BITS,
    Line,
    Net,
    Ring,
    dial_order,
    efficiency,
    failure_kind,
    latency_bound_bps,
    link_bits_per_relayed_bit,
    link_id,
    make_line,
    make_ring,
    max_flow_bps,
    node_toml,
    percentiles,
    rate,
)

from cli._pki import init_ca, issue_node, issue_sae
from qkms_client import Etsi014Error, TrioEtsi014Client
from qkmsd.app import Node, NodeInfo
from qkmsd.config import load_config
from qkmsd.keystore import generate_master_key
from qkmsd.relay._agent import MAC_KEY_BYTES, RelayFailed

TARGET = 0.9
RING_TARGET = 0.8
RING_MODES = {
    "spread": {"spread": True},
    "disjoint": {"paths": "disjoint"},
    "default": {},
}
OUT = HERE / "results" / "relay_throughput.json"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sae_of(node: str) -> str:
    return "SAE_" + node.removeprefix("KME_")


async def _run(node: Node, *, task_status: trio.TaskStatus[NodeInfo]) -> None:
    async with trio.open_nursery() as nursery:
        info = await nursery.start(node.run)
        task_status.started(info)


class Running:
    def __init__(self, line: Line, nodes: dict[str, Node], infos: dict[str, NodeInfo]) -> None:
        self.line, self.nodes, self.infos = line, nodes, infos

    async def pool(self, node: str, link: str) -> Any:
        n = self.nodes[node]
        assert n.store_thread is not None
        return await n.store_thread.call(n.store_thread._store.pool, link)  # type: ignore[union-attr]

    def relay(self, node: str) -> Any:
        agent = self.nodes[node].relay
        assert agent is not None
        return agent

    async def snapshot(self) -> dict[str, Any]:
        first, last = self.line.nodes[0], self.line.nodes[-1]
        e2e = self.line.e2e_link
        links = {}
        for i, link in enumerate(self.line.links):
            sender = self.line.nodes[i]
            level = await self.pool(sender, link)
            links[link] = {
                "sender_owned_ready_bits": level.owned_ready_bits,
                "ready_bits": level.ready_bits,
                "discarded_blocks": level.discarded_blocks,
                "expired_blocks": level.expired_blocks,
            }
        return {
            "t": time.monotonic(),
            "cpu_s": cpu_s(),
            "stats": {n: self.relay(n).statistics() for n in self.line.nodes},
            "e2e_ready_bits_source": (await self.pool(first, e2e)).ready_bits,
            "e2e_ready_bits_destination": (await self.pool(last, e2e)).ready_bits,
            "e2e_discarded_blocks": [
                (await self.pool(first, e2e)).discarded_blocks,
                (await self.pool(last, e2e)).discarded_blocks,
            ],
            "links": links,
        }


async def relay_window(run: Running, args: argparse.Namespace) -> dict[str, Any]:
    line = run.line
    first = line.nodes[0]
    await trio.sleep(args.warmup_s)
    t_wall0 = time.time()
    before = await run.snapshot()
    await trio.sleep(args.window_s)
    after = await run.snapshot()
    t_wall1 = time.time()
    seconds = after["t"] - before["t"]
    block = args.block_bits

    def stat(node: str, name: str) -> float:
        return rate(
            getattr(before["stats"][node], name), getattr(after["stats"][node], name), seconds
        )

    e2e_dst = rate(
        before["e2e_ready_bits_destination"], after["e2e_ready_bits_destination"], seconds
    )
    e2e_src = rate(before["e2e_ready_bits_source"], after["e2e_ready_bits_source"], seconds)
    confirmed = stat(first, "bits_relayed")
    links = []
    for i, link in enumerate(line.links):
        sender = line.nodes[i]
        spent = stat(sender, "link_bits_spent")
        owned = [before["links"][link]["sender_owned_ready_bits"]]
        owned.append(after["links"][link]["sender_owned_ready_bits"])
        links.append(
            {
                "link": link,
                "rate_bps": line.rates_bps[i],
                "sender": sender,
                "spent_bps": stat(sender, "link_bits_spent"),
                "spent_share_of_rate": stat(sender, "link_bits_spent") / line.rates_bps[i],
                "sender_owned_ready_bits_start": before["links"][link]["sender_owned_ready_bits"],
                "sender_owned_ready_bits_end": after["links"][link]["sender_owned_ready_bits"],
                # What the sender could allocate in the window: spent, plus what it gained.
                "sender_owned_supply_bps": spent + rate(owned[0], owned[1], seconds),
                "discarded_blocks": after["links"][link]["discarded_blocks"],
                "expired_blocks": after["links"][link]["expired_blocks"],
            }
        )
    neck = line.bottleneck
    neck_rate = line.rates_bps[neck]
    # Relays the source started in the window: latency of the confirmed, kinds of failures.
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    for record in run.relay(first).relays():
        if not (t_wall0 <= record.started_at < t_wall1):
            continue
        if record.state == "confirmed" and record.ended_at is not None:
            latencies.append(record.ended_at - record.started_at)
        elif record.state == "failed":
            kind = failure_kind(record.error)
            failures[kind] += 1
            examples.setdefault(kind, record.error)
    mean_latency = sum(latencies) / len(latencies) if latencies else 0.0
    relays_confirmed = stat(first, "relays_confirmed") * seconds
    relays_failed = stat(first, "relays_failed") * seconds
    return {
        "hops": line.hops,
        "nodes": list(line.nodes),
        "window_s": round(seconds, 3),
        "warmup_s": args.warmup_s,
        "e2e_ready_bps_destination": e2e_dst,
        "e2e_ready_bps_source": e2e_src,
        "e2e_confirmed_bps_source": confirmed,
        "relays_confirmed": round(relays_confirmed),
        "relays_failed": round(relays_failed),
        "failures_seen_in_recent_records": dict(failures),
        "failure_examples": examples,
        "hops_refused": {n: round(stat(n, "hops_refused") * seconds) for n in line.nodes},
        "links": links,
        "bottleneck": line.links[neck],
        "bottleneck_rate_bps": neck_rate,
        "bottleneck_spent_bps": links[neck]["spent_bps"],
        "link_bits_per_relayed_bit": link_bits_per_relayed_bit(block),
        "efficiency": efficiency(e2e_dst, neck_rate, block),
        "efficiency_of_owned_half": efficiency(e2e_dst, neck_rate / 2, block),
        "efficiency_of_owned_supply": efficiency(
            e2e_dst, links[neck]["sender_owned_supply_bps"], block
        ),
        "e2e_discarded_blocks_source_destination": after["e2e_discarded_blocks"],
        "target": TARGET,
        "target_met": efficiency(e2e_dst, neck_rate, block) >= TARGET,
        "relay_latency_s": {
            "mean": mean_latency,
            "p50_p90_p99": percentiles(latencies),
            "samples": len(latencies),
        },
        "latency_bound_bps": latency_bound_bps(args.in_flight, block, mean_latency),
        "cpu_cores": rate(before["cpu_s"], after["cpu_s"], seconds),
        "cpu_ms_per_relay": (
            1000 * (after["cpu_s"] - before["cpu_s"]) / relays_confirmed
            if relays_confirmed
            else None
        ),
    }


async def etsi_windows(
    run: Running, pki: Path, args: argparse.Namespace, stack: Any
) -> dict[str, Any]:
    """Closed-loop single-key requests from SAE_A: for the far end, then the neighbour."""
    line = run.line
    first, second, last = line.nodes[0], line.nodes[1], line.nodes[-1]

    def client(node: str) -> TrioEtsi014Client:
        sae = sae_of(node)
        c = TrioEtsi014Client(
            f"https://127.0.0.1:{run.infos[node].api_port}",
            ca=pki / "ca.pem",
            cert=pki / "saes" / f"{sae}.pem",
            key=pki / "saes" / f"{sae}.key",
            kme_id=node,
        )
        stack.push_async_callback(c.aclose)
        return c

    master = client(first)
    targets = {"far": last, "neighbour": second}
    tally = {name: {"keys": 0, "errors": 0, "seconds": 0.0, "latencies": []} for name in targets}
    last_far: list[Any] = []
    error_examples: dict[str, str] = {}
    for _ in range(args.etsi_rounds):
        for name, node in targets.items():
            t = tally[name]
            end = time.monotonic() + args.etsi_window_s
            start = time.monotonic()
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    keys = await master.get_key(sae_of(node))
                except Etsi014Error as exc:
                    t["errors"] += 1
                    error_examples.setdefault(name, str(exc)[:200])
                    await trio.sleep(0.01)
                    continue
                t["latencies"].append(time.monotonic() - t0)
                t["keys"] += len(keys)
                if name == "far":
                    last_far = list(keys)
            t["seconds"] += time.monotonic() - start
    # The far end's SAE gets the same key under the same id.
    same = None
    if last_far:
        got = await client(last).get_key_with_ids(sae_of(first), [k.key_id for k in last_far])
        same = {k.key_id: k.key for k in got} == {k.key_id: k.key for k in last_far}
    out: dict[str, Any] = {}
    for name, t in tally.items():
        out[name] = {
            "slave": sae_of(targets[name]),
            "keys_per_s": t["keys"] / t["seconds"] if t["seconds"] else 0.0,
            "keys": t["keys"],
            "errors": t["errors"],
            "latency_s_p50_p90_p99": percentiles(t["latencies"]),
        }
    near = out["neighbour"]["keys_per_s"]
    out["ratio_far_to_neighbour"] = out["far"]["keys_per_s"] / near if near else None
    out["far_keys_identical_at_far_end"] = same
    out["error_examples"] = error_examples
    return out


async def start_nodes(
    nursery: trio.Nursery,
    net: Net,
    work: Path,
    pki: Path,
    args: argparse.Namespace,
    *,
    relay: dict[str, Any],
    pool: dict[str, Any],
) -> tuple[dict[str, Node], dict[str, NodeInfo]]:
    """Start ``net``'s nodes in ``nursery``, each in its own home under ``work``."""
    saes = {sae_of(n): n for n in net.nodes}
    nodes: dict[str, Node] = {}
    infos: dict[str, NodeInfo] = {}
    for node in dial_order(net):
        home = work / node
        home.mkdir(parents=True)
        generate_master_key(home / "master.key")
        path = home / "qkmsd.toml"
        path.write_text(
            node_toml(
                net,
                node,
                home=home,
                pki=pki,
                peer_addresses={n: f"127.0.0.1:{i.peer_port}" for n, i in infos.items()},
                link_params={"block_bits": args.link_block_bits},
                relay=relay,
                saes=saes,
                pool=pool,
            )
        )
        nodes[node] = Node(load_config(path))
        infos[node] = await nursery.start(_run, nodes[node])
    return nodes, infos


async def scenario(
    line: Line, args: argparse.Namespace, pki: Path, work: Path, *, etsi: bool
) -> dict[str, Any]:
    relay = {
        "block_bits": args.block_bits,
        # Far above what a run makes: the relays never pause.
        "low_bits": 1 << 40,
        "high_bits": 1 << 40,
        "timeout_s": 5.0,
        "in_flight": args.in_flight,
    }
    async with trio.open_nursery() as nursery:
        nodes, infos = await start_nodes(
            nursery, line, work / f"{line.hops}hop", pki, args, relay=relay, pool={}
        )
        run = Running(line, nodes, infos)
        result = await relay_window(run, args)
        if etsi:
            from contextlib import AsyncExitStack

            async with AsyncExitStack() as stack:
                result["etsi014"] = await etsi_windows(run, pki, args, stack)
        nursery.cancel_scope.cancel()
    return result


def _code(exc: RelayFailed) -> str:
    return str(exc.code)  # an ErrorCode (a StrEnum) or, from a reply, its value


class Probe:
    """What one node's relay agent does, counted by wrapping three of its methods in this
    process (the benchmark's instrument; the daemon code is unchanged): the link key it
    spent on each link (pads and MAC keys of the hops it sealed, as source or
    intermediate), each relay attempt on a path by outcome (``confirmed``, or the error
    code and the node that refused, ``insufficient-key@KME_D``; a split key makes one
    attempt per share), and each whole relay's outcome (after every route tried) and
    latency."""

    def __init__(self, agent: Any, nodes: Sequence[str]) -> None:
        self.spent: collections.Counter[str] = collections.Counter()
        self.attempts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.relays: list[tuple[float, float, str]] = []
        """(started, seconds, ``confirmed`` or the error code), monotonic clock."""
        seal, relay_on, relay = agent._seal_hop, agent._relay_on, agent.relay

        async def sealing(hop: Any, key: bytes) -> Any:
            sealed = await seal(hop, key)
            self.spent[sealed.link_id] += (len(key) + MAC_KEY_BYTES) * 8
            return sealed

        async def relaying_on(pool: Any, path: list[str], size: int, **kw: Any) -> Any:
            try:
                record = await relay_on(pool, path, size, **kw)
            except RelayFailed as exc:
                # A refusal further on comes back as "<node>: <error>".
                where = str(exc).split(": ", 1)[0]
                where = where if where in nodes else agent.node_id
                self.attempts["-".join(path), f"{_code(exc)}@{where}"] += 1
                raise
            self.attempts["-".join(path), "confirmed"] += 1
            return record

        async def relaying(e2e_link_id: str, **kw: Any) -> Any:
            t0 = time.monotonic()
            try:
                record = await relay(e2e_link_id, **kw)
            except RelayFailed as exc:
                self.relays.append((t0, time.monotonic() - t0, _code(exc)))
                raise
            self.relays.append((t0, time.monotonic() - t0, "confirmed"))
            return record

        agent._seal_hop, agent._relay_on, agent.relay = sealing, relaying_on, relaying

    def snapshot(self) -> dict[str, Any]:
        return {"spent": dict(self.spent), "attempts": dict(self.attempts)}


async def pool_level(node: Node, link: str) -> Any:
    assert node.store_thread is not None
    return await node.store_thread.call(node.store_thread._store.pool, link)  # type: ignore[union-attr]


async def ring_snapshot(ring: Ring, nodes: dict[str, Node], probes: dict[str, Probe]) -> Any:
    owned: dict[str, dict[str, int]] = {}
    for a, b, _ in ring.edges:
        link = link_id(a, b)
        owned[link] = {n: (await pool_level(nodes[n], link)).owned_ready_bits for n in (a, b)}
    e2e = {n: await pool_level(nodes[n], ring.e2e_link) for n in ring.ends}
    return {
        "t": time.monotonic(),
        "cpu_s": cpu_s(),
        "probes": {n: p.snapshot() for n, p in probes.items()},
        "owned": owned,
        "e2e_ready_bits": {n: level.ready_bits for n, level in e2e.items()},
        "e2e_discarded_blocks": {n: level.discarded_blocks for n, level in e2e.items()},
    }


def ring_figures(
    ring: Ring,
    before: dict[str, Any],
    after: dict[str, Any],
    probes: dict[str, Probe],
    args: argparse.Namespace,
) -> dict[str, Any]:
    seconds = after["t"] - before["t"]
    block = args.block_bits
    source, destination = ring.ends
    flow = max_flow_bps(ring.edges, source, destination)
    sides = [(side, ring.bottleneck_bps(side)) for side in ring.sides()]
    slower = min(rate for _, rate in sides)

    def delta(node: str, kind: str, key: Any) -> int:
        return after["probes"][node][kind].get(key, 0) - before["probes"][node][kind].get(key, 0)

    links = []
    for a, b, link_rate in ring.edges:
        link = link_id(a, b)
        ends = {}
        for n in (a, b):
            spent = delta(n, "spent", link) / seconds
            o0, o1 = before["owned"][link][n], after["owned"][link][n]
            ends[n] = {
                "spent_bps": spent,
                "owned_ready_bits_start": o0,
                "owned_ready_bits_end": o1,
                # What this end could allocate in the window: spent, plus what it gained.
                "owned_supply_bps": spent + rate(o0, o1, seconds),
            }
        spent = sum(e["spent_bps"] for e in ends.values())
        links.append(
            {
                "link": link,
                "rate_bps": link_rate,
                "spent_bps": spent,
                "spent_share_of_rate": spent / link_rate,
                "ends": ends,
            }
        )
    # Link key spent on hops of attempts the destination confirmed (of a split key: shares
    # confirmed, whether or not the other shares made it); the rest was burnt on failures.
    confirmed_bits: collections.Counter[str] = collections.Counter()
    for n in ring.ends:
        for path, outcome in after["probes"][n]["attempts"]:
            if outcome == "confirmed":
                hops = path.split("-")
                for a, b in zip(hops, hops[1:], strict=False):
                    confirmed_bits[link_id(a, b)] += delta(n, "attempts", (path, outcome)) * (
                        block + RELAY_OVERHEAD_BITS
                    )
    for link in links:
        link["spent_on_confirmed_bps"] = confirmed_bits[link["link"]] / seconds
        link["burnt_bps"] = link["spent_bps"] - link["spent_on_confirmed_bps"]
    e2e = rate(before["e2e_ready_bits"][destination], after["e2e_ready_bits"][destination], seconds)
    e2e_src = rate(before["e2e_ready_bits"][source], after["e2e_ready_bits"][source], seconds)
    t0 = before["t"]
    by_source = {}
    latencies: list[float] = []
    for n in ring.ends:
        attempts: dict[str, dict[str, int]] = {}
        keys = set(after["probes"][n]["attempts"])
        for path, outcome in sorted(keys):
            count = delta(n, "attempts", (path, outcome))
            if count:
                attempts.setdefault(path, {})[outcome] = count
        relays = [r for r in probes[n].relays if t0 <= r[0] < after["t"]]
        failed = collections.Counter(code for _, _, code in relays if code != "confirmed")
        confirmed = [s for _, s, code in relays if code == "confirmed"]
        latencies += confirmed
        by_source[n] = {
            "relays_confirmed": len(confirmed),
            "relays_failed_by_code": dict(failed),
            "attempts_by_path": attempts,
        }
    cpu = after["cpu_s"] - before["cpu_s"]
    relays_confirmed = sum(s["relays_confirmed"] for s in by_source.values())
    mean_latency = sum(latencies) / len(latencies) if latencies else 0.0
    return {
        "window_s": round(seconds, 3),
        "warmup_s": args.warmup_s,
        "e2e_ready_bps_destination": e2e,
        "e2e_ready_bps_source": e2e_src,
        "max_flow_bps": flow,
        "efficiency_vs_max_flow": efficiency(e2e, flow, block),
        "efficiency_vs_slower_side": efficiency(e2e, slower, block),
        "sides": [{"path": list(p), "bottleneck_bps": r} for p, r in sides],
        "links": links,
        "by_source": by_source,
        "e2e_discarded_blocks": after["e2e_discarded_blocks"],
        "relay_latency_s": {
            "mean": mean_latency,
            "p50_p90_p99": percentiles(latencies),
            "samples": len(latencies),
        },
        "latency_bound_bps": 2 * latency_bound_bps(args.in_flight, block, mean_latency),
        "cpu_cores": cpu / seconds,
        "cpu_ms_per_relay": 1000 * cpu / relays_confirmed if relays_confirmed else None,
    }


async def ring_mode(
    ring: Ring, mode: str, args: argparse.Namespace, pki: Path, work: Path
) -> dict[str, Any]:
    relay = {
        "block_bits": args.block_bits,
        # Far above what a run makes: the relays never pause; no key kept back on links.
        "low_bits": 1 << 40,
        "high_bits": 1 << 40,
        "timeout_s": 5.0,
        "in_flight": args.in_flight,
        "link_reserve_bits": 0,
    }
    async with trio.open_nursery() as nursery:
        nodes, _ = await start_nodes(
            nursery, ring, work / f"ring-{mode}", pki, args, relay=relay, pool=RING_MODES[mode]
        )
        probes = {n: Probe(nodes[n].relay, ring.nodes) for n in ring.nodes}
        await trio.sleep(args.warmup_s)
        before = await ring_snapshot(ring, nodes, probes)
        await trio.sleep(args.window_s)
        after = await ring_snapshot(ring, nodes, probes)
        nursery.cancel_scope.cancel()
    return {
        "mode": mode,
        "pool": RING_MODES[mode],
        **ring_figures(ring, before, after, probes, args),
    }


def ring_scenario(
    ring: Ring, modes: list[str], args: argparse.Namespace, pki: Path, work: Path
) -> dict[str, Any]:
    source, destination = ring.ends
    out: dict[str, Any] = {
        "scenario": "ring",
        "nodes": list(ring.nodes),
        "e2e_link": ring.e2e_link,
        "links": [{"link": link_id(a, b), "rate_bps": r} for a, b, r in ring.edges],
        "max_flow_bps": max_flow_bps(ring.edges, source, destination),
        "link_bits_per_relayed_bit": link_bits_per_relayed_bit(args.block_bits),
        "target": RING_TARGET,
        "target_mode": "spread",
        "modes": {},
    }
    print(
        f"\nring {'-'.join(ring.nodes)}-{ring.nodes[0]}, pool {ring.e2e_link}, "
        f"max-flow {out['max_flow_bps'] / 1e3:.1f} kbit/s"
    )
    for mode in modes:
        r = trio.run(functools.partial(ring_mode, ring, mode, args, pki, work))
        out["modes"][mode] = r
        ring_report(r)
    if "spread" in out["modes"]:
        out["target_met"] = out["modes"]["spread"]["efficiency_vs_max_flow"] >= RING_TARGET
    return out


def ring_report(r: dict[str, Any]) -> None:
    sides = ", ".join(f"{'-'.join(s['path'])} {s['bottleneck_bps'] / 1e3:.0f}" for s in r["sides"])
    verdict = ""
    if r["mode"] == "spread":
        met = r["efficiency_vs_max_flow"] >= RING_TARGET
        verdict = f", target {RING_TARGET}: {'MET' if met else 'MISSED'}"
    print(
        f"  {r['mode']} {r['pool']}, window {r['window_s']:.1f} s: end-to-end READY "
        f"{r['e2e_ready_bps_destination'] / 1e3:.1f} kbit/s; efficiency "
        f"{r['efficiency_vs_max_flow']:.3f} of max-flow {r['max_flow_bps'] / 1e3:.0f}{verdict};"
        f" {r['efficiency_vs_slower_side']:.3f} of the slower side (sides: {sides} kbit/s)"
    )
    for link in r["links"]:
        ends = ", ".join(
            f"{n} {e['spent_bps'] / 1e3:.1f} of {e['owned_supply_bps'] / 1e3:.1f} owned "
            f"({e['owned_ready_bits_start']}->{e['owned_ready_bits_end']})"
            for n, e in link["ends"].items()
        )
        print(
            f"    {link['link']:<12} rate {link['rate_bps'] / 1e3:6.1f}, spent "
            f"{link['spent_bps'] / 1e3:6.1f} kbit/s ({link['spent_share_of_rate']:.1%}), burnt "
            f"{link['burnt_bps'] / 1e3:.1f}: {ends}"
        )
    for n, s in r["by_source"].items():
        print(
            f"    from {n}: {s['relays_confirmed']} relays confirmed, failed "
            f"{s['relays_failed_by_code']}; attempts by path {s['attempts_by_path']}"
        )
    lat = r["relay_latency_s"]
    print(
        f"    relay latency mean {lat['mean'] * 1e3:.1f} ms over {lat['samples']}, p50/p90/p99 "
        f"{[round(x * 1e3, 1) for x in lat['p50_p90_p99']]} ms; CPU {r['cpu_cores']:.2f} cores,"
        f" {r['cpu_ms_per_relay'] or 0:.1f} ms per relay"
    )


def report(r: dict[str, Any]) -> None:
    print(f"\n{r['hops']}-hop line {'-'.join(r['nodes'])}, window {r['window_s']:.1f} s")
    for link in r["links"]:
        print(
            f"  {link['link']:<14} rate {link['rate_bps'] / 1e3:7.1f} kbit/s, spent by "
            f"{link['sender']}: {link['spent_bps'] / 1e3:7.1f} kbit/s "
            f"({link['spent_share_of_rate']:.1%}) of {link['sender_owned_supply_bps'] / 1e3:.1f} it"
            f" owned in the window; owned ready "
            f"{link['sender_owned_ready_bits_start']}->{link['sender_owned_ready_bits_end']} bits"
        )
    print(
        f"  end-to-end READY at destination {r['e2e_ready_bps_destination'] / 1e3:.1f} kbit/s"
        f" (source: READY {r['e2e_ready_bps_source'] / 1e3:.1f}, confirmed "
        f"{r['e2e_confirmed_bps_source'] / 1e3:.1f}); relays {r['relays_confirmed']} confirmed,"
        f" {r['relays_failed']} failed {r['failures_seen_in_recent_records']}"
    )
    lat = r["relay_latency_s"]
    print(
        f"  efficiency {r['efficiency']:.3f} of bottleneck {r['bottleneck']} "
        f"({r['bottleneck_rate_bps'] / 1e3:.1f} kbit/s; x{r['link_bits_per_relayed_bit']:.4f} "
        f"link bits per relayed bit), target {TARGET}: {'MET' if r['target_met'] else 'MISSED'};"
        f" of the owned half {r['efficiency_of_owned_half']:.3f}, of what the sender owned in"
        f" the window {r['efficiency_of_owned_supply']:.3f}"
    )
    print(
        f"  relay latency mean {lat['mean'] * 1e3:.1f} ms over {lat['samples']}: "
        f"latency bound {r['latency_bound_bps'] / 1e3:.0f} kbit/s; CPU {r['cpu_cores']:.2f} "
        f"cores, {r['cpu_ms_per_relay'] or 0:.1f} ms per relay"
    )
    if "etsi014" in r:
        e = r["etsi014"]
        print(
            f"  ETSI 014 SAE_A->{e['far']['slave']} {e['far']['keys_per_s']:.0f} keys/s "
            f"({e['far']['errors']} errors), SAE_A->{e['neighbour']['slave']} "
            f"{e['neighbour']['keys_per_s']:.0f} keys/s ({e['neighbour']['errors']} errors): "
            f"ratio {e['ratio_far_to_neighbour'] or 0:.2f}; far keys identical: "
            f"{e['far_keys_identical_at_far_end']}"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate-bps", type=float, default=256e3, help="link key rate R")
    p.add_argument(
        "--bottleneck", type=float, default=0.5, help="the 4-hop line's middle link: x R"
    )
    p.add_argument("--block-bits", type=int, default=8192, help="[relay] block_bits")
    p.add_argument("--link-block-bits", type=int, default=16384, help="paired block_bits")
    p.add_argument("--in-flight", type=int, default=4)
    p.add_argument("--warmup-s", type=float, default=6.0)
    p.add_argument("--window-s", type=float, default=20.0)
    p.add_argument("--etsi-window-s", type=float, default=2.0)
    p.add_argument("--etsi-rounds", type=int, default=2)
    p.add_argument(
        "--hops", default="2,4", help='comma-separated line lengths in hops ("": no line)'
    )
    p.add_argument(
        "--ring-modes",
        default=",".join(RING_MODES),
        help=f'comma-separated ring pool modes of {", ".join(RING_MODES)} ("": no ring)',
    )
    p.add_argument("--ring-slow", type=float, default=0.5, help="the ring's A-D-C side: x R")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    hops = [int(h) for h in args.hops.split(",") if h]
    modes = [m for m in args.ring_modes.split(",") if m]
    unknown = set(modes) - set(RING_MODES)
    if unknown:
        raise SystemExit(f"unknown ring modes {sorted(unknown)}; known: {list(RING_MODES)}")
    started = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        work = Path(tmp)
        pki = work / "pki"
        init_ca(pki)
        for node in make_line(max([*hops, 3]), args.rate_bps).nodes:
            issue_node(pki, node)
            issue_sae(pki, sae_of(node))
        for n in hops:
            line = make_line(n, args.rate_bps, bottleneck=1.0 if n <= 2 else args.bottleneck)
            r = trio.run(functools.partial(scenario, line, args, pki, work, etsi=(n == 2)))
            report(r)
            results.append({"scenario": "line", **r})
        if modes:
            r = ring_scenario(make_ring(args.rate_bps, slow=args.ring_slow), modes, args, pki, work)
            results.append(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "relay_throughput",
                "command": "python benchmarks/relay_throughput.py " + " ".join(sys.argv[1:]),
                "settings": settings,
                "machine": started,
                "code": code_version(HERE.parent),
                "pid": os.getpid(),
                "scenarios": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
