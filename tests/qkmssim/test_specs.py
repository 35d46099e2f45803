"""``--fault`` and ``--demand`` are parsed, or refused with the form they should have."""

from __future__ import annotations

import pytest

from qkmssim import Demand, Fault, FaultSpecError, parse_demand, parse_fault
from qkmssim._demand import DemandSpecError, Ledger


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("link-down@20:A-B", Fault("link-down", 20.0, ("A", "B"))),
        ("link-silent@2.5:N0-N1", Fault("link-silent", 2.5, ("N0", "N1"))),
        ("link-up@40:A-B", Fault("link-up", 40.0, ("A", "B"))),
        ("node-crash@10:KME_1", Fault("node-crash", 10.0, ("KME_1",))),
        ("node-crash@10:KME_1:restart=30", Fault("node-crash", 10.0, ("KME_1",), 30.0)),
        ("node-silent@10:KME_1", Fault("node-silent", 10.0, ("KME_1",))),
        ("controller-crash@5", Fault("controller-crash", 5.0)),
        ("controller-crash@5:restart=9", Fault("controller-crash", 5.0, (), 9.0)),
    ],
)
def test_fault_specs_parse(spec: str, fault: Fault) -> None:
    assert parse_fault(spec) == fault


@pytest.mark.parametrize(
    "spec",
    [
        "link-down",
        "link-cut@1:A-B",
        "link-down@x:A-B",
        "link-down@1:AB",
        "link-down@-1:A-B",
        "node-crash@1",
        "node-crash@5:A:restart=2",
        "link-down@5:A-B:restart=9",
        "node-silent@5:A:restart=9",
        "node-silent@5",
        "controller-crash@1:A",
    ],
)
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError, match="fault"):
        parse_fault(spec)


def test_demand_specs() -> None:
    assert parse_demand("closed") == Demand("closed")
    assert parse_demand("paced:2048") == Demand("paced", 2048.0)
    for bad in ("paced", "paced:0", "paced:-3", "open", "paced:x"):
        with pytest.raises(DemandSpecError):
            parse_demand(bad)


def test_the_ledger_counts_a_key_served_twice_or_with_two_values() -> None:
    ledger = Ledger()
    a, b = ("A", "B"), ("B", "A")
    ledger.enc(a, [("k1", b"\x01" * 32), ("k2", b"\x02" * 32)])
    assert ledger.dec(a, [("k1", b"\x01" * 32)]) == 1
    assert (ledger.served_twice, ledger.value_reused, ledger.two_values) == (0, 0, 0)
    ledger.enc(b, [("k1", b"\x03" * 32)])  # an id handed out again
    ledger.enc(b, [("k3", b"\x02" * 32)])  # a value under a second id
    assert ledger.dec(a, [("k2", b"\x09" * 32)]) == 0  # another value at the slave
    assert ledger.dec(b, [("k2", b"\x02" * 32)]) == 0  # fetched by another pair
    assert (ledger.served_twice, ledger.value_reused, ledger.two_values) == (1, 1, 2)
