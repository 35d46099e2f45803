"""The relay benchmark's pure parts: the line and the ring of nodes, node configs as TOML,
the figures.

No I/O and no clock here, so ``tests/benchmarks/test_relay_common.py`` checks all of it.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import networkx as nx

RELAY_OVERHEAD_BITS = 512
"""Link key a hop spends beyond the relayed key: the 256-bit confirmation key, padded with
the key, and the hop's 256-bit one-time MAC key."""


def link_bits_per_relayed_bit(block_bits: int) -> float:
    """Link key one hop spends per end-to-end bit: ``(block_bits + 512) / block_bits``."""
    return (block_bits + RELAY_OVERHEAD_BITS) / block_bits


def efficiency(e2e_bps: float, link_bps: float, block_bits: int) -> float:
    """The share of a link's key rate a relay turned into end-to-end key, overhead counted.

    1.0 means every bit of the link went into a hop (pad, confirmation key, MAC key) of a
    relay that completed.
    """
    return e2e_bps * link_bits_per_relayed_bit(block_bits) / link_bps


def node_ids(count: int) -> list[str]:
    """``KME_A``, ``KME_B``, ... in line order: ids rise along the line, so the first node
    (the lowest id) is the end that starts the relays."""
    if not 2 <= count <= len(string.ascii_uppercase):
        raise ValueError(f"a line of {count} nodes")
    return [f"KME_{c}" for c in string.ascii_uppercase[:count]]


def link_id(a: str, b: str) -> str:
    return "~".join(sorted((a, b)))


@dataclass(frozen=True)
class Line:
    """A line of nodes with one QKD link between neighbours and each link's rate."""

    nodes: tuple[str, ...]
    rates_bps: tuple[float, ...]
    """``rates_bps[i]``: the link from ``nodes[i]`` to ``nodes[i + 1]``."""

    @property
    def hops(self) -> int:
        return len(self.nodes) - 1

    @property
    def links(self) -> list[str]:
        return [link_id(a, b) for a, b in zip(self.nodes, self.nodes[1:], strict=False)]

    @property
    def e2e_link(self) -> str:
        return link_id(self.nodes[0], self.nodes[-1])

    @property
    def bottleneck(self) -> int:
        """Index of the slowest link (the first of equals)."""
        return min(range(self.hops), key=lambda i: (self.rates_bps[i], i))

    def neighbours(self, node: str) -> list[str]:
        i = self.nodes.index(node)
        return [self.nodes[j] for j in (i - 1, i + 1) if 0 <= j < len(self.nodes)]

    @property
    def ends(self) -> tuple[str, str]:
        return self.nodes[0], self.nodes[-1]

    @property
    def edges(self) -> list[tuple[str, str, float]]:
        """Each QKD link: its two nodes and its key rate."""
        return [
            (a, b, r) for a, b, r in zip(self.nodes, self.nodes[1:], self.rates_bps, strict=False)
        ]


def make_line(hops: int, rate_bps: float, *, bottleneck: float = 1.0) -> Line:
    """``hops`` links at ``rate_bps``; with ``bottleneck`` < 1 the middle link (the later of
    two middles) runs at ``bottleneck * rate_bps``."""
    if hops < 1:
        raise ValueError("a line needs at least one link")
    if not 0 < bottleneck <= 1:
        raise ValueError("bottleneck is a factor in (0, 1]")
    rates = [rate_bps] * hops
    if bottleneck < 1:
        rates[hops // 2] = rate_bps * bottleneck
    return Line(tuple(node_ids(hops + 1)), tuple(rates))


@dataclass(frozen=True)
class Ring:
    """A ring of nodes, one QKD link between ring neighbours, and one end-to-end pool."""

    nodes: tuple[str, ...]
    """In ring order."""
    rates_bps: tuple[float, ...]
    """``rates_bps[i]``: the link from ``nodes[i]`` to ``nodes[i + 1]`` (the last one back
    to ``nodes[0]``)."""
    ends: tuple[str, str]
    """The end-to-end pool's two nodes, the lower id first."""

    @property
    def edges(self) -> list[tuple[str, str, float]]:
        n = len(self.nodes)
        return [(self.nodes[i], self.nodes[(i + 1) % n], self.rates_bps[i]) for i in range(n)]

    @property
    def links(self) -> list[str]:
        return [link_id(a, b) for a, b, _ in self.edges]

    @property
    def e2e_link(self) -> str:
        return link_id(*self.ends)

    def neighbours(self, node: str) -> list[str]:
        i, n = self.nodes.index(node), len(self.nodes)
        return [self.nodes[(i - 1) % n], self.nodes[(i + 1) % n]]

    def sides(self) -> list[tuple[str, ...]]:
        """The two paths between the ends, one each way round (node-disjoint)."""
        n = len(self.nodes)
        i, j = (self.nodes.index(e) for e in self.ends)
        one = tuple(self.nodes[(i + k) % n] for k in range((j - i) % n + 1))
        other = tuple(self.nodes[(i - k) % n] for k in range((i - j) % n + 1))
        return [one, other]

    def rate_of(self, a: str, b: str) -> float:
        return next(r for x, y, r in self.edges if {x, y} == {a, b})

    def bottleneck_bps(self, path: Sequence[str]) -> float:
        """The key rate of the slowest link on ``path``."""
        return min(self.rate_of(a, b) for a, b in zip(path, path[1:], strict=False))


def make_ring(rate_bps: float, *, slow: float = 0.5) -> Ring:
    """A-B-C-D-A with the pool A~C: the side A-B-C at ``rate_bps``, the side A-D-C at
    ``slow * rate_bps``."""
    if not 0 < slow <= 1:
        raise ValueError("slow is a factor in (0, 1]")
    nodes = tuple(node_ids(4))
    return Ring(nodes, (rate_bps, rate_bps, slow * rate_bps, slow * rate_bps), (nodes[0], nodes[2]))


def max_flow_bps(edges: Sequence[tuple[str, str, float]], source: str, sink: str) -> float:
    """The max-flow between ``source`` and ``sink`` with each link's key rate as its
    capacity (each way: an undirected link) -- networkx ``maximum_flow_value``."""
    graph: nx.Graph[str] = nx.Graph()
    for a, b, r in edges:
        graph.add_edge(a, b, capacity=r)
    return float(nx.maximum_flow_value(graph, source, sink, capacity="capacity"))


class Net(Protocol):
    """What ``node_toml`` needs of a line or a ring."""

    @property
    def nodes(self) -> tuple[str, ...]: ...

    @property
    def ends(self) -> tuple[str, str]: ...

    @property
    def edges(self) -> list[tuple[str, str, float]]: ...

    def neighbours(self, node: str) -> list[str]: ...


def _toml(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value)


def _table(name: str, values: Mapping[str, Any]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items())]


def node_toml(
    line: Net,
    node: str,
    *,
    home: Path,
    pki: Path,
    peer_addresses: Mapping[str, str],
    link_params: Mapping[str, Any],
    relay: Mapping[str, Any],
    saes: Mapping[str, str],
    pool: Mapping[str, Any] | None = None,
) -> str:
    """The config of one node of ``line`` (a line or a ring), as an operator would write it.

    Its peers are its neighbours and, at the two ends, the other end (the direct session
    an end-to-end pool needs); ``peer_addresses`` gives the ones it dials (others are never
    dialled and get a placeholder).  ``link_params``: the ``paired`` driver's parameters
    but ``rate_bps`` and ``seed``, which come from the line.  ``relay``: ``[relay]`` but
    ``topology`` and ``pools``.  ``saes``: SAE id -> its KME.  ``pool``: the end-to-end
    pool's settings at both ends (``paths``, ``spread``).
    """
    first, last = line.ends
    peers = line.neighbours(node)
    if node in (first, last):
        peers.append(last if node == first else first)
    lines = [
        *_table(
            "node",
            {
                "id": node,
                "state_dir": home / "state",
                "master_key_file": home / "master.key",
            },
        ),
        *_table(
            "tls",
            {
                "ca": pki / "ca.pem",
                "cert": pki / "nodes" / f"{node}.pem",
                "key": pki / "nodes" / f"{node}.key",
            },
        ),
        *_table(
            "listen",
            {"peer": "127.0.0.1:0", "admin_socket": home / "admin.sock", "api": "127.0.0.1:0"},
        ),
    ]
    for peer in peers:
        lines += _table(f'peers."{peer}"', {"address": peer_addresses.get(peer, "127.0.0.1:1")})
    for j, (a, b, link_rate) in enumerate(line.edges):
        if node in (a, b):
            params = {
                **link_params,
                "rate_bps": link_rate,
                "seed": f"relay-bench-link-{j}".ljust(16, "-"),
            }
            lines += _table(
                f'links."{link_id(a, b)}"',
                {"peer": b if a == node else a, "driver": "paired", "params": params},
            )
    for sae, kme in saes.items():
        lines += _table(f'saes."{sae}"', {"kme": kme})
    topology = [[a, b] for a, b, _ in line.edges]
    lines += _table("relay", {**relay, "topology": topology})
    if node in (first, last):
        lines += _table(f'relay.pools."{last if node == first else first}"', dict(pool or {}))
    return "\n".join(lines) + "\n"


def dial_order(line: Net) -> list[str]:
    """Start order: a node dials the peers with higher ids, so those must listen first."""
    return sorted(line.nodes, reverse=True)


def rate(before: float, after: float, seconds: float) -> float:
    """Per second over a window."""
    return (after - before) / seconds if seconds > 0 else 0.0


def latency_bound_bps(in_flight: int, block_bits: int, mean_latency_s: float) -> float:
    """The end-to-end rate ``in_flight`` relays of ``mean_latency_s`` each can carry at most
    (Little's law): what the relay pipeline allows, whatever the links deliver."""
    return in_flight * block_bits / mean_latency_s if mean_latency_s > 0 else float("inf")


def failure_kind(message: str) -> str:
    """A relay record's error, reduced to a kind for counting."""
    if "owned ready bits" in message:
        return "insufficient-key"
    if "did not answer" in message:
        return "peer-timeout"
    if "fails authentication" in message or "confirmation does not match" in message:
        return "bad-tag"
    return "other"


def percentiles(values: Sequence[float], qs: Sequence[float] = (0.5, 0.9, 0.99)) -> list[float]:
    """Nearest-rank percentiles; empty input gives an empty list."""
    if not values:
        return []
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] for q in qs]
