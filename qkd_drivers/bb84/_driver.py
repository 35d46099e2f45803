"""The ``bb84sim`` driver: a simulated decoy-state BB84 link.

Each block runs the whole engine (quantum phase and post-processing) from a
generator seeded by SHA-256(seed ‖ link id ‖ block id), so the two ends of a
link, which share the seed, compute byte-identical keys without talking.
Block ids follow the wall clock: block ``i`` is due when the pulses it needs
have been sent at ``pulse_rate_hz``.  A block whose run aborts (QBER above
threshold, no finite key) yields nothing and turns ``health()`` DOWN with the
reason; the next good block turns it UP again.

Like the paired driver, anyone holding the seed holds the keys: this is a
physics simulator for the lab, not a security device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import msgspec
import numpy as np
import trio

from .._base import Driver, DriverConfigError, DriverHealth, KeyBlock, LinkEnd, LinkState
from .._paired import clock_paced_ids
from ._params import Bb84Params, Bb84ParamsError, load_params
from ._pipeline import BlockResult, run_block
from ._simulate import Eve, class_probabilities, outcome_probabilities, parse_eve


class Bb84SimParams(msgspec.Struct, forbid_unknown_fields=True):
    """Per-link settings from the topology / config file.

    ``params`` is a named set (``gys``, ``lim2014``) or a TOML file;
    ``eve`` is ``intercept-resend=F``, ``pns``, ``beam-splitting`` or absent;
    ``eve_schedule`` names a JSON file that changes the eavesdropper while the link runs
    (see ``EveSchedule``; ``qkmsctl lab eve`` writes it);
    ``block_bits`` is the expected number of key-basis bits per block, from
    which the pulses per block follow.
    """

    seed: Annotated[str, msgspec.Meta(min_length=16, max_length=256)]
    distance_km: Annotated[float, msgspec.Meta(ge=0.0, le=1000.0)] = 25.0
    params: str = "gys"
    eve: str | None = None
    eve_schedule: str | None = None
    pulse_rate_hz: Annotated[float, msgspec.Meta(gt=0.0, le=1e12)] = 1e9
    block_bits: Annotated[int, msgspec.Meta(ge=1024, le=1 << 24)] = 1 << 21
    mode: Literal["pulse", "event"] = "event"

    def __post_init__(self) -> None:
        # Fail at config time, with the field named, not at the first block.
        try:
            load_params(self.params)
            parse_eve(self.eve)
        except Bb84ParamsError as exc:
            raise ValueError(str(exc)) from None


class EveChange(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    at: float
    """Unix time from which blocks (by their start, ``block_id * interval``) see ``eve``."""
    eve: str | None
    """The eavesdropper from then on (``none`` or None: no eavesdropper)."""


class EveSchedule:
    """The eavesdropper of each block, from a JSON list of ``{"at": T, "eve": SPEC}`` that
    may change while the link runs: a lab's simulated attack, started and stopped at set
    times.

    Both ends of a link read the same file and pick by the block's start time, so they
    simulate every block with the same eavesdropper and keep identical keys.  The file is
    read again when its modification time changes; a file that cannot be read or parsed
    leaves the last good schedule in force (and says so in ``problem``).
    """

    def __init__(self, path: Path, base: Eve) -> None:
        self.path = path
        self._base = base
        self._changes: list[tuple[float, Eve]] = []
        self._mtime: float | None = None
        self.problem = ""

    def eve_at(self, block_start: float) -> Eve:
        self._reload()
        eve = self._base
        for at, change in self._changes:
            if at <= block_start:
                eve = change
        return eve

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._changes, self._mtime, self.problem = [], None, ""
            return
        except OSError as exc:
            self.problem = f"eve schedule {self.path}: {exc.strerror or exc}"
            return
        if mtime == self._mtime:
            return
        try:
            changes = msgspec.json.decode(self.path.read_bytes(), type=list[EveChange])
            ordered = sorted(changes, key=lambda c: c.at)
            parsed = [(c.at, parse_eve(c.eve)) for c in ordered]
        except (OSError, msgspec.DecodeError, msgspec.ValidationError, Bb84ParamsError) as exc:
            self.problem = f"eve schedule {self.path}: {exc}"
            return
        self._changes, self._mtime, self.problem = parsed, mtime, ""


def block_seed(seed: str, link_id: str, block_id: int) -> np.random.Generator:
    """The generator of block ``block_id``: the same at both ends."""
    digest = hashlib.sha256(f"qkms-bb84sim\0{seed}\0{link_id}\0{block_id}".encode()).digest()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(digest))))


def pulses_per_block(params: Bb84Params, distance_km: float, eve: Eve, block_bits: int) -> int:
    """Pulses whose expected key-basis detections (after sampling) make ``block_bits``."""
    detect = 1.0 - outcome_probabilities(params, distance_km, eve)[..., 0]
    per_pulse = float((class_probabilities(params) * detect)[:, 0, 0].sum())
    per_pulse *= 1.0 - params.qber_sample_fraction
    return max(1, math.ceil(block_bits / max(per_pulse, 1e-300)))


class Bb84SimDriver(Driver):
    kind: ClassVar[str] = "bb84sim"
    Params: ClassVar[type[msgspec.Struct]] = Bb84SimParams
    params: Bb84SimParams

    def __init__(
        self, link: LinkEnd, params: Bb84SimParams, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(link, params)
        self._clock = clock
        self._health = DriverHealth(LinkState.STOPPED)
        try:
            self._physics = load_params(params.params)
            self._eve = parse_eve(params.eve)
        except Bb84ParamsError as exc:
            raise DriverConfigError(f"driver 'bb84sim' [{link.link_id}]: {exc}") from None
        self.n_pulses = pulses_per_block(
            self._physics, params.distance_km, self._eve, params.block_bits
        )
        self._schedule = (
            EveSchedule(Path(params.eve_schedule), self._eve) if params.eve_schedule else None
        )

    @property
    def interval(self) -> float:
        """Seconds of pulses per block."""
        return self.n_pulses / self.params.pulse_rate_hz

    def run_block(self, block_id: int) -> BlockResult:
        """Run block ``block_id`` synchronously (both ends get the same result)."""
        rng = block_seed(self.params.seed, self.link.link_id, block_id)
        return run_block(
            self._physics,
            self.params.distance_km,
            self.n_pulses,
            rng,
            eve=self.eve_of(block_id),
            mode=self.params.mode,
        )

    def eve_of(self, block_id: int) -> Eve:
        """The eavesdropper on block ``block_id`` (from the schedule, if there is one)."""
        if self._schedule is None:
            return self._eve
        return self._schedule.eve_at(block_id * self.interval)

    async def start(self) -> None:
        self._health = DriverHealth(LinkState.UP, detail="simulating the first block")

    async def stop(self) -> None:
        self._health = dataclasses.replace(self._health, state=LinkState.STOPPED)

    async def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        """Yield the blocks as simulated time allows.

        Post-processing runs in a worker thread; cancelling abandons it (its
        result is dropped) so the iteration stops promptly.
        """
        async for next_id in clock_paced_ids(self._clock, self.interval, after=after):
            result = await trio.to_thread.run_sync(self.run_block, next_id, abandon_on_cancel=True)
            now = self._clock()
            h = self._health
            if result.aborted:
                self._health = dataclasses.replace(
                    h,
                    state=LinkState.DOWN,
                    last_qber=result.qber,
                    detail=f"block {next_id} aborted: {result.abort_reason}",
                )
                continue
            block = KeyBlock(
                link_id=self.link.link_id,
                block_id=next_id,
                key=result.key,
                qber=result.qber_key,
                produced_at=now,
                secret_key_rate=result.secret_key_rate_per_pulse * self.params.pulse_rate_hz,
            )
            problem = self._schedule.problem if self._schedule is not None else ""
            self._health = h.after_block(block, now, detail=problem)
            yield block

    def health(self) -> DriverHealth:
        return self._health
