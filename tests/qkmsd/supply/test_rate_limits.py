"""Per-SAE rate limits on the ETSI 014 front: token buckets on trio's clock, 429 with
Retry-After over the limit, and each SAE's budget its own."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import msgspec
import trio
import trio.testing

from qkmsd.config import SaeConfig, SaeLimits, SupplyPolicy, config_from_mapping
from qkmsd.supply import Etsi014Front

from .conftest import SAES
from .test_front import FakeSource, get


def limited(**limits: float) -> Etsi014Front:
    caps = SaeLimits(**limits)  # type: ignore[arg-type]
    saes = {k: msgspec.structs.replace(v, limits=caps) for k, v in SAES.items()}
    return Etsi014Front(
        node_id="KME_A",
        saes=saes,
        policy_for=lambda master, slave: SupplyPolicy(),
        sources=[FakeSource("KME_A", "KME_B")],
        pqc_keys={},
    )


def header(answer: object, name: str) -> str | None:
    return dict(getattr(answer, "headers", ())).get(name)


async def test_calls_over_the_sae_s_rate_get_429_with_retry_after_and_an_etsi_body() -> None:
    f = limited(requests_per_s=2.0, burst_requests=3)
    statuses = [(await f.handle(get("/api/v1/keys/SAE_B/status"))).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    over = await f.handle(get("/api/v1/keys/SAE_B/status"))
    assert over.status == 429
    assert header(over, "retry-after") == "1"
    body = json.loads(over.body)
    assert "rate limit of 2 calls/s for SAE SAE_A" in body["message"]


async def test_the_bucket_refills_at_the_configured_rate_on_trio_s_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = limited(requests_per_s=2.0, burst_requests=1)
    assert (await f.handle(get("/api/v1/keys/SAE_B/status"))).status == 200
    assert (await f.handle(get("/api/v1/keys/SAE_B/status"))).status == 429
    await trio.sleep(0.4)  # 0.8 of a token
    assert (await f.handle(get("/api/v1/keys/SAE_B/status"))).status == 429
    await trio.sleep(0.1)
    assert (await f.handle(get("/api/v1/keys/SAE_B/status"))).status == 200


async def test_keys_per_second_counts_keys_not_calls_and_retry_after_says_when(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = limited(keys_per_s=4.0, burst_keys=10)
    assert (await f.handle(get("/api/v1/keys/SAE_B/enc_keys?number=8"))).status == 200
    over = await f.handle(get("/api/v1/keys/SAE_B/enc_keys?number=8"))
    assert over.status == 429
    assert header(over, "retry-after") == "2"  # 6 keys missing at 4/s: 1.5 s, rounded up
    await trio.sleep(1.5)
    assert (await f.handle(get("/api/v1/keys/SAE_B/enc_keys?number=8"))).status == 200
    # dec_keys spends from the slave's own bucket.
    key = "00000000-0000-4000-8000-000000000001"
    assert (
        await f.handle(get(f"/api/v1/keys/SAE_A/dec_keys?key_ID={key}", "SAE_A2"))
    ).status == 200


async def test_a_request_for_more_keys_than_the_bucket_holds_is_400_not_429() -> None:
    f = limited(keys_per_s=4.0, burst_keys=4)
    answer = await f.handle(get("/api/v1/keys/SAE_B/enc_keys?number=5"))
    assert answer.status == 400
    assert "burst_keys 4" in json.loads(answer.body)["message"]


async def test_one_sae_over_its_limit_leaves_the_others_budget_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = limited(requests_per_s=1.0, burst_requests=2)
    flood = [(await f.handle(get("/api/v1/keys/SAE_B/status"))).status for _ in range(50)]
    assert flood.count(200) == 2 and flood.count(429) == 48
    other = [
        (await f.handle(get("/api/v1/keys/SAE_A/status", sae="SAE_A2"))).status for _ in range(2)
    ]
    assert other == [200, 200]


def test_limits_come_from_the_sae_s_section_over_the_default() -> None:
    text = """
        [node]
        id = "KME_A"
        state_dir = "/var/lib/qkms"
        [tls]
        ca = "ca.pem"
        cert = "a.pem"
        key = "a.key"
        [listen]
        peer = "127.0.0.1:7001"
        admin_socket = "/run/qkms/admin.sock"
        [supply.sae_limits]
        requests_per_s = 50
        keys_per_s = 1000
        [saes.SAE_A]
        kme = "KME_A"
        [saes.SAE_B]
        kme = "KME_A"
        [saes.SAE_B.limits]
        requests_per_s = 5
        burst_requests = 10
        """
    config = config_from_mapping(tomllib.loads(text), source=Path("/etc/qkms/qkmsd.toml"))
    assert config.saes["SAE_A"].limits == SaeLimits(requests_per_s=50, keys_per_s=1000)
    assert config.saes["SAE_B"].limits == SaeLimits(
        requests_per_s=5, burst_requests=10, keys_per_s=1000
    )


def test_no_limits_by_default() -> None:
    assert SaeConfig("S", "K", None).limits == SaeLimits()
    assert SaeLimits().requests_per_s is None and SaeLimits().keys_per_s is None
