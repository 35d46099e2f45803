"""A QKD device emulator speaking the device protocol over TCP or a pseudo-terminal.

Each emulator plays one end (``alice`` or ``bob``) of one link.  Its blocks come
from a *block source*, a function ``block_id -> (key, qber, secret_key_rate)``
that must give the same bytes at both ends of a link: that is what a real
device pair guarantees after its own post-processing.  The default source
derives block ``i`` from a shared seed (SHAKE-256); a physics-backed source can
be plugged in instead.

Block ids follow the clock, as in ``PairedDriver``: block ``i`` is due at
``(i + 1) * interval``, so two emulators started apart still agree on what
block ``i`` is and roughly when it appears.  Like a real device the emulator
keeps the last ``history_blocks`` blocks, so a KMS that reconnects can
``Resync`` to the block after the last one it stored.

This is not QKD: whoever holds the seed holds every key.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import os
import time
import tty
from collections.abc import Callable
from typing import Final

import trio

from protocol._device import (
    DEFAULT_MAX_CHUNK,
    DEFAULT_MAX_DEVICE_FRAME_SIZE,
    DEVICE_PROTOCOL_VERSIONS,
    DeviceEndpoint,
    DeviceHello,
    DeviceState,
    DeviceStatus,
    DeviceToKms,
    KeyBlockMsg,
    KmsToDevice,
    Resync,
    Role,
    Start,
    Stop,
)
from protocol._errors import RemoteProtocolError

from .._base import DriverConfigError

logger = logging.getLogger("qkd_drivers.vendor.emulator")

BlockSource = Callable[[int], tuple[bytes, float, float] | None]
"""``block_id -> (key bytes, qber, secret key rate in bit/s)``, identical at both ends;
``None`` when block ``block_id`` gave no key (both ends then skip that id)."""

DEFAULT_HISTORY_BLOCKS: Final = 4096


def seeded_source(
    seed: str, link_id: str, *, block_bits: int = 8192, qber: float = 0.02, skr: float = 8192.0
) -> BlockSource:
    """The default block source: block ``i`` is SHAKE-256(seed ‖ link ‖ i)."""
    if block_bits <= 0 or block_bits % 8:
        raise DriverConfigError(f"block_bits {block_bits}: must be a positive multiple of 8")

    def source(block_id: int) -> tuple[bytes, float, float]:
        material = hashlib.shake_256(f"qkms-qkde\0{seed}\0{link_id}\0{block_id}".encode())
        return material.digest(block_bits // 8), qber, skr

    return source


def bb84_source(
    seed: str,
    link_id: str,
    *,
    params: str = "gys",
    distance_km: float = 10.0,
    pulses_per_block: int = 10**9,
    pulse_rate_hz: float = 1e9,
) -> BlockSource:
    """Blocks from the photon-level BB84 engine (``qkd_drivers.bb84``).

    Block ``i`` simulates ``pulses_per_block`` pulses over ``distance_km`` of
    fibre with a generator seeded from (seed, link, i), so both ends compute the
    same key.  A block that aborts (QBER too high, finite-key length <= 0) gives
    ``None``.  Expensive: finite-key effects need ~1e9 pulses, seconds of CPU
    per block; run the emulator with ``source_in_thread=True``.  Raises
    ``DriverConfigError`` for unknown parameters.
    """
    import numpy as np  # the engine is optional and heavy: imported only when asked for

    from ..bb84 import Bb84ParamsError, load_params, run_block

    try:
        settings = load_params(params)
    except Bb84ParamsError as exc:
        raise DriverConfigError(f"bb84 source: {exc}") from None
    interval = pulses_per_block / pulse_rate_hz

    def source(block_id: int) -> tuple[bytes, float, float] | None:
        digest = hashlib.sha256(f"qkms-qkde-bb84\0{seed}\0{link_id}\0{block_id}".encode())
        rng = np.random.default_rng(int.from_bytes(digest.digest(), "big"))
        result = run_block(settings, distance_km, pulses_per_block, rng)
        if result.aborted or not result.key:
            return None
        return result.key, result.qber, len(result.key) * 8 / interval

    return source


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DeviceEmulator:
    """One end of one emulated QKD link.

    ``interval`` is the time between blocks in seconds.  ``clock`` gives the
    time on which block ids are based (wall clock by default, so that two
    emulator processes agree; tests pass ``trio.current_time``).
    """

    def __init__(
        self,
        *,
        device_id: str,
        link_id: str,
        role: Role,
        source: BlockSource,
        interval: float,
        clock: Callable[[], float] = time.time,
        history_blocks: int = DEFAULT_HISTORY_BLOCKS,
        status_interval: float = 1.0,
        max_frame_size: int = DEFAULT_MAX_DEVICE_FRAME_SIZE,
        source_in_thread: bool = False,
    ) -> None:
        if not interval > 0:
            raise DriverConfigError(f"emulator interval {interval}: must be positive")
        self.hello = DeviceHello(
            device_id=device_id, link_id=link_id, role=role, versions=list(DEVICE_PROTOCOL_VERSIONS)
        )
        self.source = source
        self.interval = interval
        self.history_blocks = history_blocks
        self.status_interval = status_interval
        self.max_frame_size = max_frame_size
        self.source_in_thread = source_in_thread
        self._clock = clock
        self._sessions: set[trio.CancelScope] = set()
        self.connections = 0
        self.blocks_sent = 0

    def current_block_id(self) -> int:
        """The id of the block being produced now."""
        return int(self._clock() / self.interval)

    def drop_connections(self) -> None:
        """Cut every open session (as a device reboot or a cable pull would)."""
        for scope in self._sessions:
            scope.cancel()

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one KMS over ``stream`` until it closes, breaks or is cut.

        Cancellation stops serving; the caller closes the stream.
        """
        endpoint = DeviceEndpoint(max_frame_size=self.max_frame_size)
        send_lock = trio.Lock()
        streaming = False
        last_qber: float | None = None
        last_skr: float | None = None
        commands_in, commands = trio.open_memory_channel[KmsToDevice](math.inf)

        async def send(message: DeviceToKms) -> None:
            async with send_lock:
                await stream.send_all(endpoint.send(message))

        async def heartbeat() -> None:
            while True:
                await trio.sleep(self.status_interval)
                state: DeviceState = "running" if streaming else "idle"
                await send(DeviceStatus(state=state, qber=last_qber, skr=last_skr))

        async def stream_blocks() -> None:
            nonlocal streaming, last_qber, last_skr
            next_id: int | None = None
            while True:
                command: KmsToDevice | None = None
                try:
                    command = commands.receive_nowait()
                except trio.WouldBlock:
                    wait = math.inf if next_id is None else self._due(next_id) - self._clock()
                    with trio.move_on_after(max(0.0, wait)):
                        command = await commands.receive()
                if isinstance(command, Start | Resync):
                    next_id = self._first_id(command.from_block_id)
                    streaming = True
                    await send(self.hello)
                elif isinstance(command, Stop):
                    next_id, streaming = None, False
                    await send(DeviceStatus(state="stopped"))
                elif next_id is not None:
                    next_id = max(next_id, self.current_block_id() - self.history_blocks)
                    produced = await self._produce(next_id)
                    if produced is not None:
                        key, last_qber, last_skr = produced
                        await send(
                            KeyBlockMsg(
                                block_id=next_id,
                                key=key,
                                qber=last_qber,
                                secret_key_rate=last_skr,
                                produced_at=self._due(next_id),
                            )
                        )
                        self.blocks_sent += 1
                    next_id += 1

        self.connections += 1
        with trio.CancelScope() as session:
            self._sessions.add(session)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream_blocks)
                    nursery.start_soon(heartbeat)
                    while True:
                        data = await stream.receive_some(DEFAULT_MAX_CHUNK)
                        if not data:
                            break
                        endpoint.receive_data(data)
                        while True:
                            try:
                                event = endpoint.next_event()
                            except RemoteProtocolError as exc:
                                logger.warning("emulator %s: %s", self.hello.device_id, exc)
                                continue
                            if not isinstance(event, Start | Stop | Resync):
                                break  # NEED_DATA
                            commands_in.send_nowait(event)
                    nursery.cancel_scope.cancel()
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._sessions.discard(session)

    async def run_tcp(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_remote: bool = False,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve KMS connections on ``host:port``; ``started()`` with the bound address.

        Only loopback hosts unless ``allow_remote``: the seed is the whole secret.
        Raises ``DriverConfigError`` for a remote host, ``OSError`` if the port is taken.
        """
        if not (allow_remote or is_loopback(host)):
            raise DriverConfigError(
                f"emulator host {host!r} is not a loopback address "
                "(an emulator hands out its keys to anyone: pass allow_remote to insist)"
            )
        async with trio.open_nursery() as nursery:
            listeners: list[trio.SocketListener] = await nursery.start(
                functools.partial(trio.serve_tcp, self._serve_connection, port, host=host)
            )
            bound = listeners[0].socket.getsockname()
            task_status.started((str(bound[0]), int(bound[1])))

    async def run_pty(
        self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve over a new pseudo-terminal pair; ``started()`` with the tty path for the KMS.

        The emulator keeps the slave end open too, so that a KMS closing and
        reopening the tty finds the device where it left it.
        """
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no line editing: the line carries binary frames
            path = os.ttyname(slave)
            stream = trio.lowlevel.FdStream(master)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        try:
            async with stream:
                task_status.started(path)
                await self.serve(stream)
        finally:
            os.close(slave)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        await self.serve(stream)

    async def _produce(self, block_id: int) -> tuple[bytes, float, float] | None:
        if self.source_in_thread:
            return await trio.to_thread.run_sync(self.source, block_id, abandon_on_cancel=True)
        return self.source(block_id)

    def _due(self, block_id: int) -> float:
        return (block_id + 1) * self.interval

    def _first_id(self, asked: int | None) -> int:
        now = self.current_block_id()
        if asked is None:
            return now
        return max(asked, now - self.history_blocks)
