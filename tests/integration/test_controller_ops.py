"""Operations through the controller, in the ring of ``test_controller_work``: the nodes'
alarm events kept as the network's history, and key profiles distributed to the nodes
they concern."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from cli._admin import AdminClient, AdminError

from ..conftest import ConfigFactory
from .test_controller_work import NODES, ring

LINK_AB = "KME_A~KME_B"


async def admin(socket: Path, method: str, **params: Any) -> dict[str, Any]:
    return await trio.to_thread.run_sync(lambda: AdminClient(socket).call(method, **params))


def sock(r: Any, kme: str) -> Path:
    path: Path = r.nodes[kme].config.admin_socket
    return path


async def until_in_network_history(r: Any, leader: str, node: str, code: str) -> dict[str, Any]:
    while True:
        answer = await admin(sock(r, leader), "network_alarms", node=node, code=code)
        if answer["events"]:
            return answer
        await trio.sleep(0.1)


async def test_alarm_events_reach_the_controller_and_a_new_one_rebuilds_the_history(
    node_config: ConfigFactory,
) -> None:
    with trio.fail_after(60):
        async with ring(node_config) as r:
            leader = await r.controller()
            await admin(sock(r, "KME_A"), "device_stop", link=LINK_AB)
            answer = await until_in_network_history(r, leader, "KME_A", "link-down")
            assert answer["controller"] == leader
            [event] = [e for e in answer["events"] if e["kind"] == "raised"]
            assert (event["node"], event["resource"], event["severity"]) == (
                "KME_A", LINK_AB, "major",
            )  # fmt: skip
            follower = next(k for k in r.alive() if k != leader)
            with pytest.raises(AdminError, match=f"not the controller; ask {leader}"):
                await admin(sock(r, follower), "network_alarms")

            # The controller's node goes: the next one hears the events again from the nodes.
            r.kill(leader)
            second = await r.controller()
            assert second != leader
            again = await until_in_network_history(r, second, "KME_A", "link-down")
            assert any(e["at"] == event["at"] for e in again["events"])
            # Each event once, however often it was sent.
            kinds = [(e["kind"], e["at"]) for e in again["events"]]
            assert len(kinds) == len(set(kinds))


async def test_a_profile_changed_on_any_node_goes_to_the_nodes_it_concerns(
    node_config: ConfigFactory,
) -> None:
    with trio.fail_after(60):
        async with ring(node_config) as r:
            await r.controller()

            def holders() -> set[str]:
                return {k for k in NODES if r.nodes[k].profiles.book.holds("gold")}

            gold = {"name": "gold", "node_pairs": [LINK_AB], "priority": 5}
            answer = await admin(sock(r, "KME_C"), "profile_add", profile=gold)
            outcomes = {o["node"]: o["result"] for o in answer["nodes"]}
            assert outcomes == {
                "KME_A": "applied", "KME_B": "applied",
                "KME_C": "skipped", "KME_D": "skipped", "KME_E": "skipped",
            }  # fmt: skip
            assert answer["status"] is None  # KME_C does not hold it
            assert holders() == {"KME_A", "KME_B"}
            stored = r.nodes["KME_A"].config.state_dir / "profiles.json"
            assert '"gold"' in stored.read_text()  # persisted where it applies

            # A change of pairs moves it: dropped where it no longer applies, sent whole to
            # the nodes it now concerns.
            answer = await admin(
                sock(r, "KME_D"),
                "profile_set",
                name="gold",
                changes={"node_pairs": ["KME_C~KME_D"]},
            )
            outcomes = {o["node"]: o["result"] for o in answer["nodes"]}
            assert outcomes["KME_A"] == outcomes["KME_B"] == "removed"
            assert outcomes["KME_C"] == outcomes["KME_D"] == "applied"
            assert holders() == {"KME_C", "KME_D"}
            assert answer["status"]["profile"]["priority"] == 5  # KME_D's own view

            answer = await admin(sock(r, "KME_A"), "profile_activate", name="gold")
            assert r.nodes["KME_C"].profiles.book.status("gold").active
            with pytest.raises(AdminError, match="no node reporting to .* holds profile 'nope'"):
                await admin(sock(r, "KME_B"), "profile_activate", name="nope")
            with pytest.raises(AdminError, match="concerns none of the nodes"):
                await admin(
                    sock(r, "KME_B"),
                    "profile_add",
                    profile={"name": "far", "node_pairs": ["KME_X~KME_Y"]},
                )
            await admin(sock(r, "KME_E"), "profile_remove", name="gold")
            assert holders() == set()

            # --local: this node only, as without a controller.
            local = await admin(
                sock(r, "KME_E"), "profile_add", profile={**gold, "name": "mine"}, local=True
            )
            assert local["name"] == "mine"
            assert {k for k in NODES if r.nodes[k].profiles.book.holds("mine")} == {"KME_E"}
