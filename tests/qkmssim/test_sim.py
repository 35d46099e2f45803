"""A ring of four real nodes on the virtual clock, through a link cut, a silent link, a
node crash and restart, and a controller crash: keys keep being delivered, every relay is
resolved, and no key is served twice or with two values."""

from __future__ import annotations

from qkmssim import Demand, SimSettings, family_topology, parse_fault, render, simulate

FAULTS = (
    "link-down@6:N2-N3",
    "node-crash@8:N3:restart=16",
    "link-up@12:N2-N3",
    "link-silent@13:N0-N1",
    "link-up@19:N0-N1",
    "controller-crash@22",
)


def test_a_ring_of_four_through_cuts_and_crashes_loses_and_doubles_no_key() -> None:
    report = simulate(
        family_topology("ring", 4),
        SimSettings(
            seconds=30,
            faults=tuple(parse_fault(f) for f in FAULTS),
            demand=Demand("paced", 1024),
        ),
    )
    assert report.keys_delivered > 0
    assert all(p.keys_delivered > 0 for p in report.per_pair)
    assert report.relays_done > 0 and report.relays_unresolved == 0
    assert (report.served_twice, report.value_reused, report.two_values) == (0, 0, 0)
    assert [f.fault for f in report.faults] == [
        "link-down@6:N2-N3",
        "node-crash@8:N3",
        "link-silent@13:N0-N1",
        "controller-crash@22:controller",
    ]
    crashed = report.faults[-1]
    assert crashed.new_leader_s is not None and report.controller_changes >= 1
    assert 0 < report.fibre_utilisation <= 1  # type: ignore[operator]
    assert 0 < report.jain_index <= 1  # type: ignore[operator]
    text = render(report)
    assert "keys served twice     0   one value under two ids 0" in text
    assert "fault node-crash@8:N3 (N3) at 8 s" in text and "N0>N1" in text
