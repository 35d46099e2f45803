"""Fair sharing under the controller's budgets, on real nodes on the virtual clock.

A ring of six nodes with closed-loop demand on every ordered pair: neighbour pairs could
take their links' whole key (before budgets counted them, the pairs two and three hops
apart got nothing).  Under budgets every pair gets keys, and the links' key is spent."""

from __future__ import annotations

from qkmssim import SimSettings, family_topology, simulate


def test_on_a_ring_of_six_every_pair_gets_keys_and_the_links_key_is_spent() -> None:
    report = simulate(family_topology("ring", 6), SimSettings(seconds=40, seed=1))
    assert len(report.per_pair) == 30
    assert all(p.keys_delivered > 0 for p in report.per_pair), [
        f"{p.master}>{p.slave}" for p in report.per_pair if not p.keys_delivered
    ]
    far = [p.rate_bps for p in report.per_pair if p.hops > 1]
    near = [p.rate_bps for p in report.per_pair if p.hops == 1]
    assert min(far) > 0.1 * max(near)  # no neighbour pair takes the links for itself
    assert report.worst_over_maxmin is not None and report.worst_over_maxmin > 0.1
    assert report.fibre_utilisation is not None and report.fibre_utilisation > 0.8
    assert (report.served_twice, report.value_reused, report.two_values) == (0, 0, 0)
