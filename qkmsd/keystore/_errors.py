"""The key store's exceptions.

``KeyStoreError`` is the root.  No message ever carries key material: they name
the store file, the link and the block id, never bytes.  What each becomes on the
wire and over HTTP is said once, on the class (see ``qkmsd.errors``).
"""

from __future__ import annotations

from protocol import ErrorCode, etsi014

from ..errors import QkmsError


class KeyStoreError(QkmsError):
    """Root of every error raised by ``qkmsd.keystore``."""

    wire_code = ErrorCode.STORE_ERROR


class StoreUnavailable(KeyStoreError):
    """The store cannot write now: its disk is full, its file system read-only, or I/O
    failed.  The call changed nothing; the node serves again once the store can write, so
    an SAE is told to come back later (503)."""

    http_status = 503


class IllegalTransition(KeyStoreError):
    """A block was asked to move along an edge the life-cycle table does not have."""


class CorruptStoreError(KeyStoreError):
    """The store's content fails authentication: a wrong master key or tampering."""


class MasterKeyError(KeyStoreError):
    """The master key cannot be loaded or created.  The message names the file and the fix."""


class MasterKeyMismatch(MasterKeyError):
    """The key store was created with another master key."""


class InsufficientKey(KeyStoreError):
    """The pool holds fewer owned ready bits than asked for.  Nothing was cut."""

    http_status = 503


class SegmentRefused(KeyStoreError):
    """The peer asked us to consume segments we cannot: unknown, not ready, owned by us,
    already used, or out of range.  Nothing was consumed."""

    wire_code = ErrorCode.SEGMENT_REFUSED


class ServiceKeyNotFound(KeyStoreError):
    """One or more key ids are unknown here, or already fetched by this SAE."""

    http_status = 400
    sae_message = etsi014.MSG_KEYS_NOT_FOUND


class NotAuthorised(KeyStoreError):
    """The requesting SAE was not named as a slave of a key it asked for."""

    http_status = 401
