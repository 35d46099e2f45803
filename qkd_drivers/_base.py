"""The driver interface: an async stream of key blocks from one end of a QKD link.

A driver is an async context manager.  Entering it starts the device (or the
simulation); ``blocks()`` yields ``KeyBlock``s as the device produces them;
leaving it stops the device.  ``health()`` may be called at any time.

Both ends of a QKD link run their own driver.  A real device pair does its own
post-processing and hands both ends the same block under the same
``block_id``; our drivers keep that contract.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

import msgspec


class DriverError(Exception):
    """Root of every error raised by ``qkd_drivers``."""


class DriverConfigError(DriverError):
    """A driver's parameters are invalid.  The message names the parameter and the fix."""


@dataclasses.dataclass(frozen=True, slots=True)
class KeyBlock:
    """One block of final secret key from a QKD device.

    ``key`` is secret: it is left out of ``repr`` so that a block never lands
    in a log by accident.
    """

    link_id: str
    block_id: int
    key: bytes = dataclasses.field(repr=False)
    qber: float
    produced_at: float
    secret_key_rate: float | None = None
    ref: str | None = None
    """The device's own name for the block (e.g. an upstream ETSI 014 key ID), if any."""

    @property
    def size_bits(self) -> int:
        return len(self.key) * 8


class LinkState(enum.StrEnum):
    STARTING = "starting"
    UP = "up"
    DOWN = "down"
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True, slots=True)
class DriverHealth:
    """What a driver says about its device: for status output and alarms."""

    state: LinkState
    blocks_produced: int = 0
    bits_produced: int = 0
    last_qber: float | None = None
    last_block_at: float | None = None
    detail: str = ""

    def after_block(
        self, block: KeyBlock, now: float, *, detail: str | None = None
    ) -> DriverHealth:
        """The health after ``block`` arrived at ``now``: up, counted, its QBER noted."""
        return DriverHealth(
            LinkState.UP,
            blocks_produced=self.blocks_produced + 1,
            bits_produced=self.bits_produced + block.size_bits,
            last_qber=block.qber,
            last_block_at=now,
            detail=self.detail if detail is None else detail,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class LinkEnd:
    """Which end of which link a driver serves."""

    link_id: str
    local_node: str
    peer_node: str


class Driver(abc.ABC):
    """Base class of every QKD driver.

    Subclasses set ``kind`` (the name used in config files) and ``Params`` (a
    msgspec Struct describing their parameters, validated by ``parse_params``).
    """

    kind: ClassVar[str]
    Params: ClassVar[type[msgspec.Struct]]
    path_params: ClassVar[tuple[str, ...]] = ()
    """Parameters that name files: a config resolves them against its own directory."""

    def __init__(self, link: LinkEnd, params: Any) -> None:
        self.link = link
        self.params = params

    @classmethod
    def parse_params(cls, raw: Mapping[str, Any]) -> Any:
        """Validate raw config parameters.  Raises ``DriverConfigError``."""
        try:
            return msgspec.convert(dict(raw), cls.Params, strict=False)
        except msgspec.ValidationError as exc:
            raise DriverConfigError(f"driver {cls.kind!r}: {exc}") from None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to or start the device."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop the device.  Must finish promptly, also under cancellation."""

    @abc.abstractmethod
    def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        """Yield key blocks as the device produces them.

        ``after`` is the highest block id this end already stored; a driver
        that can resume skips blocks up to it.  Cancelling the iteration is the
        normal way to stop reading.  Raises ``DriverError`` when the device
        fails in a way the driver cannot recover from.
        """

    @abc.abstractmethod
    def health(self) -> DriverHealth: ...

    end_to_end: ClassVar[bool] = False
    """True for the key source of an end-to-end pool (keys relayed, not from a device)."""

    fetches_by_reference: ClassVar[bool] = False
    """True for drivers whose blocks at this end must be fetched by the peer's reference
    (``KeyBlock.ref``), e.g. the slave end of an upstream ETSI 014 KME pair."""

    async def fetch(self, refs: list[tuple[int, str]]) -> None:
        """Ask the device for blocks the other end announced as ``(block_id, ref)``.

        The blocks come out of ``blocks()`` under those ids.  Only drivers with
        ``fetches_by_reference`` implement it.
        """
        raise NotImplementedError(f"driver {self.kind!r} does not fetch by reference")
