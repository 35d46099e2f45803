"""Idle TCP floods on the ETSI 014 port and the peer port of a real two-node network.

Thousands of connections that never start TLS: the listeners shed them (oldest pending
first), SAEs keep getting keys, the peer session stays up, no key block is discarded, and
the node's descriptors come back when the flood goes.  ``make soak`` runs the issue's
25,000 connections per port, from many source addresses, and bounds the memory too.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import resource
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from qkmsd.config import Config
from qkmsd.keystore import KeyState, KeyStore, load_master_key

from ..conftest import ConfigFactory
from ..soaktable import Record
from .test_etsi014 import LINK, Kmes, network

# The daemon's own heartbeat and silence limit (0.25 s, 1 s): a flood must not make the
# short limit drop a healthy session.
SYNC = {"timeout_s": 10.0, "announce_interval_s": 0.05}
FD_SLACK = 16  # the SAE clients' own connections and the nodes' answers to them


def open_sockets() -> int:
    """Socket descriptors of this process (the store's files come and go on their own)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


FLOODER = Path(__file__).with_name("flooder.py")
PER_PROCESS = 12_500  # within a 20,000 descriptor limit


async def start_flooders(port: int, connections: int, sources: list[str]) -> list[trio.Process]:
    """Processes that open ``connections`` idle connections to ``port`` between them."""
    procs = []
    for start in range(0, connections, PER_PROCESS):
        count = min(PER_PROCESS, connections - start)
        argv = [sys.executable, str(FLOODER), str(port), str(count), *sources]
        procs.append(
            await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        )
    return procs


async def held_by(proc: trio.Process) -> int:
    """The number of connections ``proc`` holds, once it holds them all."""
    assert proc.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        chunk = await proc.stdout.receive_some(100)
        assert chunk, "the flooder died"
        data += chunk
    return int(data)


@dataclasses.dataclass
class Flood:
    fds_before: int = 0
    fds_during_max: int = 0
    fds_after: int = 0
    rss_before: int = 0
    rss_during: int = 0
    rss_after: int = 0
    keys_during: int = 0
    fresh_client_keys: int = 0
    held: int = 0


async def flood(net: Kmes, *, connections: int, sources: list[str]) -> Flood:
    """Flood KME_A's API port and KME_B's peer port while SAE_A and SAE_B exchange keys."""
    master, slave = net.client("SAE_A"), net.client("SAE_B")

    async def one_key() -> None:
        keys = await master.get_key("SAE_B")
        fetched = await slave.get_key_with_ids("SAE_A", [keys[0].key_id])
        assert fetched[0].key == keys[0].key

    await one_key()  # the SAEs' sessions are open before the flood
    gc.collect()
    report = Flood(fds_before=open_sockets(), rss_before=rss_kib())
    procs: list[trio.Process] = []
    try:
        for port in (net.port("KME_A"), net.infos["KME_B"].peer_port):
            procs += await start_flooders(port, connections, sources)
        held: list[int] = []

        async def count(proc: trio.Process) -> None:
            held.append(await held_by(proc))

        async with trio.open_nursery() as nursery:
            for proc in procs:
                nursery.start_soon(count, proc)
            # Keys keep flowing while the flood arrives.
            while len(held) < len(procs):
                await one_key()
                report.keys_during += 1
                report.fds_during_max = max(report.fds_during_max, open_sockets())
        report.held = sum(held)
        await hold(net, report, one_key)
        for proc in procs:
            assert proc.stdin is not None
            await proc.stdin.aclose()
            await proc.wait()
    finally:
        for proc in procs:
            proc.kill()
            if proc.stdout is not None:
                await proc.stdout.aclose()
    with trio.fail_after(30):
        while open_sockets() > report.fds_before:  # noqa: ASYNC110 - /proc has no event to wait on
            await trio.sleep(0.1)
    await one_key()  # and still serving after
    gc.collect()
    report.fds_after, report.rss_after = open_sockets(), rss_kib()
    return report


async def hold(net: Kmes, report: Flood, one_key: Callable[[], Awaitable[None]]) -> None:
    """With the whole flood held: the sessions still serve, and a new connection gets in."""
    for _ in range(5):
        await one_key()
        report.keys_during += 1
    fresh = net.client("SAE_A")
    await fresh.get_key("SAE_B")
    await fresh.aclose()
    report.fresh_client_keys += 1
    report.fds_during_max = max(report.fds_during_max, open_sockets())
    report.rss_during = rss_kib()


async def newest_block(net: Kmes) -> int:
    newest = []
    for node in net.nodes.values():
        assert node.keys is not None
        (link,) = await node.keys.links_status()
        newest.append(link.newest_block_id)
    return max(newest)


def assert_peer_session_never_dropped(net: Kmes) -> None:
    for kme, node in net.nodes.items():
        assert node.peers is not None
        (peer,) = node.peers.peers_status()
        assert (peer.state, peer.connects) == ("connected", 1), kme


def lost_blocks(configs: dict[str, Config], first: int) -> tuple[list[int], list[int]]:
    """Blocks above ``first``: those both ends produced yet one discarded, and the rest.

    Read once the nodes stop.  Blocks before the flood are left out (the end that started
    first holds blocks the other's driver never made).  A block only one end's simulated
    device produced (the paired driver skips slots its task was too late for, and both
    nodes share one busy event loop here) is rightly discarded: that is the second list.
    """
    states: dict[str, dict[int, KeyState]] = {}
    for kme, cfg in configs.items():
        with KeyStore.open(cfg.keystore_path, load_master_key(cfg.master_key_file)) as store:
            top = store.max_block_id(LINK) or first
            states[kme] = store.states(LINK, range(first + 1, top + 1))
    a, b = states["KME_A"], states["KME_B"]
    gone = {i for end in (a, b) for i, s in end.items() if s in GONE}
    both = sorted(i for i in gone if i in a and i in b)
    one = sorted(gone - set(both))
    return both, one


GONE = (KeyState.DISCARDED, KeyState.EXPIRED)


async def test_idle_floods_on_the_api_and_peer_ports_lose_nothing(
    node_config: ConfigFactory, pki: Path
) -> None:
    connections = 1500
    with trio.fail_after(120):
        async with network(node_config, pki, sync=SYNC) as net:
            first = await newest_block(net)
            report = await flood(net, connections=connections, sources=["127.0.0.1"])
            assert report.held == 2 * connections
            assert report.keys_during >= 6 and report.fresh_client_keys == 1
            # One source: the per-source caps held the node's share of the flood.
            api_cap, peer_cap = 256, 64
            assert report.fds_during_max - report.fds_before <= api_cap + peer_cap + FD_SLACK
            assert report.fds_after <= report.fds_before
            peers = net.nodes["KME_B"].peers
            assert peers is not None
            totals = peers.statistics().listener.totals
            # Every flood connection got a place, each at the expense of an older stranger.
            assert totals["admitted"] == connections + 1  # and KME_A's one session
            assert totals["refused_shed"] > 0
            assert_peer_session_never_dropped(net)
            configs = net.configs
    both, one = lost_blocks(configs, first)
    print(f"blocks discarded: {len(both)} held by both ends, {len(one)} made at one end only")
    assert both == []


@pytest.mark.soak
async def test_soak_25000_idle_connections_per_port_from_many_sources(
    node_config: ConfigFactory, pki: Path, soak_table: Record
) -> None:
    connections = 25_000
    sources = [f"127.0.{i // 250}.{2 + i % 250}" for i in range(200)]
    with trio.fail_after(600):
        async with network(node_config, pki, sync=SYNC) as net:
            first = await newest_block(net)
            report = await flood(net, connections=connections, sources=sources)
            print(
                f"\nflood: {report.held} idle connections held; node fds before "
                f"{report.fds_before}, at most {report.fds_during_max} during, "
                f"{report.fds_after} after; RSS before {report.rss_before} KiB, during "
                f"{report.rss_during} KiB, after {report.rss_after} KiB; ru_maxrss "
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB; keys during "
                f"{report.keys_during} (+{report.fresh_client_keys} on a new connection)"
            )
            assert report.held == 2 * connections
            # Many sources: the listener caps held it (4096 API, 256 peer by default).
            assert report.fds_during_max - report.fds_before <= 4096 + 256 + FD_SLACK
            assert report.fds_after <= report.fds_before
            assert report.rss_after <= 1.5 * report.rss_before
            assert_peer_session_never_dropped(net)
            configs = net.configs
    both, one = lost_blocks(configs, first)
    print(f"blocks discarded: {len(both)} held by both ends, {len(one)} made at one end only")
    soak_table(
        tried=f"{connections:,} idle TCP connections on the API port and {connections:,} on"
        f" the peer port from {len(sources)} source addresses, an SAE asking meanwhile",
        cases=f"{report.held:,} connections held",
        found=f"fds {report.fds_before} before, at most {report.fds_during_max} during,"
        f" {report.fds_after} after; RSS {report.rss_before} / {report.rss_after} KiB before /"
        f" after; {report.keys_during} keys during; blocks discarded at both ends {len(both)}",
    )
    assert both == []
