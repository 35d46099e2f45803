"""Sharing each direction of a link on its own, with a per-pair overhead."""

from __future__ import annotations

import pytest

from qkmsd.sharing import Pair, SharingError, allocate_directed


def test_each_end_shares_its_own_half_of_the_link() -> None:
    """A->B and A->C spend A's half of A~B; C->A spends C's half of C~B and B's of B~A."""
    links = {("A", "B"): 1.0, ("B", "C"): 1.0}
    pairs = [
        Pair("A", "B", [("A", "B")], overhead=1.0),
        Pair("A", "C", [("A", "B", "C")]),
        Pair("C", "A", [("C", "B", "A")]),
    ]
    result = allocate_directed(links, pairs)
    assert result.rates == pytest.approx({("A", "B"): 0.25, ("A", "C"): 0.25, ("C", "A"): 0.5})
    assert result.link_loads == pytest.approx(
        {("A", "B"): 0.5, ("B", "A"): 0.5, ("B", "C"): 0.25, ("C", "B"): 0.5}
    )


def test_a_pair_overhead_counts_on_every_hop_of_its_own_routes() -> None:
    links = {("A", "B"): 2.0, ("B", "A"): 2.0}
    pairs = [Pair("A", "B", [("A", "B")], overhead=1.0), Pair("B", "A", [("B", "A")])]
    result = allocate_directed(links, pairs, overhead=2.0)
    assert result.rates == pytest.approx({("A", "B"): 2.0, ("B", "A"): 1.0})


def test_a_bad_overhead_is_refused() -> None:
    with pytest.raises(SharingError, match="overhead"):
        Pair("A", "B", [("A", "B")], overhead=0.5)
