"""The simulated network's shape: nodes, QKD links with key rates, controller-eligible nodes.

Built from a topology file (the lab's TOML, ``examples/*.toml``) or from a family and a
size, ``FAMILY:N``, seeded: ``star``, ``ring``, ``bridge`` (two rings joined by one link),
``grid``, ``rgg`` (random geometric: nodes uniform on a square, a link where two are
within ``RGG_RANGE_KM``, each link's rate ``R0 * 10**(-0.02 * km)``) and ``random`` (a
random spanning tree plus extra links).
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import networkx as nx

from cli._topology import load_topology

R0_BPS = 32768.0
"""Key rate of a zero-length link: ``R0 * 10**(-0.02 * km)`` (0.2 dB/km of fibre loss)."""
RGG_RANGE_KM = 30.0
RGG_MEAN_DEGREE = 6.0
"""The square's side is chosen so that a node has this many neighbours on average."""
FAMILY_LINK_KM = 20.0
"""Length of every link of the regular families (star, ring, bridge, grid, random)."""
ELIGIBLE = 3
"""Controller-eligible nodes in a family network: the best connected ones."""
FAMILIES = ("star", "ring", "bridge", "grid", "rgg", "random")
BLOCK_BITS = 65536
"""Key block size of a family's links: a device hands over its key in blocks of 8 KiB.
Every block costs each end a few store calls however large it is (stored, announced,
confirmed), so the block size sets much of a simulation's cost."""
MAX_NODES = 2000


class SimTopologyError(ValueError):
    """A topology argument or file the simulator cannot use; the message says why."""


@dataclasses.dataclass(frozen=True)
class SimLinkSpec:
    a: str
    b: str
    km: float
    rate_bps: float
    block_bits: int

    @property
    def link_id(self) -> str:
        return "~".join(sorted((self.a, self.b)))


@dataclasses.dataclass(frozen=True)
class SimTopology:
    name: str
    nodes: tuple[str, ...]
    links: tuple[SimLinkSpec, ...]
    electors: dict[str, int]
    """Controller-eligible nodes and their priorities."""

    def graph(self) -> nx.Graph[str]:
        g: nx.Graph[str] = nx.Graph()
        g.add_nodes_from(self.nodes)
        for link in self.links:
            g.add_edge(link.a, link.b, rate=link.rate_bps)
        return g

    def neighbours(self, node: str) -> set[str]:
        return {lk.b if lk.a == node else lk.a for lk in self.links if node in (lk.a, lk.b)}


def rate_at(km: float, r0: float = R0_BPS) -> float:
    """A link's key rate at ``km`` of fibre: ``r0 * 10**(-0.02 * km)``."""
    return r0 * 10 ** (-0.02 * km)


def load(spec: str, *, seed: int = 0, block_bits: int | None = None) -> SimTopology:
    """``spec`` is a topology file or ``FAMILY:N``.  ``block_bits`` replaces the links'
    block size (default: the file's, or ``BLOCK_BITS``).  Raises ``SimTopologyError``."""
    family, sep, count = spec.partition(":")
    if sep and family in FAMILIES:
        try:
            n = int(count)
        except ValueError:
            raise SimTopologyError(f"topology {spec!r}: N must be a whole number") from None
        return family_topology(family, n, seed=seed, block_bits=block_bits or BLOCK_BITS)
    path = Path(spec)
    if not path.exists():
        raise SimTopologyError(
            f"topology {spec!r}: no such file, and not FAMILY:N (families: {', '.join(FAMILIES)})"
        )
    return from_file(path, block_bits=block_bits)


def from_file(path: Path, *, block_bits: int | None = None) -> SimTopology:
    """The nodes and links of a lab topology file; a link's rate is its ``rate_bps`` (by
    default ``rate_at`` its distance), its block size the file's unless ``block_bits``."""
    try:
        topo = load_topology(path)
    except Exception as exc:  # the CLI's TopologyError, or its parent
        raise SimTopologyError(str(exc)) from None
    links = []
    for link in topo.links:
        params = {**topo.defaults.params, **link.params}
        km = link.distance_km if link.distance_km is not None else FAMILY_LINK_KM
        rate = float(params.get("rate_bps", rate_at(km)))
        bits = block_bits or int(params.get("block_bits", 8192))
        links.append(SimLinkSpec(link.a, link.b, km, rate, bits))
    electors = {n: s.priority for n, s in topo.nodes.items() if s.controller}
    return SimTopology(topo.name, tuple(topo.nodes), tuple(links), electors)


def family_topology(
    family: str, n: int, *, seed: int = 0, block_bits: int = BLOCK_BITS
) -> SimTopology:
    """A ``family`` network of ``n`` nodes.  Raises ``SimTopologyError``."""
    if family not in FAMILIES:
        raise SimTopologyError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    low = {"star": 2, "ring": 3, "bridge": 6, "grid": 4, "rgg": 2, "random": 2}[family]
    if not low <= n <= MAX_NODES:
        raise SimTopologyError(f"{family}:{n}: N must be between {low} and {MAX_NODES}")
    rng = random.Random(f"{family}:{n}:{seed}")
    names = [f"N{i:0{len(str(n - 1))}d}" for i in range(n)]
    km: dict[tuple[int, int], float] = {}
    if family == "star":
        km = {(0, i): FAMILY_LINK_KM for i in range(1, n)}
    elif family == "ring":
        km = {(i, (i + 1) % n): FAMILY_LINK_KM for i in range(n)}
    elif family == "bridge":
        half = n // 2
        km = {(i, (i + 1) % half): FAMILY_LINK_KM for i in range(half)}
        rest = n - half
        km.update({(half + i, half + (i + 1) % rest): FAMILY_LINK_KM for i in range(rest)})
        km[(0, half)] = FAMILY_LINK_KM
    elif family == "grid":
        cols = math.ceil(math.sqrt(n))
        for i in range(n):
            if (i + 1) % cols and i + 1 < n:
                km[(i, i + 1)] = FAMILY_LINK_KM
            if i + cols < n:
                km[(i, i + cols)] = FAMILY_LINK_KM
    elif family == "random":
        order = list(range(n))
        rng.shuffle(order)
        for k in range(1, n):  # a random tree: each node joins one placed before it
            km[(order[rng.randrange(k)], order[k])] = FAMILY_LINK_KM
        extra = min(n // 2, n * (n - 1) // 2 - (n - 1))
        while extra:
            a, b = rng.sample(range(n), 2)
            if (a, b) not in km and (b, a) not in km:
                km[(a, b)] = FAMILY_LINK_KM
                extra -= 1
    else:
        km = _rgg(n, rng)
    links = tuple(
        SimLinkSpec(names[a], names[b], d, rate_at(d), block_bits) for (a, b), d in km.items()
    )
    degree: dict[str, int] = {name: 0 for name in names}
    for link in links:
        degree[link.a] += 1
        degree[link.b] += 1
    best = sorted(names, key=lambda x: (-degree[x], x))[: min(ELIGIBLE, n)]
    electors = {name: 100 - 10 * i for i, name in enumerate(best)}
    return SimTopology(f"{family}:{n}", tuple(names), links, electors)


def _rgg(n: int, rng: random.Random) -> dict[tuple[int, int], float]:
    """Random geometric: redrawn (up to 100 times) until connected."""
    # Mean degree = (n - 1) * pi * r^2 / side^2, ignoring the square's edges.
    side = RGG_RANGE_KM * math.sqrt(max(n - 1, 1) * math.pi / RGG_MEAN_DEGREE)
    for _ in range(100):
        points = [(rng.uniform(0, side), rng.uniform(0, side)) for _ in range(n)]
        km: dict[tuple[int, int], float] = {}
        for i in range(n):
            for j in range(i + 1, n):
                d = math.dist(points[i], points[j])
                if d <= RGG_RANGE_KM:
                    km[(i, j)] = round(d, 3)
        g: nx.Graph[int] = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_edges_from(km)
        if nx.is_connected(g):
            return km
    raise SimTopologyError(f"rgg:{n}: no connected drawing in 100 tries; try another seed")
