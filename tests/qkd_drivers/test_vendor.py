"""The vendor drivers: bad input is dropped, lost devices come back, both ends resume together."""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import struct
import tty
import zlib
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from protocol._device import (
    SYNC_WORD,
    DeviceAlarm,
    DeviceEndpoint,
    DeviceHello,
    DeviceStatus,
    KeyBlockMsg,
    KmsToDevice,
    Resync,
    Start,
    Stop,
    encode_device_frame,
)
from protocol._errors import ErrorCode
from protocol._messages import to_wire
from qkd_drivers import DriverConfigError, KeyBlock, LinkEnd, LinkState
from qkd_drivers.testing import emulator_pair, link_ends
from qkd_drivers.vendor import (
    DeviceEmulator,
    VendorDeviceDriver,
    VendorParams,
    VendorSerialDriver,
    VendorSerialParams,
    VendorTcpDriver,
    VendorTcpParams,
)

LINK = "L1"
LOGGER = "qkd_drivers.vendor"


def key_of(block_id: int) -> bytes:
    return bytes([block_id % 256]) * 31 + b"\xaa"


def block(block_id: int) -> KeyBlockMsg:
    return KeyBlockMsg(
        block_id=block_id, key=key_of(block_id), qber=0.02, secret_key_rate=1e3, produced_at=1.0
    )


def hello(link_id: str = LINK) -> DeviceHello:
    return DeviceHello(device_id="qkd-a", link_id=link_id, role="alice", versions=[1])


def frame(message: msgspec.Struct) -> bytes:
    return encode_device_frame(to_wire(message))


class FakeSession:
    """The device side of one connection, scripted by the test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.endpoint = DeviceEndpoint()

    async def expect(self) -> KmsToDevice:
        """The next command the driver sends."""
        while True:
            event = self.endpoint.next_event()
            if isinstance(event, Start | Stop | Resync):
                return event
            self.endpoint.receive_data(await self.stream.receive_some())

    async def send(self, *items: msgspec.Struct | bytes) -> None:
        for item in items:
            await self.stream.send_all(item if isinstance(item, bytes) else frame(item))


class FakeDevice:
    """A hand-written device behind a stream factory of memory streams.

    While ``refusing`` is set, connecting fails as a refused TCP connection does.
    """

    def __init__(self) -> None:
        self.refusing = False
        self.attempts: list[float] = []
        self._new, self._accepted = trio.open_memory_channel[trio.abc.Stream](10)

    async def connect(self) -> trio.abc.Stream:
        self.attempts.append(trio.current_time())
        if self.refusing:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        kms, device = trio.testing.memory_stream_pair()
        self._new.send_nowait(device)
        return kms

    async def accept(self) -> FakeSession:
        return FakeSession(await self._accepted.receive())


def fake_driver(device: FakeDevice, **params: Any) -> VendorDeviceDriver:
    settings: dict[str, Any] = {"role": "alice", "backoff_initial": 1.0, "backoff_max": 8.0}
    return VendorDeviceDriver(
        LinkEnd(LINK, "a", "b"),
        VendorParams(**(settings | params)),
        connect=device.connect,
        endpoint="fake device",
        rng=random.Random(7),
        clock=trio.current_time,
    )


async def take(driver: VendorDeviceDriver, n: int, **kw: Any) -> list[KeyBlock]:
    got: list[KeyBlock] = []
    async for b in driver.blocks(**kw):
        got.append(b)
        if len(got) == n:
            break
    return got


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def header_claiming(length: int) -> bytes:
    head = struct.pack(">2sBI", SYNC_WORD, 1, length)
    return head + struct.pack(">I", zlib.crc32(head))


def corrupted(message: msgspec.Struct) -> bytes:
    data = bytearray(frame(message))
    data[-10] ^= 0x40
    return bytes(data)


# Each bad input goes between block 1 and block 2; the driver must yield exactly 1, 2.
BAD_INPUT: dict[str, tuple[bytes | msgspec.Struct, ErrorCode]] = {
    "garbage": (b"\x00\xffnot a frame at all\r\n" * 3, ErrorCode.BAD_FRAME),
    "truncated frame": (frame(block(7))[:-9], ErrorCode.BAD_CHECKSUM),
    "oversized frame": (header_claiming(1 << 30), ErrorCode.FRAME_TOO_LARGE),
    "bad checksum": (corrupted(block(2)), ErrorCode.BAD_CHECKSUM),
    "block id going backwards": (block(0), ErrorCode.BLOCK_OUT_OF_ORDER),
    "duplicated block": (block(1), ErrorCode.DUPLICATE_BLOCK),
    "undecodable body": (encode_device_frame(b"\x93\x01\x02\x03"), ErrorCode.BAD_MESSAGE),
    "qber out of range": (
        encode_device_frame(
            msgspec.msgpack.encode(
                {
                    "type": "key.block",
                    "block_id": 9,
                    "key": b"k",
                    "qber": 7.0,
                    "secret_key_rate": 1.0,
                    "produced_at": 1.0,
                }
            )
        ),
        ErrorCode.BAD_MESSAGE,
    ),
}


@pytest.mark.parametrize("bad", sorted(BAD_INPUT))
async def test_bad_input_from_the_device_is_dropped_logged_and_survived(
    bad: str, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    payload, code = BAD_INPUT[bad]
    device = FakeDevice()
    with trio.fail_after(10):
        async with fake_driver(device) as driver:
            session = await device.accept()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.expect)
                await session.send(hello(), block(1), payload, block(2))
                got = await take(driver, 2)
            assert [b.block_id for b in got] == [1, 2]
            assert [b.key for b in got] == [key_of(1), key_of(2)]
            assert driver.health().state is LinkState.UP
    [warning] = warnings(caplog)
    assert warning.code == code  # type: ignore[attr-defined]
    assert driver.statistics()["frames_dropped"] == 1


async def test_key_bytes_never_reach_the_logs(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    device = FakeDevice()
    with trio.fail_after(10):
        async with fake_driver(device) as driver:
            session = await device.accept()
            await session.send(hello(), block(1), block(1), corrupted(block(2)), block(0))
            await session.send(block(3), DeviceAlarm(severity="minor", code="c", message="m"))
            await take(driver, 2)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for i in range(4):
        assert key_of(i).hex() not in text
        assert repr(key_of(i)) not in text
        assert repr(key_of(i))[2:-1] not in text


async def test_start_asks_for_the_block_after_after(autojump_clock: trio.abc.Clock) -> None:
    device = FakeDevice()
    with trio.fail_after(10):
        async with fake_driver(device) as driver:
            session = await device.accept()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(take, driver, 1, after=41))
                assert await session.expect() == Start(from_block_id=42)
                await session.send(hello(), block(42))


async def test_a_new_iteration_on_an_open_connection_resyncs(
    autojump_clock: trio.abc.Clock,
) -> None:
    device = FakeDevice()
    with trio.fail_after(10):
        async with fake_driver(device) as driver:
            session = await device.accept()
            await session.send(hello(), block(5))
            [first] = await take(driver, 1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(take, driver, 1)
                assert await session.expect() == Start(from_block_id=None)
                assert await session.expect() == Resync(from_block_id=6)
                # Block 6 of the old stream was in flight: dropped until the hello.
                await session.send(block(6), hello(), block(6))
            assert first.block_id == 5
            assert driver.statistics()["stale_blocks"] == 1


async def test_a_lost_device_shows_down_and_the_driver_reconnects_and_resumes(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    device = FakeDevice()
    with trio.fail_after(60):
        async with fake_driver(device) as driver:
            session = await device.accept()
            await session.send(hello(), block(1), block(2))
            got: list[KeyBlock] = []

            async def consume() -> None:
                async for b in driver.blocks():
                    got.append(b)
                    if len(got) == 3:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                assert await session.expect() == Start(from_block_id=None)
                await trio.testing.wait_all_tasks_blocked()
                device.refusing = True
                await session.stream.aclose()
                await trio.sleep(5)
                health = driver.health()
                assert health.state is LinkState.DOWN
                assert health.detail.startswith("device lost: connection refused, retrying in ")
                device.refusing = False
                session = await device.accept()
                assert await session.expect() == Start(from_block_id=3)
                await session.send(hello(), block(3))
            assert [b.block_id for b in got] == [1, 2, 3]
            assert driver.health().state is LinkState.UP
    lost = [r for r in warnings(caplog) if getattr(r, "event", "") == "device.lost"]
    assert len(lost) == 1  # one warning for the loss, retries at INFO


async def test_reconnect_backoff_is_exponential_jittered_and_capped(
    autojump_clock: trio.abc.Clock,
) -> None:
    device = FakeDevice()
    device.refusing = True
    with trio.fail_after(120):
        async with fake_driver(device, backoff_initial=1.0, backoff_max=8.0) as driver:
            assert driver.health().state is LinkState.DOWN
            with trio.move_on_after(60):
                async for _ in driver.blocks():
                    pass  # pragma: no cover - the device never answers
    gaps = [b - a for a, b in zip(device.attempts, device.attempts[1:], strict=False)]
    bases = [min(8.0, 2.0**i) for i in range(len(gaps))]  # 1, 2, 4, 8, 8, ...
    assert len(gaps) >= 6
    for gap, base in zip(gaps, bases, strict=False):
        assert base / 2 <= gap <= base
    assert max(gaps) <= 8.0


async def test_a_silent_device_is_taken_for_lost(autojump_clock: trio.abc.Clock) -> None:
    device = FakeDevice()
    with trio.fail_after(60):
        async with fake_driver(device, idle_timeout=3.0) as driver:
            session = await device.accept()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(take, driver, 1)
                await session.expect()
                await trio.sleep(3.5)
                assert "nothing from the device for 3 s" in driver.health().detail
                session = await device.accept()
                await session.expect()
                await session.send(hello(), block(1))


async def test_a_device_serving_another_link_is_refused_and_retried(
    autojump_clock: trio.abc.Clock,
) -> None:
    device = FakeDevice()
    with trio.fail_after(60):
        async with fake_driver(device) as driver:
            session = await device.accept()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(take, driver, 1)
                await session.expect()
                await session.send(hello(link_id="L9"), block(1))
                await trio.testing.wait_all_tasks_blocked()
                health = driver.health()
                assert health.state is LinkState.DOWN
                assert "serves link 'L9'" in health.detail
                assert "configured for link 'L1'" in health.detail
                session = await device.accept()
                await session.expect()
                await session.send(hello(), block(1))


async def test_alarms_and_status_from_the_device_are_recorded(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    device = FakeDevice()
    alarm = DeviceAlarm(severity="major", code="laser-temperature", message="laser at 41 C")
    with trio.fail_after(10):
        async with fake_driver(device) as driver:
            session = await device.accept()
            await session.send(hello(), alarm, DeviceStatus(state="fault", detail="x"), block(1))
            await take(driver, 1)
            assert driver.last_alarm == alarm
            assert driver.statistics()["device_state"] == "fault"
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "device.alarm"]
    assert record.levelno == logging.ERROR
    assert "laser-temperature" in record.getMessage()


async def test_stop_interrupts_a_reconnect_wait(autojump_clock: trio.abc.Clock) -> None:
    device = FakeDevice()
    device.refusing = True
    driver = fake_driver(device, backoff_initial=1000.0, backoff_max=1000.0)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await driver.start()
            nursery.start_soon(take, driver, 1)
            await trio.testing.wait_all_tasks_blocked()
            await driver.stop()
    assert driver.health().state is LinkState.STOPPED


async def test_stop_tells_the_device_to_stop(autojump_clock: trio.abc.Clock) -> None:
    device = FakeDevice()
    with trio.fail_after(10):
        async with fake_driver(device) as driver:
            session = await device.accept()
            await session.send(hello(), block(1))
            await take(driver, 1)
        assert await session.expect() == Start(from_block_id=None)
        assert await session.expect() == Stop()


# --- over real transports ------------------------------------------------------------


async def test_after_a_drop_both_ends_resume_on_the_next_block_id() -> None:
    emulators = emulator_pair(link_id=LINK)
    got: dict[int, list[KeyBlock]] = {0: [], 1: []}
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            drivers = []
            for end, emulator in zip(link_ends(LINK), emulators, strict=True):
                host, port = await nursery.start(emulator.run_tcp)
                params = VendorTcpParams(host=host, port=port, backoff_initial=0.01)
                drivers.append(VendorTcpDriver(end, params))

            async def run(index: int) -> None:
                async with drivers[index] as driver:
                    async for b in driver.blocks():
                        got[index].append(b)
                        if len(got[index]) == 3:
                            emulators[index].drop_connections()
                        if len(got[index]) == 8:
                            return

            async with trio.open_nursery() as ends:
                ends.start_soon(run, 0)
                ends.start_soon(run, 1)
            nursery.cancel_scope.cancel()
    for index, emulator in enumerate(emulators):
        ids = [b.block_id for b in got[index]]
        assert ids == list(range(ids[0], ids[0] + 8)), "no gap and no repeat across the drop"
        assert emulator.connections == 2
    keys = [{b.block_id: b.key for b in got[i]} for i in (0, 1)]
    common = keys[0].keys() & keys[1].keys()
    assert common
    assert all(keys[0][i] == keys[1][i] for i in common)


async def emulate(
    emulator: DeviceEmulator,
    port: int = 0,
    *,
    task_status: trio.TaskStatus[tuple[trio.CancelScope, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``emulator`` on 127.0.0.1 until the scope it hands back is cancelled."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            _, bound = await nursery.start(emulator.run_tcp, "127.0.0.1", port)
            task_status.started((scope, bound))


async def test_the_tcp_driver_waits_out_an_absent_emulator_and_resumes() -> None:
    alice, _ = emulator_pair(link_id=LINK)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            first_run, port = await nursery.start(emulate, alice)
            params = VendorTcpParams(
                host="127.0.0.1", port=port, backoff_initial=0.05, backoff_max=0.1
            )
            async with VendorTcpDriver(LinkEnd(LINK, "a", "b"), params) as driver:
                got = await take(driver, 2)
                first_run.cancel()
                with trio.move_on_after(0.3):
                    async for b in driver.blocks():
                        got.append(b)  # pragma: no cover - the emulator is gone
                health = driver.health()
                assert health.state is LinkState.DOWN
                assert "connection refused" in health.detail
                await nursery.start(emulate, alice, port)
                got += await take(driver, 2)
            nursery.cancel_scope.cancel()
    ids = [b.block_id for b in got]
    assert ids[2] == ids[1] + 1, "resumed on the block after the last one yielded"


async def test_serial_noise_on_the_line_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    params = VendorSerialParams(path=path, role="alice", idle_timeout=5.0)
    try:
        with trio.fail_after(10):
            device = FakeSession(trio.lowlevel.FdStream(master))
            async with VendorSerialDriver(LinkEnd(LINK, "a", "b"), params) as driver:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(device.expect)
                    await device.send(b"\x7f\x00line noise", hello(), block(1), b"\xc1\x51\x01")
                    await device.send(block(2))
                    got = await take(driver, 2)
            await device.stream.aclose()
    finally:
        os.close(slave)
    assert [b.block_id for b in got] == [1, 2]
    # The noise before the hello, and the torn header before block 2: one report each.
    codes = [r.code for r in warnings(caplog)]  # type: ignore[attr-defined]
    assert codes == [ErrorCode.BAD_FRAME, ErrorCode.BAD_FRAME]


async def test_a_missing_serial_device_shows_down(tmp_path: Any) -> None:
    params = VendorSerialParams(path=str(tmp_path / "ttyQKD0"))
    with trio.fail_after(5):
        async with VendorSerialDriver(LinkEnd(LINK, "a", "b"), params) as driver:
            health = driver.health()
    assert health.state is LinkState.DOWN
    assert health.detail.startswith("device lost: no such file or directory, retrying in")


async def test_a_file_that_is_not_a_tty_shows_down(tmp_path: Any) -> None:
    not_a_tty = tmp_path / "plain"
    not_a_tty.write_bytes(b"")
    params = VendorSerialParams(path=str(not_a_tty))
    with trio.fail_after(5):
        async with VendorSerialDriver(LinkEnd(LINK, "a", "b"), params) as driver:
            assert driver.health().state is LinkState.DOWN
            assert "plain" in driver.health().detail


# --- configuration -------------------------------------------------------------------


def test_an_unsupported_baud_rate_is_a_config_error_naming_the_fix() -> None:
    with pytest.raises(DriverConfigError, match=r"baud 12345 .*try one of 9600"):
        VendorSerialDriver.parse_params({"path": "/dev/ttyUSB0", "baud": 12345})


def test_tcp_params_need_host_and_port() -> None:
    with pytest.raises(DriverConfigError, match="vendor-tcp"):
        VendorTcpDriver.parse_params({"host": "10.0.0.7"})
    params = VendorTcpDriver.parse_params({"host": "10.0.0.7", "port": "4000", "role": "bob"})
    assert (params.host, params.port, params.role) == ("10.0.0.7", 4000, "bob")


def test_unknown_params_are_refused() -> None:
    with pytest.raises(DriverConfigError, match="prot"):
        VendorTcpDriver.parse_params({"host": "h", "port": 1, "prot": 2})


# --- the emulator's block sources ----------------------------------------------------


async def test_blocks_a_source_has_no_key_for_are_skipped_at_both_ends() -> None:
    def even_only(block_id: int) -> tuple[bytes, float, float] | None:
        return None if block_id % 2 else (key_of(block_id), 0.03, 100.0)

    emulators = [
        DeviceEmulator(
            device_id=f"d{i}",
            link_id=LINK,
            role=role,
            source=even_only,
            interval=0.01,
            source_in_thread=True,
        )
        for i, role in enumerate(("alice", "bob"))
    ]
    got: list[list[int]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for end, emulator in zip(link_ends(LINK), emulators, strict=True):
                host, port = await nursery.start(emulator.run_tcp)
                async with VendorTcpDriver(end, VendorTcpParams(host=host, port=port)) as driver:
                    blocks = await take(driver, 3)
                    got.append([b.block_id for b in blocks])
                    assert all(b.key == key_of(b.block_id) for b in blocks)
            nursery.cancel_scope.cancel()
    for ids in got:
        assert all(i % 2 == 0 for i in ids)
        assert ids == sorted(set(ids))


def test_the_bb84_source_gives_both_ends_the_same_outcome() -> None:
    pytest.importorskip("qkd_drivers.bb84")
    from qkd_drivers.vendor import bb84_source

    alice = bb84_source("seed", LINK, distance_km=25.0, pulses_per_block=100_000)
    bob = bb84_source("seed", LINK, distance_km=25.0, pulses_per_block=100_000)
    # 1e5 pulses are far too few for a finite-key bound: the block aborts, at both ends.
    assert alice(7) is None
    assert bob(7) is None


def test_the_bb84_source_refuses_unknown_parameters() -> None:
    pytest.importorskip("qkd_drivers.bb84")
    from qkd_drivers.vendor import bb84_source

    with pytest.raises(DriverConfigError, match="bb84 source: parameters 'gsy'"):
        bb84_source("seed", LINK, params="gsy")
