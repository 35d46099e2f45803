"""Where each node is drawn: from coordinates where the operator gave them, else a spring
layout computed once with a fixed seed, so a page looks the same on every reload and on
every node that knows the same topology."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

Point = tuple[float, float]

SPRING_ITERATIONS = 120


def layout(
    nodes: Iterable[str],
    edges: Iterable[tuple[str, str]],
    coordinates: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, Point]:
    """Positions in the unit square ``[0, 1] x [0, 1]`` (y grows downwards), by node id;
    one scale for both axes, so a map keeps its shape.

    ``coordinates`` (x grows east, y grows north, any unit: longitude and latitude in
    degrees do) place the nodes they name; the others are laid out by springs around them.
    The same nodes and edges always give the same positions.
    """
    names = tuple(sorted(set(nodes)))
    pairs = tuple(sorted({tuple(sorted(e)) for e in edges if e[0] in names and e[1] in names}))
    fixed = tuple(sorted((n, (float(x), float(y))) for n, (x, y) in (coordinates or {}).items()))
    return dict(_layout(names, pairs, fixed))


@functools.lru_cache(maxsize=8)
def _layout(
    names: tuple[str, ...],
    pairs: tuple[tuple[str, str], ...],
    fixed: tuple[tuple[str, Point], ...],
) -> tuple[tuple[str, Point], ...]:
    n = len(names)
    if n == 0:
        return ()
    if n == 1:
        return ((names[0], (0.5, 0.5)),)
    index = {name: i for i, name in enumerate(names)}
    given = {name: xy for name, xy in fixed if name in index}
    seed = int.from_bytes(hashlib.sha256("\n".join(names).encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2))
    pinned = np.zeros(n, dtype=bool)
    if given:
        xy = np.array(list(given.values()))
        lo, span = xy.min(axis=0), max(float(np.ptp(xy, axis=0).max()), 1e-9)
        for name, (x, y) in given.items():
            # One scale for both axes (a map keeps its shape); north up: a larger y
            # (latitude) is drawn higher, at a smaller page y.
            pos[index[name]] = ((x - lo[0]) / span, 1.0 - (y - lo[1]) / span)
            pinned[index[name]] = True
    if not pinned.all():
        pos = _springs(pos, pinned, [(index[a], index[b]) for a, b in pairs])
    return tuple(zip(names, _fit(pos), strict=True))


def _springs(pos: np.ndarray, pinned: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Fruchterman-Reingold: every pair repels, every edge pulls; the step cools."""
    n = len(pos)
    k = 1.0 / np.sqrt(n)
    adjacency = np.zeros((n, n))
    for a, b in pairs:
        adjacency[a, b] = adjacency[b, a] = 1.0
    step = 0.1
    for _ in range(SPRING_ITERATIONS):
        delta = pos[:, None, :] - pos[None, :, :]
        distance = np.maximum(np.linalg.norm(delta, axis=2), 1e-3)
        force = k * k / distance**2 - adjacency * distance / k
        move = (delta * force[:, :, None]).sum(axis=1)
        length = np.maximum(np.linalg.norm(move, axis=1), 1e-9)
        move = move / length[:, None] * np.minimum(length, step)[:, None]
        move[pinned] = 0.0
        pos = pos + move
        step *= 0.97
    return pos


def _fit(pos: np.ndarray) -> list[Point]:
    """Into the unit square with one scale for both axes, centred."""
    lo, spans = pos.min(axis=0), np.ptp(pos, axis=0)
    span = max(float(spans.max()), 1e-9)
    scaled = (pos - lo) / span + (1.0 - spans / span) / 2
    return [(round(float(x), 4), round(float(y), 4)) for x, y in scaled]
