"""The report's measurement window (``--warmup``): keys, rates and link key count only
from the warm-up to the end of the demand."""

from __future__ import annotations

import pytest

from qkmssim import SimError, SimSettings, family_topology, parse_fault, render, simulate


def test_a_pair_served_only_before_the_warm_up_counts_nothing_in_the_window() -> None:
    # A star of three: N0>N1 over a link cut at 4 s, N0>N2 over a link that stays up.
    settings = SimSettings(
        seconds=10,
        seed=1,
        pair_list=(("N0", "N1"), ("N0", "N2")),
        faults=(parse_fault("link-down@4:N0-N1"),),
        drain_s=0,
    )
    topo = family_topology("star", 3, block_bits=4096)
    whole = simulate(topo, settings)
    cut, kept = whole.per_pair
    assert cut.keys_delivered > 0 and kept.keys_delivered > 0  # N0>N1 served before the cut

    windowed = simulate(topo, SimSettings(**{**settings.__dict__, "warmup_s": 6.0}))
    cut_w, kept_w = windowed.per_pair
    assert (cut_w.master, cut_w.slave) == ("N0", "N1")
    assert cut_w.keys_delivered == 0 and cut_w.rate_bps == 0
    assert 0 < kept_w.keys_delivered < kept.keys_delivered
    assert kept_w.rate_bps == kept_w.bits_delivered / 4.0  # over the 4 s window
    assert windowed.worst_over_equal_share == 0 and windowed.jain_index == 0.5
    assert windowed.keys_delivered == kept_w.keys_delivered
    assert 0 < windowed.link_bits_produced < whole.link_bits_produced
    assert windowed.warmup_s == 6.0 and whole.warmup_s == 0.0
    assert "window                from 6 s to 10 s" in render(windowed)


def test_a_warm_up_at_or_past_the_end_of_the_demand_is_refused() -> None:
    with pytest.raises(SimError, match="--warmup"):
        simulate(family_topology("ring", 3), SimSettings(seconds=5, warmup_s=5))
