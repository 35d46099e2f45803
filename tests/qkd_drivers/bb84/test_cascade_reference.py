"""The vectorised Cascade against a straightforward one, block by block and bit by bit.

The reference below keeps Alice's disclosed parities in a dict, computes every parity of
Bob's from his bits, and searches one block at a time.  It follows the schedule the
vectorised code documents (same permutations from the generator, the searches of one
batch advance one level per round trip and read what the round before left), so the
two must disclose the same parities in the same number of messages and correct the
same bits.
"""

from __future__ import annotations

import numpy as np
import pytest

from qkd_drivers.bb84 import block_sizes, cascade

Node = tuple[int, int]  # (level, index); the original variant has only level 0, the blocks


class _RefPass:
    def __init__(self, perm: list[int], k: int, alice: list[int], bob: list[int], aligned: bool):
        self.perm, self.k, self.aligned, self.n = perm, k, aligned, len(perm)
        self.inv = {x: i for i, x in enumerate(perm)}
        self.a = [alice[x] for x in perm]
        self.b = [bob[x] for x in perm]
        self.top = k.bit_length() - 1 if aligned else 0
        self.alice_known: dict[Node, int] = {}
        n_blocks = -(-self.n // k)
        for i in range(n_blocks):  # Alice discloses every block parity
            self.alice_known[(self.top, i)] = self.alice_parity(*self.block_range(i))

    def block_range(self, i: int) -> tuple[int, int]:
        size = 1 << self.top if self.aligned else self.k
        return i * size, min((i + 1) * size, self.n)

    def node_range(self, node: Node) -> tuple[int, int]:
        level, i = node
        if not self.aligned:
            return self.block_range(i)
        return i << level, min((i + 1) << level, self.n)

    def alice_parity(self, lo: int, hi: int) -> int:
        return sum(self.a[lo:hi]) & 1

    def bob_parity(self, lo: int, hi: int) -> int:
        return sum(self.b[lo:hi]) & 1

    def is_odd(self, node: Node) -> bool:
        return self.alice_known[node] != self.bob_parity(*self.node_range(node))

    def odd_blocks(self) -> list[Node]:
        return [node for node in self.alice_known if self.is_odd(node)]

    def odd_nodes(self, flipped: list[int]) -> list[Node]:
        """The smallest known odd node holding each flipped bit."""
        out = set()
        for x in flipped:
            pos = self.inv[x]
            for level in range(self.top + 1):
                node = (level, pos >> level) if self.aligned else (0, pos // self.k)
                if node in self.alice_known and self.is_odd(node):
                    out.add(node)
                    break
        return sorted(out)

    def search(self, starts: list[Node], stats: list[int]) -> list[int]:
        """Binary searches, one level per round; each round reads before it writes."""
        if not self.aligned:
            ranges = [list(self.node_range(node)) for node in starts]
            while any(hi - lo > 1 for lo, hi in ranges):
                for r in ranges:
                    lo, hi = r
                    if hi - lo > 1:
                        mid = lo + (hi - lo + 1) // 2
                        stats[0] += 1
                        odd = self.alice_parity(lo, mid) != self.bob_parity(lo, mid)
                        r[:] = [lo, mid] if odd else [mid, hi]
                stats[1] += 1
            return sorted({self.perm[lo] for lo, _ in ranges})
        current = list(starts)
        while any(level > 0 for level, _ in current):
            writes: dict[Node, int | None] = {}
            disclosed = 0
            for s, (level, i) in enumerate(current):
                if level == 0:
                    continue
                lo, hi = self.node_range((level, i))
                left, right = (level - 1, 2 * i), (level - 1, 2 * i + 1)
                mid = lo + (1 << (level - 1))
                if mid >= hi:  # a truncated block's missing right half
                    current[s] = left
                    continue
                a_left = self.alice_known.get(left)
                if a_left is None:
                    a_left = self.alice_parity(lo, mid)
                    disclosed += 1
                a_parent = self.alice_known.get((level, i))
                writes[left] = a_left
                writes[right] = None if a_parent is None else a_parent ^ a_left
                current[s] = left if a_left != self.bob_parity(lo, mid) else right
            for node, parity in writes.items():
                if parity is None:
                    self.alice_known.pop(node, None)
                else:
                    self.alice_known[node] = parity
            stats[0] += disclosed
            stats[1] += 1 if disclosed else 0
        return sorted({self.perm[i] for _, i in current})

    def flip(self, x: int) -> None:
        self.b[self.inv[x]] ^= 1


def reference_cascade(
    alice: list[int], bob: list[int], qber: float, rng: np.random.Generator, variant: str
) -> tuple[list[int], int, int]:
    """(Bob's corrected bits, disclosed parities, messages)."""
    n = len(alice)
    bob = list(bob)
    stats = [0, 0]
    passes: list[_RefPass] = []
    for i, k in enumerate(block_sizes(n, qber, variant)):  # type: ignore[arg-type]
        perm = list(range(n)) if i == 0 else rng.permutation(n).tolist()
        p = _RefPass(perm, k, alice, bob, variant == "optimised")
        passes.append(p)
        stats[0] += len(p.alice_known)
        stats[1] += 1
        pending: list[list[int]] = [[] for _ in passes]
        nodes = p.odd_blocks()
        while nodes:
            found = p.search(nodes, stats)
            for x in found:
                bob[x] ^= 1
                for other in passes:
                    other.flip(x)
            for todo in pending:
                todo.extend(found)
            for j, p in enumerate(passes):
                nodes = p.odd_nodes(pending[j])
                pending[j] = []
                if nodes:
                    break
    return bob, stats[0], stats[1]


@pytest.mark.parametrize("variant", ["original", "optimised"])
@pytest.mark.parametrize(("n", "qber", "seed"), [(3001, 0.02, 1), (2048, 0.05, 2), (1500, 0.1, 3)])
def test_vectorised_cascade_equals_the_straightforward_one(
    variant: str, n: int, qber: float, seed: int
) -> None:
    g = np.random.Generator(np.random.PCG64(seed))
    alice = g.integers(0, 2, n, dtype=np.uint8)
    bob = alice ^ (g.random(n) < qber).astype(np.uint8)
    fast = cascade(alice, bob, qber, np.random.Generator(np.random.PCG64(seed)), variant=variant)  # type: ignore[arg-type]
    ref_bits, ref_disclosed, ref_messages = reference_cascade(
        alice.tolist(), bob.tolist(), qber, np.random.Generator(np.random.PCG64(seed)), variant
    )
    assert fast.corrected.tolist() == ref_bits
    assert (fast.disclosed_bits, fast.messages) == (ref_disclosed, ref_messages)
