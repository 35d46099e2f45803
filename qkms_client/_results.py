"""Sans-IO core of both clients: requests to build, answers to check and turn into results.

Each call is ``build`` (an ``HttpCall``: method, path, body), the flavour's I/O, then
``parse_*`` on ``(status, body)``.  Everything the KME says is checked here once: HTTP
status to typed errors, JSON against the ETSI 014 schemas, keys against what was asked,
and PQC-wrapped keys unwrapped with the SAE's private key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, overload
from urllib.parse import quote, urlsplit

from protocol import RemoteProtocolError
from protocol._etsi014 import (
    KeyContainer,
    KeyIDRef,
    KeyIDs,
    KeyRequest,
    decode_error,
    decode_key_container,
    decode_status,
    encode_json,
)
from qkms_pqc import (
    ETSI014_CONTEXT,
    HybridPrivateKey,
    UnwrapError,
    WrappedBundle,
    is_wrapped_key,
    unwrap,
)

from ._errors import (
    BadRequest,
    KeyUnwrapError,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnexpectedResponse,
)

__all__ = [
    "MAX_RESPONSE_BYTES",
    "DeliveredKey",
    "Endpoint",
    "HttpCall",
    "KeyDelivery",
    "KeyStatus",
    "dec_keys_call",
    "enc_keys_call",
    "parse_endpoint",
    "parse_keys",
    "parse_status",
    "status_call",
]

MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """The KME's Status (ETSI 014 Table 9) for keys from this SAE to ``slave_sae_id``."""

    source_kme_id: str
    target_kme_id: str
    master_sae_id: str
    slave_sae_id: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_sae_id_count: int
    extension: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DeliveredKey:
    """One key: its UUID, its bytes (never in the repr), and the KME's extensions.

    ``pqc_unwrapped`` is True when the KME wrapped the key for this SAE's PQC key and the
    client unwrapped it.
    """

    key_id: str
    key: bytes = field(repr=False)
    key_id_extension: Mapping[str, Any] | None = None
    key_extension: Mapping[str, Any] | None = None
    pqc_unwrapped: bool = False


@dataclass(frozen=True, slots=True)
class KeyDelivery(Sequence[DeliveredKey]):
    """The keys of one ``get_key`` / ``get_key_with_ids`` answer, in the KME's order.

    A sequence of ``DeliveredKey``; ``extension`` is the container's extension, and
    ``pqc_unwrapped`` says the keys arrived PQC-wrapped and were unwrapped.
    """

    keys: tuple[DeliveredKey, ...]
    extension: Mapping[str, Any] | None = None
    pqc_unwrapped: bool = False

    @overload
    def __getitem__(self, index: int) -> DeliveredKey: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[DeliveredKey]: ...
    def __getitem__(self, index: int | slice) -> DeliveredKey | Sequence[DeliveredKey]:
        return self.keys[index]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[DeliveredKey]:
        return iter(self.keys)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the KME is: from a base URL like ``https://kme-a.example:8443``."""

    host: str
    port: int
    path_prefix: str


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One request to make: method, path (with the base URL's prefix) and JSON body."""

    method: str
    path: str
    body: bytes | None = field(default=None, repr=False)


def parse_endpoint(base_url: str) -> Endpoint:
    """Split an ``https://host[:port][/prefix]`` base URL.  Raises ``ValueError``."""
    split = urlsplit(base_url)
    if split.scheme != "https" or not split.hostname:
        raise ValueError(f"KME base URL must be https://host[:port], not {base_url!r}")
    if split.query or split.fragment or split.username:
        raise ValueError(f"KME base URL must have no query, fragment or user: {base_url!r}")
    return Endpoint(split.hostname, split.port or 443, split.path.rstrip("/"))


def _path(endpoint: Endpoint, sae_id: str, resource: str) -> str:
    if not sae_id:
        raise ValueError("SAE ID must not be empty")
    return f"{endpoint.path_prefix}/api/v1/keys/{quote(sae_id, safe='')}/{resource}"


def status_call(endpoint: Endpoint, slave_sae_id: str) -> HttpCall:
    return HttpCall("GET", _path(endpoint, slave_sae_id, "status"))


def enc_keys_call(
    endpoint: Endpoint,
    slave_sae_id: str,
    *,
    number: int,
    size: int | None,
    additional_slave_sae_ids: Sequence[str],
    extension_mandatory: Sequence[Mapping[str, Any]],
    extension_optional: Sequence[Mapping[str, Any]],
) -> HttpCall:
    if number < 1 or (size is not None and size < 1):
        raise ValueError("number and size must be at least 1")
    request = KeyRequest(
        number=number,
        size=size,
        additional_slave_SAE_IDs=list(additional_slave_sae_ids) or None,
        extension_mandatory=[dict(e) for e in extension_mandatory] or None,
        extension_optional=[dict(e) for e in extension_optional] or None,
    )
    return HttpCall("POST", _path(endpoint, slave_sae_id, "enc_keys"), encode_json(request))


def dec_keys_call(endpoint: Endpoint, master_sae_id: str, key_ids: Sequence[str]) -> HttpCall:
    if isinstance(key_ids, str) or not key_ids:
        raise ValueError("key_ids must be a non-empty sequence of key ID strings")
    body = encode_json(KeyIDs(key_IDs=[KeyIDRef(key_ID=k) for k in key_ids]))
    return HttpCall("POST", _path(endpoint, master_sae_id, "dec_keys"), body)


def _raise_for_status(status: int, body: bytes) -> None:
    if status == 200:
        return
    if status == 401:
        raise Unauthorized("KME answered 401: this SAE is not authorised for this request")
    if status in (400, 429, 503):
        try:
            error = decode_error(body)
            message, details = error.message, error.details or []
        except RemoteProtocolError:
            message, details = f"(HTTP {status} without a valid ETSI 014 error body)", []
        kind = {400: BadRequest, 429: RateLimited}.get(status, ServiceUnavailable)
        raise kind(message, details)
    raise UnexpectedResponse(f"KME answered HTTP {status}, not an ETSI 014 status", status)


def parse_status(status: int, body: bytes) -> KeyStatus:
    """The ``KeyStatus`` of a status answer.  Raises ``BadRequest``, ``Unauthorized``,
    ``ServiceUnavailable`` or ``UnexpectedResponse``."""
    _raise_for_status(status, body)
    try:
        s = decode_status(body)
    except RemoteProtocolError as exc:
        raise UnexpectedResponse(f"KME's Status does not parse: {exc.message}") from None
    return KeyStatus(
        source_kme_id=s.source_KME_ID,
        target_kme_id=s.target_KME_ID,
        master_sae_id=s.master_SAE_ID,
        slave_sae_id=s.slave_SAE_ID,
        key_size=s.key_size,
        stored_key_count=s.stored_key_count,
        max_key_count=s.max_key_count,
        max_key_per_request=s.max_key_per_request,
        max_key_size=s.max_key_size,
        min_key_size=s.min_key_size,
        max_sae_id_count=s.max_SAE_ID_count,
        extension=s.status_extension,
    )


def parse_keys(
    status: int,
    body: bytes,
    *,
    pqc_private_key: HybridPrivateKey | None,
    expected_number: int | None = None,
    expected_size: int | None = None,
    expected_ids: Sequence[str] | None = None,
) -> KeyDelivery:
    """The keys of an ``enc_keys``/``dec_keys`` answer, unwrapped if they were wrapped.

    Checks the answer against the request: ``expected_number`` keys, of ``expected_size``
    bits, or exactly the ``expected_ids``.  Raises ``BadRequest``, ``Unauthorized``,
    ``ServiceUnavailable``, ``UnexpectedResponse`` or ``KeyUnwrapError``.
    """
    _raise_for_status(status, body)
    try:
        container = decode_key_container(body)
    except RemoteProtocolError as exc:
        raise UnexpectedResponse(f"KME's key container does not parse: {exc.message}") from None
    delivery = _unwrap_if_wrapped(container, pqc_private_key)
    _check(delivery, expected_number, expected_size, expected_ids)
    return delivery


def _unwrap_if_wrapped(
    container: KeyContainer, private_key: HybridPrivateKey | None
) -> KeyDelivery:
    wrapped = [is_wrapped_key(k.key_extension) for k in container.keys]
    if not any(wrapped):
        keys = tuple(
            DeliveredKey(k.key_ID, k.key, k.key_ID_extension, k.key_extension)
            for k in container.keys
        )
        return KeyDelivery(keys, container.key_container_extension)
    if not all(wrapped):
        raise UnexpectedResponse("KME's answer mixes PQC-wrapped and plain keys")
    if private_key is None:
        raise KeyUnwrapError(
            "KME delivered PQC-wrapped keys but this client has no pqc_private_key"
        )
    try:
        bundle = WrappedBundle.from_etsi(
            container.key_container_extension, [(k.key_ID, k.key) for k in container.keys]
        )
        opened = unwrap(private_key, bundle, context=ETSI014_CONTEXT)
    except UnwrapError as exc:
        raise KeyUnwrapError(f"cannot unwrap the KME's keys: {exc}") from None
    keys = tuple(
        DeliveredKey(k.key_ID, key, k.key_ID_extension, k.key_extension, pqc_unwrapped=True)
        for k, (_, key) in zip(container.keys, opened, strict=True)
    )
    return KeyDelivery(keys, container.key_container_extension, pqc_unwrapped=True)


def _check(
    delivery: KeyDelivery,
    number: int | None,
    size: int | None,
    ids: Sequence[str] | None,
) -> None:
    if number is not None and len(delivery) != number:
        raise UnexpectedResponse(f"asked for {number} keys, KME delivered {len(delivery)}")
    if size is not None:
        for key in delivery:
            if len(key.key) != math.ceil(size / 8):
                raise UnexpectedResponse(
                    f"asked for {size}-bit keys, key {key.key_id} has {len(key.key) * 8} bits"
                )
    if ids is not None and sorted(k.key_id.lower() for k in delivery) != sorted(
        i.lower() for i in ids
    ):
        raise UnexpectedResponse("KME delivered other key IDs than those asked for")


def too_large() -> UnexpectedResponse:
    return UnexpectedResponse(f"KME's answer is larger than {MAX_RESPONSE_BYTES} bytes")
