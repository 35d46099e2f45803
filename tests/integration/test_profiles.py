"""Key profiles on running nodes (``qkmsctl profile ...``): a profile's key size applies
to its SAE pair, its counters move with the keys served, and it survives a restart."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import trio

from cli._admin import AdminError

from ..conftest import ConfigFactory
from .test_etsi014 import TIME_LIMIT_S, key_ids_body, key_request, keys_of, network
from .test_node_operations import ENC, admin

GOLD = {"name": "gold", "sae_pairs": ["SAE_A>SAE_B"], "key_size": 512, "rate_bps": 1e6}


async def test_an_active_profile_sets_its_pair_s_key_size_and_counts_the_keys_served(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, pki) as net:
            sock = net.infos["KME_A"].admin_socket
            added = await admin(sock, "profile_add", profile=GOLD)
            assert added["active"] is False and added["keys_served"] == 0
            [key] = keys_of(await net.raw("KME_A", "POST", ENC)).values()
            assert len(key) == 256 // 8  # inactive: the policy's key size
            shown = await admin(sock, "profile_activate", name="gold")
            assert shown["active"] is True and shown["period_started_at"] is not None
            delivered = keys_of(await net.raw("KME_A", "POST", ENC, body=key_request(number=2)))
            assert [len(k) for k in delivered.values()] == [512 // 8] * 2
            fetched = await net.raw(
                "KME_B",
                "POST",
                "/api/v1/keys/SAE_A/dec_keys",
                sae="SAE_B",
                body=key_ids_body(*delivered),
            )
            assert keys_of(fetched) == delivered
            shown = await admin(sock, "profile", name="gold")
            assert (shown["keys_served"], shown["bits_served"]) == (2, 1024)
            assert shown["keys_served_total"] == 2
            assert shown["target_bits"] > 0 and shown["shortfall_bits"] >= 0
            listed = await admin(sock, "profiles")
            assert [p["name"] for p in listed["profiles"]] == ["gold"]
            text = json.dumps(listed)
            assert not any(base64.b64encode(k).decode() in text for k in delivered.values())
        async with network(node_config, pki, wait_bits=0) as net:
            sock = net.infos["KME_A"].admin_socket
            shown = await admin(sock, "profile", name="gold")
            assert shown["active"] is True and shown["keys_served"] == 0  # a new period
            await admin(sock, "profile_deactivate", name="gold")
            await net.wait_for_key()
            [key] = keys_of(await net.raw("KME_A", "POST", ENC)).values()
            assert len(key) == 256 // 8
            assert (await admin(sock, "profile", name="gold"))["keys_served"] == 0


async def test_bad_profile_requests_are_refused_with_the_reason_and_the_node_serves_on(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, pki) as net:
            sock = net.infos["KME_A"].admin_socket
            with pytest.raises(AdminError, match="name at least one node pair"):
                await admin(sock, "profile_add", profile={"name": "empty"})
            with pytest.raises(AdminError, match="not both"):
                await admin(sock, "profile_add", profile={**GOLD, "share": 0.5})
            with pytest.raises(AdminError, match="no profile 'gold'"):
                await admin(sock, "profile_activate", name="gold")
            with pytest.raises(AdminError, match="profile_set"):
                await admin(sock, "profile_set", name="gold")
            await admin(sock, "profile_add", profile=GOLD)
            with pytest.raises(AdminError, match="exists"):
                await admin(sock, "profile_add", profile=GOLD)
            removed = await admin(sock, "profile_remove", name="gold")
            assert removed == {"removed": "gold", "profiles": []}
            assert len(keys_of(await net.raw("KME_A", "POST", ENC))) == 1
