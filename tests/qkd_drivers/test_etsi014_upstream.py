"""The ``etsi014`` driver against our own KME as the upstream "device pair".

Two real qkmsd nodes, DA and DB, joined by a ``paired`` link, serve ETSI 014 on
127.0.0.1: ``a_sae`` is attached to DA and ``b_sae`` to DB.  The master driver
is ``a_sae`` pulling from DA, the slave driver ``b_sae`` fetching from DB.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from cli._admin import AdminClient
from cli._lab import free_port
from cli._pki import init_ca, issue_node, issue_sae
from qkd_drivers import (
    Driver,
    DriverConfigError,
    Etsi014Driver,
    Etsi014Params,
    KeyBlock,
    LinkEnd,
    LinkState,
    known_drivers,
    make_driver,
)
from qkd_drivers.testing import (
    DriverPair,
    check_agreement,
    check_lifecycle,
    check_prompt_cancellation,
    check_resume_after,
    link_ends,
)
from qkmsd.app import Node, NodeInfo
from qkmsd.config import Config, load_config
from qkmsd.keystore import KeyState, KeyStore, generate_master_key, load_master_key

DEVICE_LINK = "DA~DB"
LINK = "N1~N2"
FAST = {"rate_bps": 131072.0, "block_bits": 1024, "seed": "etsi014-upstream-device-seed"}
SYNC = {"timeout_s": 10.0, "heartbeat_s": 1.0, "announce_interval_s": 0.05, "reconnect_max_s": 0.5}
SAES = {"a_sae": "DA", "b_sae": "DB"}
LOGGER = "qkd_drivers.etsi014"


# --- a PKI and nodes -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("etsi014-pki")
    init_ca(directory)
    for node in ("DA", "DB", "N1", "N2"):
        issue_node(directory, node)
    for sae in ("a_sae", "b_sae", "x_sae"):  # x_sae: certified, but attached nowhere
        issue_sae(directory, sae)
    return directory


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        items = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None)
        return "{ " + items + " }"
    return json.dumps(value)


def write_config(
    home: Path,
    pki: Path,
    node: str,
    *,
    peer_port: int = 0,
    api_port: int | None = None,
    peers: dict[str, int] | None = None,
    links: dict[str, tuple[str, str, dict[str, Any]]] | None = None,
) -> Config:
    """A node config (and master key) under ``home/node``, loaded as qkmsd loads it."""
    directory = home / node
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "master.key"
    if not key.exists():
        generate_master_key(key)
    lines = [
        "[node]",
        f"id = {_toml(node)}",
        f"state_dir = {_toml(str(directory / 'state'))}",
        f"master_key_file = {_toml(str(key))}",
        "[tls]",
        f"ca = {_toml(str(pki / 'ca.pem'))}",
        f"cert = {_toml(str(pki / 'nodes' / f'{node}.pem'))}",
        f"key = {_toml(str(pki / 'nodes' / f'{node}.key'))}",
        "[listen]",
        f'peer = "127.0.0.1:{peer_port}"',
        f"admin_socket = {_toml(str(directory / 'admin.sock'))}",
    ]
    if api_port is not None:
        lines.append(f'api = "127.0.0.1:{api_port}"')
    lines += ["[sync]", *(f"{k} = {v}" for k, v in SYNC.items())]
    for peer, port in (peers or {}).items():
        lines += [f'[peers."{peer}"]', f'address = "127.0.0.1:{port}"']
    if api_port is not None:
        for sae, kme in SAES.items():
            lines += [f'[saes."{sae}"]', f'kme = "{kme}"']
    for link_id, (peer, driver, params) in (links or {}).items():
        lines += [f'[links."{link_id}"]', f'peer = "{peer}"', f'driver = "{driver}"']
        lines.append(f"params = {_toml(params)}")
    path = directory / "qkmsd.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


@dataclasses.dataclass
class Running:
    """One node running in the test's nursery, stoppable on its own."""

    config: Config
    info: NodeInfo
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


async def run_node(nursery: trio.Nursery, config: Config) -> Running:
    scope = trio.CancelScope()
    done = trio.Event()

    async def runner(*, task_status: trio.TaskStatus[NodeInfo]) -> None:
        try:
            with scope:
                await Node(config).run(task_status=task_status)
        finally:
            done.set()

    info: NodeInfo = await nursery.start(runner)
    return Running(config, info, scope, done)


@dataclasses.dataclass
class Devices:
    """The upstream device pair: DA and DB, their ports and configs."""

    home: Path
    pki: Path
    ports: dict[str, dict[str, int]]
    running: dict[str, Running]

    def url(self, node: str) -> str:
        return f"https://127.0.0.1:{self.ports[node]['api']}"

    def config(self, node: str) -> Config:
        peer = "DB" if node == "DA" else "DA"
        return write_config(
            self.home,
            self.pki,
            node,
            peer_port=self.ports[node]["peer"],
            api_port=self.ports[node]["api"],
            peers={peer: self.ports[peer]["peer"]},
            links={DEVICE_LINK: (peer, "paired", FAST)},
        )

    async def start(self, nursery: trio.Nursery, node: str) -> None:
        self.running[node] = await run_node(nursery, self.config(node))

    async def stop(self, node: str) -> None:
        await self.running.pop(node).stop()


def make_devices(tmp_path: Path, pki: Path) -> Devices:
    ports = {n: {"peer": free_port(), "api": free_port()} for n in ("DA", "DB")}
    return Devices(tmp_path / "devices", pki, ports, {})


@contextlib.asynccontextmanager
async def device_pair(
    tmp_path: Path, pki: Path, *, start: tuple[str, ...] = ("DA", "DB")
) -> AsyncIterator[tuple[Devices, trio.Nursery]]:
    devices = make_devices(tmp_path, pki)
    async with trio.open_nursery() as nursery:
        for node in start:
            await devices.start(nursery, node)
        yield devices, nursery
        nursery.cancel_scope.cancel()


def sae_files(pki: Path, sae: str) -> dict[str, str]:
    return {
        "ca": str(pki / "ca.pem"),
        "cert": str(pki / "saes" / f"{sae}.pem"),
        "key": str(pki / "saes" / f"{sae}.key"),
    }


def params(pki: Path, url: str, role: str, **overrides: Any) -> dict[str, Any]:
    sae, peer = ("a_sae", "b_sae") if role == "master" else ("b_sae", "a_sae")
    return {
        "url": url,
        **sae_files(pki, overrides.pop("sae", sae)),
        "role": role,
        "peer_sae": peer,
        "key_size": 256,
        "poll_interval_s": 0.05,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        **overrides,
    }


def driver(end: LinkEnd, raw: dict[str, Any]) -> Etsi014Driver:
    made = make_driver("etsi014", end, raw)
    assert isinstance(made, Etsi014Driver)
    made._rng = random.Random(7)
    return made


def ends() -> tuple[LinkEnd, LinkEnd]:
    return LinkEnd(LINK, "N1", "N2"), LinkEnd(LINK, "N2", "N1")


async def take(end: Driver, n: int, *, after: int | None = None) -> list[KeyBlock]:
    got: list[KeyBlock] = []
    async with contextlib.aclosing(end.blocks(after=after)) as blocks:  # type: ignore[type-var]
        async for block in blocks:
            got.append(block)
            if len(got) >= n:
                break
    return got


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait for a state another task reaches by talking to a real server."""
    while not predicate():  # noqa: ASYNC110 - the drivers expose no event for this
        await trio.sleep(0.02)


# --- parameters ----------------------------------------------------------------------


def test_etsi014_is_registered_and_validates_its_params(pki: Path) -> None:
    assert "etsi014" in known_drivers()
    good = params(pki, "https://127.0.0.1:8443", "slave")
    made = make_driver("etsi014", ends()[1], good)
    assert made.fetches_by_reference
    assert not make_driver("etsi014", ends()[0], {**good, "role": "master"}).fetches_by_reference
    assert isinstance(made.params, Etsi014Params) and made.params.keys_per_request == 16
    for bad, words in [
        ({**good, "colour": "red"}, "unknown field"),
        ({**good, "role": "primary"}, "role"),
        ({**good, "url": "http://127.0.0.1:8443"}, "https://host:port"),
        ({**good, "url": "https://127.0.0.1:99999"}, "https://host:port"),
        ({**good, "key_size": 100}, "multiple of 8"),
        ({**good, "keys_per_request": 0}, "keys_per_request"),
        ({k: v for k, v in good.items() if k != "peer_sae"}, "peer_sae"),
    ]:
        with pytest.raises(DriverConfigError, match=words):
            make_driver("etsi014", ends()[1], bad)


# --- against the device pair ---------------------------------------------------------


async def test_slave_fetches_the_masters_blocks_by_reference(tmp_path: Path, pki: Path) -> None:
    with trio.fail_after(40):
        async with device_pair(tmp_path, pki) as (devices, _):
            a_end, b_end = ends()
            master = driver(a_end, params(pki, devices.url("DA"), "master", keys_per_request=8))
            slave = driver(b_end, params(pki, devices.url("DB"), "slave", keys_per_request=5))
            async with master, slave:
                assert master.health().state is LinkState.UP
                assert slave.health().state is LinkState.UP
                sent = await take(master, 20)
                ids = [b.block_id for b in sent]
                assert ids == list(range(ids[0], ids[0] + 20))
                assert all(b.ref and len(b.key) == 32 for b in sent)
                assert len({b.ref for b in sent}) == 20
                await slave.fetch([(b.block_id, b.ref) for b in sent if b.ref])
                got = await take(slave, 20)
        assert [(b.block_id, b.ref, b.key) for b in got] == [
            (b.block_id, b.ref, b.key) for b in sent
        ]
        assert all(b.link_id == LINK for b in got)
        assert master.health().blocks_produced == slave.health().blocks_produced == 20
        assert master.health().state is LinkState.STOPPED


async def test_master_resumes_after_the_given_block(tmp_path: Path, pki: Path) -> None:
    with trio.fail_after(30):
        async with device_pair(tmp_path, pki) as (devices, _):
            master = driver(ends()[0], params(pki, devices.url("DA"), "master"))
            async with master:
                first = await take(master, 3, after=41)
                assert [b.block_id for b in first] == [42, 43, 44]
                # A new iteration continues the counter; a larger ``after`` jumps ahead.
                assert [b.block_id for b in await take(master, 1)] == [45]
                assert [b.block_id for b in await take(master, 2, after=99)] == [100, 101]
                assert [b.block_id for b in await take(master, 1, after=10)] == [102]
            # An empty store: ids start from the clock, so a wiped master reuses no ids.
            fresh = driver(ends()[0], params(pki, devices.url("DA"), "master"))
            async with fresh:
                [block] = await take(fresh, 1)
            assert block.block_id > 1_600_000_000_000


async def test_slave_drops_an_unknown_reference_and_fetches_the_rest(
    tmp_path: Path, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="qkd_drivers")
    with trio.fail_after(30):
        async with device_pair(tmp_path, pki) as (devices, _):
            a_end, b_end = ends()
            master = driver(a_end, params(pki, devices.url("DA"), "master"))
            slave = driver(b_end, params(pki, devices.url("DB"), "slave"))
            async with master, slave:
                sent = await take(master, 4)
                refs = [(b.block_id, b.ref or "") for b in sent]
                bogus = (sent[1].block_id, "00000000-0000-4000-8000-000000000000")
                await slave.fetch([refs[0], bogus, refs[2], refs[3]])
                got = await take(slave, 3)
                assert [b.block_id for b in got] == [refs[0][0], refs[2][0], refs[3][0]]
                assert [b.key for b in got] == [sent[0].key, sent[2].key, sent[3].key]
                assert slave.counters["refs_dropped"] == 1
                assert slave.statistics()["pending_refs"] == 0
                # Fetched once already: the device refuses it again, and nothing is yielded.
                await slave.fetch([refs[0]])
                with trio.move_on_after(0.5):
                    extra = await take(slave, 1)
                    pytest.fail(f"a key was delivered twice: {extra}")
                assert slave.counters["refs_dropped"] == 2
                assert slave.health().state is LinkState.UP
    dropped = [r for r in caplog.records if getattr(r, "event", "") == "etsi014.ref_refused"]
    assert len(dropped) == 2 and bogus[1] in dropped[0].getMessage()
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    for block in sent:
        assert block.key.hex() not in text
        assert base64.b64encode(block.key).decode() not in text


async def test_device_kme_down_then_back(tmp_path: Path, pki: Path) -> None:
    with trio.fail_after(40):
        async with device_pair(tmp_path, pki, start=("DB",)) as (devices, nursery):
            master = driver(ends()[0], params(pki, devices.url("DA"), "master"))
            async with master:
                health = master.health()
                assert health.state is LinkState.DOWN
                assert "device KME unreachable" in health.detail
                got: list[KeyBlock] = []

                async def read() -> None:
                    got.extend(await take(master, 2))

                async with trio.open_nursery() as readers:
                    readers.start_soon(read)
                    await eventually(lambda: master.counters["failures"] >= 3)
                    assert master.health().state is LinkState.DOWN
                    await devices.start(nursery, "DA")
                assert len(got) == 2
                assert master.health().state is LinkState.UP
                assert "unreachable" not in master.health().detail


async def test_503_short_of_key_waits_and_retries(tmp_path: Path, pki: Path) -> None:
    """DB is away: DA answers 503 (cannot reach its pair) and the driver keeps trying."""
    with trio.fail_after(40):
        async with device_pair(tmp_path, pki) as (devices, nursery):
            a_end, b_end = ends()
            # One key per request: nothing buffered when DB goes away.
            master = driver(a_end, params(pki, devices.url("DA"), "master", keys_per_request=1))
            async with master:
                await take(master, 1)  # DA has key for b_sae
                await devices.stop("DB")
                got: list[KeyBlock] = []

                async def read() -> None:
                    got.extend(await take(master, 1))

                async with trio.open_nursery() as readers:
                    readers.start_soon(read)
                    await eventually(lambda: "503" in master.health().detail)
                    refused = master.counters["failures"]
                    await eventually(lambda: master.counters["failures"] >= refused + 2)
                    health = master.health()
                    assert health.state is LinkState.UP  # the device is there, short of key
                    assert "cannot serve now (503)" in health.detail
                    assert "DB" in health.detail
                    assert not got
                    await devices.start(nursery, "DB")
                assert len(got) == 1 and got[0].ref
            # The key pulled after the pair came back is at DB too.
            slave = driver(b_end, params(pki, devices.url("DB"), "slave"))
            async with slave:
                await slave.fetch([(got[0].block_id, got[0].ref)])
                [fetched] = await take(slave, 1)
            assert fetched.key == got[0].key


async def test_unknown_sae_certificate_is_down_with_a_clear_reason(
    tmp_path: Path, pki: Path
) -> None:
    with trio.fail_after(30):
        async with device_pair(tmp_path, pki, start=("DA",)) as (devices, _):
            master = driver(ends()[0], params(pki, devices.url("DA"), "master", sae="x_sae"))
            async with master:
                health = master.health()
                assert health.state is LinkState.DOWN
                assert "device KME refused our certificate" in health.detail
                with trio.move_on_after(0.5):
                    await take(master, 1)
                    pytest.fail("a block from a device that refuses us")
                assert master.health().state is LinkState.DOWN
                assert master.counters["failures"] >= 2


async def test_unknown_peer_sae_is_down_naming_the_devices_reason(
    tmp_path: Path, pki: Path
) -> None:
    with trio.fail_after(30):
        async with device_pair(tmp_path, pki, start=("DA",)) as (devices, _):
            master = driver(ends()[0], params(pki, devices.url("DA"), "master", peer_sae="nobody"))
            async with master:
                health = master.health()
                assert health.state is LinkState.DOWN
                assert "refused the request (400)" in health.detail
                assert "nobody" in health.detail


async def test_stop_ends_an_idle_slave_and_a_waiting_master(tmp_path: Path, pki: Path) -> None:
    with trio.fail_after(30):
        async with device_pair(tmp_path, pki, start=("DB",)) as (devices, _):
            a_end, b_end = ends()
            slave = driver(b_end, params(pki, devices.url("DB"), "slave"))
            master = driver(a_end, params(pki, devices.url("DA"), "master"))  # DA is not up
            await slave.start()
            await master.start()
            async with trio.open_nursery() as readers:
                readers.start_soon(take, slave, 1)
                readers.start_soon(take, master, 1)
                await trio.sleep(0.2)
                await slave.stop()
                await master.stop()
            assert slave.health().state is LinkState.STOPPED
            assert master.health().state is LinkState.STOPPED


# --- the conformance suite -----------------------------------------------------------


class ForwardingMaster(Driver):
    """The master end, handing each block's ref to the slave as the key manager would.

    The conformance suite expects both ends to produce the same blocks on their own; a
    fetch-by-reference slave produces only what the master's refs ask for.  This adapter
    plays the key manager's part (announce with refs → ``fetch``) between the two ends.
    """

    kind = Etsi014Driver.kind
    Params = Etsi014Params

    def __init__(self, master: Etsi014Driver, slave: Etsi014Driver) -> None:
        super().__init__(master.link, master.params)
        self._master = master
        self._slave = slave

    async def start(self) -> None:
        await self._master.start()

    async def stop(self) -> None:
        await self._master.stop()

    def health(self) -> Any:
        return self._master.health()

    async def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        async with contextlib.aclosing(self._master.blocks(after=after)) as inner:  # type: ignore[type-var]
            async for block in inner:
                assert block.ref is not None
                await self._slave.fetch([(block.block_id, block.ref)])
                yield block


async def test_etsi014_passes_the_conformance_suite_through_adapters(
    tmp_path: Path, pki: Path
) -> None:
    """``check_driver`` as a whole does not fit fetch-by-reference (see ``ForwardingMaster``).

    Lifecycle, agreement and resume run with the master forwarding its refs.  Prompt
    cancellation cannot: its slave may only yield what the master yielded just before, and
    its own cancelled iterations can use that up.  There the slave is fed by a background
    master of its own (no agreement is checked in that check).
    """
    async with device_pair(tmp_path, pki) as (devices, _):

        def pair() -> tuple[Etsi014Driver, Etsi014Driver]:
            a_end, b_end = link_ends()
            return (
                driver(a_end, params(pki, devices.url("DA"), "master")),
                driver(b_end, params(pki, devices.url("DB"), "slave", keys_per_request=1)),
            )

        @contextlib.asynccontextmanager
        async def forwarding() -> AsyncIterator[DriverPair]:
            master, slave = pair()
            yield ForwardingMaster(master, slave), slave

        @contextlib.asynccontextmanager
        async def fed() -> AsyncIterator[DriverPair]:
            master, slave = pair()
            feeder = driver(
                master.link, params(pki, devices.url("DA"), "master", max_rate_keys_s=100.0)
            )

            async def pump() -> None:
                async with feeder:
                    async for block in feeder.blocks():
                        assert block.ref is not None
                        await slave.fetch([(block.block_id, block.ref)])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                yield master, slave
                nursery.cancel_scope.cancel()

        with trio.fail_after(60):
            await check_lifecycle(forwarding)
            await check_agreement(forwarding)
            await check_resume_after(forwarding)
            await check_prompt_cancellation(fed)


# --- end to end: two qkmsd nodes whose link is an etsi014 pair -----------------------


def ready_blocks(config: Config) -> dict[int, bytes]:
    with KeyStore.open(config.keystore_path, load_master_key(config.master_key_file)) as store:
        top = store.max_block_id(LINK) or 0
        states = store.states(LINK, range(max(0, top - 5000), top + 1))
        return {i: store.read_block(LINK, i) for i, s in states.items() if s is KeyState.READY}


def admin(info: NodeInfo, method: str, **kw: Any) -> dict[str, Any]:
    return AdminClient(info.admin_socket).call(method, **kw)


async def test_two_nodes_share_pools_filled_through_an_etsi014_device_pair(
    tmp_path: Path, pki: Path
) -> None:
    with trio.fail_after(60):
        async with device_pair(tmp_path, pki) as (devices, nursery):
            home = tmp_path / "nodes"
            n1_port, n2_port = free_port(), free_port()
            big = {"key_size": 8192, "keys_per_request": 4}
            n2 = await run_node(
                nursery,
                write_config(
                    home,
                    pki,
                    "N2",
                    peer_port=n2_port,
                    peers={"N1": n1_port},
                    links={LINK: ("N1", "etsi014", params(pki, devices.url("DB"), "slave"))},
                ),
            )
            n1 = await run_node(
                nursery,
                write_config(
                    home,
                    pki,
                    "N1",
                    peer_port=n1_port,
                    peers={"N2": n2_port},
                    links={
                        LINK: ("N2", "etsi014", params(pki, devices.url("DA"), "master", **big))
                    },
                ),
            )

            async def link(node: Running) -> dict[str, Any]:
                result = await trio.to_thread.run_sync(admin, node.info, "links")
                return dict(result["links"][0])

            while True:
                links = [await link(n) for n in (n1, n2)]
                if all(x["ready_blocks"] >= 6 for x in links):
                    break
                await trio.sleep(0.1)
            assert [x["driver"] for x in links] == ["etsi014", "etsi014"]
            assert all(x["driver_state"] == "up" for x in links)
            newest = min(x["newest_block_id"] for x in links)
            window = {"link_id": LINK, "first": newest - 5, "last": newest}
            checks = [
                await trio.to_thread.run_sync(functools.partial(admin, n.info, "check", **window))
                for n in (n1, n2)
            ]
            assert checks[0]["ready_ids"] and checks[0] == checks[1]
            await n1.stop()
            await n2.stop()
    a, b = ready_blocks(n1.config), ready_blocks(n2.config)
    # A confirmation in flight when the nodes stopped leaves a newer block READY at one end
    # and RECEIVED at the other; everything up to the checked window is READY at both.
    assert len(a) >= 6 and {i for i in a.keys() ^ b.keys() if i <= newest} == set()
    assert all(a[i] == b[i] and len(a[i]) == 1024 for i in a.keys() & b.keys())


def test_params_struct_forbids_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"url": "https://x:1", "nope": 1}, Etsi014Params)
