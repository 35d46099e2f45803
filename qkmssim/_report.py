"""What a run reports: per pair, per fault and for the whole network.

Definitions (also in docs/simulator.md):

- a pair's rate: key bits its slave SAE fetched (``dec_keys``, value checked against the
  master's) over the run's virtual seconds;
- fibre ceiling: the sum of the link key rates over the mean hop count of the demand
  pairs' shortest routes (each delivered bit costs at least that many link bits);
- link key spent: pads and MAC keys of every relay hop (the relay agents' own count) plus
  the key delivered straight over a QKD link (neighbour pairs); fibre utilisation is that
  over the key the links produced while both their ends were up;
- Jain's index over the pairs' rates, ``(sum x)^2 / (n sum x^2)``; the worst pair's rate
  over an equal share (the mean rate), and over its max-min fair rate when an allocator
  is there (``maxmin_fair_rates``);
- with a warm-up (``SimSettings.warmup_s``, ``--warmup``), the pairs' keys, bits and
  rates, the link key produced and spent and every figure made of them count only over
  the window from the warm-up to the end of the demand (``WindowMark``);
- time to reroute (per link or node fault): for each demand pair whose last relay before
  the fault crossed the failed link or node, the time from the fault to its first relay
  confirmed on a route around it; a controller crash reports the time to the next leader.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import resource
import statistics
import sys
from typing import TYPE_CHECKING, Any

import msgspec
import networkx as nx

from qkmsd import sharing

if TYPE_CHECKING:
    from ._engine import Network, RelaySeen
    from ._topology import SimTopology


@dataclasses.dataclass(frozen=True)
class WindowMark:
    """What the network had counted at one moment of a run: each pair's keys and bits
    delivered, each link end's key received, the link key the relays had spent."""

    delivered: dict[tuple[str, str], tuple[int, int]]
    link_bits: dict[str, dict[str, int]]
    relay_spent: int

    @classmethod
    def take(cls, net: Network) -> WindowMark:
        return cls(
            delivered={p: (t.keys_delivered, t.bits_delivered) for p, t in net.tallies.items()},
            link_bits={link: dict(ends) for link, ends in net.link_counts.items()},
            relay_spent=_relay_spent(net),
        )


def _relay_spent(net: Network) -> int:
    return sum(
        node.relay.statistics().link_bits_spent
        for sim in net.nodes.values()
        for node in sim.incarnations
        if node.relay is not None
    )


class PairReport(msgspec.Struct):
    master: str
    slave: str
    hops: int
    keys_delivered: int
    bits_delivered: int
    rate_bps: float
    requests: int
    refused: int
    timed_out: int
    fetch_failed: int
    relays_done: int
    """Relays confirmed into the pair's end-to-end pool (shared by both directions)."""
    relays_failed: int
    route: list[str] = []
    """The path most of the master's confirmed relays to the slave took after the warm-up
    (the master's first route to it: what the controller's budget counts); empty if none."""


class FaultReport(msgspec.Struct):
    fault: str
    at_s: float
    target: str
    affected_pairs: int = 0
    reroute_s_max: float | None = None
    reroute_s_median: float | None = None
    not_rerouted: int = 0
    """Affected pairs with no relay around the fault before the run ended."""
    recovered_s_max: float | None = None
    """The latest, over the affected pairs, of the first relay confirmed after the fault on
    any route (through the link or node again once it is back)."""
    not_recovered: int = 0
    new_leader_s: float | None = None


class Report(msgspec.Struct):
    topology: str
    nodes: int
    links: int
    pairs: int
    seconds: float
    seed: int
    demand: str
    keys_delivered: int
    bits_delivered: int
    delivered_bps: float
    relays_done: int
    relays_failed: int
    relays_unresolved: int
    """Relays a running node started that had neither completed nor failed at the end."""
    relays_cut_by_crash: int
    """Relays under way at a node when it crashed (atomic: see the ledger)."""
    link_bits_produced: int
    link_bits_spent: int
    link_bits_per_delivered_bit: float | None
    fibre_ceiling_bps: float
    delivered_over_ceiling: float
    fibre_utilisation: float | None
    jain_index: float | None
    worst_over_equal_share: float | None
    worst_over_maxmin: float | None
    maxmin_note: str
    served_twice: int
    value_reused: int
    two_values: int
    controller_changes: int
    leaders: list[tuple[float, str | None]]
    faults: list[FaultReport]
    per_pair: list[PairReport]
    virtual_s: float
    """Virtual seconds run: ``seconds`` and the drain after them."""
    wall_s: float
    cpu_s: float
    node_seconds_per_wall_s: float
    node_seconds_per_cpu_s: float
    """Speed on this process's CPU time: what the run costs on a machine it has alone."""
    peak_rss_mib: float
    rss_per_node_kib: float
    warmup_s: float = 0.0
    """Pairs' keys and rates, link key produced and spent and the figures made of them
    count from here to the end of the demand (``seconds - warmup_s`` s); 0: all of it."""


def maxmin_fair_rates(
    topo: SimTopology, routes: dict[tuple[str, str], tuple[str, ...]]
) -> dict[tuple[str, str], float] | None:
    """Each pair's max-min fair rate on ``routes`` (its route in use) and the link rates,
    from ``qkmsd.sharing`` (unbounded demand, equal weights, the relay's per-hop overhead
    for 64 kbit keys is left out: rates are in link bits); None without routes."""
    pairs = [
        sharing.Pair(src, dst, (tuple(path),))
        for (src, dst), path in routes.items()
        if len(path) >= 2
    ]
    if not pairs:
        return None
    links = {sharing.link_id(lk.a, lk.b): lk.rate_bps for lk in topo.links}
    return dict(sharing.allocate(links, pairs, policy="max-min").rates)


def build_report(net: Network) -> Report:
    topo, s = net.topo, net.settings
    window = _window(net)
    span = s.seconds - s.warmup_s if window else s.seconds  # what the rates are over
    graph = topo.graph()
    hops = {p: int(nx.shortest_path_length(graph, p[0], p[1])) for p in net.pairs}
    relays = net.relays_seen()
    # Relays by (unordered) pair.
    done: dict[tuple[str, str], int] = {}
    failed: dict[tuple[str, str], int] = {}
    unresolved = cut = 0
    for seen in relays:
        if seen.state == "confirmed":
            done[seen.pair] = done.get(seen.pair, 0) + 1
        elif seen.state == "failed":
            failed[seen.pair] = failed.get(seen.pair, 0) + 1
        elif seen.node_alive:
            unresolved += 1
        else:
            cut += 1
    used = _paths_used(relays, s.warmup_s)
    per_pair = []
    for pair in net.pairs:
        t = net.tallies[pair]
        key = (min(pair), max(pair))
        keys, bits = t.keys_delivered, t.bits_delivered
        if window:
            (keys0, bits0), (keys1, bits1) = (mark.delivered[pair] for mark in window)
            keys, bits = keys1 - keys0, bits1 - bits0
        per_pair.append(
            PairReport(
                master=pair[0],
                slave=pair[1],
                hops=hops[pair],
                keys_delivered=keys,
                bits_delivered=bits,
                rate_bps=bits / span,
                requests=t.requests,
                refused=t.refused,
                timed_out=t.timed_out,
                fetch_failed=t.fetch_failed,
                relays_done=done.get(key, 0),
                relays_failed=failed.get(key, 0),
                route=list(used.get(pair, ())),
            )
        )
    rates = [p.rate_bps for p in per_pair]
    total_bits = sum(p.bits_delivered for p in per_pair)
    delivered_bps = total_bits / span
    mean_hops = statistics.fmean(hops.values()) if hops else 1.0
    ceiling = sum(lk.rate_bps for lk in topo.links) / max(mean_hops, 1.0)
    if window:
        start, end = window
        produced = sum(
            min(ends[end_] - start.link_bits[link][end_] for end_ in ends)
            for link, ends in end.link_bits.items()
        )
        relay_spent = end.relay_spent - start.relay_spent
    else:
        produced = sum(min(c.values()) for c in net.link_counts.values())
        relay_spent = _relay_spent(net)
    spent = relay_spent + sum(p.bits_delivered for p in per_pair if p.hops == 1)
    jain = (sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates))) if any(rates) else None
    mean_rate = statistics.fmean(rates) if rates else 0.0
    worst_equal = min(rates) / mean_rate if rates and mean_rate else None
    routes = _routes_in_use(net, relays)
    fair = maxmin_fair_rates(topo, routes)
    worst_maxmin = None
    note = "qkmsd.sharing (the max-min allocator) is not there yet"
    if fair is not None:
        ratios = [
            p.rate_bps / fair[(p.master, p.slave)]
            for p in per_pair
            if fair.get((p.master, p.slave))
        ]
        worst_maxmin = min(ratios) if ratios else None
        note = "qkmsd.sharing max-min on the routes in use"
    leaders = [(round(t, 3), who) for t, who in net.leaders]
    held = [who for _, who in net.leaders if who is not None]
    changes = sum(1 for a, b in itertools.pairwise(held) if a != b)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        rss_kib //= 1024
    virtual = net.virtual_s
    return Report(
        topology=topo.name,
        nodes=len(topo.nodes),
        links=len(topo.links),
        pairs=len(net.pairs),
        seconds=s.seconds,
        seed=s.seed,
        demand=s.demand.kind + (f":{s.demand.bps:g}" if s.demand.kind == "paced" else ""),
        keys_delivered=sum(p.keys_delivered for p in per_pair),
        bits_delivered=total_bits,
        delivered_bps=round(delivered_bps, 3),
        relays_done=sum(done.values()),
        relays_failed=sum(failed.values()),
        relays_unresolved=unresolved,
        relays_cut_by_crash=cut,
        link_bits_produced=produced,
        link_bits_spent=spent,
        link_bits_per_delivered_bit=round(spent / total_bits, 4) if total_bits else None,
        fibre_ceiling_bps=round(ceiling, 3),
        delivered_over_ceiling=round(delivered_bps / ceiling, 4) if ceiling else 0.0,
        fibre_utilisation=round(spent / produced, 4) if produced else None,
        jain_index=None if jain is None else round(jain, 4),
        worst_over_equal_share=None if worst_equal is None else round(worst_equal, 4),
        worst_over_maxmin=None if worst_maxmin is None else round(worst_maxmin, 4),
        maxmin_note=note,
        served_twice=net.ledger.served_twice,
        value_reused=net.ledger.value_reused,
        two_values=net.ledger.two_values,
        controller_changes=changes,
        leaders=leaders,
        faults=_faults(net, relays),
        per_pair=per_pair,
        virtual_s=round(virtual, 3),
        wall_s=round(net.wall_s, 3),
        cpu_s=round(net.cpu_s, 3),
        node_seconds_per_cpu_s=round(len(topo.nodes) * virtual / net.cpu_s, 1)
        if net.cpu_s
        else 0.0,
        node_seconds_per_wall_s=round(len(topo.nodes) * virtual / net.wall_s, 1)
        if net.wall_s
        else 0.0,
        peak_rss_mib=round(rss_kib / 1024, 1),
        rss_per_node_kib=round(rss_kib / max(len(topo.nodes), 1), 1),
        warmup_s=s.warmup_s if window else 0.0,
    )


def _window(net: Network) -> tuple[WindowMark, WindowMark] | None:
    """The marks at the warm-up and at the end of the demand, if the run has a warm-up."""
    if net.settings.warmup_s and len(net.window_marks) == 2:
        return net.window_marks[0], net.window_marks[1]
    return None


def _routes_in_use(net: Network, relays: list[RelaySeen]) -> dict[tuple[str, str], tuple[str, ...]]:
    """Each demand pair's route: its last confirmed relay's path (or a shortest path)."""
    last: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}
    for seen in relays:
        if seen.state == "confirmed" and seen.ended_at is not None:
            if seen.pair not in last or last[seen.pair][0] < seen.ended_at:
                last[seen.pair] = (seen.ended_at, seen.path)
    graph = net.topo.graph()
    routes = {}
    for a, b in net.pairs:
        found = last.get((min(a, b), max(a, b)))
        path = found[1] if found else tuple(nx.shortest_path(graph, a, b))
        routes[(a, b)] = path if path[0] == a else tuple(reversed(path))
    return routes


def _paths_used(relays: list[RelaySeen], since: float) -> dict[tuple[str, str], tuple[str, ...]]:
    """Per ordered pair (source, destination), the path of most of the source's confirmed
    relays started at ``since`` or later."""
    counts: dict[tuple[str, str], collections.Counter[tuple[str, ...]]] = {}
    for seen in relays:
        if seen.state == "confirmed" and seen.started_at >= since and len(seen.path) >= 2:
            counts.setdefault((seen.path[0], seen.path[-1]), collections.Counter())[seen.path] += 1
    return {pair: c.most_common(1)[0][0] for pair, c in counts.items()}


def _crosses(path: tuple[str, ...], target: tuple[str, ...], node: bool) -> bool:
    if node:
        return target[0] in path[1:-1]
    a, b = target
    return any({x, y} == {a, b} for x, y in itertools.pairwise(path))


def _faults(net: Network, relays: list[RelaySeen]) -> list[FaultReport]:
    out = []
    for fault, at, detail in net.fault_log:
        if fault.kind == "link-up":
            continue
        report = FaultReport(
            fault=fault.label(), at_s=round(at, 3), target=detail or "-".join(fault.target)
        )
        if fault.kind == "controller-crash":
            after = [t for t, who in net.leaders if t > at and who is not None and who != detail]
            report.new_leader_s = round(after[0] - at, 3) if after else None
        if fault.kind == "controller-crash" and not detail:
            out.append(report)
            continue
        node = fault.kind in ("node-crash", "node-silent", "controller-crash")
        target = (detail,) if node else fault.target
        before: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}
        for seen in relays:
            if seen.state != "confirmed" or seen.ended_at is None or seen.ended_at > at:
                continue
            if seen.pair not in before or before[seen.pair][0] < seen.ended_at:
                before[seen.pair] = (seen.ended_at, seen.path)
        affected = {
            pair
            for pair, (_, path) in before.items()
            if _crosses(path, target, node) and not (node and target[0] in pair)
        }
        times = []
        recovered = []
        for pair in affected:
            again = min(
                (
                    seen.ended_at
                    for seen in relays
                    if seen.pair == pair
                    and seen.state == "confirmed"
                    and seen.ended_at is not None
                    and seen.started_at >= at
                ),
                default=None,
            )
            if again is not None:
                recovered.append(again - at)
            first = min(
                (
                    seen.ended_at
                    for seen in relays
                    if seen.pair == pair
                    and seen.state == "confirmed"
                    and seen.ended_at is not None
                    and seen.started_at >= at
                    and not _crosses(seen.path, target, node)
                ),
                default=None,
            )
            if first is not None:
                times.append(first - at)
        report.affected_pairs = len(affected)
        report.not_rerouted = len(affected) - len(times)
        report.not_recovered = len(affected) - len(recovered)
        if recovered:
            report.recovered_s_max = round(max(recovered), 3)
        if times:
            report.reroute_s_max = round(max(times), 3)
            report.reroute_s_median = round(statistics.median(times), 3)
        out.append(report)
    return out


def render(report: Report, *, pairs_shown: int = 20) -> str:
    """The report as text: network figures, faults, then the pairs (worst first)."""
    r = report
    timeline = ", ".join(f"{who or '-'}@{t:g}" for t, who in r.leaders) or "none"
    lines = [
        f"topology {r.topology}: {r.nodes} nodes, {r.links} links, {r.pairs} demand pairs "
        f"({r.demand}), {r.seconds:g} virtual s, seed {r.seed}",
    ]
    if r.warmup_s:
        lines.append(
            f"window                from {r.warmup_s:g} s to {r.seconds:g} s (keys, rates and "
            "link key below count in it only)"
        )
    lines += [
        f"keys delivered        {r.keys_delivered} ({r.bits_delivered} bits, "
        f"{r.delivered_bps:.1f} b/s)",
        f"relays                {r.relays_done} done, {r.relays_failed} failed, "
        f"{r.relays_unresolved} unresolved, {r.relays_cut_by_crash} cut by a crash",
        f"keys served twice     {r.served_twice}   one value under two ids {r.value_reused}"
        f"   two values for one id {r.two_values}",
        f"link key              {r.link_bits_produced} bits produced, {r.link_bits_spent} spent"
        f" ({_f(r.link_bits_per_delivered_bit)} per delivered bit)",
        f"delivered / ceiling   {r.delivered_over_ceiling:.4f} "
        f"(ceiling {r.fibre_ceiling_bps:.1f} b/s)",
        f"fibre utilisation     {_f(r.fibre_utilisation)}",
        f"Jain's index          {_f(r.jain_index)}",
        f"worst / equal share   {_f(r.worst_over_equal_share)}",
        f"worst / max-min fair  {_f(r.worst_over_maxmin)} ({r.maxmin_note})",
        f"controller changes    {r.controller_changes} (leaders: {timeline})",
    ]
    for f in r.faults:
        line = f"fault {f.fault} ({f.target}) at {f.at_s:g} s:"
        if f.new_leader_s is not None:
            line += f" new leader after {f.new_leader_s:g} s;"
        line += (
            f" {f.affected_pairs} pairs affected, reroute max {_f(f.reroute_s_max)} s,"
            f" median {_f(f.reroute_s_median)} s, {f.not_rerouted} not rerouted;"
            f" recovered (any route) max {_f(f.recovered_s_max)} s,"
            f" {f.not_recovered} not recovered"
        )
        lines.append(line)
    lines.append(
        f"speed                 {r.node_seconds_per_wall_s:g} node-s per wall s, "
        f"{r.node_seconds_per_cpu_s:g} per CPU s ({r.virtual_s:g} virtual s in {r.wall_s:g} "
        f"wall s, {r.cpu_s:g} CPU s), peak RSS {r.peak_rss_mib:g} MiB "
        f"({r.rss_per_node_kib:g} KiB per node)"
    )
    lines.append("")
    lines.append(
        f"{'pair':<32} {'hops':>4} {'keys':>7} {'b/s':>9} "
        + f"{'refused':>7} {'relays':>7} {'failed':>6}"
    )
    for p in sorted(r.per_pair, key=lambda p: p.rate_bps)[:pairs_shown]:
        lines.append(
            f"{p.master + '>' + p.slave:<32} {p.hops:>4} {p.keys_delivered:>7} "
            f"{p.rate_bps:>9.1f} {p.refused:>7} {p.relays_done:>7} {p.relays_failed:>6}"
        )
    if len(r.per_pair) > pairs_shown:
        lines.append(f"... {len(r.per_pair) - pairs_shown} more pairs (--json for all)")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def to_json(report: Report) -> bytes:
    return msgspec.json.encode(report)


def as_dict(report: Report) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(report)
    return result


__all__ = ["FaultReport", "PairReport", "Report", "build_report", "maxmin_fair_rates", "render"]
_ = dataclasses
