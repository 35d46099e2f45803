"""docs/etsi014.openapi.yaml against the code: the same routes, and bodies that fit both.

The live check (schemathesis against a node over mutual TLS) is in
``tests/integration/test_etsi014_schemathesis.py``.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import etsi014

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "etsi014.openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
SCHEMA = schemathesis.openapi.from_path(str(SPEC_PATH))
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
PATH_PARAMETER = {
    etsi014.ApiKind.STATUS: "slave_SAE_ID",
    etsi014.ApiKind.ENC_KEYS: "slave_SAE_ID",
    etsi014.ApiKind.DEC_KEYS: "master_SAE_ID",
}


def _served() -> set[tuple[str, str]]:
    """(path template, method) of every request ``parse_api_path`` routes."""
    served = set()
    for kind in etsi014.ApiKind:
        for method in HTTP_METHODS:
            try:
                etsi014.parse_api_path(method, f"{etsi014.API_PREFIX}SAE_B/{kind}")
            except etsi014.ApiRequestError as exc:
                if exc.http_status == 405:
                    continue
                # dec_keys by GET without ?key_ID= is 400: routed all the same.
                assert exc.http_status == 400, (method, kind, exc)
            template = f"{etsi014.API_PREFIX}{{{PATH_PARAMETER[kind]}}}/{kind}"
            served.add((template, method))
    return served


def test_every_route_served_is_described_and_every_route_described_is_served() -> None:
    described = {
        (path, method.upper())
        for path, item in SPEC["paths"].items()
        for method in item
        if method.upper() in HTTP_METHODS
    }
    assert described == _served()


def test_the_path_parameter_bounds_are_the_routers() -> None:
    sae_id = SPEC["components"]["schemas"]["SAE_ID"]
    assert sae_id["maxLength"] == etsi014.MAX_SAE_ID_LENGTH
    for good in ("SAE_A", "a b", "\u00e9"):
        assert re.fullmatch(sae_id["pattern"], good)
        etsi014.parse_api_path("GET", f"{etsi014.API_PREFIX}{good}/status")
    for bad in ("a\x00b", "a\x1fb", "a\x7fb"):
        assert not re.fullmatch(sae_id["pattern"], bad)


def _validator(name: str) -> Any:
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    return jsonschema_rs.validator_for(schema)


def _check(name: str, body: bytes) -> None:
    errors = [e.message for e in _validator(name).iter_errors(json.loads(body))]
    assert not errors, (name, errors)


extensions = st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4)
key_ids = st.uuids().map(str)


@settings(max_examples=60)
@given(
    st.builds(
        etsi014.Status,
        source_KME_ID=st.text(max_size=30),
        target_KME_ID=st.text(max_size=30),
        master_SAE_ID=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
        slave_SAE_ID=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
        key_size=st.integers(0, 2**63 - 1),
        stored_key_count=st.integers(0, 2**63 - 1),
        max_key_count=st.integers(0, 2**63 - 1),
        max_key_per_request=st.integers(0, 4096),
        max_key_size=st.integers(0, 2**20),
        min_key_size=st.integers(0, 2**20),
        max_SAE_ID_count=st.integers(0, 256),
    )
)
def test_every_status_we_send_fits_the_status_schema(status: etsi014.Status) -> None:
    _check("Status", etsi014.encode_json(status))


@settings(max_examples=60)
@given(
    st.builds(
        etsi014.KeyContainer,
        keys=st.lists(
            st.builds(
                etsi014.Key,
                key_ID=key_ids,
                key=st.binary(min_size=1, max_size=64),
                key_extension=st.none() | st.just({"qkms_pqc_wrapped": True}),
            ),
            max_size=5,
        ),
        key_container_extension=st.none() | extensions.map(lambda e: {"qkms_pqc": e}),
    )
)
def test_every_key_container_we_send_fits_the_key_container_schema(
    container: etsi014.KeyContainer,
) -> None:
    _check("KeyContainer", etsi014.encode_json(container))


@given(
    st.text(max_size=200),
    st.none() | st.lists(st.dictionaries(st.text(max_size=8), st.text(max_size=8)), max_size=3),
)
def test_every_error_we_send_fits_the_error_schema(
    message: str, details: list[dict[str, Any]] | None
) -> None:
    _check("Error", etsi014.error_body(message, details))


def _integral(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer; the API takes integers written as integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("path", "decode"),
    [
        ("/api/v1/keys/{slave_SAE_ID}/enc_keys", etsi014.decode_key_request),
        ("/api/v1/keys/{master_SAE_ID}/dec_keys", etsi014.decode_key_ids),
    ],
)
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_body_the_schema_allows_decodes(path: str, decode: Any, data: st.DataObject) -> None:
    case = data.draw(SCHEMA[path]["POST"].as_strategy())
    body = case.body if isinstance(case.body, (dict, list)) else None
    decode(b"" if body is None else json.dumps(_integral(body)).encode())


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_get_request_the_schema_allows_is_routed(data: st.DataObject) -> None:
    for path in ("/api/v1/keys/{slave_SAE_ID}/enc_keys", "/api/v1/keys/{master_SAE_ID}/dec_keys"):
        case = data.draw(SCHEMA[path]["GET"].as_strategy())
        query = "&".join(f"{k}={v}" for k, v in (case.query or {}).items())
        target = case.formatted_path + (f"?{query}" if query else "")
        call = etsi014.parse_api_path("GET", target)
        assert call.kind in (etsi014.ApiKind.ENC_KEYS, etsi014.ApiKind.DEC_KEYS)


def test_a_uuid_key_id_in_any_case_fits_both() -> None:
    pattern = SPEC["components"]["schemas"]["KeyID"]["pattern"]
    for key_id in (str(uuid.uuid4()), str(uuid.uuid4()).upper()):
        assert re.fullmatch(pattern, key_id)
        etsi014.parse_api_path("GET", f"{etsi014.API_PREFIX}SAE_A/dec_keys?key_ID={key_id}")
