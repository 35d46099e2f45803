"""The clients' sans-IO core: what each KME answer becomes, without any network."""

from __future__ import annotations

import json

import pytest

from protocol._etsi014 import Key, KeyContainer, encode_json, error_body
from qkms_client import (
    BadRequest,
    KeyUnwrapError,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
)
from qkms_client._results import (
    Endpoint,
    dec_keys_call,
    enc_keys_call,
    parse_endpoint,
    parse_keys,
    parse_status,
    status_call,
)
from qkms_pqc import ETSI014_CONTEXT, generate_keypair, wrap, wrapped_key_extension

ID_1 = "bc490419-7d60-487f-adc1-4ddcc177c139"
ID_2 = "0a782fb5-3434-48fe-aa4d-14f41d46cf92"
KME = Endpoint("kme", 443, "/prefix")


def container(*pairs: tuple[str, bytes]) -> bytes:
    return encode_json(KeyContainer(keys=[Key(key_ID=i, key=k) for i, k in pairs]))


def test_base_url_gives_host_port_and_prefix() -> None:
    assert parse_endpoint("https://kme-a.example:8443/qkd/") == Endpoint(
        "kme-a.example", 8443, "/qkd"
    )
    assert parse_endpoint("https://kme-a") == Endpoint("kme-a", 443, "")
    for bad in ("http://kme-a", "kme-a:443", "https://kme-a/?x=1", "https://u@kme-a"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_requests_use_the_spec_paths_with_url_encoded_sae_ids() -> None:
    assert status_call(KME, "site/B").path == "/prefix/api/v1/keys/site%2FB/status"
    call = enc_keys_call(
        KME,
        "B",
        number=2,
        size=None,
        additional_slave_sae_ids=["C"],
        extension_mandatory=[],
        extension_optional=[{"abc_x": 1}],
    )
    assert (call.method, call.path) == ("POST", "/prefix/api/v1/keys/B/enc_keys")
    assert json.loads(call.body or b"") == {
        "number": 2,
        "additional_slave_SAE_IDs": ["C"],
        "extension_optional": [{"abc_x": 1}],
    }
    call = dec_keys_call(KME, "A", [ID_1])
    assert json.loads(call.body or b"") == {"key_IDs": [{"key_ID": ID_1}]}


def test_empty_or_bare_string_key_ids_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        dec_keys_call(KME, "A", [])
    with pytest.raises(ValueError):
        dec_keys_call(KME, "A", ID_1)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, error_body("size shall be a multiple of 8"), BadRequest),
        (400, b"<html>", BadRequest),
        (401, b"", Unauthorized),
        (503, error_body("no key"), ServiceUnavailable),
        (429, error_body("rate limit of 5 calls/s for SAE A; retry in 0.20 s"), RateLimited),
        (404, b"", UnexpectedResponse),
        (500, error_body("internal server error"), UnexpectedResponse),
        (200, b"{", UnexpectedResponse),
        (200, b'{"keys": [{"key_ID": "x", "key": ""}]}', UnexpectedResponse),
    ],
)
def test_each_answer_becomes_its_typed_error(
    status: int, body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_keys(status, body, pqc_private_key=None)


def test_bad_request_carries_the_kmes_message_and_details() -> None:
    body = error_body(
        "not all extension_mandatory parameters are supported",
        [{"extension_mandatory_unsupported": "abc_route_type"}],
    )
    with pytest.raises(BadRequest) as info:
        parse_status(400, body)
    assert info.value.message == "not all extension_mandatory parameters are supported"
    assert info.value.details == ({"extension_mandatory_unsupported": "abc_route_type"},)


def test_answers_that_do_not_match_the_request_are_unexpected() -> None:
    body = container((ID_1, b"k" * 32))
    with pytest.raises(UnexpectedResponse, match="asked for 2 keys"):
        parse_keys(200, body, pqc_private_key=None, expected_number=2)
    with pytest.raises(UnexpectedResponse, match="128-bit"):
        parse_keys(200, body, pqc_private_key=None, expected_size=128)
    with pytest.raises(UnexpectedResponse, match="other key IDs"):
        parse_keys(200, body, pqc_private_key=None, expected_ids=[ID_2])
    assert len(parse_keys(200, body, pqc_private_key=None, expected_ids=[ID_1.upper()])) == 1


def test_size_that_is_not_whole_bytes_rounds_up() -> None:
    body = container((ID_1, b"k" * 2))
    assert parse_keys(200, body, pqc_private_key=None, expected_size=12)[0].key == b"kk"


def test_a_mix_of_wrapped_and_plain_keys_is_refused() -> None:
    private = generate_keypair()
    bundle = wrap(private.public_key(), [(ID_1, b"a" * 32)], context=ETSI014_CONTEXT)
    mixed = KeyContainer(
        keys=[
            Key(key_ID=ID_1, key=bundle.keys[0].ciphertext, key_extension=wrapped_key_extension()),
            Key(key_ID=ID_2, key=b"b" * 32),
        ],
        key_container_extension=bundle.container_extension(),
    )
    with pytest.raises(UnexpectedResponse, match="mixes"):
        parse_keys(200, encode_json(mixed), pqc_private_key=private)


def test_wrapped_keys_without_the_container_extension_fail_to_unwrap() -> None:
    private = generate_keypair()
    bare = KeyContainer(
        keys=[Key(key_ID=ID_1, key=b"x" * 48, key_extension=wrapped_key_extension())]
    )
    with pytest.raises(KeyUnwrapError, match="qkms_pqc"):
        parse_keys(200, encode_json(bare), pqc_private_key=private)
