"""schemathesis against two live KMEs over mutual TLS, from docs/etsi014.openapi.yaml.

Every operation of the description is called with requests schemathesis generates from it,
valid ones (positive) and invalid ones (negative), as SAE_A at KME_A and as SAE_B at
KME_B; half the time the path names an SAE the KME knows, so that requests get past
"unknown SAE" into the policy checks, the key sources and the store, and ``dec_keys``
asks for key IDs that exist.  Every answer must conform: no 5xx, a status the
description lists for the operation, its content type and its schema; invalid requests
must be refused (4xx); a method an operation does not take is 405 with ``Allow``.

``make test`` runs a few examples per operation; ``make soak`` many.
"""

from __future__ import annotations

import collections
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.generation import GenerationMode

from ..conftest import ConfigFactory
from ..soaktable import Record
from .test_etsi014 import network

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "etsi014.openapi.yaml"
POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]
BODY_LIMIT = 1 << 20
"""The KME's body limit (``Limits.max_body_bytes``): larger bodies are 413 and closed."""
REFUSALS = ["400", "401", "404", "405", "408", "413", "431"]
# (caller, its KME, the other SAE that makes requests get past "unknown SAE").
CALLERS = (("SAE_A", "KME_A", "SAE_B"), ("SAE_B", "KME_B", "SAE_A"))


@dataclass
class Tally:
    cases: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    fetched: collections.Counter[str] = field(default_factory=collections.Counter)
    key_ids: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))


def _session(pki: Path, sae: str) -> requests.Session:
    session = requests.Session()
    session.cert = (str(pki / "saes" / f"{sae}.pem"), str(pki / "saes" / f"{sae}.key"))
    session.verify = str(pki / "ca.pem")
    return session


def run_schemathesis(urls: dict[str, str], pki: Path, examples: int, seed: int) -> Tally:
    """Drive every operation of the description against the KMEs (blocking: in a thread)."""
    schema = schemathesis.openapi.from_path(str(SPEC_PATH))
    # A refusal is any 4xx the description lists: 413 (body over the limit) and 431 (head
    # over the limit) included, which schemathesis does not count by default.
    schema.config.checks.negative_data_rejection.expected_statuses = REFUSALS
    operations = [result.ok() for result in schema.get_all_operations()]
    # enc_keys first, so that dec_keys can ask for key IDs that exist.
    operations.sort(key=lambda op: ("dec_keys" in op.path, op.path, op.method))
    tally = Tally()
    rng = random.Random(seed)
    for caller, kme, other in CALLERS:
        session = _session(pki, caller)
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _drive(operation, mode, session, urls[kme], caller, other, examples, tally, rng)
        for operation in operations:  # one method each operation does not take
            case = operation.Case(path_parameters=_known(operation, other))
            _call(case, session, urls[kme], [unsupported_method], f"{caller} 405", tally)
        session.close()
    return tally


def _known(operation: Any, sae: str) -> dict[str, str]:
    return {
        name: sae for name in ("slave_SAE_ID", "master_SAE_ID") if f"{{{name}}}" in operation.path
    }


def _drive(
    operation: Any,
    mode: GenerationMode,
    session: requests.Session,
    url: str,
    caller: str,
    other: str,
    examples: int,
    tally: Tally,
    rng: random.Random,
) -> None:
    label = f"{caller} {operation.method.upper()} {operation.path} {mode.value}"
    checks = POSITIVE_CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode))
        if mode is GenerationMode.POSITIVE and rng.random() < 0.5:
            case.path_parameters = {**(case.path_parameters or {}), **_known(operation, other)}
            made = tally.key_ids.get(f"{other}>{caller}")
            if made and "dec_keys" in operation.path:
                picked = rng.sample(made, min(len(made), rng.randint(1, 3)))
                if operation.method == "get":
                    case.query = {"key_ID": picked[0]}
                else:
                    case.body = {"key_IDs": [{"key_ID": k} for k in picked]}
        response = _call(case, session, url, checks, label, tally)
        if response is not None and response.status_code == 200 and "enc_keys" in operation.path:
            slave = (case.path_parameters or {}).get("slave_SAE_ID")
            ids = [k["key_ID"] for k in json.loads(response.content)["keys"]]
            tally.key_ids[f"{caller}>{slave}"].extend(ids)
        elif response is not None and response.status_code == 200 and "dec_keys" in operation.path:
            tally.fetched[caller] += len(json.loads(response.content)["keys"])

    one()


def _body_size(case: Any) -> int:
    if isinstance(case.body, (dict, list)):
        return len(json.dumps(case.body).encode())
    return len(case.body) if isinstance(case.body, (bytes, str)) else 0


def _call(
    case: Any,
    session: requests.Session,
    url: str,
    checks: list[Any],
    label: str,
    tally: Tally,
) -> Any:
    tally.cases[label] += 1
    try:
        # verify and cert again here: an environment's REQUESTS_CA_BUNDLE would win otherwise.
        response = case.call(
            base_url=url, session=session, timeout=20, verify=session.verify, cert=session.cert
        )
    except requests.RequestException as exc:
        if _body_size(case) > BODY_LIMIT:
            # Refused from its Content-Length and closed: the KME drains the rest for a
            # while so the client can read the 413, but a client slower than that (a
            # loaded machine) may see the close first.  Either is an answer.
            tally.statuses[0] += 1
            return None
        tally.failures.append(f"{label}: {type(exc).__name__}: {exc}"[:500])
        return None
    tally.statuses[response.status_code] += 1
    try:
        case.validate_response(response, checks=checks)
    except Exception as exc:  # a schemathesis failure (group): the report
        tally.failures.append(
            f"{label}: {response.status_code} {case.path_parameters} {case.query}"
            f" {str(case.body)[:200]}: {str(exc)[:600]}"
        )
    return response


async def _run(node_config: ConfigFactory, pki: Path, examples: int) -> Tally:
    async with network(node_config, pki, default={"max_key_per_request": 64}) as kmes:
        urls = {kme: kmes.url(kme) for kme in ("KME_A", "KME_B")}
        tally = await trio.to_thread.run_sync(run_schemathesis, urls, pki, examples, 7)
        # The nodes still serve after all of it.
        keys = await kmes.client("SAE_A").get_key("SAE_B")
        assert len(keys) == 1
    return tally


def _report(tally: Tally) -> str:
    fetched = sum(tally.fetched.values())
    # Status 0: a body over the limit whose 413 the client did not read before the close.
    lines = [
        f"{sum(tally.cases.values())} requests; statuses {dict(sorted(tally.statuses.items()))};"
        f" keys made {sum(len(v) for v in tally.key_ids.values())}, fetched by dec_keys {fetched}"
    ]
    lines += [f"  {n:5} {label}" for label, n in sorted(tally.cases.items())]
    lines += [f"FAILED {f}" for f in tally.failures[:20]]
    return "\n".join(lines)


async def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_description(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(120):
        tally = await _run(node_config, pki, examples=6)
    print(_report(tally))
    assert not tally.failures, _report(tally)
    assert tally.statuses[200] > 0 and tally.statuses[400] > 0


@pytest.mark.soak
async def test_soak_schemathesis_many_examples_per_operation(
    node_config: ConfigFactory, pki: Path, soak_table: Record
) -> None:
    with trio.fail_after(1800):
        tally = await _run(node_config, pki, examples=400)
    print(_report(tally))
    soak_table(
        tried="schemathesis against a live node over mutual TLS, 400 examples per operation"
        " of docs/etsi014.openapi.yaml",
        cases=f"{sum(tally.cases.values())} requests",
        found=f"statuses {dict(sorted(tally.statuses.items()))};"
        f" {len(tally.failures)} failures (a 5xx or an answer outside the description)",
    )
    assert not tally.failures, _report(tally)
