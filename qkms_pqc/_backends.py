"""ML-KEM-768 backends: one small interface, two implementations.

The private key of ML-KEM-768 is kept as its 64-byte seed ``d || z`` (FIPS 203 section
7.1, ``ML-KEM.KeyGen_internal(d, z)``): the format both backends can expand, and the one the
IETF LAMPS drafts recommend storing.  So every backend derives the same key pair from the
same seed, and a ciphertext from one decapsulates with the other.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Final, Protocol

from ._errors import BackendUnavailable

__all__ = [
    "MLKEM768_CIPHERTEXT_SIZE",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "MLKEM768_SEED_SIZE",
    "MLKEM768_SHARED_SECRET_SIZE",
    "CryptographyBackend",
    "LiboqsBackend",
    "PqcBackend",
    "default_backend",
]

MLKEM768_SEED_SIZE: Final = 64
MLKEM768_PUBLIC_KEY_SIZE: Final = 1184
MLKEM768_CIPHERTEXT_SIZE: Final = 1088
MLKEM768_SHARED_SECRET_SIZE: Final = 32


class PqcBackend(Protocol):
    """ML-KEM-768 (FIPS 203) as three functions on bytes.

    Each raises ``ValueError`` for input of the wrong length or an invalid public key.
    """

    @property
    def name(self) -> str:
        """A short name for logs and test ids, e.g. ``"cryptography"``."""
        ...

    def mlkem768_public_key(self, seed: bytes) -> bytes:
        """The encapsulation key (1184 bytes) of the key pair from a 64-byte seed."""
        ...

    def mlkem768_encaps(self, public_key: bytes) -> tuple[bytes, bytes]:
        """A fresh encapsulation: ``(ciphertext (1088 bytes), shared secret (32 bytes))``."""
        ...

    def mlkem768_decaps(self, seed: bytes, ciphertext: bytes) -> bytes:
        """The shared secret in ``ciphertext`` (implicit rejection: a pseudo-random one if
        the ciphertext was altered)."""
        ...


class CryptographyBackend:
    """ML-KEM-768 from ``cryptography`` (>= 47, on an OpenSSL or AWS-LC that has it).

    The wheels of ``cryptography`` ship their own OpenSSL, independent of the system's; so
    ML-KEM is available even where the system OpenSSL (and so ``ssl``) predates 3.5.
    Raises ``BackendUnavailable`` when constructed where it is not.
    """

    name: Final = "cryptography"

    def __init__(self) -> None:
        try:
            from cryptography.hazmat.backends.openssl.backend import backend
            from cryptography.hazmat.primitives.asymmetric import mlkem
        except ImportError:
            raise BackendUnavailable(
                "cryptography has no ML-KEM here: install cryptography >= 47"
            ) from None
        if not backend.mlkem_supported():
            raise BackendUnavailable(
                f"cryptography {_cryptography_version()} is linked against "
                f"{backend.openssl_version_text()}, which has no ML-KEM: use a cryptography "
                "wheel (it bundles a recent OpenSSL) or an OpenSSL >= 3.5"
            )
        self._mlkem = mlkem

    def mlkem768_public_key(self, seed: bytes) -> bytes:
        key = self._mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        return key.public_key().public_bytes_raw()

    def mlkem768_encaps(self, public_key: bytes) -> tuple[bytes, bytes]:
        shared_secret, ciphertext = self._mlkem.MLKEM768PublicKey.from_public_bytes(
            public_key
        ).encapsulate()
        return ciphertext, shared_secret

    def mlkem768_decaps(self, seed: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) != MLKEM768_CIPHERTEXT_SIZE:
            raise ValueError("an ML-KEM-768 ciphertext is 1088 bytes long")
        key = self._mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        return key.decapsulate(ciphertext)


class LiboqsBackend:
    """ML-KEM-768 from liboqs through liboqs-python (``import oqs``), when installed.

    Seeds need liboqs-python's ``generate_keypair_seed`` (liboqs >= 0.13 with ML-KEM's
    derandomised key generation).  Raises ``BackendUnavailable`` when constructed where
    ``oqs`` cannot be imported or lacks ML-KEM-768 or seeded key generation.
    """

    name: Final = "liboqs"
    _ALGORITHM: Final = "ML-KEM-768"

    def __init__(self) -> None:
        try:
            oqs: Any = importlib.import_module("oqs")
        except Exception as exc:  # noqa: BLE001 - oqs may fail to load liboqs.so in many ways
            raise BackendUnavailable(
                f"liboqs-python is not usable here ({type(exc).__name__}): "
                "install liboqs and liboqs-python to use this backend"
            ) from None
        if self._ALGORITHM not in oqs.get_enabled_kem_mechanisms():
            raise BackendUnavailable("this liboqs was built without ML-KEM-768")
        if not hasattr(oqs.KeyEncapsulation, "generate_keypair_seed"):
            raise BackendUnavailable(
                "this liboqs-python cannot derive keys from a seed "
                "(KeyEncapsulation.generate_keypair_seed): upgrade liboqs-python"
            )
        self._oqs = oqs

    def _expand(self, seed: bytes) -> tuple[bytes, bytes]:
        if len(seed) != MLKEM768_SEED_SIZE:
            raise ValueError("an ML-KEM-768 seed is 64 bytes long")
        with self._oqs.KeyEncapsulation(self._ALGORITHM) as kem:
            public_key = bytes(kem.generate_keypair_seed(seed))
            return public_key, bytes(kem.export_secret_key())

    def mlkem768_public_key(self, seed: bytes) -> bytes:
        return self._expand(seed)[0]

    def mlkem768_encaps(self, public_key: bytes) -> tuple[bytes, bytes]:
        if len(public_key) != MLKEM768_PUBLIC_KEY_SIZE:
            raise ValueError("an ML-KEM-768 public key is 1184 bytes long")
        with self._oqs.KeyEncapsulation(self._ALGORITHM) as kem:
            ciphertext, shared_secret = kem.encap_secret(public_key)
        return bytes(ciphertext), bytes(shared_secret)

    def mlkem768_decaps(self, seed: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) != MLKEM768_CIPHERTEXT_SIZE:
            raise ValueError("an ML-KEM-768 ciphertext is 1088 bytes long")
        _, secret_key = self._expand(seed)
        with self._oqs.KeyEncapsulation(self._ALGORITHM, secret_key) as kem:
            return bytes(kem.decap_secret(ciphertext))


@functools.cache
def default_backend() -> PqcBackend:
    """``CryptographyBackend`` if it works here, else ``LiboqsBackend``.

    Raises ``BackendUnavailable`` (naming both reasons) when neither does.
    """
    reasons: list[str] = []
    for backend_class in (CryptographyBackend, LiboqsBackend):
        try:
            backend: PqcBackend = backend_class()
        except BackendUnavailable as exc:
            reasons.append(str(exc))
            continue
        return backend
    raise BackendUnavailable("no ML-KEM-768 backend: " + "; ".join(reasons))


def _cryptography_version() -> str:
    import cryptography

    return cryptography.__version__
