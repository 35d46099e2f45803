"""Hybrid KEM wrapping of delivered keys: ML-KEM-768 + X25519, HKDF-SHA256, ChaCha20-Poly1305.

Construction (one ``wrap`` call, for one recipient and any number of keys)::

    (kem_ct, ss_mlkem)  = ML-KEM-768.Encaps(pk_mlkem)                 fresh per call
    esk, x25519_epk     = a fresh X25519 key pair                     fresh per call
    ss_x25519           = X25519(esk, pk_x25519)
    wrap_key            = HKDF-SHA256(
                            ikm  = ss_mlkem || ss_x25519 || kem_ct || x25519_epk
                                   || pk_mlkem || pk_x25519,
                            salt = none,
                            info = "qkms-pqc-v1 " || ALG || 0x00 || u32be(len(context)) || context,
                            L    = 32)
    ciphertext_i        = ChaCha20-Poly1305(wrap_key).encrypt(
                            nonce = 0x00000000 || u64be(i),           i = the key's index
                            data  = key_i,
                            aad   = UTF-8(key_ID_i))                  ciphertext || 16-byte tag

The wrap key is secret if either ML-KEM-768 or X25519 holds (both shared secrets feed
HKDF; the ciphertext, ephemeral key and recipient key are bound in too, so neither half
can be swapped).  Each call has a fresh wrap key, so the counter nonces never repeat under
one key.  The key ID is authenticated, so a wrapped key cannot be moved to another ID; the
index is in the nonce, so keys cannot be reordered.  ``context`` binds the use: a bundle
wrapped for one context does not open in another.

Public key bytes: ``pk_mlkem (1184) || pk_x25519 (32)``, 1216 bytes.

In ETSI GS QKD 014 JSON (a key container, Table 11)::

    {"keys": [{"key_ID": "...", "key": base64(ciphertext_i),
               "key_extension": {"qkms_pqc_wrapped": true}}, ...],
     "key_container_extension": {"qkms_pqc": {
         "alg": "MLKEM768-X25519-HKDF-SHA256-CHACHA20POLY1305",
         "kem_ct": base64(kem_ct), "x25519_epk": base64(x25519_epk)}}}

``WrappedBundle.container_extension()`` / ``wrapped_key_extension()`` produce these, and
``WrappedBundle.from_etsi`` reads them back; ``ETSI014_CONTEXT`` is the context of
keys delivered by a qkms KME.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._backends import (
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    MLKEM768_SEED_SIZE,
    PqcBackend,
    default_backend,
)
from ._errors import KeyFormatError, UnwrapError, WrapError

__all__ = [
    "ALG",
    "CONTAINER_EXTENSION",
    "ETSI014_CONTEXT",
    "PUBLIC_KEY_SIZE",
    "WRAPPED_KEY_FLAG",
    "HybridPrivateKey",
    "HybridPublicKey",
    "WrappedBundle",
    "WrappedKey",
    "generate_keypair",
    "is_wrapped_key",
    "unwrap",
    "wrap",
    "wrapped_key_extension",
    "write_private_key",
]

ALG: Final = "MLKEM768-X25519-HKDF-SHA256-CHACHA20POLY1305"
CONTAINER_EXTENSION: Final = "qkms_pqc"
WRAPPED_KEY_FLAG: Final = "qkms_pqc_wrapped"
ETSI014_CONTEXT: Final = b"qkms etsi014 key delivery"
X25519_SIZE: Final = 32
PUBLIC_KEY_SIZE: Final = MLKEM768_PUBLIC_KEY_SIZE + X25519_SIZE
TAG_SIZE: Final = 16

_INFO_LABEL: Final = b"qkms-pqc-v1 " + ALG.encode()
_PRIVATE_MAGIC: Final = b"qkms-pqc-v1 private\x00"
_PRIVATE_PEM: Final = "QKMS HYBRID PRIVATE KEY"
_PUBLIC_PEM: Final = "QKMS HYBRID PUBLIC KEY"
_MAX_KEYS: Final = 2**32


class HybridPublicKey:
    """A recipient's public key: ML-KEM-768 encapsulation key and X25519 public key."""

    __slots__ = ("_mlkem", "_x25519")

    def __init__(self, mlkem: bytes, x25519: bytes) -> None:
        self._mlkem = mlkem
        self._x25519 = x25519

    @classmethod
    def from_bytes(cls, data: bytes) -> HybridPublicKey:
        """Parse the 1216-byte form of ``to_bytes``.  Raises ``KeyFormatError``."""
        if len(data) != PUBLIC_KEY_SIZE:
            raise KeyFormatError(
                f"a hybrid public key is {PUBLIC_KEY_SIZE} bytes "
                f"(ML-KEM-768 {MLKEM768_PUBLIC_KEY_SIZE} + X25519 {X25519_SIZE}), "
                f"not {len(data)}"
            )
        return cls(bytes(data[:MLKEM768_PUBLIC_KEY_SIZE]), bytes(data[MLKEM768_PUBLIC_KEY_SIZE:]))

    def to_bytes(self) -> bytes:
        """``pk_mlkem || pk_x25519`` (1216 bytes)."""
        return self._mlkem + self._x25519

    @classmethod
    def from_pem(cls, data: bytes | str) -> HybridPublicKey:
        """Parse the ``-----BEGIN QKMS HYBRID PUBLIC KEY-----`` text of ``to_pem``.

        Raises ``KeyFormatError``.
        """
        return cls.from_bytes(_from_pem(data, _PUBLIC_PEM))

    def to_pem(self) -> bytes:
        """A PEM-like text form, for registering the key with a KME."""
        return _to_pem(self.to_bytes(), _PUBLIC_PEM)

    def fingerprint(self) -> str:
        """SHA-256 of ``to_bytes()``, hex: a short name for the key in logs and configs."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridPublicKey) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"HybridPublicKey(fingerprint={self.fingerprint()[:16]}...)"


class HybridPrivateKey:
    """A recipient's private key: the ML-KEM-768 seed and an X25519 private key.

    Make one with ``generate_keypair``; store it with ``to_pem`` / ``write_private_key``
    and load it with ``from_pem``.  Its repr shows only the public key's fingerprint.
    """

    __slots__ = ("_backend", "_mlkem_seed", "_public", "_x25519")

    def __init__(self, mlkem_seed: bytes, x25519: bytes, backend: PqcBackend | None = None) -> None:
        if len(mlkem_seed) != MLKEM768_SEED_SIZE or len(x25519) != X25519_SIZE:
            raise KeyFormatError(
                f"a hybrid private key is an ML-KEM-768 seed ({MLKEM768_SEED_SIZE} bytes) "
                f"and an X25519 key ({X25519_SIZE} bytes)"
            )
        self._backend = backend if backend is not None else default_backend()
        self._mlkem_seed = bytes(mlkem_seed)
        self._x25519 = X25519PrivateKey.from_private_bytes(x25519)
        self._public = HybridPublicKey(
            self._backend.mlkem768_public_key(self._mlkem_seed),
            self._x25519.public_key().public_bytes_raw(),
        )

    def public_key(self) -> HybridPublicKey:
        return self._public

    def to_pem(self) -> bytes:
        """The private key as ``-----BEGIN QKMS HYBRID PRIVATE KEY-----`` text.  Secret!"""
        blob = _PRIVATE_MAGIC + self._mlkem_seed + self._x25519.private_bytes_raw()
        return _to_pem(blob, _PRIVATE_PEM)

    @classmethod
    def from_pem(cls, data: bytes | str, backend: PqcBackend | None = None) -> HybridPrivateKey:
        """Load the text of ``to_pem``.  Raises ``KeyFormatError``."""
        blob = _from_pem(data, _PRIVATE_PEM)
        if not blob.startswith(_PRIVATE_MAGIC):
            raise KeyFormatError("not a qkms-pqc v1 hybrid private key")
        blob = blob[len(_PRIVATE_MAGIC) :]
        if len(blob) != MLKEM768_SEED_SIZE + X25519_SIZE:
            raise KeyFormatError("hybrid private key has the wrong length")
        return cls(blob[:MLKEM768_SEED_SIZE], blob[MLKEM768_SEED_SIZE:], backend)

    @classmethod
    def load(cls, path: Path | str, backend: PqcBackend | None = None) -> HybridPrivateKey:
        """Read a private key file.  Raises ``OSError`` or ``KeyFormatError``."""
        return cls.from_pem(Path(path).read_bytes(), backend)

    def _shared_secrets(self, kem_ct: bytes, x25519_epk: bytes) -> tuple[bytes, bytes]:
        ss_mlkem = self._backend.mlkem768_decaps(self._mlkem_seed, kem_ct)
        ss_x25519 = self._x25519.exchange(X25519PublicKey.from_public_bytes(x25519_epk))
        return ss_mlkem, ss_x25519

    def __repr__(self) -> str:
        return f"HybridPrivateKey(public={self._public.fingerprint()[:16]}...)"


def generate_keypair(backend: PqcBackend | None = None) -> HybridPrivateKey:
    """A new hybrid private key (its public key: ``.public_key()``).

    Raises ``BackendUnavailable`` if no ML-KEM-768 backend works here.
    """
    return HybridPrivateKey(
        os.urandom(MLKEM768_SEED_SIZE), X25519PrivateKey.generate().private_bytes_raw(), backend
    )


def write_private_key(path: Path | str, key: HybridPrivateKey) -> None:
    """Write ``key`` to a new file, mode 0600 from creation.  Raises ``FileExistsError``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key.to_pem())


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """One wrapped key: its ID and ``ciphertext || tag`` (the ETSI ``key`` field's bytes)."""

    key_id: str
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class WrappedBundle:
    """The result of one ``wrap``: the KEM ciphertext, ephemeral key and the wrapped keys."""

    kem_ct: bytes = field(repr=False)
    x25519_epk: bytes = field(repr=False)
    keys: tuple[WrappedKey, ...]
    alg: str = ALG

    def container_extension(self) -> dict[str, Any]:
        """The ETSI 014 ``key_container_extension`` object announcing this bundle."""
        return {
            CONTAINER_EXTENSION: {
                "alg": self.alg,
                "kem_ct": base64.b64encode(self.kem_ct).decode("ascii"),
                "x25519_epk": base64.b64encode(self.x25519_epk).decode("ascii"),
            }
        }

    @classmethod
    def from_etsi(
        cls,
        container_extension: Mapping[str, Any] | None,
        keys: Sequence[tuple[str, bytes]],
    ) -> WrappedBundle:
        """Rebuild a bundle from a key container's extension and its ``(key_ID, key)`` pairs.

        Raises ``UnwrapError`` if the extension is missing, malformed or names another
        algorithm.
        """
        params = (container_extension or {}).get(CONTAINER_EXTENSION)
        if not isinstance(params, Mapping):
            raise UnwrapError(f"key container has no {CONTAINER_EXTENSION!r} extension")
        alg = params.get("alg")
        if alg != ALG:
            raise UnwrapError(f"unsupported wrapping algorithm {str(alg)[:64]!r} (know {ALG})")
        kem_ct = _b64_field(params, "kem_ct", MLKEM768_CIPHERTEXT_SIZE)
        x25519_epk = _b64_field(params, "x25519_epk", X25519_SIZE)
        return cls(kem_ct, x25519_epk, tuple(WrappedKey(i, c) for i, c in keys))


def is_wrapped_key(key_extension: Mapping[str, Any] | None) -> bool:
    """Whether an ETSI 014 ``key_extension`` marks its key as wrapped by ``wrap``."""
    return key_extension is not None and key_extension.get(WRAPPED_KEY_FLAG) is True


def wrapped_key_extension() -> dict[str, Any]:
    """The ETSI 014 ``key_extension`` object of a wrapped key: ``{"qkms_pqc_wrapped": true}``."""
    return {WRAPPED_KEY_FLAG: True}


def wrap(
    public_key: HybridPublicKey,
    plaintext_keys: Sequence[tuple[str, bytes]],
    *,
    context: bytes,
    backend: PqcBackend | None = None,
) -> WrappedBundle:
    """Wrap ``(key_ID, key)`` pairs for the holder of ``public_key``'s private key.

    Every call makes a fresh encapsulation, so two calls never share a wrap key.
    Raises ``WrapError`` if ``public_key`` is unusable (an invalid ML-KEM key, a low-order
    X25519 point), ``BackendUnavailable`` if no backend works here.
    """
    if len(plaintext_keys) >= _MAX_KEYS:
        raise WrapError("too many keys for one bundle")
    backend = backend if backend is not None else default_backend()
    try:
        kem_ct, ss_mlkem = backend.mlkem768_encaps(public_key._mlkem)
        ephemeral = X25519PrivateKey.generate()
        x25519_epk = ephemeral.public_key().public_bytes_raw()
        ss_x25519 = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key._x25519))
    except ValueError:
        raise WrapError(
            f"recipient public key {public_key.fingerprint()[:16]} is not usable"
        ) from None
    aead = ChaCha20Poly1305(_wrap_key(ss_mlkem, ss_x25519, kem_ct, x25519_epk, public_key, context))
    wrapped = tuple(
        WrappedKey(key_id, aead.encrypt(_nonce(index), key, key_id.encode("utf-8")))
        for index, (key_id, key) in enumerate(plaintext_keys)
    )
    return WrappedBundle(kem_ct, x25519_epk, wrapped)


def unwrap(
    private_key: HybridPrivateKey, bundle: WrappedBundle, *, context: bytes
) -> list[tuple[str, bytes]]:
    """Open ``bundle`` with ``private_key``: the ``(key_ID, key)`` pairs, in order.

    ``context`` must be the one given to ``wrap``.  Raises ``UnwrapError`` if the bundle is
    malformed, was altered in any part, or was wrapped for another key or context; no key
    is returned unless all of them authenticate.
    """
    if bundle.alg != ALG:
        raise UnwrapError(f"unsupported wrapping algorithm {bundle.alg[:64]!r}")
    if len(bundle.kem_ct) != MLKEM768_CIPHERTEXT_SIZE or len(bundle.x25519_epk) != X25519_SIZE:
        raise UnwrapError("wrapped bundle has a KEM ciphertext or ephemeral key of wrong size")
    try:
        ss_mlkem, ss_x25519 = private_key._shared_secrets(bundle.kem_ct, bundle.x25519_epk)
    except ValueError:
        raise UnwrapError("wrapped bundle's KEM ciphertext or ephemeral key is invalid") from None
    aead = ChaCha20Poly1305(
        _wrap_key(
            ss_mlkem,
            ss_x25519,
            bundle.kem_ct,
            bundle.x25519_epk,
            private_key.public_key(),
            context,
        )
    )
    keys: list[tuple[str, bytes]] = []
    for index, wrapped in enumerate(bundle.keys):
        try:
            key = aead.decrypt(_nonce(index), wrapped.ciphertext, wrapped.key_id.encode("utf-8"))
        except (InvalidTag, ValueError):
            raise UnwrapError(
                f"wrapped key {wrapped.key_id[:64]!r} does not authenticate: altered, or "
                "wrapped for another recipient or context"
            ) from None
        keys.append((wrapped.key_id, key))
    return keys


def _wrap_key(
    ss_mlkem: bytes,
    ss_x25519: bytes,
    kem_ct: bytes,
    x25519_epk: bytes,
    recipient: HybridPublicKey,
    context: bytes,
) -> bytes:
    info = _INFO_LABEL + b"\x00" + len(context).to_bytes(4, "big") + context
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    return hkdf.derive(ss_mlkem + ss_x25519 + kem_ct + x25519_epk + recipient.to_bytes())


def _nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")


def _b64_field(params: Mapping[str, Any], name: str, size: int) -> bytes:
    text = params.get(name)
    if not isinstance(text, str):
        raise UnwrapError(f"{CONTAINER_EXTENSION}.{name} is missing or not a string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UnwrapError(f"{CONTAINER_EXTENSION}.{name} is not base64") from None
    if len(data) != size:
        raise UnwrapError(f"{CONTAINER_EXTENSION}.{name} is {len(data)} bytes, not {size}")
    return data


_PEM_RE: Final = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\s*(?P<body>[A-Za-z0-9+/=\s]*?)\s*"
    r"-----END (?P=label)-----"
)


def _to_pem(blob: bytes, label: str) -> bytes:
    text = base64.encodebytes(blob).decode("ascii")
    return f"-----BEGIN {label}-----\n{text}-----END {label}-----\n".encode("ascii")


def _from_pem(data: bytes | str, label: str) -> bytes:
    if isinstance(data, bytes):
        try:
            data = data.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFormatError(f"not a {label} file (not ASCII text)") from None
    match = _PEM_RE.search(data)
    if match is None or match["label"] != label:
        raise KeyFormatError(f"not a {label} file: no -----BEGIN {label}----- block")
    try:
        return base64.b64decode("".join(match["body"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{label} block is not valid base64") from None
