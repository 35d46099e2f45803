"""Both client flavours against a fake KME over loopback mutual TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any, Protocol

import pytest
import trio
from fake_kme import Pki, RunningKme

from protocol._etsi014 import MSG_KEYS_NOT_FOUND, MSG_SIZE_NOT_MULTIPLE_OF_8
from qkms_client import (
    BadRequest,
    DeliveredKey,
    Etsi014Client,
    KeyDelivery,
    KeyStatus,
    KeyUnwrapError,
    ServiceUnavailable,
    TransportError,
    TrioEtsi014Client,
    Unauthorized,
    UnexpectedResponse,
)
from qkms_client._tls import client_context
from qkms_pqc import HybridPrivateKey, generate_keypair


class Client(Protocol):
    """The two flavours behind one async face (the blocking one runs in a thread)."""

    async def status(self, slave_sae_id: str) -> KeyStatus: ...
    async def get_key(
        self,
        slave_sae_id: str,
        number: int = 1,
        size: int | None = None,
        additional_slave_sae_ids: Sequence[str] = (),
    ) -> KeyDelivery: ...
    async def get_key_with_ids(self, master_sae_id: str, key_ids: Sequence[str]) -> KeyDelivery: ...
    async def aclose(self) -> None: ...


class InThread:
    def __init__(self, client: Etsi014Client) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await trio.to_thread.run_sync(partial(method, *args, **kwargs))

        return call

    async def aclose(self) -> None:
        self._client.close()


MakeClient = Callable[..., Client]


@pytest.fixture(params=["sync", "trio"])
async def make_client(
    request: pytest.FixtureRequest, pki: Pki, running_kme: RunningKme
) -> AsyncIterator[MakeClient]:
    made: list[Client] = []

    def make(sae: str = "SAE_A", **kwargs: Any) -> Client:
        kwargs = {"ca": pki.ca, "cert": pki.cert(sae), "key": pki.key(sae), **kwargs}
        client: Client
        if request.param == "sync":
            client = InThread(Etsi014Client(running_kme.url, **kwargs))
        else:
            client = TrioEtsi014Client(running_kme.url, **kwargs)
        made.append(client)
        return client

    with trio.fail_after(30):
        yield make
        for client in made:
            await client.aclose()


async def test_status_is_typed(make_client: MakeClient) -> None:
    status = await make_client("SAE_A").status("SAE_B")
    assert (status.source_kme_id, status.master_sae_id, status.slave_sae_id) == (
        "KME_A",
        "SAE_A",
        "SAE_B",
    )
    assert (status.key_size, status.max_sae_id_count) == (256, 2)


async def test_master_and_slave_get_the_same_keys(make_client: MakeClient) -> None:
    delivered = await make_client("SAE_A").get_key("SAE_B", number=3, size=512)
    assert len(delivered) == 3 and not delivered.pqc_unwrapped
    assert all(len(k.key) == 64 for k in delivered)
    fetched = await make_client("SAE_B").get_key_with_ids("SAE_A", [k.key_id for k in delivered])
    assert [(k.key_id, k.key) for k in fetched] == [(k.key_id, k.key) for k in delivered]


async def test_additional_slaves_may_fetch_too(make_client: MakeClient) -> None:
    [key] = await make_client("SAE_A").get_key("SAE_B", additional_slave_sae_ids=["SAE_C"])
    [again] = await make_client("SAE_C").get_key_with_ids("SAE_A", [key.key_id])
    assert again.key == key.key


async def test_dec_keys_by_unnamed_sae_is_unauthorized(make_client: MakeClient) -> None:
    [key] = await make_client("SAE_A").get_key("SAE_B")
    with pytest.raises(Unauthorized):
        await make_client("SAE_C").get_key_with_ids("SAE_A", [key.key_id])


async def test_unknown_key_id_is_bad_request_with_the_spec_message(
    make_client: MakeClient,
) -> None:
    with pytest.raises(BadRequest) as info:
        await make_client("SAE_B").get_key_with_ids(
            "SAE_A", ["bc490419-7d60-487f-adc1-4ddcc177c139"]
        )
    assert info.value.message == MSG_KEYS_NOT_FOUND


async def test_size_refused_by_the_kme_is_bad_request(make_client: MakeClient) -> None:
    with pytest.raises(BadRequest) as info:
        await make_client().get_key("SAE_B", size=100)
    assert info.value.message == MSG_SIZE_NOT_MULTIPLE_OF_8


async def test_503_is_service_unavailable(make_client: MakeClient, running_kme: RunningKme) -> None:
    running_kme.kme.unavailable = True
    with pytest.raises(ServiceUnavailable) as info:
        await make_client().get_key("SAE_B")
    assert info.value.message == "key store is empty"


async def test_fewer_keys_than_asked_is_an_unexpected_response(
    make_client: MakeClient, running_kme: RunningKme
) -> None:
    running_kme.kme.short_change = True
    with pytest.raises(UnexpectedResponse, match="asked for 2 keys"):
        await make_client().get_key("SAE_B", number=2)


async def test_calls_reuse_one_keep_alive_connection(
    make_client: MakeClient, running_kme: RunningKme
) -> None:
    client = make_client()
    await client.status("SAE_B")
    await client.get_key("SAE_B")
    await client.status("SAE_B")
    first, second, third = running_kme.kme.peers_seen
    assert first is second is third  # one TLS connection: one PeerInfo


async def test_a_connection_closed_by_the_kme_is_replaced(
    make_client: MakeClient, running_kme: RunningKme
) -> None:
    client = make_client()
    await client.status("SAE_B")
    await trio.sleep(0.6)  # the fake KME's idle time-out is 0.3 s
    [key] = await client.get_key("SAE_B")
    assert running_kme.kme.peers_seen[0] is not running_kme.kme.peers_seen[1]
    assert len(key.key) == 32


async def test_kme_identity_is_checked_when_given(make_client: MakeClient) -> None:
    assert (await make_client(kme_id="KME_A").status("SAE_B")).source_kme_id == "KME_A"
    with pytest.raises(TransportError, match="expected 'KME_X'"):
        await make_client(kme_id="KME_X").status("SAE_B")


async def test_kme_with_a_certificate_from_another_ca_is_refused(
    make_client: MakeClient, pki: Pki
) -> None:
    with pytest.raises(TransportError, match="certificate"):
        await make_client(ca=pki.stranger_ca).status("SAE_B")


def test_the_network_ca_is_the_only_trust_anchor(pki: Pki) -> None:
    # Not the system store as well: a publicly trusted certificate for the KME's host name
    # must not let anyone pose as the KME (and hand the SAE keys of their choosing).
    ctx = client_context(pki.ca, pki.cert("SAE_A"), pki.key("SAE_A"))
    anchors = [dict(rdn[0] for rdn in c["subject"]) for c in ctx.get_ca_certs()]
    assert [a["commonName"] for a in anchors] == ["qkms network CA"]


async def test_delivered_key_repr_hides_the_key(make_client: MakeClient) -> None:
    delivered = await make_client().get_key("SAE_B")
    text = repr(delivered) + repr(list(delivered)) + str(delivered[0])
    assert delivered[0].key.hex() not in text and repr(delivered[0].key) not in text


# --- PQC-wrapped delivery ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sae_a_pqc() -> HybridPrivateKey:
    return generate_keypair()


@pytest.fixture(scope="module")
def sae_b_pqc() -> HybridPrivateKey:
    return generate_keypair()


async def test_wrapped_keys_are_unwrapped_transparently_at_both_ends(
    make_client: MakeClient,
    running_kme: RunningKme,
    sae_a_pqc: HybridPrivateKey,
    sae_b_pqc: HybridPrivateKey,
) -> None:
    running_kme.kme.pqc_keys.update(SAE_A=sae_a_pqc.public_key(), SAE_B=sae_b_pqc.public_key())
    delivered = await make_client("SAE_A", pqc_private_key=sae_a_pqc).get_key(
        "SAE_B", number=2, size=256
    )
    assert delivered.pqc_unwrapped and all(k.pqc_unwrapped for k in delivered)
    assert all(len(k.key) == 32 for k in delivered)
    fetched = await make_client("SAE_B", pqc_private_key=sae_b_pqc).get_key_with_ids(
        "SAE_A", [k.key_id for k in delivered]
    )
    assert [k.key for k in fetched] == [k.key for k in delivered]


async def test_wrapped_keys_without_a_private_key_are_refused_not_passed_on(
    make_client: MakeClient, running_kme: RunningKme, sae_a_pqc: HybridPrivateKey
) -> None:
    running_kme.kme.pqc_keys["SAE_A"] = sae_a_pqc.public_key()
    with pytest.raises(KeyUnwrapError, match="no pqc_private_key"):
        await make_client("SAE_A").get_key("SAE_B")


async def test_keys_wrapped_for_another_key_fail_to_unwrap(
    make_client: MakeClient,
    running_kme: RunningKme,
    sae_a_pqc: HybridPrivateKey,
    sae_b_pqc: HybridPrivateKey,
) -> None:
    running_kme.kme.pqc_keys["SAE_A"] = sae_a_pqc.public_key()
    with pytest.raises(KeyUnwrapError):
        await make_client("SAE_A", pqc_private_key=sae_b_pqc).get_key("SAE_B")


async def test_plain_keys_to_a_pqc_client_are_delivered_and_marked_plain(
    make_client: MakeClient, sae_a_pqc: HybridPrivateKey
) -> None:
    delivered = await make_client("SAE_A", pqc_private_key=sae_a_pqc).get_key("SAE_B")
    assert not delivered.pqc_unwrapped
    assert isinstance(delivered[0], DeliveredKey)
