"""Drivers for QKD devices speaking the framed device protocol over TCP or a serial line.

One core, ``VendorDeviceDriver``, does the work over any ``trio.abc.Stream``
that a *stream factory* opens; ``VendorTcpDriver`` and ``VendorSerialDriver``
only say how to open one.

The core owns one connection at a time.  ``start()`` tries to connect once;
``blocks()`` asks the device to stream (``Start`` on a new connection,
``Resync`` on one already open) from the block after the last one this end
yielded, or after ``after``, so that after a drop both ends of a link resume on
the same block id.  When the device is lost (refused, closed, broken, silent
for ``idle_timeout``, or not the device configured) the core closes the
connection, reports DOWN in ``health()`` and reconnects with jittered,
capped exponential backoff.  Bad input (noise, bad checksums, truncated or
oversized frames, block ids that repeat or go backwards) is dropped with a
structured warning and never reaches the caller; key bytes are never logged.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import random
import termios
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import trio

from protocol._device import (
    DEFAULT_MAX_CHUNK,
    DEFAULT_MAX_DEVICE_FRAME_SIZE,
    HELLO_REFUSALS,
    DeviceAlarm,
    DeviceClient,
    DeviceHello,
    DeviceStatus,
    KeyBlockMsg,
)
from protocol._errors import RemoteProtocolError

from .._base import Driver, DriverConfigError, DriverHealth, KeyBlock, LinkEnd, LinkState

logger = logging.getLogger("qkd_drivers.vendor")

StreamFactory = Callable[[], Awaitable[trio.abc.Stream]]
"""Opens a new connection to the device.  May raise ``OSError``."""

_ALARM_LEVELS = {
    "critical": logging.ERROR,
    "major": logging.ERROR,
    "minor": logging.WARNING,
    "warning": logging.WARNING,
    "indeterminate": logging.INFO,
    "cleared": logging.INFO,
}

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class VendorParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What every vendor driver accepts besides its transport."""

    device_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    role: Literal["alice", "bob"] | None = None
    backoff_initial: Seconds = 0.5
    backoff_max: Seconds = 30.0
    idle_timeout: Seconds = 30.0
    max_frame_size: Annotated[int, msgspec.Meta(ge=1024, le=1 << 24)] = (
        DEFAULT_MAX_DEVICE_FRAME_SIZE
    )


class VendorTcpParams(VendorParams, kw_only=True, forbid_unknown_fields=True):
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


class VendorSerialParams(VendorParams, kw_only=True, forbid_unknown_fields=True):
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    baud: Annotated[int, msgspec.Meta(ge=50, le=4_000_000)] = 115200


class _DeviceLost(Exception):
    """The connection is gone or useless; ``reason`` is for operators."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Stopped(Exception):
    """``stop()`` closed the connection under a running ``blocks()``."""


def _describe(exc: BaseException) -> str:
    """An operator's reason: "connection refused", not a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):  # trio.open_tcp_stream: one error per address
        return ", ".join(dict.fromkeys(_describe(e) for e in cause.exceptions))
    if cause is not None:
        return _describe(cause)
    return str(exc) or type(exc).__name__


class VendorDeviceDriver(Driver):
    """The shared core: the device protocol over streams from ``connect``.

    ``endpoint`` names the device's address for messages (``tcp 10.0.0.7:4000``).
    ``rng`` jitters the backoff (pass a seeded one in tests).
    """

    kind: ClassVar[str] = "vendor"
    Params: ClassVar[type[msgspec.Struct]] = VendorParams
    params: VendorParams

    def __init__(
        self,
        link: LinkEnd,
        params: VendorParams,
        *,
        connect: StreamFactory,
        endpoint: str,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(link, params)
        self.endpoint = endpoint
        self._connect = connect
        self._rng = rng or random.Random()
        self._clock = clock
        self._stream: trio.abc.Stream | None = None
        self._client: DeviceClient | None = None
        self._fresh = False  # connected, nothing asked of the device yet
        self._send_lock = trio.Lock()
        self._stopped = True
        self._stopping = trio.Event()
        self._failures = 0
        self._retry_in = 0.0
        self._last_yielded: int | None = None
        self._health = DriverHealth(LinkState.STOPPED)
        self.device: DeviceHello | None = None
        self.last_status: DeviceStatus | None = None
        self.last_alarm: DeviceAlarm | None = None
        self.counters = {
            "connects": 0,
            "disconnects": 0,
            "frames_dropped": 0,
            "stale_blocks": 0,
            "alarms": 0,
        }

    # --- the Driver interface ------------------------------------------------------

    async def start(self) -> None:
        """Try to connect once.  A device that is not there yet shows DOWN, not an error."""
        self._stopped = False
        self._stopping = trio.Event()
        self._health = DriverHealth(LinkState.STARTING, detail=f"connecting to {self.endpoint}")
        try:
            await self._open()
        except _DeviceLost as exc:
            self._lost(exc)

    async def stop(self) -> None:
        """Ask the device to stop and close the connection (within one second, shielded)."""
        self._stopped = True
        self._stopping.set()
        stream, client = self._stream, self._client
        self._stream = self._client = None
        if stream is not None:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1.0):
                    try:
                        if client is not None:
                            async with self._send_lock:
                                await stream.send_all(client.stop())
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                await trio.aclose_forcefully(stream)
        self._health = dataclasses.replace(self._health, state=LinkState.STOPPED, detail="stopped")

    async def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        """Yield the device's blocks, reconnecting as needed, until ``stop()``.

        Resumes from ``after + 1`` if given, else after the last block this
        driver yielded, else wherever the device is.  Cancelling the iteration
        leaves the connection open for the next ``blocks()`` call.
        """
        if self._stopped:
            return
        if after is not None:
            resume: int | None = after + 1
        elif self._last_yielded is not None:
            resume = self._last_yielded + 1
        else:
            resume = None
        asked = False
        while not self._stopped:
            try:
                if self._stream is None:
                    await self._reconnect()
                    asked = False
                if not asked:
                    await self._ask(resume)
                    asked = True
                block = await self._next_block()
            except _DeviceLost as exc:
                await self._close()
                self._lost(exc)
                continue
            except _Stopped:
                return
            if resume is not None and block.block_id < resume:
                # The session enforces this already; a block must never slip through.
                self._drop("block-out-of-order", f"block {block.block_id} before {resume}")
                continue
            self._record(block)
            resume = block.block_id + 1
            yield block

    def health(self) -> DriverHealth:
        return self._health

    def statistics(self) -> dict[str, Any]:
        """Counters for the monitoring agent (no key material)."""
        return {
            **self.counters,
            "state": self._health.state.value,
            "device_id": self.device.device_id if self.device else None,
            "last_block_id": self._last_yielded,
            "device_state": self.last_status.state if self.last_status else None,
        }

    # --- connection ----------------------------------------------------------------

    async def _open(self) -> None:
        try:
            stream = await self._connect()
        except OSError as exc:
            raise _DeviceLost(_describe(exc)) from None
        self._stream = stream
        self._client = DeviceClient(
            link_id=self.link.link_id,
            role=self.params.role,
            device_id=self.params.device_id,
            max_frame_size=self.params.max_frame_size,
        )
        self._fresh = True
        self.counters["connects"] += 1
        self._health = dataclasses.replace(
            self._health, state=LinkState.UP, detail=f"connected to {self.endpoint}"
        )
        logger.info(
            "link %s: connected to device at %s",
            self.link.link_id,
            self.endpoint,
            extra={"event": "device.connected", "link_id": self.link.link_id},
        )

    async def _reconnect(self) -> None:
        while self._stream is None:
            with trio.move_on_after(self._retry_in):
                await self._stopping.wait()
            if self._stopped:
                raise _Stopped
            try:
                await self._open()
            except _DeviceLost as exc:
                self._lost(exc)

    async def _close(self) -> None:
        stream, self._stream, self._client = self._stream, None, None
        if stream is not None:
            self.counters["disconnects"] += 1
            await trio.aclose_forcefully(stream)

    def _lost(self, exc: _DeviceLost) -> None:
        self._failures += 1
        base = min(self.params.backoff_max, self.params.backoff_initial * 2 ** (self._failures - 1))
        self._retry_in = base * self._rng.uniform(0.5, 1.0)
        was_up = self._health.state is not LinkState.DOWN
        self._health = dataclasses.replace(
            self._health,
            state=LinkState.DOWN,
            detail=f"device lost: {exc.reason}, retrying in {self._retry_in:.1f} s",
        )
        logger.log(
            logging.WARNING if was_up else logging.INFO,
            "link %s: device at %s lost: %s; retrying in %.1f s",
            self.link.link_id,
            self.endpoint,
            exc.reason,
            self._retry_in,
            extra={"event": "device.lost", "link_id": self.link.link_id, "reason": exc.reason},
        )

    async def _send(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:  # pragma: no cover - callers check
            raise _DeviceLost("not connected")
        try:
            async with self._send_lock:
                await stream.send_all(data)
        except trio.BrokenResourceError as exc:
            raise _DeviceLost(f"connection broken: {_describe(exc.__cause__ or exc)}") from None
        except trio.ClosedResourceError:
            raise _Stopped from None

    async def _ask(self, resume: int | None) -> None:
        client = self._client
        assert client is not None
        if self._fresh or resume is None:
            data = client.start(resume)
        else:
            data = client.resync(resume)
        self._fresh = False
        await self._send(data)

    # --- receiving -----------------------------------------------------------------

    async def _next_block(self) -> KeyBlock:
        client, stream = self._client, self._stream
        assert client is not None and stream is not None
        while True:
            try:
                event = client.next_event()
            except RemoteProtocolError as exc:
                if exc.code in HELLO_REFUSALS:
                    raise _DeviceLost(f"wrong device: {exc.message}") from None
                self._drop(exc.code, exc.message)
                continue
            if isinstance(event, KeyBlockMsg):
                self.counters["stale_blocks"] = client.stale_blocks
                return KeyBlock(
                    link_id=self.link.link_id,
                    block_id=event.block_id,
                    key=event.key,
                    qber=event.qber,
                    produced_at=event.produced_at,
                    secret_key_rate=event.secret_key_rate,
                )
            if isinstance(event, DeviceHello):
                self._on_hello(event)
            elif isinstance(event, DeviceStatus):
                self.last_status = event
            elif isinstance(event, DeviceAlarm):
                self._on_alarm(event)
            else:  # NEED_DATA
                client.receive_data(await self._receive(stream))

    async def _receive(self, stream: trio.abc.Stream) -> bytes | bytearray:
        with trio.move_on_after(self.params.idle_timeout):
            try:
                data = await stream.receive_some(DEFAULT_MAX_CHUNK)
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.EIO:
                    raise _DeviceLost("the device end of the line went away") from None
                raise _DeviceLost(f"connection broken: {_describe(cause or exc)}") from None
            except trio.ClosedResourceError:
                raise _Stopped from None
            if not data:
                raise _DeviceLost("the device closed the connection")
            return data
        raise _DeviceLost(f"nothing from the device for {self.params.idle_timeout:g} s")

    def _on_hello(self, hello: DeviceHello) -> None:
        if self.device is None or self.device != hello:
            logger.info(
                "link %s: device %s (%s) at %s streams link %s",
                self.link.link_id,
                hello.device_id,
                hello.role,
                self.endpoint,
                hello.link_id,
                extra={"event": "device.hello", "link_id": self.link.link_id},
            )
        self.device = hello
        self._failures = 0
        self._health = dataclasses.replace(
            self._health,
            state=LinkState.UP,
            detail=f"device {hello.device_id} at {self.endpoint}",
        )

    def _on_alarm(self, alarm: DeviceAlarm) -> None:
        self.last_alarm = alarm
        self.counters["alarms"] += 1
        logger.log(
            _ALARM_LEVELS.get(alarm.severity, logging.WARNING),
            "link %s: device alarm %s (%s): %s",
            self.link.link_id,
            alarm.code,
            alarm.severity,
            alarm.message,
            extra={
                "event": "device.alarm",
                "link_id": self.link.link_id,
                "severity": alarm.severity,
                "code": alarm.code,
            },
        )

    def _drop(self, code: str, reason: str) -> None:
        self.counters["frames_dropped"] += 1
        logger.warning(
            "link %s: dropped bad input from device at %s: %s: %s",
            self.link.link_id,
            self.endpoint,
            code,
            reason,
            extra={
                "event": "device.bad_input",
                "link_id": self.link.link_id,
                "code": str(code),
                "reason": reason,
            },
        )

    def _record(self, block: KeyBlock) -> None:
        self._last_yielded = block.block_id
        self._health = self._health.after_block(block, self._clock())


class VendorTcpDriver(VendorDeviceDriver):
    """A device reached over TCP (``host``, ``port``)."""

    kind: ClassVar[str] = "vendor-tcp"
    Params: ClassVar[type[msgspec.Struct]] = VendorTcpParams
    params: VendorTcpParams

    def __init__(self, link: LinkEnd, params: VendorTcpParams, **kw: Any) -> None:
        async def connect() -> trio.abc.Stream:
            return await trio.open_tcp_stream(params.host, params.port)

        super().__init__(
            link, params, connect=connect, endpoint=f"tcp {params.host}:{params.port}", **kw
        )


def _baud_constant(baud: int) -> int | None:
    value = getattr(termios, f"B{baud}", None)
    return value if isinstance(value, int) else None


_STANDARD_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


def open_tty(path: str, baud: int) -> trio.lowlevel.FdStream:
    """Open a serial line raw (8N1, no echo, no flow control) and flush stale input.

    Raises ``OSError`` (not found, busy, not a tty).
    """
    speed = _baud_constant(baud)
    if speed is None:
        raise OSError(errno.EINVAL, f"baud {baud} unsupported")
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[4] = attrs[5] = speed
        attrs[2] = (attrs[2] & ~termios.CRTSCTS) | termios.CLOCAL | termios.CREAD
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        termios.tcflush(fd, termios.TCIOFLUSH)
    except termios.error as exc:
        os.close(fd)
        code, message = exc.args if len(exc.args) == 2 else (errno.ENOTTY, str(exc))
        raise OSError(code, f"{path}: {message}") from None
    except BaseException:
        os.close(fd)
        raise
    return trio.lowlevel.FdStream(fd)


class VendorSerialDriver(VendorDeviceDriver):
    """A device on a serial line (``path`` to the tty, ``baud``), opened raw, 8N1."""

    kind: ClassVar[str] = "vendor-serial"
    Params: ClassVar[type[msgspec.Struct]] = VendorSerialParams
    params: VendorSerialParams

    def __init__(self, link: LinkEnd, params: VendorSerialParams, **kw: Any) -> None:
        async def connect() -> trio.abc.Stream:
            return open_tty(params.path, params.baud)

        super().__init__(
            link, params, connect=connect, endpoint=f"serial {params.path}@{params.baud}", **kw
        )

    @classmethod
    def parse_params(cls, raw: Mapping[str, Any]) -> Any:
        params = super().parse_params(raw)
        if _baud_constant(params.baud) is None:
            raise DriverConfigError(
                f"driver {cls.kind!r}: baud {params.baud} is not a rate this system's "
                f"termios supports (try one of {', '.join(map(str, _STANDARD_BAUDS))})"
            )
        return params
