"""The profile book: validation, persistence across a restart, activation, layering over
the supply policy, priorities of node pairs, and the service state of a period."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qkmsd.config import SupplyPolicy
from qkmsd.profiles import ProfileBook, ProfileError

SAE_KME = {"SAE_A": "KME_A", "SAE_B": "KME_B", "SAE_C": "KME_C", "SAE_A2": "KME_A"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(path: Path | None = None, clock: Clock | None = None) -> ProfileBook:
    return ProfileBook(node_id="KME_A", sae_kme=SAE_KME, path=path, clock=clock or Clock())


def gold(**changes: Any) -> dict[str, Any]:
    return {"name": "gold", "sae_pairs": ["SAE_A>SAE_B"], "key_size": 512, **changes}


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"name": "x"}, "name at least one node pair"),
        ({"name": "bad name", "node_pairs": ["KME_A~KME_B"]}, "$.name"),
        ({"name": "x", "node_pairs": ["KME_A"]}, "A~B"),
        ({"name": "x", "node_pairs": ["KME_A~KME_A"]}, "two different node ids"),
        ({"name": "x", "sae_pairs": ["SAE_A-SAE_B"]}, "MASTER>SLAVE"),
        ({"name": "x", "sae_pairs": ["SAE_A>SAE_A"]}, "must differ"),
        ({**gold(), "key_size": 100}, "multiple of 8"),
        ({**gold(), "rate_bps": 10, "share": 0.5}, "not both"),
        ({**gold(), "share": 1.5}, "$.share"),
        ({**gold(), "priority": -1}, "$.priority"),
        ({**gold(), "colour": "red"}, "colour"),
    ],
)
def test_a_bad_profile_is_refused_with_its_reason_and_nothing_changes(
    fields: dict[str, Any], says: str
) -> None:
    b = book()
    with pytest.raises(ProfileError, match=None) as info:
        b.add(fields)
    assert says in str(info.value)
    assert b.names() == []


def test_profiles_and_their_activation_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    b = book(path)
    b.add(gold(priority=5))
    b.add({"name": "bulk", "node_pairs": ["KME_C~KME_A"], "rate_bps": 1000})
    b.activate("gold")
    b.set("bulk", {"priority": 2, "rate_bps": None, "share": 0.25})
    again = book(path)
    assert again.names() == ["bulk", "gold"]
    gold_status, bulk = again.status("gold"), again.status("bulk")
    assert gold_status.active and gold_status.profile.priority == 5
    assert not bulk.active and bulk.profile.share == 0.25 and bulk.profile.rate_bps is None
    assert bulk.profile.node_pairs == ["KME_A~KME_C"]  # one spelling of an unordered pair
    again.remove("gold")
    assert book(path).names() == ["bulk"]


def test_a_damaged_profile_file_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps([{"name": "x", "node_pairs": []}]))
    with pytest.raises(ProfileError, match="name at least one"):
        book(path)


def test_adding_a_profile_twice_or_changing_an_unknown_one_is_refused() -> None:
    b = book()
    b.add(gold())
    with pytest.raises(ProfileError, match="exists"):
        b.add(gold())
    with pytest.raises(ProfileError, match="no profile 'silver'.*gold"):
        b.set("silver", {"priority": 2})
    with pytest.raises(ProfileError, match="unknown field"):
        b.set("gold", {"nmae": "x"})


def test_an_active_profile_sets_its_sae_pair_s_key_size_and_validity_only() -> None:
    b = book()
    policy = SupplyPolicy(key_size=256, key_validity_s=100.0, max_key_per_request=7)
    layered = b.layer(lambda master, slave: policy)
    b.add(gold(key_validity_s=30.0))
    assert layered("SAE_A", "SAE_B") == policy  # inactive: the policy holds
    b.activate("gold")
    got = layered("SAE_A", "SAE_B")
    assert (got.key_size, got.key_validity_s, got.max_key_per_request) == (512, 30.0, 7)
    assert layered("SAE_B", "SAE_A") == policy  # the other direction is another pair
    b.deactivate("gold")
    assert layered("SAE_A", "SAE_B") == policy


def test_a_sae_pair_profile_wins_over_a_node_pair_one_whatever_the_priority() -> None:
    b = book()
    layered = b.layer(lambda master, slave: SupplyPolicy())
    b.add({"name": "nodes", "node_pairs": ["KME_A~KME_B"], "key_size": 1024, "priority": 9})
    b.add(gold(priority=1))
    b.activate("nodes")
    assert layered("SAE_A", "SAE_B").key_size == 1024  # by its nodes
    assert layered("SAE_A2", "SAE_B").key_size == 1024
    b.activate("gold")
    assert layered("SAE_A", "SAE_B").key_size == 512
    assert layered("SAE_A2", "SAE_B").key_size == 1024


def test_a_key_size_outside_the_policy_range_is_not_applied_and_says_why() -> None:
    b = book()
    layered = b.layer(lambda master, slave: SupplyPolicy(key_size=256, max_key_size=256))
    b.add(gold(active=True))
    assert layered("SAE_A", "SAE_B").key_size == 256
    assert "outside the pair's policy range 64..256" in b.status("gold").conflict


def test_priority_of_a_node_pair_is_the_highest_active_profile_s() -> None:
    b = book()
    b.add({"name": "low", "node_pairs": ["KME_B~KME_A"], "priority": 2, "active": True})
    b.add(gold(priority=7))  # SAE_A>SAE_B: nodes KME_A~KME_B
    assert b.priority_of(("KME_A", "KME_B")) == 2.0
    b.activate("gold")
    assert b.priority_of(("KME_B", "KME_A")) == 7.0
    assert b.priority_of(("KME_A", "KME_C")) == 0.0


def test_service_state_counts_the_period_and_the_shortfall_against_a_rate() -> None:
    clock = Clock()
    b = book(clock=clock)
    b.add(gold(rate_bps=100.0, period_s=60.0, active=True))
    b.sample({"KME_B": 0})
    clock.now += 10
    b.served("SAE_A", "SAE_B", 2, 1024)
    b.served("SAE_B", "SAE_A", 5, 5000)  # another pair: not this profile's
    b.sample({"KME_B": 4096, "KME_C": 9999})
    s = b.status("gold")
    assert (s.keys_served, s.bits_served, s.bits_generated) == (2, 1024, 4096)
    assert (s.target_bits, s.shortfall_bits) == (1000, 0)
    clock.now += 20
    assert b.status("gold").shortfall_bits == 3000 - 1024
    clock.now += 40  # a new period: counts start again, the total goes on
    s = b.status("gold")
    assert (s.keys_served, s.bits_served, s.target_bits, s.keys_served_total) == (0, 0, 1000, 2)
    assert s.period_started_at == 1060.0


def test_a_share_target_follows_the_key_into_the_profile_s_links() -> None:
    b = book()
    b.add({"name": "half", "node_pairs": ["KME_A~KME_B"], "share": 0.5, "active": True})
    b.sample({"KME_B": 100})
    b.sample({"KME_B": 2100})
    b.served("SAE_A2", "SAE_B", 1, 256)  # between the pair's nodes
    s = b.status("half")
    assert (s.bits_generated, s.target_bits, s.shortfall_bits) == (2000, 1000, 744)


def test_an_inactive_profile_counts_nothing() -> None:
    b = book()
    b.add(gold(rate_bps=10.0))
    b.served("SAE_A", "SAE_B", 3, 768)
    s = b.status("gold")
    assert (s.active, s.keys_served, s.target_bits, s.period_started_at) == (False, 0, 0, None)
