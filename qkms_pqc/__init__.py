"""Post-quantum wrapping of delivered keys (hybrid ML-KEM-768 + X25519).

An SAE registers a hybrid public key with its KME; the KME then delivers keys wrapped for
it (``wrap``), and the SAE opens them (``unwrap``).  The wrap key stays secret while either
ML-KEM-768 or X25519 stands.  The construction and its ETSI GS QKD 014 JSON form are
described in ``qkms_pqc._hybrid`` and ``docs/etsi014.md`` ("PQC-wrapped delivery").

Backends for ML-KEM-768: ``CryptographyBackend`` (default) and ``LiboqsBackend`` (where
liboqs-python is installed); both keep the private key as its FIPS 203 64-byte seed, so
keys and ciphertexts move freely between them.

This package is a leaf: it imports only the standard library and ``cryptography``.
"""

from ._backends import (
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    MLKEM768_SEED_SIZE,
    MLKEM768_SHARED_SECRET_SIZE,
    CryptographyBackend,
    LiboqsBackend,
    PqcBackend,
    default_backend,
)
from ._errors import BackendUnavailable, KeyFormatError, PqcError, UnwrapError, WrapError
from ._hybrid import (
    ALG,
    CONTAINER_EXTENSION,
    ETSI014_CONTEXT,
    PUBLIC_KEY_SIZE,
    WRAPPED_KEY_FLAG,
    HybridPrivateKey,
    HybridPublicKey,
    WrappedBundle,
    WrappedKey,
    generate_keypair,
    is_wrapped_key,
    unwrap,
    wrap,
    wrapped_key_extension,
    write_private_key,
)

__all__ = [
    "ALG",
    "CONTAINER_EXTENSION",
    "ETSI014_CONTEXT",
    "MLKEM768_CIPHERTEXT_SIZE",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "MLKEM768_SEED_SIZE",
    "MLKEM768_SHARED_SECRET_SIZE",
    "PUBLIC_KEY_SIZE",
    "WRAPPED_KEY_FLAG",
    "BackendUnavailable",
    "CryptographyBackend",
    "HybridPrivateKey",
    "HybridPublicKey",
    "KeyFormatError",
    "LiboqsBackend",
    "PqcBackend",
    "PqcError",
    "UnwrapError",
    "WrapError",
    "WrappedBundle",
    "WrappedKey",
    "default_backend",
    "generate_keypair",
    "is_wrapped_key",
    "unwrap",
    "wrap",
    "wrapped_key_extension",
    "write_private_key",
]
