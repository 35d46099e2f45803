"""The profile agent: pool sampling into the service state, and its admin methods."""

from __future__ import annotations

import pytest
import trio

from qkmsd.profiles import SAMPLE_S, ProfileAgent, ProfileBook, ProfileError


def agent(bits_in: dict[str, int]) -> ProfileAgent:
    book = ProfileBook(node_id="KME_A", sae_kme={}, path=None, clock=trio.current_time)

    async def link_bits() -> dict[str, int]:
        return dict(bits_in)

    return ProfileAgent(book, link_bits=link_bits)


async def test_key_into_a_profile_s_pool_counts_as_generated_once_sampled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bits_in = {"KME_B": 1000, "KME_C": 0}
    a = agent(bits_in)
    methods = a.admin_methods()
    await methods["profile_add"]({"profile": {"name": "p", "node_pairs": ["KME_A~KME_B"]}})
    await methods["profile_activate"]({"name": "p"})
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        bits_in["KME_B"] += 2048
        bits_in["KME_C"] += 4096  # not the profile's pair
        await trio.sleep(SAMPLE_S * 1.5)
        shown = await methods["profile"]({"name": "p"})
        nursery.cancel_scope.cancel()
    assert shown["bits_generated"] == 2048 and shown["name"] == "p"


@pytest.mark.parametrize(
    ("method", "params", "says"),
    [
        ("profile", {}, "profile: Object missing required field `name`"),
        ("profile", {"name": "no such"}, "matching regex"),
        ("profile", {"name": "q"}, "no profile 'q' (profiles: p;"),
        ("profile_add", {"profile": "gold"}, "Expected `object`"),
        ("profile_set", {"name": "p", "changes": {"name": "q"}}, "unknown field(s) name"),
        ("profile_set", {"name": "p", "changes": {"active": True}}, "unknown field(s) active"),
        ("profiles", {"all": True}, "unknown field"),
    ],
)
async def test_bad_params_are_refused_with_the_reason(
    method: str, params: dict[str, object], says: str
) -> None:
    a = agent({})
    await a.admin_methods()["profile_add"]({"profile": {"name": "p", "sae_pairs": ["X>Y"]}})
    with pytest.raises(ProfileError) as info:
        await a.admin_methods()[method](params)
    assert says in str(info.value)


def test_a_distributed_change_applies_only_where_the_profile_concerns_the_node() -> None:
    book = ProfileBook(
        node_id="KME_A", sae_kme={"SAE_A": "KME_A", "SAE_C": "KME_C"}, path=None, clock=lambda: 0.0
    )
    node = ProfileAgent(book, link_bits=lambda: _nothing())
    assert node.apply("add", "far", {"node_pairs": ["KME_B~KME_C"]})[0] == "skipped"
    result, _, fields = node.apply("add", "gold", {"sae_pairs": ["SAE_C>SAE_A"]})
    assert result == "applied" and fields["sae_pairs"] == ["SAE_C>SAE_A"]  # its SAE
    assert node.apply("activate", "gold", {})[0] == "applied" and book.status("gold").active
    assert node.apply("activate", "far", {})[:2] == ("skipped", "not held here")
    refused = node.apply("set", "gold", {"colour": "red"})
    assert refused[0] == "refused" and "unknown field(s) colour" in refused[1]
    # A change that makes it no longer concern the node drops it here, and says so.
    result, _, fields = node.apply("set", "gold", {"sae_pairs": ["SAE_C>SAE_X"]})
    assert (result, fields["sae_pairs"]) == ("removed", ["SAE_C>SAE_X"])
    assert not book.holds("gold")
    assert node.apply("put", "gold", {**fields, "node_pairs": ["KME_A~KME_C"]})[0] == "applied"
    assert book.holds("gold") and book.status("gold").active


async def _nothing() -> dict[str, int]:
    return {}
