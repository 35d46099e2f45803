"""The wire's id patterns and limits: defined once, and what the message types enforce."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    KEY_ID_RE,
    LINK_ID_MAX_LENGTH,
    LINK_ID_RE,
    MAX_BLOCK_ID,
    MAX_IDS_PER_MESSAGE,
    MAX_SEGMENTS_PER_KEY,
    NODE_ID_MAX_LENGTH,
    NODE_ID_RE,
    Hello,
    KeyAnnounce,
    ReservedKey,
    SegmentRef,
)

KEY_ID = "0b4f2a9e-6a1c-4d3e-9f10-2b3c4d5e6f70"
_ID_CHARS = st.sampled_from("Aa9_.:-~ /\x00é")


def _accepts(value: object, cls: type[msgspec.Struct]) -> bool:
    try:
        msgspec.convert(value, cls)
    except msgspec.ValidationError:
        return False
    return True


@given(st.text(_ID_CHARS, max_size=NODE_ID_MAX_LENGTH + 2))
def test_a_hello_accepts_exactly_the_node_ids_the_pattern_does(node_id: str) -> None:
    hello = {"type": "hello", "node_id": node_id, "versions": [1]}
    assert _accepts(hello, Hello) is bool(NODE_ID_RE.fullmatch(node_id))


@given(st.text(_ID_CHARS, max_size=LINK_ID_MAX_LENGTH + 2))
def test_a_key_announce_accepts_exactly_the_link_ids_the_pattern_does(link_id: str) -> None:
    announce = {"type": "key.announce", "link_id": link_id, "block_ids": []}
    assert _accepts(announce, KeyAnnounce) is bool(LINK_ID_RE.fullmatch(link_id))


@pytest.mark.parametrize(
    ("key_id", "valid"),
    [(KEY_ID, True), (KEY_ID.upper(), False), (KEY_ID[:-1], False), (KEY_ID + "0", False)],
)
def test_key_ids_on_the_peer_wire_are_lower_case_uuids(key_id: str, valid: bool) -> None:
    key = {"key_id": key_id, "segments": [[0, 0, 1]]}
    assert _accepts(key, ReservedKey) is valid is bool(KEY_ID_RE.fullmatch(key_id))


def test_the_limits_bound_the_messages() -> None:
    ids = {"type": "key.announce", "link_id": "A~B"}
    assert _accepts({**ids, "block_ids": [MAX_BLOCK_ID] * MAX_IDS_PER_MESSAGE}, KeyAnnounce)
    assert not _accepts({**ids, "block_ids": [0] * (MAX_IDS_PER_MESSAGE + 1)}, KeyAnnounce)
    assert not _accepts({**ids, "block_ids": [MAX_BLOCK_ID + 1]}, KeyAnnounce)
    segments = [SegmentRef(block_id=i, offset=0, length=1) for i in range(MAX_SEGMENTS_PER_KEY)]
    key = {"key_id": KEY_ID}
    assert _accepts({**key, "segments": msgspec.to_builtins(segments)}, ReservedKey)
    too_many = msgspec.to_builtins([*segments, segments[0]])
    assert not _accepts({**key, "segments": too_many}, ReservedKey)
