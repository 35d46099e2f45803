"""Relay hops at the trust boundary: what the decoder refuses, what a hop's tag covers."""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    MAX_RELAY_KEY_BYTES,
    MAX_RELAY_PATH,
    PEER_DECODER,
    RelayHop,
    RemoteProtocolError,
    SegmentRef,
    relay_hop_auth_data,
)

A, B, C = "KME_A", "KME_B", "KME_C"


def hop_body(**changes: Any) -> bytes:
    """A relay hop as plain msgpack: no construction check stands in the way."""
    body: dict[str, Any] = {
        "type": "relay.hop",
        "id": 1,
        "relay_id": "KME_A~KME_C/1",
        "e2e_link_id": "KME_A~KME_C",
        "block_id": 1,
        "path": [A, B, C],
        "hop": 1,
        "link_id": "KME_A~KME_B",
        "pad": [[0, 0, 64]],
        "mac_key": [[0, 64, 32]],
        "ciphertext": bytes(64),
        "tag": bytes(16),
    }
    body.update(changes)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def test_a_well_formed_hop_body_decodes() -> None:
    hop = PEER_DECODER.from_wire(hop_body())
    assert isinstance(hop, RelayHop)
    assert hop.path == [A, B, C] and hop.pad == [SegmentRef(0, 0, 64)]


REFUSED = {
    "hop-0-the-source": {"hop": 0},
    "hop-negative": {"hop": -1},
    "hop-past-the-path": {"hop": 3},
    "hop-past-any-path": {"hop": MAX_RELAY_PATH},
    "path-repeats-a-node": {"path": [A, B, A]},
    "path-repeats-the-receiver": {"path": [A, B, B, C], "hop": 2},
    "path-of-one-node": {"path": [A]},
    "path-too-long": {"path": [f"KME_{i}" for i in range(MAX_RELAY_PATH + 1)]},
    "tag-empty": {"tag": b""},
    "tag-15-bytes": {"tag": bytes(15)},
    "tag-17-bytes": {"tag": bytes(17)},
    "ciphertext-empty": {"ciphertext": b""},
    "ciphertext-only-a-confirmation-key": {"ciphertext": bytes(32)},
    "ciphertext-too-long": {"ciphertext": bytes(MAX_RELAY_KEY_BYTES + 1)},
    "pad-empty": {"pad": []},
    "mac-key-segment-of-no-bytes": {"mac_key": [[0, 64, 0]]},
}


@pytest.mark.parametrize("changes", REFUSED.values(), ids=REFUSED.keys())
def test_a_malformed_hop_is_refused_by_the_decoder(changes: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        PEER_DECODER.from_wire(hop_body(**changes))


@pytest.mark.parametrize("size", [33, MAX_RELAY_KEY_BYTES])
def test_ciphertexts_at_the_bounds_are_accepted(size: int) -> None:
    assert len(PEER_DECODER.from_wire(hop_body(ciphertext=bytes(size))).ciphertext) == size


# --- what a hop's tag covers ---------------------------------------------------------------

node_ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
link_ids = st.from_regex(r"[A-Za-z0-9_.:~-]{1,129}", fullmatch=True)
u63 = st.integers(0, 2**63 - 1)
segments = st.lists(
    st.builds(SegmentRef, st.integers(0, 2**40), st.integers(0, 2**32 - 1), st.integers(1, 99)),
    min_size=1,
    max_size=3,
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "relay_id": st.text(min_size=1, max_size=40),
    "e2e_link_id": link_ids,
    "block_id": u63,
    "link_id": link_ids,
    "pad": segments,
    "mac_key": segments,
    "ciphertext": st.binary(min_size=33, max_size=100),
}


@st.composite
def hops(draw: st.DrawFn) -> RelayHop:
    path = draw(st.lists(node_ids, min_size=2, max_size=6, unique=True))
    return RelayHop(
        id=draw(u63),
        path=path,
        hop=draw(st.integers(1, len(path) - 1)),
        tag=draw(st.binary(min_size=16, max_size=16)),
        **{name: draw(strategy) for name, strategy in FIELDS.items()},
    )


@st.composite
def changed(draw: st.DrawFn, hop: RelayHop) -> RelayHop:
    """``hop`` with one of the fields its tag covers changed (a valid hop still)."""
    field = draw(st.sampled_from([*FIELDS, "path", "hop"]))
    if field == "path":
        path = draw(st.lists(node_ids, min_size=hop.hop + 1, max_size=6, unique=True))
        new = msgspec.structs.replace(hop, path=path)
    elif field == "hop":
        new = msgspec.structs.replace(hop, hop=draw(st.integers(1, len(hop.path) - 1)))
    else:
        new = msgspec.structs.replace(hop, **{field: draw(FIELDS[field])})
    return new


@settings(max_examples=300)
@given(data=st.data())
def test_the_hop_auth_data_changes_with_every_field_but_id_and_tag(
    data: st.DataObject,
) -> None:
    hop = data.draw(hops())
    other = data.draw(changed(hop))
    same = msgspec.structs.replace(other, id=hop.id, tag=hop.tag) == hop
    assert (relay_hop_auth_data(other) == relay_hop_auth_data(hop)) == same


@settings(max_examples=100)
@given(hop=hops(), id=u63, tag=st.binary(min_size=16, max_size=16))
def test_the_hop_auth_data_does_not_change_with_id_or_tag(
    hop: RelayHop, id: int, tag: bytes
) -> None:
    other = msgspec.structs.replace(hop, id=id, tag=tag)
    assert relay_hop_auth_data(other) == relay_hop_auth_data(hop)


@settings(max_examples=100)
@given(first=hops(), second=hops())
def test_two_hops_share_auth_data_only_if_they_differ_at_most_in_id_and_tag(
    first: RelayHop, second: RelayHop
) -> None:
    alike = msgspec.structs.replace(second, id=first.id, tag=first.tag) == first
    assert (relay_hop_auth_data(first) == relay_hop_auth_data(second)) == alike
