"""The relay journal: what each relay came to outlives the node, and a relay under way when
the node stopped is marked discarded at the next start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

import qkmsd.keystore._relays as journal
from qkmsd.config import RelaySection
from qkmsd.keystore import KeyStore
from qkmsd.relay import RelayAgent, RoutingTable

from .conftest import InlineStoreThread


def row(relay_id: str, state: str, started_at: float) -> dict[str, object]:
    return {
        "relay_id": relay_id,
        "e2e_link_id": "A~C",
        "role": "intermediate",
        "state": state,
        "path": ["A", "B", "C"],
        "bits": 4096,
        "started_at": started_at,
        "ended_at": None if state == "forwarded" else started_at + 0.01,
        "error": "",
    }


def agent(store: KeyStore) -> RelayAgent:
    async def no_request(peer: str, hop: object) -> object:
        raise AssertionError("no relay in these tests")

    return RelayAgent(
        node_id="B",
        store=store,
        store_thread=InlineStoreThread(),  # type: ignore[arg-type]
        request=no_request,  # type: ignore[arg-type]
        link_to={},
        pools={},
        drivers={},
        routes=RoutingTable("B", links=[], manual={}, neighbours=[]),
        settings=RelaySection(),
    )


async def test_relays_under_way_when_the_node_stopped_are_discarded_at_start(
    tmp_path: Path,
) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        store.journal_relays([row("A~C/2", "forwarded", 2.0), row("A~C/1", "confirmed", 1.0)])
        relays = agent(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(relays.run)
            shown = {r.relay_id: (r.state, r.error) for r in relays.relays()}
            nursery.cancel_scope.cancel()
        assert shown == {
            "A~C/2": ("discarded", "interrupted: the node stopped"),
            "A~C/1": ("confirmed", ""),
        }
        assert [r["state"] for r in store.recent_relays(10)] == ["discarded", "confirmed"]


async def test_what_a_relay_came_to_is_written_to_the_journal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        relays = agent(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(relays.run)
            record = relays._record("A~C/7", "A~C", ["A", "B", "C"], "intermediate", 4096)
            record.state = "confirmed"
            relays._note(record)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert [(r["relay_id"], r["state"]) for r in store.recent_relays(10)] == [
            ("A~C/7", "confirmed")
        ]


def test_the_journal_keeps_the_newest_rows_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "RELAY_JOURNAL_MAX", 3)
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        store.journal_relays([row(f"A~C/{i}", "confirmed", float(i)) for i in range(5)])
        assert [r["relay_id"] for r in store.recent_relays(10)] == ["A~C/4", "A~C/3", "A~C/2"]
