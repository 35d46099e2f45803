"""ETSI GS QKD 014 conformance of our KME: two real nodes, real SAE certificates, real TLS.

KME_A and KME_B run in one trio run, joined by a fast simulated QKD link, each serving the
API on 127.0.0.1.  SAE_A and SAE_X are attached to KME_A, SAE_B and SAE_C to KME_B, SAE_Z to
KME_C (which does not run).  SAEs talk to their KME with ``qkms_client`` or, where the test
is about the bytes on the wire, with a plain ``http.client`` connection.

Spec references (S014 = ETSI GS QKD 014 V1.1.1) are stated in our words in docs/etsi014.md,
which maps each of them to the test here that proves it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import ssl
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from cli._admin import AdminClient
from cli._pki import issue_sae
from protocol import etsi014
from qkms_client import (
    BadRequest,
    DeliveredKey,
    KeyUnwrapError,
    ServiceUnavailable,
    TransportError,
    TrioEtsi014Client,
    Unauthorized,
)
from qkms_pqc import HybridPrivateKey, generate_keypair
from qkmsd.app import Node, NodeInfo
from qkmsd.config import Config

from ..conftest import ConfigFactory

LINK = "KME_A~KME_B"
# About 30 blocks of 64 kbit a second: each end owns every other block, so ~1 Mbit/s each.
FAST = {"rate_bps": 2e6, "block_bits": 65536, "seed": "etsi014-conformance-seed-000001"}
RESERVE_TIMEOUT_S = 2.0
SAES: dict[str, dict[str, Any]] = {
    "SAE_A": {"kme": "KME_A"},
    "SAE_X": {"kme": "KME_A"},
    "SAE_B": {"kme": "KME_B"},
    "SAE_C": {"kme": "KME_B"},
    "SAE_Z": {"kme": "KME_C"},
}
DEFAULT_POLICY: dict[str, Any] = {
    "key_size": 256,
    "min_key_size": 64,
    "max_key_size": 4096,
    "max_key_per_request": 64,
    "max_stored_keys": 50_000,
    "max_sae_id_count": 2,
}
TABLE_9 = {
    "source_KME_ID",
    "target_KME_ID",
    "master_SAE_ID",
    "slave_SAE_ID",
    "key_size",
    "stored_key_count",
    "max_key_count",
    "max_key_per_request",
    "max_key_size",
    "min_key_size",
    "max_SAE_ID_count",
}
TIME_LIMIT_S = 60


# --- the network under test -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sae_pki(pki: Path) -> Path:
    """The shared PKI plus SAE_X, an SAE of KME_A that the conftest PKI does not issue."""
    issue_sae(pki, "SAE_X", force=True)
    return pki


@pytest.fixture(scope="module")
def rogue_sae(rogue_pki: Path) -> Path:
    """A certificate named SAE_A, issued by a CA the KMEs do not trust."""
    issue_sae(rogue_pki, "SAE_A", force=True)
    return rogue_pki


@dataclasses.dataclass(frozen=True)
class Answer:
    """One raw HTTP answer, as a generic client sees it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def tls_context(pki: Path, *, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _exchange(
    port: int,
    ctx: ssl.SSLContext,
    method: str,
    target: str,
    body: bytes | None,
    headers: dict[str, str],
) -> Answer:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, answer_headers, response.read())
    finally:
        conn.close()


@dataclasses.dataclass
class Kmes:
    """KME_A and KME_B, running; SAE clients on demand (closed when the network stops)."""

    pki: Path
    configs: dict[str, Config]
    infos: dict[str, NodeInfo]
    scopes: dict[str, trio.CancelScope]
    saes: dict[str, dict[str, Any]]
    stack: contextlib.AsyncExitStack
    nodes: dict[str, Node] = dataclasses.field(default_factory=dict)

    async def supply_stats(self, kme: str) -> dict[str, Any]:
        """The key supply counts of ``kme``'s status, as ``qkmsctl status`` shows them."""
        status = self.nodes[kme].status
        assert status is not None
        api = (await status.node_status()).api
        assert api is not None
        return msgspec.structs.asdict(api.supply)

    async def wait_for_stock(self, kme: str, keys: int) -> None:
        """Until ``kme`` has put ``keys`` keys in its stocks (keys recorded at the peer)."""
        while True:
            if (await self.supply_stats(kme))["stock_keys_in"] >= keys:
                return
            await trio.sleep(0.02)

    def url(self, kme: str) -> str:
        return f"https://127.0.0.1:{self.infos[kme].api_port}"

    def port(self, kme: str) -> int:
        port = self.infos[kme].api_port
        assert port is not None
        return port

    def client(
        self,
        sae: str,
        *,
        kme: str | None = None,
        pqc_private_key: HybridPrivateKey | None = None,
        pki: Path | None = None,
        kind: str = "saes",
    ) -> TrioEtsi014Client:
        """``sae``'s client to its own KME (or ``kme``); ``kind="nodes"`` for a node cert."""
        certs = pki or self.pki
        kme = kme or self.saes[sae]["kme"]
        client = TrioEtsi014Client(
            self.url(kme),
            ca=self.pki / "ca.pem",
            cert=certs / kind / f"{sae}.pem",
            key=certs / kind / f"{sae}.key",
            pqc_private_key=pqc_private_key,
            kme_id=kme,
        )
        self.stack.push_async_callback(client.aclose)
        return client

    def context(self, sae: str, *, kind: str = "saes") -> ssl.SSLContext:
        return tls_context(
            self.pki, cert=self.pki / kind / f"{sae}.pem", key=self.pki / kind / f"{sae}.key"
        )

    async def raw(
        self,
        kme: str,
        method: str,
        target: str,
        *,
        sae: str = "SAE_A",
        body: bytes | None = None,
        ctx: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request on a fresh connection, from ``sae`` (or with ``ctx``), in a thread."""
        if body is not None and headers is None:
            headers = {"content-type": "application/json"}
        return await trio.to_thread.run_sync(
            _exchange,
            self.port(kme),
            ctx or self.context(sae),
            method,
            target,
            body,
            headers or {},
        )

    def stop(self, kme: str) -> None:
        self.scopes[kme].cancel()

    async def wait_for_key(self, bits: int = 65536) -> None:
        """Until KME_A holds ``bits`` of key it may hand to SAE_A for SAE_B."""
        client = self.client("SAE_A")
        while True:
            status = await client.status("SAE_B")
            if status.stored_key_count * status.key_size >= bits:
                return
            await trio.sleep(0.05)


async def _run_node(
    config: Config, *, task_status: trio.TaskStatus[tuple[Node, NodeInfo, trio.CancelScope]]
) -> None:
    """Run one node in a scope of its own, so that a test can stop it alone."""
    async with trio.open_nursery() as nursery:
        node = Node(config)
        info = await nursery.start(node.run)
        task_status.started((node, info, nursery.cancel_scope))


@contextlib.asynccontextmanager
async def network(
    node_config: ConfigFactory,
    pki: Path,
    *,
    saes: dict[str, dict[str, Any]] | None = None,
    pairs: list[dict[str, Any]] | None = None,
    default: dict[str, Any] | None = None,
    wait_bits: int = 65536,
    sync: dict[str, Any] | None = None,
) -> AsyncIterator[Kmes]:
    """Start KME_B then KME_A, wait until key flows, stop both on exit."""
    all_saes = {**SAES, **(saes or {})}
    supply = {
        "reserve_timeout_s": RESERVE_TIMEOUT_S,
        "default": {**DEFAULT_POLICY, **(default or {})},
        "pairs": pairs or [],
    }
    async with trio.open_nursery() as nursery:
        cfg_b = node_config(
            "KME_B",
            peers={"KME_A": "127.0.0.1:1"},
            links={LINK: ("KME_A", "paired", FAST)},
            api=True,
            saes=all_saes,
            supply=supply,
            sync=sync,
        )
        node_b, info_b, scope_b = await nursery.start(_run_node, cfg_b)
        cfg_a = node_config(
            "KME_A",
            peers={"KME_B": f"127.0.0.1:{info_b.peer_port}"},
            links={LINK: ("KME_B", "paired", FAST)},
            api=True,
            saes=all_saes,
            supply=supply,
            sync=sync,
        )
        node_a, info_a, scope_a = await nursery.start(_run_node, cfg_a)
        async with contextlib.AsyncExitStack() as stack:
            kmes = Kmes(
                pki=pki,
                configs={"KME_A": cfg_a, "KME_B": cfg_b},
                infos={"KME_A": info_a, "KME_B": info_b},
                scopes={"KME_A": scope_a, "KME_B": scope_b},
                saes=all_saes,
                stack=stack,
                nodes={"KME_A": node_a, "KME_B": node_b},
            )
            await kmes.wait_for_key(wait_bits)
            yield kmes
        nursery.cancel_scope.cancel()


def key_request(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def key_ids_body(*key_ids: str) -> bytes:
    return json.dumps({"key_IDs": [{"key_ID": k} for k in key_ids]}).encode()


def keys_of(answer: Answer) -> dict[str, bytes]:
    """The key container of a 200 answer, as {key_ID: key bytes}."""
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json"
    return {k["key_ID"]: base64.b64decode(k["key"], validate=True) for k in answer.json()["keys"]}


def by_id(keys: Iterable[DeliveredKey]) -> dict[str, bytes]:
    return {k.key_id: k.key for k in keys}


def assert_error(answer: Answer, status: int, message: str | None = None) -> dict[str, Any]:
    """``answer`` is ``status`` with an ETSI 014 Error body (Table 13)."""
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    error: dict[str, Any] = answer.json()
    assert isinstance(error["message"], str) and error["message"]
    if message is not None:
        assert error["message"] == message
    return error


def assert_401(answer: Answer) -> None:
    """S014 Tables 4/6/8: 401 has no body."""
    assert answer.status == 401
    assert answer.body == b""
    assert answer.headers["content-length"] == "0"


async def assert_still_serving(net: Kmes) -> None:
    """The daemon answers a normal request after whatever the test threw at it."""
    keys = await net.client("SAE_A").get_key("SAE_B")
    fetched = await net.client("SAE_B").get_key_with_ids("SAE_A", [keys[0].key_id])
    assert fetched[0].key == keys[0].key


# --- Get status (S014 5.2, Table 9) ----------------------------------------------------------


async def test_status_reports_every_table_9_field(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            answer = await net.raw("KME_A", "GET", "/api/v1/keys/SAE_B/status")
            assert answer.status == 200
            assert answer.headers["content-type"] == "application/json"
            status = answer.json()
            assert set(status) == TABLE_9  # status_extension is optional and unused
            assert status["source_KME_ID"] == "KME_A"
            assert status["target_KME_ID"] == "KME_B"
            assert status["master_SAE_ID"] == "SAE_A"
            assert status["slave_SAE_ID"] == "SAE_B"
            assert status["key_size"] == 256
            assert 0 < status["stored_key_count"] <= status["max_key_count"]
            assert status["max_key_count"] == 50_000
            assert status["max_key_per_request"] == 64
            assert status["max_key_size"] == 4096
            assert status["min_key_size"] == 64
            assert status["max_SAE_ID_count"] == 2


async def test_status_follows_the_pair_policy(node_config: ConfigFactory, sae_pki: Path) -> None:
    pair = {"master": "SAE_A", "slave": "SAE_C", "key_size": 512, "max_key_per_request": 8}
    pair |= {"max_sae_id_count": 0, "max_stored_keys": 10}
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki, pairs=[pair]) as net:
            status = await net.client("SAE_A").status("SAE_C")
            assert (status.slave_sae_id, status.target_kme_id) == ("SAE_C", "KME_B")
            assert status.key_size == 512
            assert status.max_key_per_request == 8
            assert status.max_sae_id_count == 0  # 0: no multicast for this pair
            assert status.max_key_count == 10
            assert status.stored_key_count == 10  # plenty of key, capped by max_key_count
            # The reverse pair is another pair: the default policy.
            assert (await net.client("SAE_C").status("SAE_A")).key_size == 256


async def test_status_for_a_slave_on_the_same_kme_names_this_kme_as_target(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            status = await net.client("SAE_A").status("SAE_X")
            assert (status.source_kme_id, status.target_kme_id) == ("KME_A", "KME_A")
            assert status.stored_key_count > 0


# --- Get key and Get key with key IDs (S014 5.3, 5.4, Tables 10-12) --------------------------


async def test_enc_keys_post_gives_default_size_keys_under_uuid_ids(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            for body, number in ((b"", 1), (b"{}", 1), (key_request(number=3), 3)):
                answer = await net.raw("KME_A", "POST", "/api/v1/keys/SAE_B/enc_keys", body=body)
                keys = keys_of(answer)
                assert len(keys) == number
                for key_id, key in keys.items():
                    assert str(uuid.UUID(key_id)) == key_id
                    assert len(key) == 256 // 8


async def test_enc_keys_get_with_number_and_size_in_the_query(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            answer = await net.raw("KME_A", "GET", "/api/v1/keys/SAE_B/enc_keys?number=2&size=512")
            keys = keys_of(answer)
            assert len(keys) == 2
            assert all(len(k) == 512 // 8 for k in keys.values())
            assert len(set(keys.values())) == 2
            empty = keys_of(await net.raw("KME_A", "GET", "/api/v1/keys/SAE_B/enc_keys"))
            assert [len(k) for k in empty.values()] == [256 // 8]


async def test_dec_keys_by_the_slave_gives_the_same_bytes_post_and_get(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            delivered = keys_of(
                await net.raw(
                    "KME_A",
                    "POST",
                    "/api/v1/keys/SAE_B/enc_keys",
                    body=key_request(number=3, size=1024),
                )
            )
            first, *rest = delivered
            by_get = await net.raw(
                "KME_B", "GET", f"/api/v1/keys/SAE_A/dec_keys?key_ID={first}", sae="SAE_B"
            )
            by_post = await net.raw(
                "KME_B",
                "POST",
                "/api/v1/keys/SAE_A/dec_keys",
                sae="SAE_B",
                body=key_ids_body(*rest),
            )
            assert keys_of(by_get) | keys_of(by_post) == delivered


async def test_dec_keys_of_a_key_already_fetched_is_400_not_found(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            keys = await net.client("SAE_A").get_key("SAE_B", number=2)
            ids = [k.key_id for k in keys]
            await net.client("SAE_B").get_key_with_ids("SAE_A", ids)
            again = await net.raw(
                "KME_B", "POST", "/api/v1/keys/SAE_A/dec_keys", sae="SAE_B", body=key_ids_body(*ids)
            )
            assert_error(again, 400, etsi014.MSG_KEYS_NOT_FOUND)
            one_again = await net.raw(
                "KME_B", "GET", f"/api/v1/keys/SAE_A/dec_keys?key_ID={ids[0]}", sae="SAE_B"
            )
            assert_error(one_again, 400, etsi014.MSG_KEYS_NOT_FOUND)


async def test_dec_keys_of_an_unknown_key_is_400_not_found_and_serves_nothing(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            keys = await net.client("SAE_A").get_key("SAE_B")
            known, unknown = keys[0].key_id, str(uuid.uuid4())
            answer = await net.raw(
                "KME_B",
                "POST",
                "/api/v1/keys/SAE_A/dec_keys",
                sae="SAE_B",
                body=key_ids_body(known, unknown),
            )
            assert_error(answer, 400, etsi014.MSG_KEYS_NOT_FOUND)
            # All or nothing: the known key is still there.
            fetched = await net.client("SAE_B").get_key_with_ids("SAE_A", [known])
            assert fetched[0].key == keys[0].key


async def test_dec_keys_naming_another_master_is_400_not_found(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            keys = await net.client("SAE_A").get_key("SAE_B")
            with pytest.raises(BadRequest) as refused:
                await net.client("SAE_B").get_key_with_ids("SAE_X", [keys[0].key_id])
            assert refused.value.message == etsi014.MSG_KEYS_NOT_FOUND


async def test_hkdf_policy_delivers_identical_derived_keys_at_both_ends(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    pair = {"master": "SAE_A", "slave": "SAE_B", "derive": "hkdf-sha256"}
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki, pairs=[pair]) as net:
            keys = await net.client("SAE_A").get_key("SAE_B", number=4)
            fetched = await net.client("SAE_B").get_key_with_ids("SAE_A", [k.key_id for k in keys])
            assert by_id(fetched) == by_id(keys)
            assert all(len(k.key) == 32 for k in keys)


# --- additional_slave_SAE_IDs (S014 Table 10, Annex B) ---------------------------------------


async def test_additional_slave_on_the_target_kme_gets_the_same_keys(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            keys = await net.client("SAE_A").get_key(
                "SAE_B", number=3, additional_slave_sae_ids=["SAE_C"]
            )
            ids = [k.key_id for k in keys]
            for_b = await net.client("SAE_B").get_key_with_ids("SAE_A", ids)
            for_c = await net.client("SAE_C").get_key_with_ids("SAE_A", ids)
            assert by_id(for_b) == by_id(for_c) == by_id(keys)
            # Each slave fetches once.
            with pytest.raises(BadRequest):
                await net.client("SAE_C").get_key_with_ids("SAE_A", ids)


async def test_additional_slave_on_the_master_kme_gets_the_same_keys(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            keys = await net.client("SAE_A").get_key(
                "SAE_B", number=2, additional_slave_sae_ids=["SAE_X"]
            )
            ids = [k.key_id for k in keys]
            for_x = await net.client("SAE_X").get_key_with_ids("SAE_A", ids)
            for_b = await net.client("SAE_B").get_key_with_ids("SAE_A", ids)
            assert by_id(for_x) == by_id(for_b) == by_id(keys)


async def test_additional_slave_attached_to_a_third_kme_is_400(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            with pytest.raises(BadRequest) as refused:
                await net.client("SAE_A").get_key("SAE_B", additional_slave_sae_ids=["SAE_Z"])
            message = refused.value.message
            assert "SAE_Z" in message and "KME_C" in message
            assert "KME_B" in message and "KME_A" in message  # what would be accepted


async def test_more_additional_slaves_than_max_sae_id_count_is_400(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            with pytest.raises(BadRequest) as refused:
                await net.client("SAE_A").get_key(
                    "SAE_B", additional_slave_sae_ids=["SAE_C", "SAE_X", "SAE_Z"]
                )
            assert "max_SAE_ID_count 2" in refused.value.message


async def test_additional_slaves_that_repeat_or_are_unknown_are_400(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            client = net.client("SAE_A")
            for extra, says in (
                (["SAE_B"], "repeats the master or a slave"),
                (["SAE_A"], "repeats the master or a slave"),
                (["SAE_C", "SAE_C"], "repeats the master or a slave"),
                (["SAE_NOPE"], "unknown additional slave SAE 'SAE_NOPE'"),
            ):
                with pytest.raises(BadRequest) as refused:
                    await client.get_key("SAE_B", additional_slave_sae_ids=extra)
                assert says in refused.value.message, extra


# --- 400: the spec's messages and the policy -------------------------------------------------


async def test_size_not_a_multiple_of_8_is_400_with_the_spec_message(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            post = await net.raw(
                "KME_A", "POST", "/api/v1/keys/SAE_B/enc_keys", body=key_request(size=257)
            )
            assert_error(post, 400, etsi014.MSG_SIZE_NOT_MULTIPLE_OF_8)
            get = await net.raw("KME_A", "GET", "/api/v1/keys/SAE_B/enc_keys?size=100")
            assert_error(get, 400, etsi014.MSG_SIZE_NOT_MULTIPLE_OF_8)


async def test_unsupported_extension_mandatory_is_400_with_details(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            body = key_request(
                extension_mandatory=[{"abc_route_type": "direct"}, {"abc_transfer": 1}]
            )
            answer = await net.raw("KME_A", "POST", "/api/v1/keys/SAE_B/enc_keys", body=body)
            error = assert_error(answer, 400, etsi014.MSG_EXTENSION_MANDATORY_UNSUPPORTED)
            assert error["details"] == [
                {"extension_mandatory_unsupported": "abc_route_type"},
                {"extension_mandatory_unsupported": "abc_transfer"},
            ]


async def test_unknown_extension_optional_is_ignored(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            keys = await net.client("SAE_A").get_key(
                "SAE_B", number=2, extension_optional=[{"abc_route_type": "direct"}]
            )
            assert len(keys) == 2


async def test_requests_outside_the_pair_policy_are_400(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            client = net.client("SAE_A")
            for kwargs, says in (
                ({"size": 32}, "size 32 outside 64..4096 bits"),
                ({"size": 4104}, "size 4104 outside 64..4096 bits"),
                ({"number": 65}, "number 65 exceeds max_key_per_request 64"),
            ):
                with pytest.raises(BadRequest) as refused:
                    await client.get_key("SAE_B", **kwargs)
                assert refused.value.message == says
            # The bounds themselves are fine.
            assert len(await client.get_key("SAE_B", number=64, size=64)) == 64
            assert len((await client.get_key("SAE_B", size=4096))[0].key) == 512


async def test_master_as_its_own_slave_or_an_unknown_slave_is_400(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            client = net.client("SAE_A")
            with pytest.raises(BadRequest) as refused:
                await client.get_key("SAE_A")
            assert refused.value.message == "master and slave SAE must differ"
            with pytest.raises(BadRequest) as refused:
                await client.get_key("SAE_NOPE")
            assert refused.value.message == "unknown slave SAE 'SAE_NOPE'"
            with pytest.raises(BadRequest):
                await client.status("SAE_NOPE")


ENC_KEYS_BAD_BODIES = [
    b'{"number": "2"}',  # wrong type
    b'{"number": -1}',
    b'{"number": 0}',
    b'{"number": 1e3}',
    b'{"number": 123456789012345678901234567890}',
    b'{"size": 256.5}',
    b'{"size": -256}',
    b'{"size": 4194304}',  # beyond any KME's wire bound
    b'{"additional_slave_SAE_IDs": "SAE_C"}',
    b'{"additional_slave_SAE_IDs": [""]}',
    b'{"additional_slave_SAE_IDs": [7]}',
    b'{"extension_mandatory": {"abc_x": 1}}',
    b"number=2",  # not JSON
    b'{"number": 1',  # truncated
    b"[1, 2]",
    b"null",
    b"\xff\xfe\x00{",
    b"[" * 200_000,  # nested deeper than any parser should follow
]
DEC_KEYS_BAD_BODIES = [
    b"{}",
    b'{"key_IDs": []}',
    b'{"key_IDs": [{"key_ID": "not-a-uuid"}]}',
    b'{"key_IDs": ["0b8c1e5e-9f0a-4b6e-8a59-3c2d1e0f9a8b"]}',
    b'{"key_IDs": [{"key_ID": 5}]}',
    b"",
    b"key_ID=0b8c1e5e-9f0a-4b6e-8a59-3c2d1e0f9a8b",
]
BAD_QUERIES = [
    ("enc_keys", "?number=abc"),
    ("enc_keys", "?number=-2"),
    ("enc_keys", "?number=1&number=2"),
    ("enc_keys", "?size=256&additional_slave_SAE_IDs=SAE_C"),
    ("enc_keys", "?number"),
    ("dec_keys", ""),
    ("dec_keys", "?key_ID=not-a-uuid"),
]


async def test_bad_bodies_and_queries_are_400_and_the_kme_carries_on(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            for body in ENC_KEYS_BAD_BODIES:
                answer = await net.raw("KME_A", "POST", "/api/v1/keys/SAE_B/enc_keys", body=body)
                assert_error(answer, 400)
            for body in DEC_KEYS_BAD_BODIES:
                answer = await net.raw(
                    "KME_B", "POST", "/api/v1/keys/SAE_A/dec_keys", sae="SAE_B", body=body
                )
                assert_error(answer, 400)
            for resource, query in BAD_QUERIES:
                kme, sae, path = (
                    ("KME_A", "SAE_A", "SAE_B")
                    if resource == "enc_keys"
                    else ("KME_B", "SAE_B", "SAE_A")
                )
                answer = await net.raw(
                    kme, "GET", f"/api/v1/keys/{path}/{resource}{query}", sae=sae
                )
                assert_error(answer, 400)
            # A query on POST is not the spec's either.
            answer = await net.raw(
                "KME_A", "POST", "/api/v1/keys/SAE_B/enc_keys?number=2", body=b"{}"
            )
            assert_error(answer, 400, "query parameters are allowed only with GET")
            repeated = str(uuid.uuid4())
            answer = await net.raw(
                "KME_B",
                "POST",
                "/api/v1/keys/SAE_A/dec_keys",
                sae="SAE_B",
                body=key_ids_body(repeated, repeated),
            )
            assert_error(answer, 400, "key_IDs repeats a key ID")
            await assert_still_serving(net)


def _send_big_body(port: int, ctx: ssl.SSLContext, body: bytes | Iterator[bytes]) -> int | None:
    """POST a huge body; the status if the KME answered before closing, else None."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
    try:
        chunked = not isinstance(body, bytes)
        conn.request(
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            body=body,
            headers={"content-type": "application/json"},
            encode_chunked=chunked,
        )
        return conn.getresponse().status
    except (ConnectionError, ssl.SSLError):
        return None  # the KME closed the connection on us while we were still sending
    finally:
        conn.close()


async def test_ten_megabyte_body_is_refused_and_the_kme_carries_on(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(160):
            yield b" " * 65536

    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            ctx = net.context("SAE_A")
            port = net.port("KME_A")
            status = await trio.to_thread.run_sync(_send_big_body, port, ctx, b" " * (10 << 20))
            assert status in (413, None)
            status = await trio.to_thread.run_sync(_send_big_body, port, ctx, chunks())
            assert status in (413, None)
            await assert_still_serving(net)


async def test_paths_and_methods_outside_the_api_are_404_and_405(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            for target in ("/", "/api/v1/keys/SAE_B", "/api/v1/keys/SAE_B/keys", "/api/v2/x"):
                assert_error(await net.raw("KME_A", "GET", target), 404)
            for method, resource, allow in (
                ("POST", "status", "GET"),
                ("DELETE", "enc_keys", "GET, POST"),
                ("PUT", "dec_keys", "GET, POST"),
            ):
                answer = await net.raw("KME_A", method, f"/api/v1/keys/SAE_B/{resource}")
                assert_error(answer, 405)
                assert answer.headers["allow"] == allow


# --- who may call (S014 section 4, 5.4 authorisation) -----------------------------------------


async def test_dec_keys_authorisation_matrix(node_config: ConfigFactory, sae_pki: Path) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            # One key for SAE_B, with SAE_X as an extra slave so that KME_A holds a copy too.
            keys = await net.client("SAE_A").get_key(
                "SAE_B", number=1, additional_slave_sae_ids=["SAE_X"]
            )
            target = f"/api/v1/keys/SAE_A/dec_keys?key_ID={keys[0].key_id}"
            refused = {
                "unnamed SAE of the slave's KME": ("KME_B", net.context("SAE_C")),
                "the master, at its own KME": ("KME_A", net.context("SAE_A")),
                "the master, at the slave's KME": ("KME_B", net.context("SAE_A")),
                "a named slave, at another KME": ("KME_A", net.context("SAE_B")),
                "a node certificate": ("KME_B", net.context("KME_A", kind="nodes")),
                "the slave's own KME's certificate": ("KME_B", net.context("KME_B", kind="nodes")),
            }
            for who, (kme, ctx) in refused.items():
                answer = await net.raw(kme, "GET", target, ctx=ctx)
                assert answer.status == 401, who
                assert_401(answer)
            with pytest.raises(Unauthorized):  # as the client library reports it
                await net.client("SAE_C").get_key_with_ids("SAE_A", [keys[0].key_id])
            # None of that used the key up: both named slaves still get it.
            for sae in ("SAE_B", "SAE_X"):
                got = keys_of(await net.raw(net.saes[sae]["kme"], "GET", target, sae=sae))
                assert got == {keys[0].key_id: keys[0].key}


async def test_dec_keys_at_the_masters_kme_by_an_unnamed_sae_is_401(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    # S014 5.4: 401 when the caller was not a named slave.  KME_A keeps no copy of a key
    # whose slaves are all on KME_B, but it keeps who was named, so it can still say 401.
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            keys = await net.client("SAE_A").get_key("SAE_B")
            target = f"/api/v1/keys/SAE_A/dec_keys?key_ID={keys[0].key_id}"
            for sae in ("SAE_A", "SAE_X"):
                answer = await net.raw("KME_A", "GET", target, sae=sae)
                assert_401(answer)
            unknown = f"/api/v1/keys/SAE_A/dec_keys?key_ID={uuid.uuid4()}"
            assert_error(await net.raw("KME_A", "GET", unknown, sae="SAE_X"), 400)


async def test_enc_keys_and_status_authorisation_matrix(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            allowed = {
                "an SAE of this KME": ("KME_A", "SAE_A", "SAE_B"),
                "another SAE of this KME": ("KME_A", "SAE_X", "SAE_C"),
                "an SAE of the other KME": ("KME_B", "SAE_C", "SAE_A"),
            }
            for who, (kme, sae, slave) in allowed.items():
                for resource in ("status", "enc_keys"):
                    answer = await net.raw(kme, "GET", f"/api/v1/keys/{slave}/{resource}", sae=sae)
                    assert answer.status == 200, (who, resource, answer.body)
            refused = {
                "an SAE attached to another KME": ("KME_A", net.context("SAE_B")),
                "an SAE attached to a KME it is not on": ("KME_B", net.context("SAE_X")),
                "a node certificate": ("KME_A", net.context("KME_B", kind="nodes")),
                "this KME's own certificate": ("KME_A", net.context("KME_A", kind="nodes")),
            }
            for who, (kme, ctx) in refused.items():
                for method, resource in (
                    ("GET", "status"),
                    ("GET", "enc_keys"),
                    ("POST", "enc_keys"),
                ):
                    body = b"{}" if method == "POST" else None
                    answer = await net.raw(
                        kme, method, f"/api/v1/keys/SAE_C/{resource}", ctx=ctx, body=body
                    )
                    assert answer.status == 401, (who, resource)
                    assert_401(answer)
            # A 401 holds whatever the request: the caller is checked before anything else.
            answer = await net.raw("KME_A", "GET", "/nowhere", ctx=net.context("SAE_B"))
            assert_401(answer)


async def test_client_without_a_certificate_is_refused_at_tls(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await net.raw("KME_A", "GET", "/api/v1/keys/SAE_B/status", ctx=tls_context(sae_pki))
            await assert_still_serving(net)


async def test_client_certificate_from_another_ca_is_refused_at_tls(
    node_config: ConfigFactory, sae_pki: Path, rogue_sae: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            impostor = net.client("SAE_A", pki=rogue_sae)
            with pytest.raises(TransportError):
                await impostor.get_key("SAE_B")
            with pytest.raises(TransportError):
                await net.client("KME_A", pki=rogue_sae, kind="nodes", kme="KME_A").status("SAE_B")
            await assert_still_serving(net)
            status = await trio.to_thread.run_sync(
                AdminClient(net.infos["KME_A"].admin_socket).call, "status"
            )
            # What operators see: the refused handshakes, and what the good ones negotiated.
            tls = status["api"]["tls"]
            assert tls["failed"] == 2 and tls["timed_out"] == 0
            assert tls["handshakes"] >= 1 and sum(tls["groups"].values()) == tls["handshakes"]
            assert set(tls["versions"]) == {"TLSv1.3"}
            # Named on any Python; from OpenSSL 3.5 on, both ends offer the ML-KEM hybrid first.
            hybrid = ssl.OPENSSL_VERSION_INFO >= (3, 5)
            assert set(tls["groups"]) == {"X25519MLKEM768" if hybrid else "x25519"}
            # And the listener's connection gate: every connection counted, none open now
            # but the clients' kept-alive ones.
            listener = tls["listener"]
            assert listener["totals"]["admitted"] >= tls["handshakes"] + tls["failed"]
            assert listener["pending"] == 0


# --- 503 (S014 Tables 4/6/8: error on the server side) -----------------------------------------


async def test_enc_keys_beyond_the_pool_is_503_and_cuts_nothing(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    big = {"max_key_size": 65536, "max_key_per_request": 4096}
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki, default=big) as net:
            client = net.client("SAE_A")
            before = (await client.status("SAE_B")).stored_key_count
            # 4096 keys of 64 kbit: 256 Mbit, far more than a few seconds of link produce.
            with pytest.raises(ServiceUnavailable) as refused:
                await client.get_key("SAE_B", number=4096, size=65536)
            message = refused.value.message
            assert LINK in message and "268435456 bits asked" in message
            assert "owned ready bits available" in message
            assert (await client.status("SAE_B")).stored_key_count >= before
            await assert_still_serving(net)


async def test_enc_keys_while_the_target_kme_is_down_is_503(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    # Without a stock: every request asks KME_B (test_stocked_keys_... is the other case).
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki, default={"stock_keys": 0}) as net:
            client = net.client("SAE_A")
            await client.get_key("SAE_B")
            net.stop("KME_B")
            # The KME answers within its reserve timeout; it does not hang on a dead peer.
            with trio.fail_after(RESERVE_TIMEOUT_S + 5):
                with pytest.raises(ServiceUnavailable) as refused:
                    await client.get_key("SAE_B")
            assert "target KME KME_B" in refused.value.message
            # Keys for SAEs on this KME do not need KME_B.
            assert len(await client.get_key("SAE_X")) == 1


async def test_rate_limit_refuses_the_third_immediate_request_with_503(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    pair = {"master": "SAE_A", "slave": "SAE_B", "rate_keys_per_s": 1.0, "burst_keys": 2}
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki, pairs=[pair]) as net:
            client = net.client("SAE_A")
            await client.get_key("SAE_B")
            await client.get_key("SAE_B")
            with pytest.raises(ServiceUnavailable) as refused:
                await client.get_key("SAE_B")
            assert "rate limit of 1 keys/s for this SAE pair" in refused.value.message
            # Other pairs have their own budget.
            assert len(await client.get_key("SAE_C", number=5)) == 5


async def test_an_sae_over_its_own_rate_is_429_with_retry_after_and_the_others_go_on(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    # Slow enough that no token comes back while the test runs (10 s for one).
    limited = {"kme": "KME_A", "limits": {"requests_per_s": 0.1, "burst_requests": 2}}
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki, saes={"SAE_X": limited}) as net:
            target = "/api/v1/keys/SAE_B/status"
            first = [(await net.raw("KME_A", "GET", target, sae="SAE_X")).status for _ in "ab"]
            assert first == [200, 200]
            refused = await net.raw("KME_A", "GET", target, sae="SAE_X")
            assert refused.status == 429
            assert 1 <= int(refused.headers["retry-after"]) <= 10
            assert "rate limit of 0.1 calls/s for SAE SAE_X" in json.loads(refused.body)["message"]
            # SAE_A has a bucket of its own (and no limit).
            assert (await net.raw("KME_A", "GET", target, sae="SAE_A")).status == 200


async def test_keys_past_their_validity_are_400_at_dec_keys(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    pair = {"master": "SAE_A", "slave": "SAE_B", "key_validity_s": 1.0}
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki, pairs=[pair]) as net:
            keys = await net.client("SAE_A").get_key("SAE_B")
            await trio.sleep(1.5)  # real time: the KMEs' validity runs on the wall clock
            with pytest.raises(BadRequest) as refused:
                await net.client("SAE_B").get_key_with_ids("SAE_A", [keys[0].key_id])
            assert refused.value.message == etsi014.MSG_KEYS_NOT_FOUND


# --- the per-pair stock (qkmsd/supply/_stock.py) -------------------------------------------

STOCK = 8


@contextlib.asynccontextmanager
async def stocked(
    node_config: ConfigFactory, pki: Path
) -> AsyncIterator[tuple[Kmes, TrioEtsi014Client, list[DeliveredKey]]]:
    """A network whose KME_A holds a full stock for SAE_A -> SAE_B; SAE_A's client, and
    the keys of its first request (which found no stock and was reserved on request)."""
    async with network(node_config, pki, default={"stock_keys": STOCK}) as net:
        master = net.client("SAE_A")
        first = list(await master.get_key("SAE_B"))
        await net.wait_for_stock("KME_A", STOCK)
        yield net, master, first


async def test_stocked_keys_are_served_while_the_target_kme_is_down(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    # KME_B recorded the stocked keys before it went down: the slave fetches them once it is
    # back, as ETSI 014 has KMEs share keys ahead of requests.
    with trio.fail_after(TIME_LIMIT_S):
        async with stocked(node_config, sae_pki) as (net, master, _):
            net.stop("KME_B")
            assert len(await master.get_key("SAE_B", number=STOCK)) == STOCK
            with trio.fail_after(RESERVE_TIMEOUT_S + 5):
                with pytest.raises(ServiceUnavailable) as refused:
                    await master.get_key("SAE_B")
            assert "target KME KME_B" in refused.value.message


# --- no key reuse (the invariants in docs/architecture.md) -----------------------------------


async def test_concurrent_enc_keys_never_serve_a_key_twice(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    masters_a = [("SAE_A", "SAE_B"), ("SAE_X", "SAE_B"), ("SAE_A", "SAE_C"), ("SAE_X", "SAE_C")]
    masters_b = [("SAE_B", "SAE_A"), ("SAE_C", "SAE_X")]
    requests_each = 20
    delivered: dict[tuple[str, str], dict[str, bytes]] = {}
    count = 0

    async def master(net: Kmes, sae: str, slave: str, number: int) -> None:
        nonlocal count
        client = net.client(sae)  # its own connection
        for _ in range(requests_each):
            keys = await client.get_key(slave, number=number)
            delivered.setdefault((sae, slave), {}).update(by_id(keys))
            count += len(keys)

    with trio.fail_after(120):
        async with network(node_config, sae_pki, wait_bits=4 * 65536) as net:
            async with trio.open_nursery() as masters:
                # 8 connections at KME_A and 2 at KME_B, all cutting from the same link.
                for i, (sae, slave) in enumerate(masters_a * 2):
                    masters.start_soon(master, net, sae, slave, 1 + i % 4)
                for i, (sae, slave) in enumerate(masters_b):
                    masters.start_soon(master, net, sae, slave, 2 + i)
            ids = [k for keys in delivered.values() for k in keys]
            material = [v for keys in delivered.values() for v in keys.values()]
            assert len(ids) == count == 20 * (2 * (1 + 2 + 3 + 4) + 2 + 3)
            assert len(set(ids)) == len(ids)
            assert len(set(material)) == len(material)
            for (sae, slave), keys in delivered.items():
                fetched = await net.client(slave).get_key_with_ids(sae, list(keys))
                assert by_id(fetched) == keys


# --- PQC-wrapped delivery (docs/etsi014.md) -------------------------------------------------


async def test_sae_with_a_registered_pqc_key_gets_wrapped_keys_it_unwraps(
    node_config: ConfigFactory, sae_pki: Path, tmp_path: Path
) -> None:
    private = {sae: generate_keypair() for sae in ("SAE_A", "SAE_B")}
    saes = {}
    for sae, key in private.items():
        path = tmp_path / f"{sae}.pqc.pem"
        path.write_bytes(key.public_key().to_pem())
        saes[sae] = {**SAES[sae], "pqc_public_key": str(path)}
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki, saes=saes) as net:
            keys = await net.client("SAE_A", pqc_private_key=private["SAE_A"]).get_key(
                "SAE_B", number=3, size=512, additional_slave_sae_ids=["SAE_C"]
            )
            assert keys.pqc_unwrapped and all(len(k.key) == 64 for k in keys)
            ids = [k.key_id for k in keys]
            for_b = await net.client("SAE_B", pqc_private_key=private["SAE_B"]).get_key_with_ids(
                "SAE_A", ids
            )
            assert for_b.pqc_unwrapped
            for_c = await net.client("SAE_C").get_key_with_ids("SAE_A", ids)
            assert not for_c.pqc_unwrapped  # SAE_C registered no key: plain, under TLS
            assert by_id(for_b) == by_id(for_c) == by_id(keys)
            # On the wire: marked, 16 bytes longer (the tag), never the key itself.
            wire = await net.raw("KME_A", "GET", "/api/v1/keys/SAE_B/enc_keys?size=512")
            (entry,) = wire.json()["keys"]
            assert entry["key_extension"] == {"qkms_pqc_wrapped": True}
            assert len(base64.b64decode(entry["key"])) == 64 + 16
            assert "qkms_pqc" in wire.json()["key_container_extension"]
            # A client without the private key refuses rather than return ciphertext.
            with pytest.raises(KeyUnwrapError):
                await net.client("SAE_A").get_key("SAE_B")
            # Insisting on wrapping is fine for an SAE that registered a key.
            wrapped = await net.client("SAE_A", pqc_private_key=private["SAE_A"]).get_key(
                "SAE_B", extension_mandatory=[{"qkms_pqc_wrap": True}]
            )
            assert wrapped.pqc_unwrapped


async def test_pqc_wrap_mandatory_without_a_registered_key_is_400_unmet(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            body = key_request(extension_mandatory=[{"qkms_pqc_wrap": True}])
            answer = await net.raw("KME_A", "POST", "/api/v1/keys/SAE_B/enc_keys", body=body)
            error = assert_error(answer, 400, etsi014.MSG_EXTENSION_MANDATORY_UNMET)
            assert error["details"] == [{"qkms_pqc_wrap": "no PQC public key registered for SAE_A"}]


# --- any HTTPS client will do ---------------------------------------------------------------


def _urllib_round_trip(a_url: str, b_url: str, a: ssl.SSLContext, b: ssl.SSLContext) -> bool:
    request = urllib.request.Request(
        f"{a_url}/api/v1/keys/SAE_B/enc_keys",
        data=json.dumps({"number": 1, "size": 256}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, context=a, timeout=20) as response:
        (key,) = json.load(response)["keys"]
    fetch = f"{b_url}/api/v1/keys/SAE_A/dec_keys?key_ID={key['key_ID']}"
    with urllib.request.urlopen(fetch, context=b, timeout=20) as response:
        (same,) = json.load(response)["keys"]
    return bool(same == key and len(base64.b64decode(key["key"])) == 32)


async def test_a_generic_https_client_with_a_client_certificate_gets_keys(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            assert await trio.to_thread.run_sync(
                _urllib_round_trip,
                net.url("KME_A"),
                net.url("KME_B"),
                net.context("SAE_A"),
                net.context("SAE_B"),
            )


def _libcurl_round_trip(a_url: str, b_url: str, pki: Path) -> None:
    """enc_keys then dec_keys with libcurl, as SAEs written in C make them."""
    pycurl = pytest.importorskip("pycurl")

    def handle(sae: str) -> Any:
        c = pycurl.Curl()
        c.setopt(pycurl.CAINFO, str(pki / "ca.pem"))
        c.setopt(pycurl.SSLCERT, str(pki / "saes" / f"{sae}.pem"))
        c.setopt(pycurl.SSLKEY, str(pki / "saes" / f"{sae}.key"))
        c.setopt(pycurl.HTTPHEADER, ["Content-Type: application/json"])
        c.setopt(pycurl.TIMEOUT, 20)
        return c

    def post(c: Any, url: str, body: dict[str, Any]) -> tuple[int, Any]:
        chunks: list[bytes] = []
        c.setopt(pycurl.URL, url)
        c.setopt(pycurl.POSTFIELDS, json.dumps(body))
        c.setopt(pycurl.WRITEFUNCTION, chunks.append)
        c.perform()
        return c.getinfo(pycurl.RESPONSE_CODE), json.loads(b"".join(chunks))

    a, b = handle("SAE_A"), handle("SAE_B")
    try:
        for _ in range(3):
            status, container = post(a, f"{a_url}/api/v1/keys/SAE_B/enc_keys", {"number": 2})
            assert status == 200
            ids = [{"key_ID": k["key_ID"]} for k in container["keys"]]
            status, same = post(b, f"{b_url}/api/v1/keys/SAE_A/dec_keys", {"key_IDs": ids})
            assert status == 200
            assert same["keys"] == container["keys"]
            assert all(len(base64.b64decode(k["key"])) == 32 for k in same["keys"])
        # One kept-alive connection to each KME: the last requests opened none.
        assert a.getinfo(pycurl.NUM_CONNECTS) == b.getinfo(pycurl.NUM_CONNECTS) == 0
    finally:
        a.close()
        b.close()


async def test_libcurl_with_a_client_certificate_gets_keys_over_kept_alive_connections(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            await trio.to_thread.run_sync(
                _libcurl_round_trip, net.url("KME_A"), net.url("KME_B"), sae_pki
            )


def _keep_alive(port: int, ctx: ssl.SSLContext) -> list[int]:
    """Several requests on one connection; their statuses.  Fails if the KME closes it."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
    statuses = []
    try:
        for method, target in [
            ("GET", "/api/v1/keys/SAE_B/status"),
            ("GET", "/api/v1/keys/SAE_B/enc_keys?number=2"),
            ("GET", "/api/v1/keys/SAE_B/enc_keys?size=12"),  # 400
            ("GET", f"/api/v1/keys/SAE_B/dec_keys?key_ID={uuid.uuid4()}"),  # 400
            ("GET", "/api/v1/keys/SAE_A/nothing"),  # 404
            ("GET", "/api/v1/keys/SAE_B/enc_keys"),
        ]:
            conn.request(method, target)
            sock = conn.sock
            response = conn.getresponse()
            response.read()
            assert not response.will_close and conn.sock is sock
            statuses.append(response.status)
    finally:
        conn.close()
    return statuses


async def test_one_keep_alive_connection_serves_many_requests_and_errors(
    node_config: ConfigFactory, sae_pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, sae_pki) as net:
            statuses = await trio.to_thread.run_sync(
                _keep_alive, net.port("KME_A"), net.context("SAE_A")
            )
            assert statuses == [200, 200, 400, 400, 404, 200]
