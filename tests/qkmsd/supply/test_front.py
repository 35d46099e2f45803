"""The ETSI 014 front asks the key source that serves the slave's KME, and answers with
what the standard says when none does."""

from __future__ import annotations

import json
from collections.abc import Sequence

from protocol import etsi014
from qkmsd.config import SupplyPolicy
from qkmsd.http import PeerInfo, Request
from qkmsd.keystore import CutKey
from qkmsd.supply import Etsi014Front, KeyOrder

from .conftest import SAES


class FakeSource:
    """Serves ``kmes``; hands out keys of zero bytes and records what it was asked."""

    def __init__(self, *kmes: str) -> None:
        self.kmes = kmes
        self.orders: list[KeyOrder] = []
        self.fetches: list[tuple[str, str]] = []

    def serves(self, target_kme: str) -> bool:
        return target_kme in self.kmes

    async def new_keys(self, order: KeyOrder) -> list[CutKey]:
        self.orders.append(order)
        return [
            CutKey(f"00000000-0000-4000-8000-{i:012d}", (), bytes(order.size_bits // 8))
            for i in range(order.number)
        ]

    async def available(
        self, master: str, slave: str, target_kme: str, policy: SupplyPolicy
    ) -> int:
        return 7

    async def fetch(
        self, key_ids: Sequence[str], *, master: str, requester: str
    ) -> list[tuple[str, bytes]]:
        self.fetches.append((master, requester))
        return [(k, bytes(32)) for k in key_ids]


def front(*sources: FakeSource) -> Etsi014Front:
    return Etsi014Front(
        node_id="KME_A",
        saes={**SAES, "SAE_Z": SAES["SAE_B"].__class__("SAE_Z", "KME_Z", None)},
        policy_for=lambda master, slave: SupplyPolicy(),
        sources=list(sources),
        pqc_keys={},
    )


def get(target: str, sae: str = "SAE_A") -> Request:
    path, _, query = target.partition("?")
    return Request("GET", target, path, query, (), b"", PeerInfo(sae, "sae"))


async def test_enc_keys_go_to_the_source_that_serves_the_slave_s_kme() -> None:
    here, neighbours = FakeSource("KME_A"), FakeSource("KME_B")
    answer = await front(here, neighbours).handle(get("/api/v1/keys/SAE_B/enc_keys?number=2"))
    assert answer.status == 200
    assert len(json.loads(answer.body)["keys"]) == 2
    assert here.orders == []
    assert [(o.master, o.slaves, o.target_kme, o.number) for o in neighbours.orders] == [
        ("SAE_A", ("SAE_B",), "KME_B", 2)
    ]


async def test_enc_keys_for_a_slave_no_source_reaches_is_503_naming_the_cause() -> None:
    answer = await front(FakeSource("KME_A"), FakeSource("KME_B")).handle(
        get("/api/v1/keys/SAE_Z/enc_keys")
    )
    assert answer.status == 503
    message = json.loads(answer.body)["message"]
    assert "no QKD link from KME_A to KME_Z (SAE SAE_Z)" in message


async def test_status_counts_what_the_serving_source_has_and_zero_where_none_serves() -> None:
    f = front(FakeSource("KME_B"))
    served = json.loads((await f.handle(get("/api/v1/keys/SAE_B/status"))).body)
    unserved = json.loads((await f.handle(get("/api/v1/keys/SAE_Z/status"))).body)
    assert (served["stored_key_count"], unserved["stored_key_count"]) == (7, 0)
    assert unserved["target_KME_ID"] == "KME_Z"


async def test_dec_keys_fetch_from_the_source_that_serves_the_master_s_kme() -> None:
    here, neighbours = FakeSource("KME_A"), FakeSource("KME_B")
    f = front(here, neighbours)
    key = "00000000-0000-4000-8000-000000000001"
    answer = await f.handle(get(f"/api/v1/keys/SAE_B/dec_keys?key_ID={key}", sae="SAE_A"))
    assert answer.status == 200
    assert (here.fetches, neighbours.fetches) == ([], [("SAE_B", "SAE_A")])
    # No key from a master on a node no source reaches can be here: 400, keys not found.
    unreachable = await f.handle(get(f"/api/v1/keys/SAE_Z/dec_keys?key_ID={key}", sae="SAE_A"))
    assert unreachable.status == 400
    assert json.loads(unreachable.body)["message"] == etsi014.MSG_KEYS_NOT_FOUND
    assert f.statistics().refused == 1
