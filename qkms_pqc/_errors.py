"""The exceptions of ``qkms_pqc``.  None of their messages ever carries key material."""

from __future__ import annotations

__all__ = ["BackendUnavailable", "KeyFormatError", "PqcError", "UnwrapError", "WrapError"]


class PqcError(Exception):
    """Root of every error raised by ``qkms_pqc``."""


class BackendUnavailable(PqcError):
    """The ML-KEM backend cannot be used here; the message says what is missing."""


class KeyFormatError(PqcError, ValueError):
    """Bytes or a file that are not a hybrid public or private key of ours."""


class WrapError(PqcError):
    """Keys cannot be wrapped for this recipient (its public key is unusable)."""


class UnwrapError(PqcError):
    """A wrapped bundle cannot be opened: malformed, tampered with, or not for this key."""
