from __future__ import annotations

import itertools

import pytest

from qkmsd.keystore import (
    HOLDS_MATERIAL,
    TERMINAL,
    TRANSITIONS,
    USABLE,
    IllegalTransition,
    KeyState,
    KeyStoreError,
    check_transition,
    is_legal,
)

S = KeyState
EXPECTED_EDGES = {
    (S.RECEIVED, S.READY),
    (S.RECEIVED, S.DISCARDED),
    (S.READY, S.RESERVED),
    (S.READY, S.EXPIRED),
    (S.READY, S.DISCARDED),
    (S.RESERVED, S.DELIVERED),
    (S.RESERVED, S.DISCARDED),
    (S.DELIVERED, S.ERASED),
    (S.EXPIRED, S.ERASED),
    (S.DISCARDED, S.ERASED),
}


def test_table_has_exactly_the_documented_edges() -> None:
    edges = {(old, new) for old, nxt in TRANSITIONS.items() for new in nxt}
    assert edges == EXPECTED_EDGES
    assert set(TRANSITIONS) == set(KeyState)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(KeyState, KeyState)))
def test_check_transition_agrees_with_the_table(old: KeyState, new: KeyState) -> None:
    if (old, new) in EXPECTED_EDGES:
        assert is_legal(old, new)
        check_transition(old, new)
    else:
        assert not is_legal(old, new)
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def test_illegal_transition_message_names_the_block() -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(S.READY, S.RECEIVED, link_id="L", block_id=123)
    assert str(info.value) == "block L/123: illegal transition ready -> received"
    assert isinstance(info.value, KeyStoreError)


def test_erased_is_the_only_terminal_state_and_every_state_reaches_it() -> None:
    assert TERMINAL == {S.ERASED}
    for start in KeyState:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert S.ERASED in seen


def test_a_reservation_never_returns_to_ready() -> None:
    assert USABLE == {S.READY}
    after_reserved = set(TRANSITIONS[S.RESERVED])
    todo = list(after_reserved)
    while todo:
        nxt = TRANSITIONS[todo.pop()]
        todo.extend(nxt - after_reserved)
        after_reserved |= nxt
    assert S.READY not in after_reserved and S.RECEIVED not in after_reserved


def test_states_holding_material_are_the_ones_before_an_ending() -> None:
    assert HOLDS_MATERIAL == {S.RECEIVED, S.READY, S.RESERVED, S.DELIVERED}
