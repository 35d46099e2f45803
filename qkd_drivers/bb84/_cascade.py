"""Cascade error correction, vectorised over all blocks of a pass.

Theory of operation.  Each pass shuffles the key with a permutation both
parties know (from the shared generator) and cuts it into blocks; Alice
discloses every block's parity.  A block whose parity differs at Bob holds
an odd number of errors; a binary search (Alice discloses the parity of the
left half, Bob compares) finds one of them.  Correcting a bit flips the
parity of the blocks holding it in every earlier pass, which sends those
back to the search: the cascade.

Everything a pass does to many blocks is done at once with numpy: block
parities come from ``bitwise_xor.reduceat`` over the permuted bits, and the
binary searches of all odd blocks of a pass advance one level per round trip,
in parallel.  A parity asked for during a search is computed from the bits
of the range it covers (gathered through the permutation for all the
searches of a round at once), so a pass keeps no prefix arrays: only its
permutation, the state of the nodes it has looked at and, once corrections
reach it, the inverse permutation.  Passes that find nothing (most of the 16
of the optimised variant) cost one shuffle and two gathers.  Bob's
corrections reach an earlier pass only when the cascade next looks at it, as
one batch.

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
IntArr = npt.NDArray[np.signedinteger]

Variant = Literal["original", "optimised"]
VARIANTS: tuple[Variant, ...] = ("original", "optimised")
_MIN_QBER = 1e-4

# A node's state: whether Alice's parity is known, and (if so) whether it
# differs from Bob's current parity of the same range.
_KNOWN = np.uint8(2)
_ODD = np.uint8(1)
_NO_FLIPS = np.zeros(0, dtype=np.int64)


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


def _run_starts(sorted_values: IntArr) -> I64:
    """Indices where a run of equal values begins in a non-decreasing array."""
    change = np.empty(sorted_values.size, dtype=np.bool_)
    change[:1] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=change[1:])
    return np.flatnonzero(change)


class _Pass:
    """One pass: its permutation, block size and what is known of Alice's parities.

    Node i of level L is the aligned range [i 2^L, (i+1) 2^L) of the permuted
    key (for the original variant only the blocks, of any size, are nodes).
    ``state[off[L] + i]`` holds ``_KNOWN`` once Alice's parity of the node is
    known and then ``_ODD`` when it differs from Bob's parity of the node.
    Bob's corrections are applied to ``state`` in batches (``odd_nodes``),
    only on the levels where some node is known (``live``): the bit of an
    unknown node is rewritten when its parity is disclosed.
    """

    def __init__(self, perm: I64 | None, k: int, alice: U8, bob: U8, aligned: bool) -> None:
        n = int(alice.size)
        self.alice = alice
        self.bob = bob  # Bob's current bits: the caller corrects them in place
        self.n = n
        self.k = k
        self.aligned = aligned
        self.top = k.bit_length() - 1 if aligned else 0
        starts = np.arange(0, n, k, dtype=np.int64)
        if perm is None:  # the identity: the first pass does not shuffle
            a_par = np.bitwise_xor.reduceat(alice, starts)
            b_par = np.bitwise_xor.reduceat(bob, starts)
            self.perm: IntArr | None = None
        else:
            a_par = np.bitwise_xor.reduceat(alice[perm], starts)
            b_par = np.bitwise_xor.reduceat(bob[perm], starts)
            self.perm = perm.astype(np.int32) if n < 2**31 else perm
        self._inv: IntArr | None = None
        sizes = [-(-n >> lv) for lv in range(self.top + 1)] if aligned else [starts.size]
        self.off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # np.zeros maps fresh pages: levels never searched cost no memory traffic.
        self.state = np.zeros(int(self.off[-1]), dtype=np.uint8)
        self.state[self.off[self.top] :] = _KNOWN | (a_par ^ b_par)
        self.live = np.zeros(self.top + 1, dtype=np.bool_)
        self.live[self.top] = True
        self.n_blocks = int(starts.size)

    def positions(self, original: I64) -> IntArr:
        """Where bits of the unshuffled key sit in this pass."""
        if self.perm is None:
            return original
        if self._inv is None:
            self._inv = np.empty(self.n, dtype=self.perm.dtype)
            self._inv[self.perm.astype(np.int64)] = np.arange(self.n, dtype=self.perm.dtype)
        return self._inv[original]

    def originals(self, positions: I64) -> I64:
        """The bits of the unshuffled key at ``positions`` of this pass."""
        return positions if self.perm is None else self.perm[positions].astype(np.int64)

    def range_parities(self, lo: I64, hi: I64) -> tuple[U8, U8]:
        """(Alice's, Bob's) parities of the ranges [lo, hi) of the pass, all non-empty.

        Alice's are the oracle's answers: the caller counts what it discloses.
        """
        lengths = hi - lo
        ends = np.cumsum(lengths)
        starts = ends - lengths
        idx = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(lo - starts, lengths)
        if self.perm is not None:
            idx = self.perm[idx]
        return (
            np.bitwise_xor.reduceat(self.alice[idx], starts),
            np.bitwise_xor.reduceat(self.bob[idx], starts),
        )

    def _node_flat(self, pos: IntArr) -> tuple[I64, I64]:
        """Flat state indices (live levels × positions) of the nodes holding ``pos``."""
        levels = np.flatnonzero(self.live)
        if self.aligned:
            ids = pos[None, :].astype(np.int64) >> levels[:, None]
        else:
            ids = pos[None, :].astype(np.int64) // self.k
        return levels, self.off[levels][:, None] + ids

    def odd_nodes(self, flipped: I64 | None) -> tuple[I64, I64]:
        """Record Bob's ``flipped`` bits; return (levels, ids) of the smallest known odd
        nodes on their paths.

        ``None`` stands for "look at every block" (a pass just began).
        """
        if flipped is None:
            ids = np.flatnonzero(self.state[self.off[self.top] :] & _ODD).astype(np.int64)
            return np.full(ids.size, self.top, dtype=np.int64), ids
        if flipped.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        pos = np.sort(self.positions(flipped))
        levels, flat = self._node_flat(pos)
        # Rows are levels in increasing order and each row is sorted: so is the whole.
        run = flat.ravel()
        starts = _run_starts(run)
        odd_runs = (np.diff(starts, append=run.size) & 1) == 1
        self.state[run[starts[odd_runs]]] ^= _ODD
        odd = self.state[flat] == (_KNOWN | _ODD)
        hit = np.flatnonzero(odd.any(axis=0))
        if hit.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        # Each flipped bit's search starts at its smallest known odd node.
        nodes = np.unique(flat[odd[:, hit].argmax(axis=0), hit])
        level = np.searchsorted(self.off, nodes, side="right") - 1
        return level.astype(np.int64), nodes - self.off[level]

    def search(self, level: I64, node: I64, stats: list[int]) -> I64:
        """Binary-search all the odd nodes at once; return the error positions (permuted)."""
        if not self.aligned:
            return self._search_blocks(node, stats)
        lo = node << level
        hi = np.minimum((node + 1) << level, self.n)
        level = level.copy()
        node = node.copy()
        state = self.state
        while True:
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
                lv_s, nd_s = lv[sel], nd[sel]
                left = self.off[lv_s] + 2 * nd_s
                s_left = state[left]
                d_left = s_left & _ODD
                unknown = np.flatnonzero((s_left & _KNOWN) == 0)
                if unknown.size:
                    # Alice discloses the parities not already known (sub-block reuse).
                    stats[0] += int(unknown.size)
                    stats[1] += 1
                    a, b = self.range_parities(lo_a[sel][unknown], mid[sel][unknown])
                    d_left[unknown] = a ^ b
                # Alice's parity of the right half is the parent's minus the left's; so is
                # Bob's.  A parent passed over in a truncated block may be unknown: then so
                # is the right half.
                parent = state[self.off[lv_s + 1] + nd_s]
                state[left] = _KNOWN | d_left
                d_right = _KNOWN | ((parent ^ d_left) & _ODD)
                state[left + 1] = np.where(parent & _KNOWN, d_right, np.uint8(0))
                self.live[lv_s] = True
                go_left[sel] = d_left == 1
            hi[active] = np.where(go_left, np.minimum(mid, hi_a), hi_a)
            lo[active] = np.where(go_left, lo_a, mid)
            node[active] = np.where(go_left, 2 * nd, 2 * nd + 1)
            level[active] = lv

    def _search_blocks(self, node: I64, stats: list[int]) -> I64:
        """The original variant's search: bisect each block, disclosing every left half."""
        lo = node * self.k
        hi = np.minimum(lo + self.k, self.n)
        while True:
            active = np.flatnonzero(hi - lo > 1)
            if active.size == 0:
                return lo
            lo_a, hi_a = lo[active], hi[active]
            mid = lo_a + (hi_a - lo_a + 1) // 2
            stats[0] += int(active.size)
            stats[1] += 1
            a, b = self.range_parities(lo_a, mid)
            left_odd = (a ^ b) == 1
            hi[active] = np.where(left_odd, mid, hi_a)
            lo[active] = np.where(left_odd, lo_a, mid)


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
    alice = np.ascontiguousarray(alice, dtype=np.uint8)
    bob = np.array(bob, dtype=np.uint8)
    if n == 0:
        return CascadeResult(bob, 0, 0, 0, 0)
    stats = [0, 0]  # disclosed parity bits, round trips
    aligned = variant == "optimised"
    passes: list[_Pass] = []
    corrected = 0
    sizes = block_sizes(n, qber_estimate, variant)
    for i, k in enumerate(sizes):
        perm = None if i == 0 else rng.permutation(n)
        p = _Pass(perm, k, alice, bob, aligned)
        passes.append(p)
        stats[0] += p.n_blocks
        stats[1] += 1
        # Bob's corrections that each pass has not looked at yet.
        pending: list[list[I64]] = [[] for _ in passes]
        levels, nodes = p.odd_nodes(None)
        while nodes.size:
            found = np.unique(p.originals(p.search(levels, nodes, stats)))
            bob[found] ^= 1
            corrected += int(found.size)
            for todo in pending:
                todo.append(found)
            # The cascade: resolve odd nodes, smallest blocks (earliest passes) first.
            for j, p in enumerate(passes):
                flips = np.concatenate(pending[j]) if pending[j] else _NO_FLIPS
                pending[j] = []
                levels, nodes = p.odd_nodes(flips)
                if nodes.size:
                    break
    return CascadeResult(bob, stats[0], stats[1], len(sizes), corrected)
