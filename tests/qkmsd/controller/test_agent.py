"""The election agent's own duties: its vote is stored one step at a time, in order."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import trio
import trio.testing

from protocol import ElectionState, Persist
from qkmsd.controller import ControllerAgent


async def _nothing(peer: str, message: object) -> bool:
    return True


async def test_steps_from_the_timer_and_from_messages_store_the_vote_in_turn(
    tmp_path: Path,
) -> None:
    path = tmp_path / "election.json"
    agent = ControllerAgent(
        node_id="A",
        electors={"A": 1, "B": 1, "C": 1},
        lease=1.0,
        drift=0.1,
        send=_nothing,
        state_path=path,
    )
    states = [ElectionState(term=t, voted_for="A") for t in range(1, 41)]
    async with trio.open_nursery() as nursery:
        for state in states:  # forty steps at once, as a busy node may get them
            nursery.start_soon(agent._apply, [Persist(state)])
            await trio.testing.wait_all_tasks_blocked()  # each step made before the next
    assert msgspec.json.decode(path.read_bytes(), type=ElectionState) == states[-1]
    assert sorted(os.listdir(tmp_path)) == ["election.json"]
