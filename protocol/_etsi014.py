"""ETSI GS QKD 014 V1.1.1 key delivery API: JSON bodies and request routing, sans-IO.

Theory of operation
-------------------
An SAE calls three resources of its KME (S014 Table 2)::

    GET       /api/v1/keys/{slave_SAE_ID}/status
    POST|GET  /api/v1/keys/{slave_SAE_ID}/enc_keys     body: KeyRequest, or ?number=&size=
    POST|GET  /api/v1/keys/{master_SAE_ID}/dec_keys    body: KeyIDs, or ?key_ID=

``parse_api_path(method, target)`` turns the request line into an ``ApiCall`` (which resource,
which SAE ID, and for GET the request carried in the query string); ``decode_key_request`` and
``decode_key_ids`` decode POST bodies.  Every struct below uses the spec's exact JSON field
names (Tables 9 to 13) and is encoded with ``encode_json``, which omits absent optional fields.

Everything that comes from the network raises only ``ApiRequestError`` (a
``RemoteProtocolError``) whose ``http_status`` says what to answer: 400 for a bad body or query
(the spec's only error code for the client's faults), 404 for a path outside the API, 405 for
a method the resource does not take.  The bounds below are sanity limits of the wire format;
a KME's own policy (``max_key_per_request``, ``max_key_size``...) is checked by the KME.

Key material lives in ``Key.key`` (bytes; base64 on the wire, RFC 4648).  Reprs never show it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import msgspec

from ._errors import ErrorCode, RemoteProtocolError

__all__ = [
    "API_PREFIX",
    "MAX_EXTENSIONS",
    "MAX_KEY_IDS",
    "MAX_KEY_SIZE_BITS",
    "MAX_KEYS_PER_REQUEST",
    "MAX_SAE_ID_LENGTH",
    "MAX_SLAVE_SAE_IDS",
    "MSG_EXTENSION_MANDATORY_UNMET",
    "MSG_EXTENSION_MANDATORY_UNSUPPORTED",
    "MSG_EXTENSION_OPTIONAL_UNHANDLED",
    "MSG_KEYS_NOT_FOUND",
    "MSG_SIZE_NOT_MULTIPLE_OF_8",
    "ApiCall",
    "ApiKind",
    "ApiRequestError",
    "Error",
    "Key",
    "KeyContainer",
    "KeyIDRef",
    "KeyIDs",
    "KeyRequest",
    "Status",
    "decode_error",
    "decode_key_container",
    "decode_key_ids",
    "decode_key_request",
    "decode_status",
    "encode_json",
    "error_body",
    "parse_api_path",
]

# --- the spec's mandated 400 messages (S014 Tables 6 and 8) ------------------------------

MSG_SIZE_NOT_MULTIPLE_OF_8: Final = "size shall be a multiple of 8"
MSG_EXTENSION_MANDATORY_UNSUPPORTED: Final = "not all extension_mandatory parameters are supported"
MSG_EXTENSION_MANDATORY_UNMET: Final = "not all extension_mandatory request options could be met"
MSG_EXTENSION_OPTIONAL_UNHANDLED: Final = "not all extension_optional request options handled"
MSG_KEYS_NOT_FOUND: Final = "one or more keys specified are not found on KME"

# --- wire bounds -------------------------------------------------------------------------

API_PREFIX: Final = "/api/v1/keys/"
MAX_SAE_ID_LENGTH: Final = 256
MAX_KEYS_PER_REQUEST: Final = 4096
MAX_KEY_IDS: Final = 4096
MAX_KEY_SIZE_BITS: Final = 1 << 20
MAX_SLAVE_SAE_IDS: Final = 256
MAX_EXTENSIONS: Final = 64
_MAX_EXTENSION_ENTRIES: Final = 64
_MAX_TEXT: Final = 4096
_MAX_STATUS_INT: Final = 2**63 - 1
# Room for a PQC-wrapped key (ciphertext plus a 16-byte tag) of the largest size.
_MAX_KEY_BYTES: Final = MAX_KEY_SIZE_BITS // 8 + 64

_UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_UUID_RE: Final = re.compile(_UUID_PATTERN)
# SAE IDs are opaque to the spec; we refuse only empty, huge and control characters.
_SAE_ID_PATTERN: Final = r"^[^\x00-\x1f\x7f]+$"
_SAE_ID_RE: Final = re.compile(_SAE_ID_PATTERN)

SaeId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_SAE_ID_LENGTH, pattern=_SAE_ID_PATTERN)
]
KeyId = Annotated[str, msgspec.Meta(pattern=_UUID_PATTERN)]
Text = Annotated[str, msgspec.Meta(max_length=_MAX_TEXT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=_MAX_STATUS_INT)]
# An extension object: "future use" in the spec, so any JSON, bounded in width.
Extension = Annotated[dict[str, Any], msgspec.Meta(max_length=_MAX_EXTENSION_ENTRIES)]
# A list of name/value objects, e.g. [{"abc_route_type": "direct"}].
Extensions = Annotated[list[Extension], msgspec.Meta(max_length=MAX_EXTENSIONS)]


class _Body(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A JSON body, fields in the spec's order.  Unknown fields are ignored."""


class Status(_Body, frozen=True):
    """Table 9: what a master SAE may ask of its KME for one slave SAE."""

    source_KME_ID: Text
    target_KME_ID: Text
    master_SAE_ID: SaeId
    slave_SAE_ID: SaeId
    key_size: Count
    stored_key_count: Count
    max_key_count: Count
    max_key_per_request: Count
    max_key_size: Count
    min_key_size: Count
    max_SAE_ID_count: Count
    status_extension: Extension | None = None


class KeyRequest(_Body, frozen=True):
    """Table 10: the body of ``enc_keys``.  Every field is optional; ``{}`` is valid.

    ``number`` defaults to 1 and ``size`` (bits) to the KME's ``key_size``; the defaults are
    the KME's to apply, so absent stays ``None`` here.
    """

    number: Annotated[int, msgspec.Meta(ge=1, le=MAX_KEYS_PER_REQUEST)] | None = None
    size: Annotated[int, msgspec.Meta(ge=1, le=MAX_KEY_SIZE_BITS)] | None = None
    additional_slave_SAE_IDs: (
        Annotated[list[SaeId], msgspec.Meta(max_length=MAX_SLAVE_SAE_IDS)] | None
    ) = None
    extension_mandatory: Extensions | None = None
    extension_optional: Extensions | None = None


class Key(_Body, frozen=True, kw_only=True):
    """One entry of Table 11's ``keys``: a UUID key ID and the key (base64 on the wire)."""

    key_ID: KeyId
    key_ID_extension: Extension | None = None
    key: Annotated[bytes, msgspec.Meta(max_length=_MAX_KEY_BYTES)]
    key_extension: Extension | None = None

    def __repr__(self) -> str:
        return (
            f"Key(key_ID={self.key_ID!r}, key=<{len(self.key)} bytes>, "
            f"key_ID_extension={self.key_ID_extension!r}, key_extension={self.key_extension!r})"
        )


class KeyContainer(_Body, frozen=True):
    """Table 11: the answer to ``enc_keys`` and ``dec_keys``."""

    keys: Annotated[list[Key], msgspec.Meta(max_length=MAX_KEYS_PER_REQUEST)]
    key_container_extension: Extension | None = None


class KeyIDRef(_Body, frozen=True):
    """One entry of Table 12's ``key_IDs``."""

    key_ID: KeyId
    key_ID_extension: Extension | None = None


class KeyIDs(_Body, frozen=True):
    """Table 12: the body of ``dec_keys``: at least one key ID."""

    key_IDs: Annotated[list[KeyIDRef], msgspec.Meta(min_length=1, max_length=MAX_KEY_IDS)]
    key_IDs_extension: Extension | None = None


class Error(_Body, frozen=True):
    """Table 13: the body of a 400 or 503 answer."""

    message: Text
    details: Extensions | None = None


# --- codec -------------------------------------------------------------------------------

_encoder: Final = msgspec.json.Encoder()
_T = TypeVar("_T", bound=_Body)
_decoders: Final[dict[type[Any], msgspec.json.Decoder[Any]]] = {
    t: msgspec.json.Decoder(t) for t in (Status, KeyRequest, KeyContainer, KeyIDs, Error)
}


def encode_json(body: _Body) -> bytes:
    """Encode one ETSI 014 body as UTF-8 JSON; absent optional fields are left out."""
    return _encoder.encode(body)


def error_body(message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    """The JSON of an ``Error`` answer, e.g. ``error_body(MSG_KEYS_NOT_FOUND)``."""
    return encode_json(Error(message=message, details=details))


def _decode(body: bytes, type_: type[_T]) -> _T:
    try:
        result: _T = _decoders[type_].decode(body)
    except msgspec.ValidationError as exc:
        raise ApiRequestError(400, f"invalid {type_.__name__}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiRequestError(400, f"{type_.__name__} body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiRequestError(400, f"{type_.__name__} body is nested too deeply") from None
    return result


def decode_key_request(body: bytes) -> KeyRequest:
    """Decode an ``enc_keys`` POST body.  An empty body is the empty request ``{}``.

    Raises ``ApiRequestError`` (400) on bad JSON, wrong types or values out of bounds.
    """
    if not body.strip():
        return KeyRequest()
    return _decode(body, KeyRequest)


def decode_key_ids(body: bytes) -> KeyIDs:
    """Decode a ``dec_keys`` POST body.  Raises ``ApiRequestError`` (400)."""
    return _decode(body, KeyIDs)


def decode_status(body: bytes) -> Status:
    """Decode a KME's ``status`` answer.  Raises ``ApiRequestError`` (400)."""
    return _decode(body, Status)


def decode_key_container(body: bytes) -> KeyContainer:
    """Decode a KME's ``enc_keys``/``dec_keys`` answer.  Raises ``ApiRequestError`` (400)."""
    return _decode(body, KeyContainer)


def decode_error(body: bytes) -> Error:
    """Decode a KME's 400/503 answer.  Raises ``ApiRequestError`` (400)."""
    return _decode(body, Error)


# --- routing -----------------------------------------------------------------------------


class ApiRequestError(RemoteProtocolError):
    """A request the API cannot accept; ``http_status`` is the answer (400, 404 or 405).

    ``allowed`` lists the methods the resource takes, for the ``Allow`` header of a 405.
    """

    def __init__(self, http_status: int, message: str, *, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(ErrorCode.BAD_MESSAGE, message)
        self.http_status = http_status
        self.allowed = allowed


class ApiKind(enum.StrEnum):
    """The three resources of the API; the value is the last path segment."""

    STATUS = "status"
    ENC_KEYS = "enc_keys"
    DEC_KEYS = "dec_keys"


_ALLOWED_METHODS: Final = {
    ApiKind.STATUS: ("GET",),
    ApiKind.ENC_KEYS: ("GET", "POST"),
    ApiKind.DEC_KEYS: ("GET", "POST"),
}


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One routed request.

    ``sae_id`` is the URL-decoded SAE ID of the path: the slave for ``status`` and
    ``enc_keys``, the master for ``dec_keys``.  For GET, ``key_request`` (``enc_keys``) or
    ``key_ids`` (``dec_keys``) holds what the query string asked; for POST they are ``None``
    and the body is decoded with ``decode_key_request`` / ``decode_key_ids``.
    """

    kind: ApiKind
    method: str
    sae_id: str
    key_request: KeyRequest | None = None
    key_ids: KeyIDs | None = None

    @property
    def takes_body(self) -> bool:
        """Whether the request's body carries the request (POST to enc_keys or dec_keys)."""
        return self.method == "POST"


def parse_api_path(method: str, target: str) -> ApiCall:
    """Route a request line (``method`` and the raw ``target``, e.g. ``/api/v1/keys/B/status``).

    Raises ``ApiRequestError``: 404 for a path outside the API, 405 for a method the
    resource does not take, 400 for a bad SAE ID or query string.
    """
    if target.startswith(("http://", "https://")):
        # absolute-form (RFC 9112 section 3.2.2): only the path and query matter here.
        try:
            split = urlsplit(target)
        except ValueError:
            raise ApiRequestError(400, "request target is not a valid URL") from None
        path, query = split.path, split.query
    else:
        path, _, query = target.partition("?")
    if not path.startswith(API_PREFIX):
        raise ApiRequestError(404, "no such resource")
    segments = path[len(API_PREFIX) :].split("/")
    if len(segments) != 2:
        raise ApiRequestError(404, "no such resource")
    raw_sae_id, resource = segments
    try:
        kind = ApiKind(resource)
    except ValueError:
        raise ApiRequestError(404, "no such resource") from None
    allowed = _ALLOWED_METHODS[kind]
    if method not in allowed:
        raise ApiRequestError(
            405, f"{kind} takes {' or '.join(allowed)}, not {method[:16]}", allowed=allowed
        )
    sae_id = _decode_sae_id(raw_sae_id)
    params = _parse_query(query)
    if method == "POST":
        if params:
            raise ApiRequestError(400, "query parameters are allowed only with GET")
        return ApiCall(kind, method, sae_id)
    if kind is ApiKind.STATUS:
        _only(params, ())
        return ApiCall(kind, method, sae_id)
    if kind is ApiKind.ENC_KEYS:
        _only(params, ("number", "size"))
        number = _query_int(params, "number", MAX_KEYS_PER_REQUEST)
        size = _query_int(params, "size", MAX_KEY_SIZE_BITS)
        return ApiCall(kind, method, sae_id, key_request=KeyRequest(number=number, size=size))
    _only(params, ("key_ID",))
    key_id = params.get("key_ID")
    if key_id is None:
        raise ApiRequestError(400, "dec_keys by GET needs ?key_ID=<UUID>")
    if not _UUID_RE.match(key_id):
        raise ApiRequestError(400, "key_ID is not a UUID")
    return ApiCall(kind, method, sae_id, key_ids=KeyIDs(key_IDs=[KeyIDRef(key_ID=key_id)]))


def _decode_sae_id(raw: str) -> str:
    try:
        sae_id = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ApiRequestError(400, "SAE ID in the path is not UTF-8") from None
    if not sae_id:
        raise ApiRequestError(400, "SAE ID in the path is empty")
    if len(sae_id) > MAX_SAE_ID_LENGTH or not _SAE_ID_RE.match(sae_id):
        raise ApiRequestError(400, "SAE ID in the path is too long or has control characters")
    return sae_id


def _parse_query(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    if not query:
        return params
    pairs = query.split("&")
    if len(pairs) > 8:
        raise ApiRequestError(400, "too many query parameters")
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            name = unquote(name, errors="strict")
            value = unquote(value.replace("+", " "), errors="strict")
        except UnicodeDecodeError:
            raise ApiRequestError(400, "query string is not UTF-8") from None
        if not sep or not name:
            raise ApiRequestError(400, f"query parameter {name[:32]!r} has no value")
        if name in params:
            raise ApiRequestError(400, f"query parameter {name[:32]!r} is repeated")
        params[name] = value
    return params


def _only(params: dict[str, str], names: tuple[str, ...]) -> None:
    for name in params:
        if name not in names:
            accepted = ", ".join(names) if names else "none"
            raise ApiRequestError(
                400, f"query parameter {name[:32]!r} is not accepted here (accepted: {accepted})"
            )


def _query_int(params: dict[str, str], name: str, maximum: int) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise ApiRequestError(400, f"{name} must be a positive integer")
    value = int(text)
    if not 1 <= value <= maximum:
        raise ApiRequestError(400, f"{name} must be between 1 and {maximum}")
    return value
