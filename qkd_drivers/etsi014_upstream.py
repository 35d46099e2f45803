"""The ``etsi014`` driver: key from a QKD device's own ETSI GS QKD 014 KME.

Most commercial QKD devices hand their key to the key management layer through
their own ETSI 014 KME.  A link then looks like this: node A's qkmsd is SAE
``a_sae`` of device-KME DA, node B's qkmsd is SAE ``b_sae`` of device-KME DB,
and DA and DB are a device pair.

Theory of operation
-------------------
* The end configured ``role = "master"`` pulls keys with
  ``enc_keys(slave=peer_sae, number, size=key_size)``.  It asks the device's
  ``status`` how many keys it holds first: none, and it polls every
  ``poll_interval_s``; some, and it pulls them ``keys_per_request`` at a time
  (no faster than ``max_rate_keys_s`` if set).  Each key becomes a block whose
  ``block_id`` is this driver's own counter and whose ``ref`` is the ETSI key_ID.
  The key manager announces blocks with their refs to the peer node.
* The end configured ``role = "slave"`` has ``fetches_by_reference``: the key
  manager hands it the peer's ``(block_id, ref)`` pairs (``fetch``), and
  ``blocks()`` fetches them with ``dec_keys(master=peer_sae, key_IDs)``, in
  batches of ``keys_per_request``, and yields them under the peer's ids.  A batch
  the device refuses (400) is retried one key at a time, so that one unknown
  key_ID costs only its own block; a key_ID refused alone is dropped (the
  peer discards the block when it is never confirmed).

Block ids.  The counter resumes after ``after`` (the highest id this end
stored).  With no ``after`` (an empty key store) it starts at the current time
in milliseconds, not at 0: a master whose store was wiped must not reuse ids
the slave still holds under other keys.

Failures.  The device KME being unreachable, TLS failing, or the device
refusing the request (400, 401) turn ``health()`` DOWN with the reason, and the
driver retries with jittered, capped exponential backoff; a 503 (the device is
short of key, or cannot reach its pair) keeps it UP with the reason and
retries.  ``blocks()`` never raises for a device problem: a bad device must
not take the node down.  Key bytes are never logged (key_IDs are, they are not
secret).

Cancellation.  Keys already pulled but not yet yielded stay buffered for the
next ``blocks()`` iteration.  Cancelling an iteration while a request is in
flight drops the connection: the keys of a cancelled ``enc_keys`` may be lost
(the device delivered them, nobody read them), never duplicated.

ETSI 014 reports no QBER: blocks carry ``qber = 0.0``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
import trio

from qkms_client import (
    BadRequest,
    DeliveredKey,
    Etsi014Error,
    KeyUnwrapError,
    ServiceUnavailable,
    TransportError,
    TrioEtsi014Client,
    Unauthorized,
)

from ._base import Driver, DriverConfigError, DriverHealth, KeyBlock, LinkEnd, LinkState

__all__ = ["Etsi014Driver", "Etsi014Params"]

logger = logging.getLogger("qkd_drivers.etsi014")

_T = TypeVar("_T")

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]

#: A ref travels in ``KeyAnnounce.refs`` (at most 128 characters each).
MAX_REF_LENGTH = 128
#: Refs waiting to be fetched at the slave; the oldest go first beyond this.
MAX_PENDING_REFS = 1 << 16


class Etsi014Params(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Parameters of one ``etsi014`` link end.

    ``url`` is the device KME's ``https://host:port``; ``ca``, ``cert`` and ``key``
    the files of this node's SAE identity at the device KME (use absolute paths);
    ``peer_sae`` the SAE id of the other end (the slave's at the master, the
    master's at the slave).  ``kme_id``, if set, must be the CN of the device
    KME's certificate.  ``key_size``, ``poll_interval_s`` and ``max_rate_keys_s``
    concern the master only.
    """

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    ca: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    cert: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    role: Literal["master", "slave"]
    peer_sae: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    key_size: Annotated[int, msgspec.Meta(ge=8, le=1 << 20, multiple_of=8)] = 256
    keys_per_request: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 16
    poll_interval_s: Seconds = 1.0
    max_rate_keys_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    backoff_initial: Seconds = 0.5
    backoff_max: Seconds = 30.0
    kme_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None


_Kind = Literal["refused", "unauthorised", "unavailable", "unreachable", "out-of-spec", "config"]


class _Failed(Exception):
    """A request to the device failed.  ``reason`` is for operators."""

    def __init__(self, kind: _Kind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    @property
    def down(self) -> bool:
        """Whether the link is down (else the device is there but short of key)."""
        return self.kind != "unavailable"


def _failure(exc: Etsi014Error) -> _Failed:
    """The operator's reading of a client error."""
    if isinstance(exc, Unauthorized):
        return _Failed(
            "unauthorised",
            "device KME refused our certificate (401): is this SAE configured at the device "
            "KME, and is peer_sae right?",
        )
    if isinstance(exc, ServiceUnavailable):
        return _Failed("unavailable", f"device KME cannot serve now (503): {exc.message}")
    if isinstance(exc, BadRequest):
        return _Failed(
            "refused",
            f"device KME refused the request (400): {exc.message} (check peer_sae and key_size)",
        )
    if isinstance(exc, TransportError):
        return _Failed("unreachable", f"device KME unreachable: {exc}")
    if isinstance(exc, KeyUnwrapError):
        return _Failed(
            "out-of-spec",
            "device KME delivered PQC-wrapped keys; this driver takes plain keys "
            "(register no pqc_public_key for this SAE at the device KME)",
        )
    return _Failed("out-of-spec", f"device KME answered outside ETSI 014: {exc}")


class Etsi014Driver(Driver):
    """One end of a link whose keys come from an upstream ETSI 014 KME pair.

    See the module docstring.  ``rng`` jitters the backoff (seed it in tests).
    """

    kind: ClassVar[str] = "etsi014"
    path_params: ClassVar[tuple[str, ...]] = ("ca", "cert", "key")
    Params: ClassVar[type[msgspec.Struct]] = Etsi014Params
    params: Etsi014Params

    def __init__(
        self,
        link: LinkEnd,
        params: Etsi014Params,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(link, params)
        self._rng = rng or random.Random()
        self._clock = clock
        self._client: TrioEtsi014Client | None = None
        self._stopped = True
        self._stopping = trio.Event()
        self._wake = trio.Event()
        self._failures = 0
        self._retry_in = 0.0
        self._health = DriverHealth(LinkState.STOPPED)
        # master
        self._next_id: int | None = None
        self._pulled: collections.deque[tuple[DeliveredKey, float]] = collections.deque()
        self._next_pull_at = 0.0
        # slave
        self._pending: dict[int, str] = {}
        self._solo: set[int] = set()
        self._fetched: collections.deque[KeyBlock] = collections.deque()
        self.counters = {
            "requests": 0,
            "failures": 0,
            "keys_in": 0,
            "refs_dropped": 0,
        }

    @property
    def fetches_by_reference(self) -> bool:  # type: ignore[override]
        """True at the slave end: its blocks are fetched by the master's key_IDs."""
        return self.params.role == "slave"

    @classmethod
    def parse_params(cls, raw: Mapping[str, Any]) -> Any:
        params: Etsi014Params = super().parse_params(raw)
        split = urlsplit(params.url)
        try:
            port = split.port
        except ValueError:
            port = -1
        if split.scheme != "https" or not split.hostname or port == -1:
            raise DriverConfigError(
                f"driver {cls.kind!r}: url {params.url!r} is not https://host:port of the "
                "device KME"
            )
        if split.query or split.fragment or split.username:
            raise DriverConfigError(
                f"driver {cls.kind!r}: url {params.url!r} must have no query, fragment or user"
            )
        if params.backoff_initial > params.backoff_max:
            raise DriverConfigError(
                f"driver {cls.kind!r}: backoff_initial must not exceed backoff_max"
            )
        return params

    # --- the Driver interface ------------------------------------------------------

    async def start(self) -> None:
        """Check the device KME once (``status``).  A device that is not there shows DOWN."""
        self._stopped = False
        self._stopping = trio.Event()
        self._health = dataclasses.replace(
            self._health, state=LinkState.STARTING, detail=f"connecting to {self.params.url}"
        )
        await self._check_device()

    async def stop(self) -> None:
        """Close the connection to the device KME (promptly, also under cancellation)."""
        self._stopped = True
        self._stopping.set()
        self._wake.set()
        client, self._client = self._client, None
        if client is not None:
            with trio.CancelScope(shield=True):
                await client.aclose()
        self._health = dataclasses.replace(self._health, state=LinkState.STOPPED, detail="stopped")

    def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        """Yield blocks: pulled from the device (master) or fetched by reference (slave).

        Block ids above ``after`` only.  Never raises for a device problem: it
        reports it in ``health()`` and retries.  Returns after ``stop()``.
        """
        if self.params.role == "master":
            return self._master_blocks(after)
        return self._slave_blocks(after)

    async def fetch(self, refs: list[tuple[int, str]]) -> None:
        """Queue ``(block_id, key_ID)`` pairs announced by the master; returns at once.

        ``blocks()`` fetches them.  Pairs already queued are ignored; beyond
        ``MAX_PENDING_REFS`` the oldest are dropped (with a warning).
        """
        if self.params.role != "slave":
            raise NotImplementedError("the master end of an etsi014 link does not fetch")
        for block_id, ref in refs:
            if block_id not in self._pending:
                self._pending[block_id] = ref
        excess = len(self._pending) - MAX_PENDING_REFS
        if excess > 0:
            for block_id in list(self._pending)[:excess]:
                del self._pending[block_id]
                self._solo.discard(block_id)
            self.counters["refs_dropped"] += excess
            logger.warning(
                "link %s: %d references waiting for the device KME; dropped the %d oldest",
                self.link.link_id,
                MAX_PENDING_REFS + excess,
                excess,
                extra={"event": "etsi014.refs_dropped", "link_id": self.link.link_id},
            )
        self._wake.set()

    def health(self) -> DriverHealth:
        return self._health

    def statistics(self) -> dict[str, Any]:
        """Counters for the monitoring agent (no key material)."""
        return {
            **self.counters,
            "state": self._health.state.value,
            "role": self.params.role,
            "pending_refs": len(self._pending),
            "buffered_keys": len(self._pulled) + len(self._fetched),
        }

    # --- master --------------------------------------------------------------------

    async def _master_blocks(self, after: int | None) -> AsyncIterator[KeyBlock]:
        if self._stopped:
            return
        if after is not None:
            self._next_id = max(self._next_id or 0, after + 1)
        elif self._next_id is None:
            self._next_id = int(self._clock() * 1000)
        while not self._stopped:
            if not self._pulled:
                if not await self._pull():
                    continue
            delivered, produced_at = self._pulled.popleft()
            block = KeyBlock(
                link_id=self.link.link_id,
                block_id=self._next_id,
                key=delivered.key,
                qber=0.0,
                produced_at=produced_at,
                ref=delivered.key_id,
            )
            self._next_id += 1
            self._record(block)
            yield block

    async def _pull(self) -> bool:
        """One round: ask the status, pull what it offers.  False if nothing came."""
        p = self.params
        try:
            status = await self._call(lambda c: c.status(p.peer_sae))
            if not status.min_key_size <= p.key_size <= status.max_key_size:
                raise _Failed(
                    "config",
                    f"key_size {p.key_size} is outside the device KME's "
                    f"{status.min_key_size}..{status.max_key_size} bits; set key_size within",
                )
            offered = status.stored_key_count
            if status.key_size > 0:
                offered = offered * status.key_size // p.key_size
            if offered <= 0:
                self._up(f"device KME has no key for {p.peer_sae} yet; polling")
                await self._pause(p.poll_interval_s)
                return False
            number = min(p.keys_per_request, offered, max(1, status.max_key_per_request))
            await self._pace()
            if self._stopped:
                return False
            delivery = await self._call(lambda c: c.get_key(p.peer_sae, number, p.key_size))
        except _Failed as exc:
            self._failed(exc)
            await self._pause(self._retry_in)
            return False
        now = self._clock()
        if p.max_rate_keys_s is not None:
            self._next_pull_at = max(self._next_pull_at, trio.current_time())
            self._next_pull_at += len(delivery) / p.max_rate_keys_s
        for key in delivery:
            if len(key.key_id) > MAX_REF_LENGTH:
                self.counters["refs_dropped"] += 1
                logger.warning(
                    "link %s: device KME key_ID of %d characters is too long to announce; "
                    "key dropped",
                    self.link.link_id,
                    len(key.key_id),
                    extra={"event": "etsi014.ref_too_long", "link_id": self.link.link_id},
                )
                continue
            self._pulled.append((key, now))
        self.counters["keys_in"] += len(delivery)
        self._up(f"pulling from {p.url}")
        return bool(self._pulled)

    async def _pace(self) -> None:
        delay = self._next_pull_at - trio.current_time()
        if delay > 0:
            await self._pause(delay)

    # --- slave ---------------------------------------------------------------------

    async def _slave_blocks(self, after: int | None) -> AsyncIterator[KeyBlock]:
        if self._stopped:
            return
        while not self._stopped:
            if self._fetched:
                block = self._fetched.popleft()
                if after is None or block.block_id > after:
                    self._record(block)
                    yield block
                continue
            self._wake = trio.Event()
            batch = self._next_batch(after)
            if batch:
                await self._fetch_batch(batch)
            elif self._health.state is LinkState.DOWN:
                # Nothing to fetch: still find out when the device KME is back.
                with trio.move_on_after(self._retry_in):
                    await self._wake.wait()
                if not self._stopped and not self._pending:
                    await self._check_device()
            else:
                await self._wake.wait()

    def _next_batch(self, after: int | None) -> list[tuple[int, str]]:
        if after is not None:
            stale = [i for i in self._pending if i <= after]
            for block_id in stale:
                del self._pending[block_id]
                self._solo.discard(block_id)
        batch: list[tuple[int, str]] = []
        for block_id, ref in self._pending.items():
            if block_id in self._solo:
                return batch or [(block_id, ref)]
            batch.append((block_id, ref))
            if len(batch) >= self.params.keys_per_request:
                break
        return batch

    async def _fetch_batch(self, batch: list[tuple[int, str]]) -> None:
        p = self.params
        refs = [ref for _, ref in batch]
        try:
            delivery = await self._call(lambda c: c.get_key_with_ids(p.peer_sae, refs))
        except _Failed as exc:
            if exc.kind == "refused":
                self._refused(batch, exc.reason)
                return
            self._failed(exc)
            await self._pause(self._retry_in)
            return
        keys = {k.key_id.lower(): k.key for k in delivery}
        now = self._clock()
        for block_id, ref in batch:
            del self._pending[block_id]
            self._solo.discard(block_id)
            self._fetched.append(
                KeyBlock(
                    link_id=self.link.link_id,
                    block_id=block_id,
                    key=keys[ref.lower()],
                    qber=0.0,
                    produced_at=now,
                    ref=ref,
                )
            )
        self.counters["keys_in"] += len(batch)
        self._up(f"fetching from {p.url}")

    def _refused(self, batch: list[tuple[int, str]], reason: str) -> None:
        """A 400 for a batch: retry its keys one at a time; for one key: drop it."""
        if len(batch) > 1:
            self._solo.update(block_id for block_id, _ in batch)
            return
        [(block_id, ref)] = batch
        self._pending.pop(block_id, None)
        self._solo.discard(block_id)
        self.counters["refs_dropped"] += 1
        logger.warning(
            "link %s: block %d (key_ID %s) dropped: %s",
            self.link.link_id,
            block_id,
            ref,
            reason,
            extra={
                "event": "etsi014.ref_refused",
                "link_id": self.link.link_id,
                "block_id": block_id,
            },
        )

    async def _check_device(self) -> None:
        """Probe the device KME; UP if it answers, DOWN (or unchanged) if it does not."""
        try:
            await self._probe()
        except _Failed as exc:
            if exc.down:
                self._failed(exc)
                return
        self._up(f"connected to {self.params.url} as {self.params.role}")

    # --- requests ------------------------------------------------------------------

    async def _probe(self) -> None:
        """``status`` for the peer: reachable, and our certificate accepted?"""
        try:
            await self._call(lambda c: c.status(self.params.peer_sae))
        except _Failed as exc:
            # A slave may not be allowed the status of the master's direction: reachable
            # and known is all the probe asks.
            if self.params.role == "slave" and exc.kind == "refused":
                return
            raise

    async def _call(self, request: Callable[[TrioEtsi014Client], Awaitable[_T]]) -> _T:
        """Run one request on the (lazily made) client.  Raises ``_Failed``."""
        self.counters["requests"] += 1
        try:
            if self._client is None:
                p = self.params
                try:
                    self._client = TrioEtsi014Client(
                        p.url, ca=p.ca, cert=p.cert, key=p.key, kme_id=p.kme_id
                    )
                except ValueError as exc:
                    raise _Failed("config", f"url: {exc}") from None
            return await request(self._client)
        except Etsi014Error as exc:
            self.counters["failures"] += 1
            raise _failure(exc) from None

    # --- health --------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep, but return at once on ``stop()``."""
        with trio.move_on_after(seconds):
            await self._stopping.wait()

    def _up(self, detail: str) -> None:
        if self._stopped:  # a request that raced stop(): stay STOPPED
            return
        if self._health.state is LinkState.DOWN:
            logger.info(
                "link %s: device KME at %s is back",
                self.link.link_id,
                self.params.url,
                extra={"event": "etsi014.up", "link_id": self.link.link_id},
            )
        self._failures = 0
        self._health = dataclasses.replace(self._health, state=LinkState.UP, detail=detail)

    def _failed(self, exc: _Failed) -> None:
        if self._stopped:  # stop() closed the connection under a request: not a failure
            return
        self._failures += 1
        p = self.params
        base = min(p.backoff_max, p.backoff_initial * 2 ** (self._failures - 1))
        if not exc.down:
            base = max(base, p.poll_interval_s)
        self._retry_in = base * self._rng.uniform(0.5, 1.0)
        state = LinkState.DOWN if exc.down else LinkState.UP
        was = self._health.state
        self._health = dataclasses.replace(
            self._health,
            state=state,
            detail=f"{exc.reason}; retrying in {self._retry_in:.2g} s",
        )
        level = logging.WARNING if was is not LinkState.DOWN and exc.down else logging.INFO
        logger.log(
            level,
            "link %s: %s; retrying in %.2g s",
            self.link.link_id,
            exc.reason,
            self._retry_in,
            extra={"event": "etsi014.failed", "link_id": self.link.link_id, "down": exc.down},
        )

    def _record(self, block: KeyBlock) -> None:
        self._health = self._health.after_block(block, self._clock())
