"""Operating a running node: drain and undrain its ETSI 014 front, change its supply
policies at runtime (``qkmsctl node ...``, ``qkmsctl policy ...``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from cli._admin import AdminClient, AdminError
from qkmsd.app import Node, NodeInfo
from qkmsd.config import Config

from ..conftest import ConfigFactory
from .test_etsi014 import (
    FAST,
    LINK,
    TIME_LIMIT_S,
    assert_error,
    key_ids_body,
    key_request,
    keys_of,
    network,
)

ENC = "/api/v1/keys/SAE_B/enc_keys"


async def admin(socket: Path, method: str, **params: Any) -> dict[str, Any]:
    return await trio.to_thread.run_sync(lambda: AdminClient(socket).call(method, **params))


async def test_a_drained_node_refuses_new_keys_but_hands_out_those_already_delivered(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, pki) as net:
            delivered = keys_of(await net.raw("KME_A", "POST", ENC, body=key_request(number=2)))
            sock_a, sock_b = (net.infos[k].admin_socket for k in ("KME_A", "KME_B"))
            for sock in (sock_a, sock_b):
                state = await admin(sock, "node_drain")
                assert state["draining"] is True and state["drained_since"] is not None
            error = assert_error(await net.raw("KME_A", "POST", ENC), 503)
            assert "draining" in error["message"]
            fetched = await net.raw(
                "KME_B",
                "POST",
                "/api/v1/keys/SAE_A/dec_keys",
                sae="SAE_B",
                body=key_ids_body(*delivered),
            )
            assert keys_of(fetched) == delivered
            assert (await admin(sock_a, "node_undrain"))["draining"] is False
            assert len(keys_of(await net.raw("KME_A", "POST", ENC))) == 1
            front = net.nodes["KME_A"].supply
            assert front is not None
            latency = front.statistics().latency
            assert latency["enc_keys"].count == 3  # answered, refused while draining, answered


async def test_a_node_restarted_while_drained_stays_drained(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, pki) as net:
            await admin(net.infos["KME_A"].admin_socket, "node_drain")
            state_dir = net.configs["KME_A"].state_dir
        assert (state_dir / "drained").exists()
        async with network(node_config, pki, wait_bits=0) as net:
            state = await admin(net.infos["KME_A"].admin_socket, "node")
            assert state["draining"] is True
            assert_error(await net.raw("KME_A", "POST", ENC), 503)


async def test_a_policy_change_applies_to_the_next_request_and_survives_a_restart(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, pki) as net:
            sock = net.infos["KME_A"].admin_socket
            shown = await admin(sock, "policy_set", scope="SAE_A>SAE_B", changes={"key_size": 512})
            assert shown["pairs"]["SAE_A>SAE_B"]["key_size"] == 512
            assert "SAE_A>SAE_B" in shown["overrides"]
            [key] = keys_of(await net.raw("KME_A", "POST", ENC)).values()
            assert len(key) == 512 // 8
            with pytest.raises(AdminError, match="min_key_size <= key_size"):
                await admin(sock, "policy_set", scope="default", changes={"key_size": 16})
            with pytest.raises(AdminError, match="unknown field"):
                await admin(sock, "policy_set", scope="default", changes={"colour": "red"})
            peers = await admin(sock, "peers")
        async with network(node_config, pki, wait_bits=0) as net:
            sock = net.infos["KME_A"].admin_socket
            assert (await admin(sock, "policy"))["pairs"]["SAE_A>SAE_B"]["key_size"] == 512
            unset = await admin(sock, "policy_unset", scope="SAE_A>SAE_B")
            assert unset["overrides"] == {}
            await net.wait_for_key()
            [key] = keys_of(await net.raw("KME_A", "POST", ENC)).values()
            assert len(key) == 256 // 8
        assert [p["state"] for p in peers["peers"]] == ["connected"]


async def test_policy_reload_reads_the_config_file_again(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, pki) as net:
            cfg = net.configs["KME_A"]
            sock = net.infos["KME_A"].admin_socket
            text = cfg.source.read_text()
            cfg.source.write_text(
                text.replace("max_key_per_request = ", "max_key_per_request = 1#")
            )
            shown = await admin(sock, "policy_reload")
            assert shown["default"]["max_key_per_request"] == 1
            error = assert_error(
                await net.raw("KME_A", "POST", ENC, body=key_request(number=2)), 400
            )
            assert "max_key_per_request 1" in error["message"]
            cfg.source.write_text("[node]\nid = broken")
            with pytest.raises(AdminError, match="policy_reload"):
                await admin(sock, "policy_reload")
            assert (await admin(sock, "policy"))["default"]["max_key_per_request"] == 1


async def test_a_device_stopped_by_an_operator_stays_stopped_across_a_restart(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, pki) as net:
            sock = net.infos["KME_A"].admin_socket
            [device] = (await admin(sock, "device_stop", link=LINK))["devices"]
            assert device["stopped"] == ["operator"] and device["state"] != "up"
            with pytest.raises(AdminError, match="no QKD link 'KME_A~KME_Z'"):
                await admin(sock, "device_stop", link="KME_A~KME_Z")
        async with network(node_config, pki, wait_bits=0) as net:
            sock = net.infos["KME_A"].admin_socket
            [device] = (await admin(sock, "devices"))["devices"]
            assert device["stopped"] == ["operator"]
            keys = net.nodes["KME_A"].keys
            assert keys is not None
            [before] = await keys.links_status()
            await trio.sleep(0.5)  # blocks the paired driver would have delivered meanwhile
            [still] = await keys.links_status()
            assert still.bits_in == before.bits_in == 0
            [device] = (await admin(sock, "device_start", link=LINK))["devices"]
            assert device["stopped"] == []
            await net.wait_for_key()  # key flows again


async def _ready_bits(node: Node, link: str) -> int:
    assert node.keys is not None
    return sum(s.ready_bits for s in await node.keys.links_status() if s.link_id == link)


async def _until_more_than(node: Node, link: str, bits: int) -> None:
    """Until ``link`` holds more than ``bits`` of ready key (synchronised with the peer)."""
    while True:
        if await _ready_bits(node, link) > bits:
            return
        await trio.sleep(0.05)


async def _node(
    config: Config,
    *,
    task_status: trio.TaskStatus[tuple[Node, NodeInfo, Callable[[], Awaitable[None]]]],
) -> None:
    """Run one node; ``stop()`` cancels it and returns once it has stopped."""
    stopped = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            node = Node(config)
            info = await nursery.start(node.run)

            async def stop() -> None:
                nursery.cancel_scope.cancel()
                await stopped.wait()

            task_status.started((node, info, stop))
    finally:
        stopped.set()


async def test_a_device_registered_at_runtime_serves_key_and_stays_until_removed(
    node_config: ConfigFactory, pki: Path
) -> None:
    params = {**FAST, "seed": "registered-at-runtime-seed-00001"}
    with trio.fail_after(TIME_LIMIT_S):
        async with trio.open_nursery() as nursery:
            cfg_b = node_config("KME_B", peers={"KME_A": "127.0.0.1:1"})
            _, info_b, _ = await nursery.start(_node, cfg_b)
            cfg_a = node_config("KME_A", peers={"KME_B": f"127.0.0.1:{info_b.peer_port}"})
            node_a, info_a, stop_a = await nursery.start(_node, cfg_a)
            sock = info_a.admin_socket
            assert (await admin(sock, "devices"))["devices"] == []
            assert node_a.routes is not None and node_a.routes.paths("KME_B") == []
            register = {"link": LINK, "peer": "KME_B", "driver": "paired", "params": params}
            for wrong, problem in [
                ({"peer": "KME_Z"}, "'KME_Z' is not in \\[peers\\].*add \\[peers.KME_Z\\]"),
                ({"driver": "bb48"}, "driver 'bb48' unknown \\(known: .*paired"),
                ({"params": {**params, "rate_bps": "fast"}}, "driver 'paired'.*rate_bps"),
                ({"link": "A B"}, "not a valid link id"),
            ]:
                with pytest.raises(AdminError, match=problem):
                    await admin(sock, "device_register", **{**register, **wrong})
            [device] = (await admin(sock, "device_register", **register))["devices"]
            assert (device["link"], device["registered"]) == (LINK, True)
            await admin(info_b.admin_socket, "device_register", **{**register, "peer": "KME_A"})
            await _until_more_than(node_a, LINK, 0)  # synchronised with the other end: key
            assert node_a.routes is not None  # relays take the link at once, without a restart
            assert node_a.routes.paths("KME_B") == [("KME_A", "KME_B")]
            with pytest.raises(AdminError, match="registered already.*devices remove"):
                await admin(sock, "device_register", **register)

            # Taken up again at a restart.
            await stop_a()
            node_a, info_a, stop_a = await nursery.start(_node, cfg_a)
            [device] = (await admin(sock, "devices"))["devices"]
            assert (device["link"], device["registered"]) == (LINK, True)
            before = await _ready_bits(node_a, LINK)
            await _until_more_than(node_a, LINK, before)  # its driver runs again

            # Removed: the driver stops, the link is forgotten, also after a restart; its
            # alarms clear (nothing would read the link again to clear them).
            await admin(sock, "device_stop", link=LINK)
            state = node_a.state
            assert state is not None
            while not any(a.resource == LINK for a in state.alarms()):
                await state.look()
                await trio.sleep(0.1)
            assert (await admin(sock, "device_remove", link=LINK))["devices"] == []
            assert node_a.routes is not None and node_a.routes.paths("KME_B") == []
            assert not any(a.resource == LINK for a in state.alarms())
            saved = json.loads((cfg_a.state_dir / "devices.json").read_text())
            assert saved == {"registered": {}, "stopped": []}
            with pytest.raises(AdminError, match="no device registered for it"):
                await admin(sock, "device_remove", link=LINK)
            await stop_a()
            node_a, info_a, stop_a = await nursery.start(_node, cfg_a)
            assert (await admin(sock, "devices"))["devices"] == []
            saved = json.loads((cfg_a.state_dir / "devices.json").read_text())
            assert saved["registered"] == {}
            nursery.cancel_scope.cancel()


async def test_a_link_of_the_config_file_is_not_removed_at_runtime(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with network(node_config, pki, wait_bits=0) as net:
            sock = net.infos["KME_A"].admin_socket
            with pytest.raises(AdminError, match="in the config file.*\\[links.KME_A~KME_B\\]"):
                await admin(sock, "device_remove", link=LINK)
            other = {"link": "KME_A~KME_B.2", "peer": "KME_B", "driver": "paired"}
            with pytest.raises(AdminError, match="peer KME_B has link KME_A~KME_B already"):
                await admin(sock, "device_register", **other, params=FAST)
