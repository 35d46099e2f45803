"""The cost of a relay hop over one link, and the link key a relay spends."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import RELAY_CONFIRM_KEY_BYTES
from qkmsd.relay import _agent as relay_agent
from qkmsd.routing import (
    HOP_OVERHEAD_BITS,
    MAC_KEY_BYTES,
    CostParams,
    LinkState,
    hop_key_bits,
    link_cost,
    relay_key_bits,
)

FULL = 4_000_000


def state(**changes: object) -> LinkState:
    base = LinkState(a="A", b="B", bits_a=FULL, bits_b=FULL, key_rate_bps=10_000.0, qber=0.02)
    return msgspec.structs.replace(base, **changes)


def cost(s: LinkState, sender: str = "A", params: CostParams | None = None) -> float:
    found = link_cost(s, sender) if params is None else link_cost(s, sender, params)
    assert found is not None
    return found


def test_a_down_link_has_no_cost_it_is_not_usable() -> None:
    assert link_cost(state(up=False), "A") is None
    assert link_cost(state(up=False), "B") is None


def test_an_emptier_link_costs_more() -> None:
    levels = [FULL, 1_000_000, 300_000, 100_000, 0]
    costs = [cost(state(bits_a=b, key_rate_bps=0.0)) for b in levels]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)


def test_key_below_the_reserve_counts_as_none() -> None:
    reserve = CostParams().reserve_bits
    assert cost(state(bits_a=reserve, key_rate_bps=0.0)) == cost(state(bits_a=0, key_rate_bps=0.0))


def test_each_direction_is_priced_by_the_key_its_sender_owns() -> None:
    s = state(bits_a=0, bits_b=FULL, key_rate_bps=0.0)
    assert cost(s, "A") > cost(s, "B")


def test_a_fast_link_is_less_scarce_than_its_level_alone_says() -> None:
    assert cost(state(bits_a=0, key_rate_bps=100_000.0)) < cost(state(bits_a=0, key_rate_bps=0.0))


def test_qber_nearer_its_threshold_costs_more() -> None:
    costs = [cost(state(qber=q)) for q in (0.0, 0.02, 0.05, 0.08, 0.1)]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)


def test_qber_at_or_over_its_threshold_gives_a_finite_cost_and_no_new_key() -> None:
    at, over = cost(state(qber=0.11)), cost(state(qber=0.3))
    assert math.isfinite(at) and at == over
    # At the threshold the devices make no key: the rate no longer lowers the cost.
    assert at == cost(state(qber=0.11, key_rate_bps=0.0))


def test_recent_relay_failures_cost_more_up_to_a_cap() -> None:
    params = CostParams()
    costs = [cost(state(relay_failures=n)) for n in range(params.max_failures + 3)]
    assert costs[: params.max_failures + 1] == sorted(costs[: params.max_failures + 1])
    assert costs[0] < costs[1] < costs[params.max_failures] == costs[-1]


def test_a_healthy_full_link_costs_about_one_hop_and_the_worst_is_bounded() -> None:
    params = CostParams()
    best = cost(state(qber=0.0, bits_a=10**12))
    worst = cost(state(qber=1.0, bits_a=0, key_rate_bps=0.0, relay_failures=10**6))
    assert 1.0 <= best < 1.001
    assert worst == pytest.approx(
        1 + params.key_weight + 9 * params.qber_weight + params.failure_weight * 10
    )


def test_the_parameters_weigh_the_terms() -> None:
    s = state(bits_a=0, key_rate_bps=0.0, qber=0.0)
    assert cost(s, params=CostParams(key_weight=0.0)) == 1.0
    assert cost(s, params=CostParams(key_weight=8.0)) == pytest.approx(9.0)


def test_a_node_that_is_not_an_end_of_the_link_is_an_error() -> None:
    with pytest.raises(ValueError, match="C is not an end of link A~B"):
        link_cost(state(), "C")


def test_a_link_state_is_validated_when_decoded() -> None:
    good = msgspec.json.encode(state())
    assert msgspec.json.decode(good, type=LinkState) == state()
    for bad in (
        {"a": "A", "b": "A", "bits_a": 1, "bits_b": 1},
        {"a": "A", "b": "B", "bits_a": -1, "bits_b": 1},
        {"a": "A", "b": "B", "bits_a": 1, "bits_b": 1, "qber": 1.5},
        {"a": "A", "b": "B", "bits_a": 1, "bits_b": 1, "qber_threshold": 0.0},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(msgspec.json.encode(bad), type=LinkState)


def test_a_hop_spends_the_key_its_confirmation_key_and_a_mac_key() -> None:
    # The relay agent's own figures: the pad covers the key and its confirmation key,
    # and each hop takes a one-time Poly1305 key of the same link.
    assert MAC_KEY_BYTES == relay_agent.MAC_KEY_BYTES
    assert HOP_OVERHEAD_BITS == (RELAY_CONFIRM_KEY_BYTES + relay_agent.MAC_KEY_BYTES) * 8 == 512
    assert hop_key_bits(8192) == 8192 + 512
    assert relay_key_bits(3, 8192) == 3 * (8192 + 512)
    assert relay_key_bits(0, 8192) == 0
    with pytest.raises(ValueError):
        hop_key_bits(-1)
    with pytest.raises(ValueError):
        relay_key_bits(-1, 8)


states = st.builds(
    LinkState,
    a=st.just("A"),
    b=st.just("B"),
    bits_a=st.integers(0, 10**9),
    bits_b=st.integers(0, 10**9),
    key_rate_bps=st.floats(0.0, 1e9),
    qber=st.floats(0.0, 1.0),
    qber_threshold=st.floats(0.01, 0.5),
    relay_failures=st.integers(0, 100),
)


@given(states, st.integers(0, 10**8), st.floats(0.0, 0.2), st.integers(0, 5))
def test_the_cost_is_bounded_and_moves_the_right_way_with_each_input(
    s: LinkState, more_bits: int, more_qber: float, more_failures: int
) -> None:
    params = CostParams()
    base = cost(s)
    assert 1.0 <= base <= 1 + params.key_weight + 9 * params.qber_weight + 10
    assert cost(msgspec.structs.replace(s, bits_a=s.bits_a + more_bits)) <= base
    assert cost(msgspec.structs.replace(s, bits_b=s.bits_b + more_bits)) == base
    assert cost(msgspec.structs.replace(s, qber=min(1.0, s.qber + more_qber))) >= base
    assert cost(msgspec.structs.replace(s, relay_failures=s.relay_failures + more_failures)) >= base
