"""The key store's exceptions.

``KeyStoreError`` is the root.  No message ever carries key material: they name
the store file, the link and the block id, never bytes.
"""

from __future__ import annotations


class KeyStoreError(Exception):
    """Root of every error raised by ``qkmsd.keystore``."""


class IllegalTransition(KeyStoreError):
    """A block was asked to move along an edge the life-cycle table does not have."""


class CorruptStoreError(KeyStoreError):
    """The store's content fails authentication: a wrong master key or tampering."""


class MasterKeyError(KeyStoreError):
    """The master key cannot be loaded or created.  The message names the file and the fix."""


class MasterKeyMismatch(MasterKeyError):
    """The key store was created with another master key."""
