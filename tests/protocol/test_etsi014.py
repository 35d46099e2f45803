"""ETSI GS QKD 014 bodies and routing: the spec's examples decode, everything round-trips,
and bytes from a client raise nothing but ``RemoteProtocolError``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import RemoteProtocolError
from protocol._etsi014 import (
    MAX_KEYS_PER_REQUEST,
    MSG_EXTENSION_MANDATORY_UNSUPPORTED,
    MSG_KEYS_NOT_FOUND,
    ApiKind,
    ApiRequestError,
    Error,
    Key,
    KeyContainer,
    KeyIDRef,
    KeyIDs,
    KeyRequest,
    Status,
    decode_error,
    decode_key_container,
    decode_key_ids,
    decode_key_request,
    decode_status,
    encode_json,
    error_body,
    parse_api_path,
)

KEY_ID_1 = "bc490419-7d60-487f-adc1-4ddcc177c139"
KEY_ID_2 = "0a782fb5-3434-48fe-aa4d-14f41d46cf92"

# --- the spec's JSON examples (S014 section 6) -------------------------------------------

STATUS_EXAMPLE = b"""{
  "source_KME_ID": "AAAABBBBCCCCDDDD",
  "target_KME_ID": "EEEEFFFFGGGGHHHH",
  "master_SAE_ID": "IIIIJJJJKKKKLLLL",
  "slave_SAE_ID": "MMMMNNNNOOOOPPPP",
  "key_size": 352,
  "stored_key_count": 25000,
  "max_key_count": 100000,
  "max_key_per_request": 128,
  "max_key_size": 1024,
  "min_key_size": 64,
  "max_SAE_ID_count": 0
}"""

KEY_REQUEST_EXAMPLE = b"""{
  "number": 3,
  "size": 1024,
  "additional_slave_SAE_IDs": ["ABCDEFG", "HIJKLMN"],
  "extension_mandatory": [{"abc_route_type": "direct"}, {"abc_transfer_method": "qkd"}],
  "extension_optional": [{"abc_max_age": 30000}]
}"""

KEY_CONTAINER_EXAMPLE = b"""{
  "keys": [
    {"key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139",
     "key": "wHHVxRwDJs3/bXd38GHP3oe4svTuRpZS0yCC7x4Ly+s="},
    {"key_ID": "0a782fb5-3434-48fe-aa4d-14f41d46cf92",
     "key": "OeGMPxh1+2RpJpNCYixWHFLYRubpOKCw94FcCI7VdJA="}
  ]
}"""

KEY_IDS_EXAMPLE = b"""{
  "key_IDs": [
    {"key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139"},
    {"key_ID": "0a782fb5-3434-48fe-aa4d-14f41d46cf92"}
  ]
}"""

ERROR_EXAMPLE = b"""{
  "message": "not all extension_mandatory parameters are supported",
  "details": [{"extension_mandatory_unsupported": "abc_route_type"}]
}"""


def test_status_example_decodes() -> None:
    status = decode_status(STATUS_EXAMPLE)
    assert status.master_SAE_ID == "IIIIJJJJKKKKLLLL"
    assert status.key_size == 352
    assert status.max_SAE_ID_count == 0
    assert status.status_extension is None


def test_key_request_example_decodes() -> None:
    request = decode_key_request(KEY_REQUEST_EXAMPLE)
    assert request.number == 3
    assert request.size == 1024
    assert request.additional_slave_SAE_IDs == ["ABCDEFG", "HIJKLMN"]
    assert request.extension_mandatory == [
        {"abc_route_type": "direct"},
        {"abc_transfer_method": "qkd"},
    ]
    assert request.extension_optional == [{"abc_max_age": 30000}]


def test_key_container_example_decodes_base64_keys_to_bytes() -> None:
    container = decode_key_container(KEY_CONTAINER_EXAMPLE)
    assert [k.key_ID for k in container.keys] == [KEY_ID_1, KEY_ID_2]
    assert all(len(k.key) == 32 for k in container.keys)


def test_key_ids_example_decodes() -> None:
    assert decode_key_ids(KEY_IDS_EXAMPLE).key_IDs == [
        KeyIDRef(key_ID=KEY_ID_1),
        KeyIDRef(key_ID=KEY_ID_2),
    ]


def test_error_example_decodes() -> None:
    error = decode_error(ERROR_EXAMPLE)
    assert error.message == MSG_EXTENSION_MANDATORY_UNSUPPORTED
    assert error.details == [{"extension_mandatory_unsupported": "abc_route_type"}]


def test_empty_key_request_body_means_all_defaults() -> None:
    assert decode_key_request(b"") == KeyRequest()
    assert decode_key_request(b"{}") == KeyRequest()


def test_encoding_omits_absent_optional_fields() -> None:
    assert encode_json(KeyRequest(number=2)) == b'{"number":2}'
    assert encode_json(KeyIDs(key_IDs=[KeyIDRef(key_ID=KEY_ID_1)])) == (
        b'{"key_IDs":[{"key_ID":"%s"}]}' % KEY_ID_1.encode()
    )
    assert error_body(MSG_KEYS_NOT_FOUND) == b'{"message":"%s"}' % MSG_KEYS_NOT_FOUND.encode()


def test_key_repr_does_not_show_key_material() -> None:
    secret = bytes(range(32))
    key = Key(key_ID=KEY_ID_1, key=secret)
    for text in (repr(key), repr(KeyContainer(keys=[key])), str(key)):
        assert secret.hex() not in text
        assert repr(secret) not in text
        assert "32 bytes" in text


# --- round trips -------------------------------------------------------------------------

sae_ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)
key_ids = st.uuids().map(str)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
extensions = st.dictionaries(st.text(max_size=10), json_scalars, max_size=4)
maybe = st.none().__or__


@given(
    st.builds(
        KeyRequest,
        number=maybe(st.integers(1, MAX_KEYS_PER_REQUEST)),
        size=maybe(st.integers(1, 1 << 20)),
        additional_slave_SAE_IDs=maybe(st.lists(sae_ids, max_size=5)),
        extension_mandatory=maybe(st.lists(extensions, max_size=3)),
        extension_optional=maybe(st.lists(extensions, max_size=3)),
    )
)
def test_key_request_round_trips(request: KeyRequest) -> None:
    assert decode_key_request(encode_json(request)) == request


@given(
    st.builds(
        KeyContainer,
        keys=st.lists(
            st.builds(
                Key,
                key_ID=key_ids,
                key_ID_extension=maybe(extensions),
                key=st.binary(max_size=64),
                key_extension=maybe(extensions),
            ),
            max_size=5,
        ),
        key_container_extension=maybe(extensions),
    )
)
def test_key_container_round_trips(container: KeyContainer) -> None:
    assert decode_key_container(encode_json(container)) == container


@given(
    st.builds(
        KeyIDs,
        key_IDs=st.lists(
            st.builds(KeyIDRef, key_ID=key_ids, key_ID_extension=maybe(extensions)),
            min_size=1,
            max_size=5,
        ),
        key_IDs_extension=maybe(extensions),
    )
)
def test_key_ids_round_trip(ids: KeyIDs) -> None:
    assert decode_key_ids(encode_json(ids)) == ids


counts = st.integers(0, 2**40)


@given(
    st.builds(
        Status,
        source_KME_ID=st.text(max_size=20),
        target_KME_ID=st.text(max_size=20),
        master_SAE_ID=sae_ids,
        slave_SAE_ID=sae_ids,
        key_size=counts,
        stored_key_count=counts,
        max_key_count=counts,
        max_key_per_request=counts,
        max_key_size=counts,
        min_key_size=counts,
        max_SAE_ID_count=counts,
        status_extension=maybe(extensions),
    )
)
def test_status_round_trips(status: Status) -> None:
    assert decode_status(encode_json(status)) == status


@given(st.builds(Error, message=st.text(max_size=50), details=maybe(st.lists(extensions))))
def test_error_round_trips(error: Error) -> None:
    assert decode_error(encode_json(error)) == error


# --- bad bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b"null",
        b'{"number": 0}',
        b'{"number": -1}',
        b'{"number": 1.5}',
        b'{"number": "3"}',
        b'{"number": true}',
        b'{"size": 0}',
        b'{"number": %d}' % (MAX_KEYS_PER_REQUEST + 1),
        b'{"additional_slave_SAE_IDs": "B"}',
        b'{"additional_slave_SAE_IDs": [""]}',
        b'{"additional_slave_SAE_IDs": ["%s"]}' % (b"x" * 300),
        b'{"additional_slave_SAE_IDs": [%s]}' % b",".join([b'"s"'] * 1000),
        b'{"extension_mandatory": {"abc_x": 1}}',
        b'{"extension_mandatory": ["abc_x"]}',
        b'{"extension_optional": [{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
        b"\xff\xfe",
    ],
)
def test_bad_key_request_is_400(body: bytes) -> None:
    with pytest.raises(ApiRequestError) as info:
        decode_key_request(body)
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b'{"key_IDs": []}',
        b'{"key_IDs": [{"key_ID": "not-a-uuid"}]}',
        b'{"key_IDs": [{"key_ID": "bc490419-7d60-487f-adc1-4ddcc177c13"}]}',
        b'{"key_IDs": [{}]}',
        b'{"key_IDs": "bc490419-7d60-487f-adc1-4ddcc177c139"}',
    ],
)
def test_bad_key_ids_is_400(body: bytes) -> None:
    with pytest.raises(ApiRequestError) as info:
        decode_key_ids(body)
    assert info.value.http_status == 400


def test_key_container_with_bad_base64_is_rejected() -> None:
    body = b'{"keys": [{"key_ID": "%s", "key": "not base64!"}]}' % KEY_ID_1.encode()
    with pytest.raises(RemoteProtocolError):
        decode_key_container(body)


def test_error_messages_do_not_echo_the_values_sent() -> None:
    with pytest.raises(ApiRequestError) as info:
        decode_key_container(b'{"keys": [{"key_ID": "%s", "key": 42}]}' % KEY_ID_1.encode())
    assert "42" not in str(info.value)


DECODERS: list[Any] = [
    decode_key_request,
    decode_key_ids,
    decode_status,
    decode_key_container,
    decode_error,
]


@given(st.binary(max_size=200), st.sampled_from(DECODERS))
def test_arbitrary_bytes_raise_only_remote_protocol_error(body: bytes, decode: Any) -> None:
    try:
        decode(body)
    except RemoteProtocolError:
        pass


json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "number",
                "size",
                "additional_slave_SAE_IDs",
                "extension_mandatory",
                "key_IDs",
                "keys",
                "key_ID",
                "key",
                "message",
                "details",
            ]
        ),
        json_values,
    ),
    st.sampled_from(DECODERS),
)
def test_arbitrary_json_objects_raise_only_remote_protocol_error(
    obj: dict[str, Any], decode: Any
) -> None:
    import json

    try:
        decode(json.dumps(obj).encode())
    except RemoteProtocolError:
        pass


# --- routing -----------------------------------------------------------------------------


def test_status_routes_to_the_slave_sae_id() -> None:
    call = parse_api_path("GET", "/api/v1/keys/SAE_B/status")
    assert (call.kind, call.sae_id, call.takes_body) == (ApiKind.STATUS, "SAE_B", False)


def test_enc_keys_post_takes_its_request_from_the_body() -> None:
    call = parse_api_path("POST", "/api/v1/keys/SAE_B/enc_keys")
    assert (call.kind, call.key_request, call.takes_body) == (ApiKind.ENC_KEYS, None, True)


def test_enc_keys_get_takes_number_and_size_from_the_query() -> None:
    call = parse_api_path("GET", "/api/v1/keys/SAE_B/enc_keys?number=3&size=1024")
    assert call.key_request == KeyRequest(number=3, size=1024)
    assert parse_api_path("GET", "/api/v1/keys/B/enc_keys").key_request == KeyRequest()


def test_dec_keys_routes_to_the_master_sae_id_and_get_takes_one_key_id() -> None:
    call = parse_api_path("GET", f"/api/v1/keys/SAE_A/dec_keys?key_ID={KEY_ID_1}")
    assert (call.kind, call.sae_id) == (ApiKind.DEC_KEYS, "SAE_A")
    assert call.key_ids == KeyIDs(key_IDs=[KeyIDRef(key_ID=KEY_ID_1)])


def test_sae_ids_are_url_decoded_after_splitting_the_path() -> None:
    call = parse_api_path("GET", "/api/v1/keys/site%2Fsae%20b%C3%A9/status")
    assert call.sae_id == "site/sae bé"


def test_absolute_form_targets_are_routed_by_their_path() -> None:
    call = parse_api_path("GET", "https://kme-a:8443/api/v1/keys/B/enc_keys?number=2")
    assert (call.sae_id, call.key_request) == ("B", KeyRequest(number=2))


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/api/v1/keys",
        "/api/v1/keys/B",
        "/api/v1/keys/B/",
        "/api/v1/keys/B/keys",
        "/api/v1/keys/B/status/",
        "/api/v1/keys/a/b/status",
        "/api/v2/keys/B/status",
        "/API/V1/KEYS/B/STATUS",
    ],
)
def test_paths_outside_the_api_are_404(target: str) -> None:
    with pytest.raises(ApiRequestError) as info:
        parse_api_path("GET", target)
    assert info.value.http_status == 404


@pytest.mark.parametrize(
    ("method", "resource", "allowed"),
    [
        ("POST", "status", ("GET",)),
        ("DELETE", "enc_keys", ("GET", "POST")),
        ("PUT", "dec_keys", ("GET", "POST")),
        ("get", "status", ("GET",)),
    ],
)
def test_wrong_method_is_405_with_the_allowed_methods(
    method: str, resource: str, allowed: tuple[str, ...]
) -> None:
    with pytest.raises(ApiRequestError) as info:
        parse_api_path(method, f"/api/v1/keys/B/{resource}")
    assert (info.value.http_status, info.value.allowed) == (405, allowed)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/api/v1/keys//status"),
        ("GET", "/api/v1/keys/%FF/status"),
        ("GET", "/api/v1/keys/a%0Ab/status"),
        ("GET", "/api/v1/keys/" + "x" * 300 + "/status"),
        ("GET", "/api/v1/keys/B/status?number=1"),
        ("GET", "/api/v1/keys/B/enc_keys?number=0"),
        ("GET", "/api/v1/keys/B/enc_keys?number=-1"),
        ("GET", "/api/v1/keys/B/enc_keys?number=three"),
        ("GET", f"/api/v1/keys/B/enc_keys?number={MAX_KEYS_PER_REQUEST + 1}"),
        ("GET", "/api/v1/keys/B/enc_keys?size=99999999999999999999"),
        ("GET", "/api/v1/keys/B/enc_keys?number=1&number=2"),
        ("GET", "/api/v1/keys/B/enc_keys?number"),
        ("GET", "/api/v1/keys/B/enc_keys?additional_slave_SAE_IDs=C"),
        ("GET", "/api/v1/keys/B/enc_keys?number=%D9%A3"),
        ("GET", "/api/v1/keys/A/dec_keys"),
        ("GET", "/api/v1/keys/A/dec_keys?key_ID=42"),
        ("GET", f"/api/v1/keys/A/dec_keys?key_ID={KEY_ID_1}&number=1"),
        ("POST", "/api/v1/keys/B/enc_keys?number=1"),
        ("GET", "http://[::1/api/v1/keys/B/status"),
    ],
)
def test_bad_sae_ids_and_queries_are_400(method: str, target: str) -> None:
    with pytest.raises(ApiRequestError) as info:
        parse_api_path(method, target)
    assert info.value.http_status == 400


@given(st.sampled_from(["GET", "POST", "PUT", "HEAD"]), st.text(max_size=80))
def test_arbitrary_targets_raise_only_remote_protocol_error(method: str, tail: str) -> None:
    for target in (tail, "/api/v1/keys/" + tail):
        try:
            parse_api_path(method, target)
        except RemoteProtocolError:
            pass
