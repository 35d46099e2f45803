"""The protocol package's exceptions.

``ProtocolError`` is the root.  Bytes from the other side may raise only
``RemoteProtocolError``; anything else escaping a decoder is a bug.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Wire error codes: in ``Error`` messages, ``SupplyResult.code``, ``RemoteProtocolError``."""

    FRAME_TOO_LARGE = "frame-too-large"
    BAD_FRAME = "bad-frame"
    BAD_MESSAGE = "bad-message"
    UNEXPECTED_MESSAGE = "unexpected-message"
    UNSUPPORTED_VERSION = "unsupported-version"
    WRONG_PEER = "wrong-peer"
    UNKNOWN_REQUEST = "unknown-request"
    UNKNOWN_LINK = "unknown-link"
    NOT_READY = "not-ready"
    INTERNAL = "internal"
    BAD_CHECKSUM = "bad-checksum"
    BLOCK_OUT_OF_ORDER = "block-out-of-order"
    DUPLICATE_BLOCK = "duplicate-block"
    # A refused ``supply.reserve`` (``SupplyResult.code``).
    NO_SLAVE_HERE = "no-slave-here"
    STORED_KEYS_FULL = "stored-keys-full"
    SEGMENT_REFUSED = "segment-refused"
    STORE_ERROR = "store-error"
    # A refused ``relay.hop`` (``RelayResult.code``).
    WRONG_PATH = "wrong-path"
    NOT_A_NEIGHBOUR = "not-a-neighbour"
    BAD_TAG = "bad-tag"
    INSUFFICIENT_KEY = "insufficient-key"
    PEER_UNREACHABLE = "peer-unreachable"
    PEER_TIMEOUT = "peer-timeout"
    # A refused controller message (``CtlAck.code``, ``CtlRouteReply.code``).
    NOT_CONTROLLER = "not-controller"
    BAD_REPORT = "bad-report"
    BAD_REGISTRATION = "bad-registration"
    NO_CONTROLLER = "no-controller"


class ProtocolError(Exception):
    """Root of every error raised by ``protocol``."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something we cannot accept.

    ``code`` is the wire error code to send back before closing.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow (a bug on our side)."""
