"""Cascade error correction, vectorised over all blocks of a pass.

Theory of operation.  Each pass shuffles the key with a permutation both
parties know (from the shared generator) and cuts it into blocks; Alice
discloses every block's parity.  A block whose parity differs at Bob holds
an odd number of errors; a binary search (Alice discloses the parity of the
left half, Bob compares) finds one of them.  Correcting a bit flips the
parity of the blocks holding it in every earlier pass, which sends those
back to the search: the cascade.

Everything a pass does to many blocks is done at once with numpy: parities
come from prefix XORs, and the binary searches of all odd blocks of a pass
advance one level per round trip, in parallel.

Variants (Martinez-Mateo, Pacher, Peev, Ciurana and Martin, "Demystifying
the information reconciliation protocol Cascade", QIC 15, 453 (2015)):

``original``
    Brassard–Salvail: k1 = ceil(0.73 / Q), k_{i+1} = 2 k_i, four passes.
``optimised``
    Block sizes are powers of two, k1 = 2^ceil(log2(1/Q)), k_{i+1} = 4 k_i
    up to n / 2, then more passes at n / 2 (16 in all); every sub-block parity
    ever disclosed or implied (the right half is the block parity minus the
    left half) is kept and reused: a search starts from the smallest known
    odd sub-block and never asks twice for the same parity.

The parity of every bit Alice discloses is counted in ``disclosed_bits``;
``messages`` counts the round trips.  The implementation runs both parties in
one process; Alice's bits are read only through the counted parity oracle.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._analytic import h2

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

Variant = Literal["original", "optimised"]
VARIANTS: tuple[Variant, ...] = ("original", "optimised")
_MIN_QBER = 1e-4


@dataclasses.dataclass(frozen=True, slots=True)
class CascadeResult:
    """Bob's corrected bits and what it cost.  ``corrected`` is secret (not in ``repr``)."""

    corrected: U8 = dataclasses.field(repr=False)
    disclosed_bits: int
    messages: int
    passes: int
    errors_corrected: int

    def efficiency(self, qber: float) -> float:
        """f = disclosed bits / (n h(qber)); ``inf`` when n h(qber) is 0."""
        ideal = self.corrected.size * h2(qber)
        return self.disclosed_bits / ideal if ideal > 0 else math.inf


def block_sizes(n: int, qber: float, variant: Variant) -> list[int]:
    """The block size of every pass for a key of ``n`` bits at estimated ``qber``."""
    q = max(qber, _MIN_QBER)
    if variant == "original":
        k1 = max(1, math.ceil(0.73 / q))
        return [min(k1 << i, max(1, n)) for i in range(4)]
    cap = max(1, 1 << max(0, math.floor(math.log2(max(1, n))) - 1))
    k = min(1 << max(0, math.ceil(math.log2(1.0 / q))), cap)
    sizes = []
    for _ in range(16):
        sizes.append(k)
        k = min(4 * k, cap)
    return sizes


def _prefix_xor(bits: U8) -> npt.NDArray[np.int8]:
    out = np.zeros(bits.size + 1, dtype=np.int8)
    np.bitwise_xor.accumulate(bits.view(np.int8), out=out[1:])
    return out


class _Pass:
    """One pass: its permutation, block size and what is known of Alice's parities.

    Node i of level L is the aligned range [i 2^L, (i+1) 2^L) of the permuted
    key (for the original variant only the blocks, of any size, are nodes).
    ``known[off[L] + i]`` is Alice's parity of the node (-1 if undisclosed) and
    ``diff`` Alice's parity XOR Bob's current one (valid where known).  Bob's
    parity of a range is his parity when the pass began corrected by his own
    flips since (``flips``, sorted permuted positions): no O(n) work per search.
    """

    def __init__(self, perm: I64, k: int, alice: U8, bob: U8, aligned: bool) -> None:
        n = perm.size
        self.perm = perm
        self.inv = np.empty_like(perm)
        self.inv[perm] = np.arange(n, dtype=np.int64)
        self.k = k
        self.n = n
        self.aligned = aligned
        self.top = int(math.log2(k)) if aligned else 0
        self.alice_cx = _prefix_xor(alice[perm])
        self.bob_cx = _prefix_xor(bob[perm])
        self.flips = np.zeros(0, dtype=np.int64)
        levels = range(self.top + 1) if aligned else [0]
        sizes = [-(-n >> lv) if aligned else -(-n // k) for lv in levels]
        self.off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.levels = list(levels)
        self.known = np.full(int(self.off[-1]), -1, dtype=np.int8)
        self.diff = np.zeros(int(self.off[-1]), dtype=np.int8)
        ids = np.arange(sizes[-1], dtype=np.int64)
        lo, hi = self.node_range(self.top, ids)
        a_par = self.alice_parity(lo, hi)
        self.known[self.off[self.top] :] = a_par
        self.diff[self.off[self.top] :] = a_par ^ self.bob_parity(lo, hi)
        self.n_blocks = int(ids.size)

    def node_ids(self, pos: I64, level: int) -> I64:
        return pos >> level if self.aligned else pos // self.k

    def node_range(self, level: int, ids: I64) -> tuple[I64, I64]:
        size = (1 << level) if self.aligned else self.k
        lo = ids * size
        return lo, np.minimum(lo + size, self.n)

    def alice_parity(self, lo: I64, hi: I64) -> npt.NDArray[np.int8]:
        """The oracle: Alice's parities (the caller counts what it discloses)."""
        return self.alice_cx[hi] ^ self.alice_cx[lo]

    def bob_parity(self, lo: I64, hi: I64) -> npt.NDArray[np.int8]:
        flipped = np.searchsorted(self.flips, hi) - np.searchsorted(self.flips, lo)
        return self.bob_cx[hi] ^ self.bob_cx[lo] ^ (flipped & 1).astype(np.int8)

    def record_flips(self, flipped: I64) -> None:
        pos = self.inv[flipped]
        self.flips = np.sort(np.concatenate([self.flips, pos]))
        for level in self.levels:
            np.bitwise_xor.at(self.diff, self.off[level] + self.node_ids(pos, level), 1)

    def odd_nodes(self, flipped: I64 | None) -> tuple[I64, I64]:
        """(levels, ids) of the smallest known odd nodes on the paths of ``flipped``.

        ``None`` stands for "look at every block" (a pass just began).
        """
        if flipped is None:
            ids = np.flatnonzero(self.diff[self.off[self.top] :]).astype(np.int64)
            return np.full(ids.size, self.top, dtype=np.int64), ids
        pos = np.unique(self.inv[flipped])
        out_lv: list[I64] = []
        out_id: list[I64] = []
        covered = np.zeros(pos.size, dtype=np.bool_)
        for level in self.levels:
            ids = self.node_ids(pos, level)
            flat = self.off[level] + ids
            odd = (self.known[flat] >= 0) & (self.diff[flat] == 1) & ~covered
            if odd.any():
                found = np.unique(ids[odd])
                out_lv.append(np.full(found.size, level, dtype=np.int64))
                out_id.append(found)
                # A flipped bit under an odd node found here needs no bigger node.
                covered |= np.isin(ids, found)
        if not out_lv:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(out_lv), np.concatenate(out_id)


def _search(p: _Pass, level: I64, node: I64, stats: list[int]) -> I64:
    """Binary-search all the odd nodes at once; return the error positions (permuted)."""
    lo, hi = p.node_range(0, node) if not p.aligned else (node << level, node << level)
    if p.aligned:
        hi = np.minimum((node + 1) << level, p.n)
    else:
        lo, hi = p.node_range(0, node)
    level = level.copy()
    node = node.copy()
    while True:
        if not p.aligned:
            active = np.flatnonzero(hi - lo > 1)
            if active.size == 0:
                return lo
            lo_a, hi_a = lo[active], hi[active]
            mid = lo_a + (hi_a - lo_a + 1) // 2
            stats[0] += int(active.size)
            stats[1] += 1
            left_odd = (p.alice_parity(lo_a, mid) ^ p.bob_parity(lo_a, mid)) == 1
            hi[active] = np.where(left_odd, mid, hi_a)
            lo[active] = np.where(left_odd, lo_a, mid)
            continue
        active = np.flatnonzero(level > 0)
        if active.size == 0:
            return lo
        lo_a, hi_a, lv, nd = lo[active], hi[active], level[active] - 1, node[active]
        mid = lo_a + (np.int64(1) << lv)
        # A truncated last block may have no right half: the error is on the left.
        asked = mid < hi_a
        go_left = ~asked
        sel = np.flatnonzero(asked)
        if sel.size:
            lo_s, mid_s, hi_s = lo_a[sel], mid[sel], hi_a[sel]
            left = p.off[lv[sel]] + 2 * nd[sel]
            a_left = p.known[left]
            unknown = a_left < 0
            if unknown.any():
                # Alice discloses the parities not already known (sub-block reuse).
                stats[0] += int(unknown.sum())
                stats[1] += 1
                a_left = np.where(unknown, p.alice_parity(lo_s, mid_s), a_left)
            b_left = p.bob_parity(lo_s, mid_s)
            a_right = p.known[p.off[lv[sel] + 1] + nd[sel]] ^ a_left
            b_right = p.bob_parity(mid_s, hi_s)
            p.known[left] = a_left
            p.diff[left] = a_left ^ b_left
            p.known[left + 1] = a_right
            p.diff[left + 1] = a_right ^ b_right
            go_left[sel] = (a_left ^ b_left) == 1
        hi[active] = np.where(go_left, np.minimum(mid, hi_a), hi_a)
        lo[active] = np.where(go_left, lo_a, mid)
        node[active] = np.where(go_left, 2 * nd, 2 * nd + 1)
        level[active] = lv


def cascade(
    alice: U8,
    bob: U8,
    qber_estimate: float,
    rng: np.random.Generator,
    *,
    variant: Variant = "optimised",
) -> CascadeResult:
    """Correct ``bob`` towards ``alice`` (both arrays of 0/1 ``uint8``).

    ``rng`` stands for the randomness both parties share (the permutations).
    Residual errors are possible (rarely): verification catches them.
    Raises ``ValueError`` for arrays of different length or an unknown variant.
    """
    if alice.shape != bob.shape:
        raise ValueError(f"key lengths differ: {alice.size} != {bob.size}")
    if variant not in VARIANTS:
        raise ValueError(f"cascade variant {variant!r} unknown (known: {', '.join(VARIANTS)})")
    n = int(alice.size)
    bob = bob.copy()
    if n == 0:
        return CascadeResult(bob, 0, 0, 0, 0)
    stats = [0, 0]  # disclosed parity bits, round trips
    aligned = variant == "optimised"
    passes: list[_Pass] = []
    corrected = 0
    sizes = block_sizes(n, qber_estimate, variant)
    no_flips = np.zeros(0, dtype=np.int64)
    for i, k in enumerate(sizes):
        perm = np.arange(n, dtype=np.int64) if i == 0 else rng.permutation(n).astype(np.int64)
        passes.append(_Pass(perm, k, alice, bob, aligned))
        stats[0] += passes[-1].n_blocks
        stats[1] += 1
        pending: list[I64 | None] = [no_flips] * i + [None]
        while True:
            # The cascade: resolve odd nodes, smallest blocks (earliest passes) first.
            for j, p in enumerate(passes):
                levels, nodes = p.odd_nodes(pending[j])
                pending[j] = no_flips
                if nodes.size:
                    break
            else:
                break
            found = np.unique(p.perm[_search(p, levels, nodes, stats)])
            bob[found] ^= 1
            corrected += int(found.size)
            for jj, other in enumerate(passes):
                other.record_flips(found)
                prev = pending[jj]
                pending[jj] = found if prev is None else np.concatenate([prev, found])
    return CascadeResult(bob, stats[0], stats[1], len(sizes), corrected)
