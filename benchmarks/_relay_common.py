"""The relay benchmark's pure parts: the line of nodes, node configs as TOML, the figures.

No I/O and no clock here, so ``tests/benchmarks/test_relay_common.py`` checks all of it.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    line: Line,
    node: str,
    *,
    home: Path,
    pki: Path,
    peer_addresses: Mapping[str, str],
    link_params: Mapping[str, Any],
    relay: Mapping[str, Any],
    saes: Mapping[str, str],
) -> str:
    """The config of one node of ``line``, as an operator would write it.

    Its peers are its neighbours and, at the two ends, the other end (the direct session
    an end-to-end pool needs); ``peer_addresses`` gives the ones it dials (others are never
    dialled and get a placeholder).  ``link_params``: the ``paired`` driver's parameters
    but ``rate_bps`` and ``seed``, which come from the line.  ``relay``: ``[relay]`` but
    ``topology`` and ``pools``.  ``saes``: SAE id -> its KME.
    """
    first, last = line.nodes[0], line.nodes[-1]
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
    i = line.nodes.index(node)
    for j in (i - 1, i):
        if 0 <= j < line.hops:
            a, b = line.nodes[j], line.nodes[j + 1]
            params = {
                **link_params,
                "rate_bps": line.rates_bps[j],
                "seed": f"relay-bench-link-{j}".ljust(16, "-"),
            }
            lines += _table(
                f'links."{link_id(a, b)}"',
                {"peer": b if a == node else a, "driver": "paired", "params": params},
            )
    for sae, kme in saes.items():
        lines += _table(f'saes."{sae}"', {"kme": kme})
    topology = [[a, b] for a, b in zip(line.nodes, line.nodes[1:], strict=False)]
    lines += _table("relay", {**relay, "topology": topology})
    if node in (first, last):
        lines += _table(f'relay.pools."{last if node == first else first}"', {})
    return "\n".join(lines) + "\n"


def dial_order(line: Line) -> list[str]:
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
