"""A node whose key store's disk fills up, or turns read-only, while it serves.

KME_A keeps its state on a small tmpfs of its own (mounted by the test: root only, else
skipped); KME_B is its neighbour over a fast simulated link.  While SAE_A asks for keys to
SAE_B and SAE_B fetches them, A's disk is filled, then freed; or A's store refuses every
write as on a read-only file system (SQLite's ``query_only``), then accepts them again.
Requests that need a write must fail with 503 and a message that names the cause (never
a 500), the node must keep running, and it must serve again once it can write; the store
passes SQLite's integrity check and both ends of the link agree.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from qkms_client import Etsi014Error, ServiceUnavailable, TrioEtsi014Client
from qkmsd.app import Node, NodeInfo
from qkmsd.keystore import KeyState

from ..conftest import ConfigFactory

LINK = "KME_A~KME_B"
FAST = {"rate_bps": 1e6, "block_bits": 32768, "seed": "d" * 32}
SAES = {"SAE_A": {"kme": "KME_A"}, "SAE_B": {"kme": "KME_B"}}
# No stock: every request cuts and records keys, so each one needs the store to write.
SUPPLY = {"default": {"stock_keys": 0}, "reserve_timeout_s": 2.0}
SYNC = {"timeout_s": 4.0, "heartbeat_s": 1.0, "announce_interval_s": 0.05}
TMPFS_BYTES = 8 << 20
TIME_LIMIT_S = 90
READ_ONLY_S = 3.0
HELD = frozenset({KeyState.READY, KeyState.RESERVED, KeyState.DELIVERED, KeyState.ERASED})


def _mount(args: list[str]) -> str:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    return done.stderr.strip() if done.returncode else ""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """KME_A's state directory, on a tmpfs of ``TMPFS_BYTES`` (skips unless root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    state = tmp_path / "KME_A" / "state"
    state.mkdir(parents=True)
    error = _mount(["-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(state)])
    if error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


async def _run(config: Any, *, task_status: trio.TaskStatus[tuple[Node, NodeInfo]]) -> None:
    node = Node(config)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(node.run)
        task_status.started((node, info))


class Pair:
    def __init__(self, nodes: dict[str, Node], infos: dict[str, NodeInfo], pki: Path) -> None:
        self.nodes, self.infos, self.pki = nodes, infos, pki
        self.stack = contextlib.AsyncExitStack()

    def client(self, sae: str) -> TrioEtsi014Client:
        kme = SAES[sae]["kme"]
        client = TrioEtsi014Client(
            f"https://127.0.0.1:{self.infos[kme].api_port}",
            ca=self.pki / "ca.pem",
            cert=self.pki / "saes" / f"{sae}.pem",
            key=self.pki / "saes" / f"{sae}.key",
            kme_id=kme,
        )
        self.stack.push_async_callback(client.aclose)
        return client

    def store(self, kme: str) -> Any:
        return self.nodes[kme].store_thread._store  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def pair(node_config: ConfigFactory, pki: Path) -> AsyncIterator[Pair]:
    async with trio.open_nursery() as nursery:
        cfg_b = node_config(
            "KME_B",
            peers={"KME_A": "127.0.0.1:1"},
            links={LINK: ("KME_A", "paired", FAST)},
            api=True,
            saes=SAES,
            supply=SUPPLY,
            sync=SYNC,
        )
        node_b, info_b = await nursery.start(_run, cfg_b)
        cfg_a = node_config(
            "KME_A",
            peers={"KME_B": f"127.0.0.1:{info_b.peer_port}"},
            links={LINK: ("KME_B", "paired", FAST)},
            api=True,
            saes=SAES,
            supply=SUPPLY,
            sync=SYNC,
        )
        node_a, info_a = await nursery.start(_run, cfg_a)
        net = Pair({"KME_A": node_a, "KME_B": node_b}, {"KME_A": info_a, "KME_B": info_b}, pki)
        async with net.stack:
            yield net
        nursery.cancel_scope.cancel()


async def one_round(net: Pair) -> str:
    """SAE_A gets a key for SAE_B and SAE_B fetches it: "ok", or the 503's message."""
    try:
        (key,) = await net.client("SAE_A").get_key("SAE_B")
        (got,) = await net.client("SAE_B").get_key_with_ids("SAE_A", [key.key_id])
    except ServiceUnavailable as exc:
        return exc.message
    assert got.key == key.key
    return "ok"


async def until_refused(net: Pair) -> str:
    """Rounds until one is refused with 503: its message.  Any other error fails."""
    while True:
        outcome = await one_round(net)
        if outcome != "ok":
            return outcome
        await trio.sleep(0.02)


async def until_served(net: Pair) -> None:
    while True:
        with contextlib.suppress(Etsi014Error):
            if await one_round(net) == "ok":
                return
        await trio.sleep(0.1)


async def wait_for_link_key(net: Pair) -> None:
    while True:
        if net.store("KME_A").pool(LINK).owned_ready_bits > 65536:
            return
        await trio.sleep(0.05)


def integrity(store: Any) -> str:
    with store._reading() as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def states_of(store: Any, last: int) -> dict[int, str]:
    with store._reading() as conn:
        rows = conn.execute(
            "SELECT block_id, state FROM blocks WHERE link_id = ? AND block_id <= ?",
            (LINK, last),
        ).fetchall()
    return dict(rows)


async def ends_agree(net: Pair) -> None:
    """Until every block up to the newest both ends hold is held at both ends or neither,
    READY at both or neither (a confirm or a burn in flight passes)."""
    last = min(net.store(k).max_block_id(LINK) for k in ("KME_A", "KME_B"))
    while True:
        a, b = (states_of(net.store(k), last) for k in ("KME_A", "KME_B"))
        differ = [
            i
            for i in set(a) | set(b)
            if (a.get(i) in HELD) != (b.get(i) in HELD)
            or (a.get(i) == "ready") != (b.get(i) == "ready")
            or "received" in (a.get(i), b.get(i))
        ]
        if not differ:
            return
        await trio.sleep(0.05)


async def test_a_full_disk_is_503_naming_it_and_the_node_serves_once_space_is_back(
    node_config: ConfigFactory, pki: Path, small_disk: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with pair(node_config, pki) as net:
            await wait_for_link_key(net)
            assert await one_round(net) == "ok"
            filler = await trio.to_thread.run_sync(fill, small_disk)
            message = await until_refused(net)
            assert "cannot write: the disk is full" in message, message
            await trio.sleep(READ_ONLY_S)  # full for a while: no agent may take the node down
            await net.nodes["KME_A"].status.status({})  # type: ignore[union-attr]
            filler.unlink()
            await until_served(net)
            assert integrity(net.store("KME_A")) == "ok"
            await ends_agree(net)


def query_only(store: Any, on: bool) -> None:
    """Make SQLite refuse every write of the store's connection, as on a read-only file
    system (SQLITE_READONLY).  A tmpfs with the store's files open cannot be remounted
    read-only (the kernel answers "busy"), so this is how the test gets there."""
    with store._reading() as conn:
        conn.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")


async def test_a_read_only_store_is_503_naming_it_and_the_node_serves_once_writable(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with pair(node_config, pki) as net:
            await wait_for_link_key(net)
            assert await one_round(net) == "ok"
            query_only(net.store("KME_A"), True)
            message = await until_refused(net)
            assert "cannot write: the file system is read-only" in message, message
            # Read-only for a while: every agent's periodic work (sweeps, relays, alarms)
            # meets the refusal too, and none may take the node down.
            await trio.sleep(READ_ONLY_S)
            assert net.nodes["KME_A"].peers.is_connected("KME_B")  # type: ignore[union-attr]
            query_only(net.store("KME_A"), False)
            await until_served(net)
            assert integrity(net.store("KME_A")) == "ok"
            await ends_agree(net)
