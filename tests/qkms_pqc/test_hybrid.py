"""Hybrid ML-KEM-768 + X25519 wrapping: round trips, tampering, recipients, formats, backends."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qkms_pqc
from qkms_pqc import (
    ALG,
    ETSI014_CONTEXT,
    MLKEM768_CIPHERTEXT_SIZE,
    MLKEM768_PUBLIC_KEY_SIZE,
    PUBLIC_KEY_SIZE,
    BackendUnavailable,
    CryptographyBackend,
    HybridPrivateKey,
    HybridPublicKey,
    KeyFormatError,
    LiboqsBackend,
    PqcBackend,
    UnwrapError,
    WrapError,
    WrappedBundle,
    WrappedKey,
    generate_keypair,
    is_wrapped_key,
    unwrap,
    wrap,
    wrapped_key_extension,
    write_private_key,
)

KEYS = [
    ("bc490419-7d60-487f-adc1-4ddcc177c139", bytes(range(32))),
    ("0a782fb5-3434-48fe-aa4d-14f41d46cf92", bytes(range(100, 132))),
]
CONTEXT = b"test context"


@pytest.fixture(scope="module")
def recipient() -> HybridPrivateKey:
    return generate_keypair()


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- round trips -------------------------------------------------------------------------


def test_wrap_then_unwrap_gives_back_the_keys_in_order(recipient: HybridPrivateKey) -> None:
    bundle = wrap(recipient.public_key(), KEYS, context=CONTEXT)
    assert unwrap(recipient, bundle, context=CONTEXT) == KEYS


_RECIPIENT = generate_keypair()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.uuids().map(str), st.binary(min_size=0, max_size=128)), max_size=8),
    st.binary(max_size=64),
)
def test_any_keys_round_trip(keys: list[tuple[str, bytes]], context: bytes) -> None:
    private = _RECIPIENT
    assert unwrap(private, wrap(private.public_key(), keys, context=context), context=context) == (
        keys
    )


def test_wrapped_keys_are_the_key_plus_a_16_byte_tag(recipient: HybridPrivateKey) -> None:
    bundle = wrap(recipient.public_key(), KEYS, context=CONTEXT)
    assert [len(k.ciphertext) for k in bundle.keys] == [32 + 16, 32 + 16]
    assert all(k.ciphertext[:32] != key for k, (_, key) in zip(bundle.keys, KEYS, strict=True))
    assert len(bundle.kem_ct) == MLKEM768_CIPHERTEXT_SIZE
    assert len(bundle.x25519_epk) == 32


def test_every_wrap_is_a_fresh_encapsulation(recipient: HybridPrivateKey) -> None:
    first = wrap(recipient.public_key(), KEYS, context=CONTEXT)
    second = wrap(recipient.public_key(), KEYS, context=CONTEXT)
    assert first.kem_ct != second.kem_ct
    assert first.x25519_epk != second.x25519_epk
    assert first.keys[0].ciphertext != second.keys[0].ciphertext


def test_same_key_twice_in_a_bundle_wraps_differently(recipient: HybridPrivateKey) -> None:
    bundle = wrap(recipient.public_key(), [("a", b"k" * 32), ("a", b"k" * 32)], context=b"")
    assert bundle.keys[0].ciphertext != bundle.keys[1].ciphertext


# --- tampering ---------------------------------------------------------------------------


@pytest.fixture
def bundle(recipient: HybridPrivateKey) -> WrappedBundle:
    return wrap(recipient.public_key(), KEYS, context=CONTEXT)


def _with_key(bundle: WrappedBundle, index: int, key: WrappedKey) -> WrappedBundle:
    keys = list(bundle.keys)
    keys[index] = key
    return WrappedBundle(bundle.kem_ct, bundle.x25519_epk, tuple(keys))


def test_tampered_key_ciphertext_fails(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    key = bundle.keys[1]
    tampered = _with_key(bundle, 1, WrappedKey(key.key_id, _flip(key.ciphertext, 5)))
    with pytest.raises(UnwrapError, match="0a782fb5"):
        unwrap(recipient, tampered, context=CONTEXT)


def test_tampered_tag_fails(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    key = bundle.keys[0]
    tampered = _with_key(bundle, 0, WrappedKey(key.key_id, _flip(key.ciphertext, -1)))
    with pytest.raises(UnwrapError):
        unwrap(recipient, tampered, context=CONTEXT)


def test_key_moved_to_another_key_id_fails(
    recipient: HybridPrivateKey, bundle: WrappedBundle
) -> None:
    key = bundle.keys[0]
    other_id = "11111111-2222-3333-4444-555555555555"
    with pytest.raises(UnwrapError):
        unwrap(
            recipient, _with_key(bundle, 0, WrappedKey(other_id, key.ciphertext)), context=CONTEXT
        )


def test_reordered_keys_fail(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    swapped = WrappedBundle(bundle.kem_ct, bundle.x25519_epk, bundle.keys[::-1])
    with pytest.raises(UnwrapError):
        unwrap(recipient, swapped, context=CONTEXT)


def test_tampered_kem_ciphertext_fails(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    # ML-KEM's implicit rejection yields a wrong shared secret, which the AEAD catches.
    tampered = WrappedBundle(_flip(bundle.kem_ct, 100), bundle.x25519_epk, bundle.keys)
    with pytest.raises(UnwrapError):
        unwrap(recipient, tampered, context=CONTEXT)


def test_tampered_ephemeral_key_fails(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    tampered = WrappedBundle(bundle.kem_ct, _flip(bundle.x25519_epk, 3), bundle.keys)
    with pytest.raises(UnwrapError):
        unwrap(recipient, tampered, context=CONTEXT)


def test_low_order_ephemeral_key_fails(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    tampered = WrappedBundle(bundle.kem_ct, bytes(32), bundle.keys)
    with pytest.raises(UnwrapError):
        unwrap(recipient, tampered, context=CONTEXT)


def test_wrong_sizes_fail(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    for kem_ct, epk in [(bundle.kem_ct[:-1], bundle.x25519_epk), (bundle.kem_ct, b"x" * 31)]:
        with pytest.raises(UnwrapError):
            unwrap(recipient, WrappedBundle(kem_ct, epk, bundle.keys), context=CONTEXT)


def test_another_context_cannot_unwrap(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    with pytest.raises(UnwrapError):
        unwrap(recipient, bundle, context=b"another context")


def test_a_different_recipient_cannot_unwrap(bundle: WrappedBundle) -> None:
    with pytest.raises(UnwrapError):
        unwrap(generate_keypair(), bundle, context=CONTEXT)


def test_errors_never_show_key_material(recipient: HybridPrivateKey, bundle: WrappedBundle) -> None:
    tampered = WrappedBundle(bundle.kem_ct, _flip(bundle.x25519_epk), bundle.keys)
    with pytest.raises(UnwrapError) as info:
        unwrap(recipient, tampered, context=CONTEXT)
    text = str(info.value) + repr(info.value) + repr(bundle) + repr(recipient)
    for _, key in KEYS:
        assert key.hex() not in text and repr(key) not in text
    assert info.value.__cause__ is None


# --- public and private key formats ------------------------------------------------------


def test_public_key_round_trips_through_bytes_and_pem(recipient: HybridPrivateKey) -> None:
    public = recipient.public_key()
    assert len(public.to_bytes()) == PUBLIC_KEY_SIZE == MLKEM768_PUBLIC_KEY_SIZE + 32
    assert HybridPublicKey.from_bytes(public.to_bytes()) == public
    assert HybridPublicKey.from_pem(public.to_pem()) == public


@pytest.mark.parametrize("length", [0, 32, 1184, PUBLIC_KEY_SIZE - 1, PUBLIC_KEY_SIZE + 1])
def test_public_key_parsing_rejects_bad_lengths(length: int) -> None:
    with pytest.raises(KeyFormatError, match="1216 bytes"):
        HybridPublicKey.from_bytes(b"\x01" * length)


def test_wrapping_for_an_invalid_mlkem_key_is_a_wrap_error() -> None:
    # Coefficients of 0xFFF exceed q = 3329: FIPS 203's encapsulation key check fails.
    bogus = HybridPublicKey.from_bytes(b"\xff" * PUBLIC_KEY_SIZE)
    with pytest.raises(WrapError):
        wrap(bogus, KEYS, context=CONTEXT)


def test_private_key_round_trips_through_pem(recipient: HybridPrivateKey) -> None:
    pem = recipient.to_pem()
    assert pem.startswith(b"-----BEGIN QKMS HYBRID PRIVATE KEY-----\n")
    loaded = HybridPrivateKey.from_pem(pem)
    assert loaded.public_key() == recipient.public_key()
    bundle = wrap(recipient.public_key(), KEYS, context=CONTEXT)
    assert unwrap(loaded, bundle, context=CONTEXT) == KEYS


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"\xff\xfe",
        b"-----BEGIN QKMS HYBRID PUBLIC KEY-----\nAAAA\n-----END QKMS HYBRID PUBLIC KEY-----\n",
        b"-----BEGIN QKMS HYBRID PRIVATE KEY-----\n!!!!\n-----END QKMS HYBRID PRIVATE KEY-----\n",
        b"-----BEGIN QKMS HYBRID PRIVATE KEY-----\nAAAA\n-----END QKMS HYBRID PRIVATE KEY-----\n",
    ],
)
def test_private_key_parsing_rejects_other_text(text: bytes) -> None:
    with pytest.raises(KeyFormatError):
        HybridPrivateKey.from_pem(text)


def test_private_key_file_is_created_0600_and_loads(
    tmp_path: Path, recipient: HybridPrivateKey
) -> None:
    path = tmp_path / "sae.pqc.key"
    write_private_key(path, recipient)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert HybridPrivateKey.load(path).public_key() == recipient.public_key()
    with pytest.raises(FileExistsError):
        write_private_key(path, recipient)


def test_reprs_show_a_fingerprint_not_the_key(recipient: HybridPrivateKey) -> None:
    blob = base64.b64decode(b"".join(recipient.to_pem().splitlines()[1:-1]))
    for text in (repr(recipient), repr(recipient.public_key())):
        assert recipient.public_key().fingerprint()[:16] in text
        assert blob[-32:].hex() not in text


# --- the ETSI 014 JSON form ----------------------------------------------------------------


def test_bundle_round_trips_through_its_etsi_014_form(
    recipient: HybridPrivateKey, bundle: WrappedBundle
) -> None:
    extension = bundle.container_extension()
    assert extension["qkms_pqc"]["alg"] == ALG == "MLKEM768-X25519-HKDF-SHA256-CHACHA20POLY1305"
    assert base64.b64decode(extension["qkms_pqc"]["kem_ct"]) == bundle.kem_ct
    assert base64.b64decode(extension["qkms_pqc"]["x25519_epk"]) == bundle.x25519_epk
    assert wrapped_key_extension() == {"qkms_pqc_wrapped": True}
    assert is_wrapped_key(wrapped_key_extension())
    assert not is_wrapped_key(None) and not is_wrapped_key({"qkms_pqc_wrapped": "yes"})
    received = WrappedBundle.from_etsi(extension, [(k.key_id, k.ciphertext) for k in bundle.keys])
    assert unwrap(recipient, received, context=CONTEXT) == KEYS


@pytest.mark.parametrize(
    "extension",
    [
        None,
        {},
        {"qkms_pqc": "x"},
        {"qkms_pqc": {"alg": "RSA", "kem_ct": "", "x25519_epk": ""}},
        {"qkms_pqc": {"alg": ALG, "kem_ct": "AAAA", "x25519_epk": base64.b64encode(bytes(32))}},
        {"qkms_pqc": {"alg": ALG, "kem_ct": "not base64!", "x25519_epk": ""}},
        {"qkms_pqc": {"alg": ALG, "kem_ct": 42, "x25519_epk": 42}},
    ],
)
def test_malformed_etsi_extension_is_an_unwrap_error(extension: dict[str, object] | None) -> None:
    with pytest.raises(UnwrapError):
        WrappedBundle.from_etsi(extension, [])


def test_etsi014_context_is_fixed() -> None:
    # Changing it breaks every deployed SAE: it is part of the wire format.
    assert ETSI014_CONTEXT == b"qkms etsi014 key delivery"


# --- backends ------------------------------------------------------------------------------

SEED = bytes(range(64))
# SHA-256 of the ML-KEM-768 public key for SEED, as computed by cryptography 50.0.2 on its
# bundled OpenSSL 4.0.3.  A regression pin (not an official NIST vector): a backend that
# derives another key from the same seed breaks every stored private key.
SEED_PUBLIC_KEY_SHA256 = "0b7934c83125c788995e2ba6bd761e33046b3e40571be53e023309a29f398cc9"


def _liboqs() -> LiboqsBackend:
    try:
        return LiboqsBackend()
    except BackendUnavailable as exc:
        pytest.skip(f"liboqs backend unavailable: {exc}")


def _backends() -> list[PqcBackend]:
    backends: list[PqcBackend] = []
    for make in (CryptographyBackend, LiboqsBackend):
        try:
            backends.append(make())
        except BackendUnavailable:
            pass
    return backends


def test_default_backend_is_cryptography_here() -> None:
    assert qkms_pqc.default_backend().name == "cryptography"


@pytest.mark.parametrize("backend", _backends(), ids=lambda b: b.name)
def test_backend_derives_the_pinned_public_key_from_a_seed(backend: PqcBackend) -> None:
    public = backend.mlkem768_public_key(SEED)
    assert len(public) == MLKEM768_PUBLIC_KEY_SIZE
    assert hashlib.sha256(public).hexdigest() == SEED_PUBLIC_KEY_SHA256


@pytest.mark.parametrize("backend", _backends(), ids=lambda b: b.name)
def test_backend_encapsulates_and_decapsulates(backend: PqcBackend) -> None:
    ciphertext, secret = backend.mlkem768_encaps(backend.mlkem768_public_key(SEED))
    assert len(ciphertext) == MLKEM768_CIPHERTEXT_SIZE and len(secret) == 32
    assert backend.mlkem768_decaps(SEED, ciphertext) == secret
    # Implicit rejection: an altered ciphertext gives another secret, not an error.
    assert backend.mlkem768_decaps(SEED, _flip(ciphertext)) != secret


@pytest.mark.parametrize("backend", _backends(), ids=lambda b: b.name)
def test_backend_rejects_wrong_lengths_with_value_error(backend: PqcBackend) -> None:
    with pytest.raises(ValueError):
        backend.mlkem768_public_key(SEED[:-1])
    with pytest.raises(ValueError):
        backend.mlkem768_encaps(b"\x00" * 100)
    with pytest.raises(ValueError):
        backend.mlkem768_decaps(SEED, b"\x00" * 100)


def test_liboqs_and_cryptography_interoperate() -> None:
    liboqs = _liboqs()
    ours = CryptographyBackend()
    public = ours.mlkem768_public_key(SEED)
    assert liboqs.mlkem768_public_key(SEED) == public
    ciphertext, secret = liboqs.mlkem768_encaps(public)
    assert ours.mlkem768_decaps(SEED, ciphertext) == secret
    ciphertext, secret = ours.mlkem768_encaps(public)
    assert liboqs.mlkem768_decaps(SEED, ciphertext) == secret


def test_bundle_wrapped_with_liboqs_unwraps_with_cryptography() -> None:
    liboqs = _liboqs()
    private = generate_keypair(CryptographyBackend())
    bundle = wrap(private.public_key(), KEYS, context=CONTEXT, backend=liboqs)
    assert unwrap(private, bundle, context=CONTEXT) == KEYS
