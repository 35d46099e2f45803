"""Two ends of a QKD link for the key supply's units: KME_A owns every block, KME_B holds
the same copies; KME_A's direct-link source reserves at KME_B's responder."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from protocol import PeerReply, SupplyBurn, SupplyReserve, SupplyResult
from qkmsd.config import SaeConfig, SupplyPolicy
from qkmsd.errors import PeerUnavailable
from qkmsd.keystore import KeyStore, NewBlock
from qkmsd.supply import DirectLinkSource, RecordedKeys, ReservationResponder

LINK = "KME_A~KME_B"
BLOCK_BYTES = 1024
SAES = {
    "SAE_A": SaeConfig("SAE_A", "KME_A", None),
    "SAE_A2": SaeConfig("SAE_A2", "KME_A", None),
    "SAE_B": SaeConfig("SAE_B", "KME_B", None),
    "SAE_C": SaeConfig("SAE_C", "KME_B", None),
}


class RecordingStoreThread:
    """Runs store calls at once and notes how each was asked to run: ``call`` (the worker)
    or ``call_inline`` (the event loop)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.stopped = False
        """True: calls fail as they do once the node's store thread has stopped."""

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.stopped:
            raise trio.ClosedResourceError("the store thread has stopped")
        self.paths.append("worker")
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)

    async def call_inline(
        self, fn: Callable[..., Any], *args: Any, slow_after: float = 0.005, **kwargs: Any
    ) -> Any:
        self.paths.append("inline")
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)


@dataclasses.dataclass
class LinkEnds:
    """KME_A's side (store, source, recorded keys) and KME_B's (store, responder)."""

    store_a: KeyStore
    store_b: KeyStore
    thread_a: RecordingStoreThread
    thread_b: RecordingStoreThread
    source: DirectLinkSource
    recorded_b: RecordedKeys
    responder: ReservationResponder
    policies: dict[tuple[str, str], SupplyPolicy]
    requests: list[SupplyReserve]
    answer: Callable[[str, SupplyReserve], Awaitable[PeerReply]]
    path_a: Path
    key_a: bytes
    up: bool = True
    acks: bool = False
    """True: KME_B announced ``FEATURE_BURN_ACK``: burns go as requests (``request``)."""
    burn_answers: bool = True
    """False: a burn request is applied at KME_B but its answer is lost (the session broke)."""
    burn_requests: list[SupplyBurn] = dataclasses.field(default_factory=list)
    delivers: bool = True
    """False: one-way messages are sent but lost on the way (a session that breaks)."""
    stalls: bool = False
    """True: a one-way send blocks until cancelled (a session stuck, then replaced)."""
    sent: list[object] = dataclasses.field(default_factory=list)
    restart: Callable[[], DirectLinkSource] = DirectLinkSource  # type: ignore[assignment]
    """A new source for KME_A over ``store_a``: the node after a restart."""

    def policy(self, master: str = "SAE_A", slave: str = "SAE_B") -> SupplyPolicy:
        return self.policies.get((master, slave), SupplyPolicy())

    def owned_ready_bits(self) -> int:
        return self.store_a.pool(LINK).owned_ready_bits


@pytest.fixture
def ends(tmp_path: Path) -> Iterator[LinkEnds]:
    key_a = os.urandom(32)
    store_a = KeyStore.open(tmp_path / "a.db", key_a)
    store_b = KeyStore.open(tmp_path / "b.db", os.urandom(32))
    material = {i: os.urandom(BLOCK_BYTES) for i in range(8)}
    for store, owned in ((store_a, True), (store_b, False)):
        store.add_blocks([NewBlock(LINK, i, k, 0.01, 1.0, owned) for i, k in material.items()])
        store.mark_ready(LINK, list(material))
    thread_a, thread_b = RecordingStoreThread(), RecordingStoreThread()
    policies: dict[tuple[str, str], SupplyPolicy] = {}

    def policy_for(master: str, slave: str) -> SupplyPolicy:
        return policies.get((master, slave), SupplyPolicy())

    responder = ReservationResponder(
        node_id="KME_B",
        saes=SAES,
        policy_for=policy_for,
        store=store_b,
        store_thread=thread_b,  # type: ignore[arg-type]
        link_to={"KME_A": LINK},
    )
    requests: list[SupplyReserve] = []

    async def request(peer: str, message: SupplyReserve | SupplyBurn) -> PeerReply:
        assert peer == "KME_B"
        if isinstance(message, SupplyBurn):
            assert pair.acks, "a burn request to a neighbour that does not answer them"
            message = msgspec.structs.replace(message, id=1000 + len(pair.burn_requests))
            pair.burn_requests.append(message)
            if not pair.up:
                raise PeerUnavailable("peer KME_B is not connected")
            result: SupplyResult = await pair.responder.on_burn("KME_A", message)
            if not pair.burn_answers:
                raise PeerUnavailable("the session with KME_B ended before it answered")
            return result
        message = msgspec.structs.replace(message, id=len(requests) + 1)
        requests.append(message)
        return await pair.answer("KME_A", message)

    async def send(peer: str, message: object) -> bool:
        """The neighbour gets one-way messages (burn notices) at once, while ``up``."""
        assert not pair.acks, "a one-way burn to a neighbour that answers them"
        if not pair.up:
            return False
        if pair.stalls:
            await trio.sleep_forever()
        pair.sent.append(message)
        assert isinstance(message, SupplyBurn)
        if pair.delivers:
            await pair.responder.on_burn("KME_A", message)
        return True

    def make_source() -> DirectLinkSource:
        return DirectLinkSource(
            node_id="KME_A",
            saes=SAES,
            store=pair.store_a,
            store_thread=thread_a,  # type: ignore[arg-type]
            recorded=RecordedKeys(store=pair.store_a, store_thread=thread_a),  # type: ignore[arg-type]
            request=request,
            send=send,
            link_to={"KME_B": LINK},
            reserve_timeout=2.0,
            acks_burns=lambda peer: pair.acks,
        )

    pair = LinkEnds(
        store_a,
        store_b,
        thread_a,
        thread_b,
        None,  # type: ignore[arg-type]  # made below, over pair.store_a
        RecordedKeys(store=store_b, store_thread=thread_b),  # type: ignore[arg-type]
        responder,
        policies,
        requests,
        responder.handle,
        path_a=tmp_path / "a.db",
        key_a=key_a,
        restart=make_source,
    )
    pair.source = make_source()
    yield pair
    pair.store_a.close()
    store_b.close()
