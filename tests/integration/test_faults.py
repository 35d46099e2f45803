"""Link synchronisation, relays and key supply under a misbehaving network.

Three real nodes in a line, each peer session through a fault proxy (``faultnet``).  For
each fault kind the proxies misbehave while relays run and SAEs ask for keys; then the
faults stop, the sessions heal, and both ends of every pool (the two QKD links and the
relayed end-to-end pool) must agree: every block held at both ends or neither, READY at
both or neither, the same key check value, and every key an SAE got retrievable, intact,
by its slave.  On a TLS byte stream, dropped, duplicated or reordered bytes break the
session: it must fail cleanly and resynchronise, not survive.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio

from cli.faultproxy import parse_spec

from ..conftest import ConfigFactory
from ..soaktable import Record
from .faultnet import (
    FaultNet,
    Settling,
    duplicate_values,
    fault_line,
    newest_common_blocks,
    no_spec,
    sae_traffic,
    settled_pools,
    unretrievable_keys,
    wait_for_key,
    wait_until_connected,
)

SOAK_CYCLES = 5
SOAK_FAULT_S = 8.0

FAULTS = {
    "drop": "drop:0.02,seed:1",
    "delay": "delay:40ms",
    "duplicate": "dup:0.02,seed:2",
    "reorder": "reorder:0.02,seed:3",
    "truncate": "truncate@16k",
    "cut": "cutevery:600ms",
}
TIME_LIMIT_S = 120
SETTLE_LIMIT_S = 25
INJECT_LIMIT_S = 10


@dataclasses.dataclass
class Cycle:
    fault: str
    faults: int
    keys: int
    refused: int
    blocks: int
    busy_looks: int
    """Looks (50 ms apart) at a network with relays, reservations or burns under way
    before the ends were compared."""


async def fault_cycle(net: FaultNet, fault: str, seconds: float) -> Cycle:
    """``fault`` on every session for ``seconds`` (and until it has struck at least once)
    while SAEs ask for keys; then heal and wait until both ends of every pool agree."""
    spec = parse_spec(FAULTS[fault])
    keys, refused, injected = len(net.delivered), sum(net.refused.values()), net.faults_injected()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sae_traffic, net, stop)
        net.set_faults(spec)
        await trio.sleep(seconds)  # the fault's duration, not a wait for an outcome
        with trio.move_on_after(INJECT_LIMIT_S):
            while True:
                if fault == "delay" or net.faults_injected() > injected:
                    break
                await trio.sleep(0.05)
        net.set_faults(no_spec())
        stop.set()
    await wait_until_connected(net)
    lasts = newest_common_blocks(net)
    seen = Settling()
    with trio.move_on_after(SETTLE_LIMIT_S) as waited:
        found = await settled_pools(net, lasts, seen=seen)
    if waited.cancelled_caught:
        pytest.fail(f"pools never agreed after {fault}: {seen}")
    # Something was compared (a relayed pool may be empty: the SAEs took all of it).
    assert all(found[link].ready_both for link in ("KME_A~KME_B", "KME_B~KME_C")), found
    return Cycle(
        fault,
        net.faults_injected() - injected,
        len(net.delivered) - keys,
        sum(net.refused.values()) - refused,
        sum(c.blocks for c in found.values()),
        seen.busy_looks,
    )


async def check_saes_records(net: FaultNet) -> None:
    """Every key a master got is retrievable, intact, by its slave; no value twice."""
    assert net.delivered, "no SAE got a key at all"
    assert await unretrievable_keys(net) == []
    assert duplicate_values(net) == 0


async def test_pools_agree_at_both_ends_after_each_fault(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with fault_line(node_config, pki) as net:
            await wait_until_connected(net)
            await wait_for_key(net)
            cycles = []
            for fault in FAULTS:
                cycle = await fault_cycle(net, fault, 1.0)
                assert cycle.faults > 0 or fault == "delay"
                cycles.append(cycle)
            await check_saes_records(net)
    for c in cycles:
        print(
            f"\nfaults {c.fault}: {c.faults} injected, {c.keys} keys delivered and retrieved,"
            f" {c.refused} requests refused (503), {c.blocks} blocks compared, 0 violations"
        )


@pytest.mark.soak
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_soak_pools_agree_after_repeated_faults(
    node_config: ConfigFactory, pki: Path, fault: str, soak_table: Record
) -> None:
    cycles: list[Cycle] = []
    with trio.fail_after(SOAK_CYCLES * 60):
        async with fault_line(node_config, pki) as net:
            await wait_until_connected(net)
            await wait_for_key(net)
            for _ in range(SOAK_CYCLES):
                cycles.append(await fault_cycle(net, fault, SOAK_FAULT_S))
            await check_saes_records(net)
    print(
        f"\nfaults soak {fault}: {len(cycles)} cycles of {SOAK_FAULT_S:g} s,"
        f" {sum(c.faults for c in cycles)} faults injected,"
        f" {sum(c.keys for c in cycles)} keys delivered and retrieved,"
        f" {sum(c.refused for c in cycles)} requests refused (503),"
        f" {sum(c.blocks for c in cycles)} blocks compared, 0 violations"
        f" (compared after {max(c.busy_looks for c in cycles)} looks at most at a network"
        " with relays, reservations or burns under way)"
    )
    soak_table(
        tried=f"`{fault}` on all three sessions of a line of three nodes (two links and a"
        f" relayed pool) while SAEs ask, {SOAK_FAULT_S:g} s a cycle, then heal and compare"
        " both ends of every pool",
        cases=f"{len(cycles)} cycles, {sum(c.faults for c in cycles)} faults injected",
        found=f"{sum(c.keys for c in cycles)} keys delivered and retrieved,"
        f" {sum(c.refused for c in cycles)} refused (503), {sum(c.blocks for c in cycles)}"
        " blocks compared; 0 violations",
    )
