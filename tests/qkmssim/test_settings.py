"""The run's settings reach the nodes: every node reports to the eligible nodes, the
controller's sharing policy and lease, chosen demand pairs; a silent node; bad arguments."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from qkmssim import Demand, SimSettings, family_topology, parse_fault, simulate
from qkmssim.__main__ import main
from qkmssim._engine import Network


def test_every_node_reports_to_the_eligible_nodes_under_the_runs_controller_settings(
    tmp_path: Path,
) -> None:
    topo = family_topology("star", 6)
    settings = SimSettings(seconds=1, pairs=1, sharing="throughput", lease_s=1.5)
    net = Network.build(topo, settings, tmp_path)
    assert len(topo.electors) == 3
    for name, sim in net.nodes.items():
        ctl = sim.config.controller
        if name in topo.electors:
            assert ctl.eligible and ctl.sharing == "throughput" and ctl.lease_s == 1.5
            assert set(ctl.electors) == set(topo.electors) - {name}
        else:
            assert not ctl.eligible and ctl.electors == topo.electors
        for elector in set(topo.electors) - {name}:
            assert frozenset((name, elector)) in net.sessions
            assert elector in sim.config.peers


def test_a_pair_list_replaces_the_drawn_pairs(tmp_path: Path) -> None:
    settings = SimSettings(seconds=1, pairs=5, pair_list=(("N1", "N3"), ("N3", "N1")))
    net = Network.build(family_topology("ring", 6), settings, tmp_path)
    assert net.pairs == [("N1", "N3"), ("N3", "N1")]


def test_a_silent_node_is_reported_and_nothing_is_served_twice() -> None:
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    report = simulate(
        family_topology("ring", 4, block_bits=8192),  # a block every 0.6 s
        SimSettings(
            seconds=10,
            faults=(parse_fault("node-silent@5:N1"),),
            demand=Demand("paced", 2048),
            pair_list=(("N0", "N2"), ("N3", "N0")),
            drain_s=3,
        ),
    )
    assert [(f.fault, f.target) for f in report.faults] == [("node-silent@5:N1", "N1")]
    assert report.relays_unresolved == 0
    assert (report.served_twice, report.value_reused, report.two_values) == (0, 0, 0)
    # N3>N0 is one hop and never touches N1: it is served before and after the fault.
    assert [p.keys_delivered > 0 for p in report.per_pair] == [True, True]
    assert report.virtual_s == 13
    # The run's collector settings (GC_THRESHOLDS, the nodes frozen) end with it.
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pair", "N0"], "expected MASTER-SLAVE"),
        (["--pair", "N0-N9"], "two distinct nodes"),
        (["--pair", "N0-N0"], "two distinct nodes"),
        (["--drain", "-1"], "--drain"),
        (["--lease", "0"], "configs"),
        (["--fault", "node-silent@1:N9"], "no node 'N9'"),
    ],
)
def test_bad_arguments_are_refused_with_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--topology", "ring:4", "--seconds", "1", *argv]) == 2
    assert message in capsys.readouterr().err
