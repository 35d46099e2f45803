"""Typed peer and admin messages: round trips, plain msgpack, hostile bytes."""

from __future__ import annotations

import uuid
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    ADMIN_DECODER,
    ADMIN_MESSAGE_TYPES,
    FEATURE_BURN_ACK,
    NEED_DATA,
    PEER_DECODER,
    PEER_FEATURES,
    PEER_MESSAGE_TYPES,
    REPLY_TYPES,
    AdminRequest,
    CtlAlarmEvent,
    CtlDemand,
    CtlEntry,
    CtlLink,
    CtlPath,
    CtlProfileOutcome,
    CtlRelayLoad,
    CtlRoute,
    ErrorCode,
    FramedConnection,
    Hello,
    KeyAnnounce,
    LocalProtocolError,
    RelayHop,
    RemoteProtocolError,
    ReservedKey,
    SegmentRef,
    SupplyBurn,
    SupplyReserve,
    SupplyResult,
    admin_connection,
    to_wire,
)

node_ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
link_ids = st.from_regex(r"[A-Za-z0-9_.:~-]{1,129}", fullmatch=True)
u63 = st.integers(0, 2**63 - 1)


segments = st.lists(
    st.builds(SegmentRef, u63, st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1)),
    min_size=1,
    max_size=3,
)


_ctl_links = st.builds(
    CtlLink,
    link_id=link_ids,
    peer=node_ids,
    up=st.booleans(),
    virtual=st.booleans(),
    device=st.text(max_size=20),
    ready_here=u63,
    ready_there=u63,
    rate_bps=st.floats(0, 1e15),
    qber=st.none() | st.floats(0, 1),
    hops=st.lists(node_ids, max_size=4),
    spent_bps=st.floats(0, 1e15),
    multipath=st.booleans(),
)
_ctl_demand = st.builds(CtlDemand, node_ids, node_ids, node_ids, u63, u63)
_ctl_routes = st.lists(node_ids, min_size=2, max_size=5, unique=True).map(
    lambda p: CtlRoute(p[0], p[-1], [CtlPath(p, float(len(p) - 1))])
) | st.lists(node_ids, min_size=3, max_size=6, unique=True).map(
    lambda p: CtlRoute(
        p[0],
        p[-1],
        [CtlPath(p[:2] + p[-1:], 2.0)],
        disjoint=[CtlPath([p[0], p[-1]], 1.0), CtlPath([p[0], *p[1:-1], p[-1]], 3.0)],
    )
)
_severities = st.sampled_from(["cleared", "indeterminate", "warning", "minor", "major", "critical"])
_ctl_alarms = st.builds(
    CtlAlarmEvent,
    kind=st.sampled_from(["raised", "changed", "acknowledged", "cleared", "fault"]),
    code=st.text(min_size=1, max_size=64),
    resource=st.text(max_size=40),
    severity=_severities,
    previous=_severities,
    at=st.floats(0, 1e10),
    value=st.none() | st.floats(-1e9, 1e9),
    by=st.text(max_size=20),
)
_profile_fields = st.dictionaries(
    st.text(max_size=32),
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(-1e9, 1e9)
    | st.text(max_size=20)
    | st.lists(st.text(max_size=20), max_size=3),
    max_size=5,
)
_ctl_entries = st.one_of(
    st.builds(CtlEntry, kind=st.just("node"), name=node_ids, location=st.text(max_size=20)),
    st.lists(node_ids, min_size=2, max_size=2, unique=True).map(
        lambda ab: CtlEntry("link", "~".join(ab), a=ab[0], b=ab[1], removed=True)
    ),
)


def _strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    overrides: dict[str, st.SearchStrategy[Any]] = {
        "node_id": node_ids,
        "link_id": link_ids,
        "versions": st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=16),
        "features": st.lists(st.text(max_size=64), max_size=8),
        "block_ids": st.lists(u63, max_size=50),
        "nonce": u63,
        "id": u63,
        "code": st.text(max_size=64),
        "reason": st.text(max_size=64),
        "message": st.text(max_size=200),
        "method": st.text(min_size=1, max_size=64),
        "params": st.dictionaries(
            st.text(max_size=8), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
        ),
        "result": st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1)),
        "master_sae": node_ids,
        "slave_saes": st.lists(node_ids, min_size=1, max_size=4),
        "expires_at": st.floats(0, 1e10),
        "keys": st.lists(
            st.builds(
                ReservedKey,
                key_id=st.uuids().map(str),
                segments=st.lists(
                    st.builds(
                        SegmentRef,
                        st.integers(0, 2**63 - 1),
                        st.integers(0, 2**32 - 1),
                        st.integers(1, 2**32 - 1),
                    ),
                    min_size=1,
                    max_size=3,
                ),
            ),
            min_size=1,
            max_size=3,
        ),
        "ok": st.booleans(),
        "refs": st.just([]),
        "relay_id": st.text(min_size=1, max_size=40),
        "e2e_link_id": link_ids,
        "block_id": u63,
        "pad": segments,
        "mac_key": segments,
        "ciphertext": st.binary(min_size=33, max_size=200),
        "tag": st.binary(min_size=16, max_size=16),
        "confirm": st.binary(max_size=16),
        "segments": segments,
        "term": u63,
        "stamp": st.floats(-1e18, 1e18),
        "granted": st.booleans(),
        "sent_at": st.none() | st.floats(0, 1e10),
        "echo": st.none() | st.floats(0, 1e10),
        "at": st.none() | st.floats(0, 1e10),
        "node": node_ids,
        "seq": u63,
        "period_s": st.floats(0, 86400),
        "software": st.text(max_size=20),
        "location": st.text(max_size=20),
        "links": st.lists(_ctl_links, max_size=3),
        "peers": st.lists(node_ids, max_size=3),
        "demand": st.lists(_ctl_demand, max_size=3),
        "relay": st.builds(CtlRelayLoad, u63, u63, u63, u63, u63),
        "controller": st.none() | node_ids,
        "routes": st.lists(_ctl_routes, max_size=3),
        "destination": node_ids,
        "budgets": st.just([]),
        "entry": _ctl_entries,
        "entries": st.lists(_ctl_entries, max_size=3),
        "version": st.tuples(u63, u63),
        "part": st.integers(0, 2**32 - 1),
        "last": st.booleans(),
        "alarms": st.lists(_ctl_alarms, max_size=3),
        "op": st.sampled_from(["add", "set", "remove", "activate", "deactivate", "put"]),
        "name": st.text(min_size=1, max_size=64),
        "fields": _profile_fields,
        "profile": _profile_fields,
        "outcomes": st.lists(
            st.builds(
                CtlProfileOutcome,
                node=node_ids,
                result=st.sampled_from(["applied", "removed", "skipped", "refused", "unreachable"]),
                message=st.text(max_size=40),
            ),
            max_size=3,
        ),
    }
    if cls is RelayHop:
        fixed = ("path", "hop", "share", "shares")
        return st.tuples(
            st.lists(node_ids, min_size=2, max_size=6, unique=True), st.integers(1, 8)
        ).flatmap(
            lambda ps: st.builds(
                RelayHop,
                path=st.just(ps[0]),
                hop=st.integers(1, len(ps[0]) - 1),
                shares=st.just(ps[1]),
                share=st.integers(0, ps[1] - 1),
                **{f: overrides[f] for f in cls.__struct_fields__ if f not in fixed},
            )
        )
    if cls is SupplyBurn:  # no id: the one-way form older peers send and expect
        overrides["id"] = st.none() | u63
    fields = {f: overrides[f] for f in cls.__struct_fields__}
    return st.builds(cls, **fields)


ALL_TYPES = sorted({*PEER_MESSAGE_TYPES, *ADMIN_MESSAGE_TYPES}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=60)
@given(data=st.data())
def test_every_message_round_trips_and_is_plain_msgpack(
    cls: type[msgspec.Struct], data: st.DataObject
) -> None:
    message = data.draw(_strategy(cls))
    body = to_wire(message)
    decoder = PEER_DECODER if cls in PEER_MESSAGE_TYPES else ADMIN_DECODER
    assert decoder.from_wire(body) == message
    plain = msgpack.unpackb(body, raw=False)
    assert isinstance(plain, dict)
    assert plain["type"] == cls.__struct_config__.tag


def test_segments_travel_as_compact_arrays() -> None:
    key = ReservedKey(key_id=str(uuid.UUID(int=1)), segments=[SegmentRef(7, 0, 32)])
    assert msgpack.unpackb(
        to_wire(
            SupplyReserve(
                id=1,
                link_id="A~B",
                master_sae="SAE_A",
                slave_saes=["SAE_B"],
                expires_at=1.0,
                keys=[key],
            )
        )
    )["keys"] == [{"key_id": key.key_id, "segments": [[7, 0, 32]]}]


def test_a_burn_from_an_older_peer_has_no_id_and_one_with_an_id_is_a_request() -> None:
    body = msgpack.packb({"type": "supply.burn", "link_id": "A~B", "segments": [[1, 0, 8]]})
    burn = PEER_DECODER.from_wire(body)
    assert burn == SupplyBurn(link_id="A~B", segments=[SegmentRef(1, 0, 8)]) and burn.id is None
    # What an older peer gets: exactly the keys it knows (its decoder refuses others).
    assert set(msgpack.unpackb(to_wire(burn))) == {"type", "link_id", "segments"}
    assert msgpack.unpackb(to_wire(msgspec.structs.replace(burn, id=5)))["id"] == 5
    assert REPLY_TYPES[SupplyBurn] is SupplyResult
    assert FEATURE_BURN_ACK in PEER_FEATURES


def test_a_frame_built_with_the_msgpack_package_decodes() -> None:
    body = msgpack.packb({"type": "key.announce", "link_id": "A~B", "block_ids": [1, 2]})
    assert PEER_DECODER.from_wire(body) == KeyAnnounce(link_id="A~B", block_ids=[1, 2])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.BAD_FRAME),
        (b"\xc1", ErrorCode.BAD_FRAME),
        (msgpack.packb([1, 2]), ErrorCode.BAD_MESSAGE),
        (msgpack.packb({"type": "nope"}), ErrorCode.BAD_MESSAGE),
        (msgpack.packb({"type": "ping", "nonce": -1}), ErrorCode.BAD_MESSAGE),
        (msgpack.packb({"type": "ping", "nonce": 1, "extra": 2}), ErrorCode.BAD_MESSAGE),
        (
            msgpack.packb({"type": "hello", "node_id": "a b", "versions": [1]}),
            ErrorCode.BAD_MESSAGE,
        ),
        (
            msgpack.packb({"type": "key.announce", "link_id": "L", "block_ids": [0] * 4097}),
            ErrorCode.BAD_MESSAGE,
        ),
        (msgpack.packb({"type": "ping", "nonce": 1}) + b"\x00", ErrorCode.BAD_FRAME),
        (
            msgpack.packb({"type": "key.announce", "link_id": "L", "block_ids": [1], "refs": []}),
            None,
        ),
        (
            msgpack.packb(
                {"type": "key.announce", "link_id": "L", "block_ids": [1, 2], "refs": ["x"]}
            ),
            ErrorCode.BAD_MESSAGE,
        ),
        (
            msgpack.packb(
                {
                    "type": "ctl.routes",
                    "term": 1,
                    "routes": [
                        {
                            "source": "A",
                            "destination": "C",
                            "paths": [{"nodes": ["A", "B", "C"], "cost": 2.0}],
                            "disjoint": [
                                {"nodes": ["A", "B", "C"], "cost": 2.0},
                                {"nodes": ["A", "D", "B", "C"], "cost": 3.0},
                            ],
                        }
                    ],
                }
            ),
            ErrorCode.BAD_MESSAGE,
        ),
    ],
)
def test_hostile_bodies_are_refused_with_a_code(body: bytes, code: ErrorCode | None) -> None:
    if code is None:
        PEER_DECODER.from_wire(body)
        return
    with pytest.raises(RemoteProtocolError) as info:
        PEER_DECODER.from_wire(body)
    assert info.value.code is code


def _drain(conn: FramedConnection) -> list[Any]:
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.booleans())
def test_arbitrary_bytes_give_only_messages_need_data_or_remote_error(
    data: bytes, bytewise: bool
) -> None:
    for conn in (FramedConnection(PEER_DECODER, max_frame_size=4096), admin_connection()):
        try:
            if bytewise:
                for i in range(len(data)):
                    conn.receive_data(data[i : i + 1])
                    _drain(conn)
            else:
                conn.receive_data(data)
                _drain(conn)
        except RemoteProtocolError:
            pass


@settings(max_examples=100)
@given(
    st.recursive(
        st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=50,
    )
)
def test_arbitrary_msgpack_values_give_messages_or_remote_error(value: Any) -> None:
    body = msgpack.packb(value)
    for decoder in (PEER_DECODER, ADMIN_DECODER):
        try:
            decoder.from_wire(body)
        except RemoteProtocolError:
            pass


def test_admin_request_accepts_extra_keys_for_forward_compatibility() -> None:
    body = msgpack.packb({"type": "request", "id": 7, "method": "status", "future": 1})
    assert ADMIN_DECODER.from_wire(body) == AdminRequest(id=7, method="status")


def test_encoding_what_msgpack_cannot_carry_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        to_wire(AdminRequest(id=1, method="m", params={"x": 2**70}))


def test_hello_default_features_are_empty() -> None:
    assert Hello(node_id="KME_A", versions=[1]).features == []
