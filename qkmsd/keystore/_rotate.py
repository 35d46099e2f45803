"""Master key rotation: re-encrypt a stopped node's store under a new key, crash-safe.

Theory of operation.  Three durable steps, each atomic on its own:

1. the new key is written to ``<key file>.new`` (a temporary file, fsync, rename, fsync of
   the directory);
2. every ciphertext of the store (the canary, each block's material, each service key's
   material) is re-encrypted under the new key in **one** SQLite transaction
   (WAL, ``synchronous=FULL``): after a crash the store is all old or all new;
3. ``<key file>.new`` replaces ``<key file>`` (rename, fsync of the directory).

A ``kill -9`` between 1 and 2 leaves the old store and the old key file (and a stale
``.new``); between 2 and 3 the new store with the new key in ``.new``.
``open_store`` (what the daemon and the next rotation call) opens the store with the key
file, or, if that key does not match and ``.new`` does, finishes step 3 itself; a stale
``.new`` beside a store that opens with the old key is removed.  So the store always
opens with the old or the new key, never neither.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ._errors import MasterKeyError, MasterKeyMismatch
from ._masterkey import MASTER_KEY_SIZE, _fsync_directory, load_master_key
from ._store import KeyStore


@dataclasses.dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation re-encrypted (counts only)."""

    blocks: int
    service_keys: int
    recovered: bool
    """Whether an interrupted earlier rotation had to be finished first."""


def pending_key_file(key_file: Path) -> Path:
    """Where a rotation keeps the new key until the store is re-encrypted under it."""
    return key_file.with_name(key_file.name + ".new")


def open_store(path: Path, key_file: Path, **options: Any) -> tuple[KeyStore, bool]:
    """Open the store at ``path`` with the master key of ``key_file``, finishing or
    cleaning up an interrupted rotation.  Returns the store and whether a rotation was
    finished here.  ``options`` go to ``KeyStore.open`` (``clock``, ``durable``).

    Raises ``MasterKeyError`` for an unreadable key file, ``MasterKeyMismatch`` if neither
    the key file nor a pending new key opens the store, and ``KeyStoreError`` as
    ``KeyStore.open`` does.
    """
    pending = pending_key_file(key_file)
    key = load_master_key(key_file)
    try:
        store = KeyStore.open(path, key, **options)
    except MasterKeyMismatch:
        if not pending.exists():
            raise
        try:
            new_key = load_master_key(pending)
        except MasterKeyError as exc:
            raise MasterKeyMismatch(
                f"key store {path} opens with neither {key_file} nor {pending} ({exc})"
            ) from None
        store = KeyStore.open(path, new_key, **options)  # raises MasterKeyMismatch if not this one
        os.replace(pending, key_file)
        _fsync_directory(key_file.parent)
        return store, True
    if pending.exists():
        # A rotation stopped before its commit: the store is under the key file's key.
        pending.unlink()
        _fsync_directory(key_file.parent)
    return store, False


def _write_key(path: Path, key: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        data = key.hex().encode("ascii")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def rotate_master_key(path: Path, key_file: Path) -> Rotation:
    """Re-encrypt the store at ``path`` under a fresh random key and install that key in
    ``key_file`` (see the module docstring).  The node must be stopped: the store's lock
    refuses a second user.

    Raises ``MasterKeyError``/``MasterKeyMismatch``/``KeyStoreError`` as ``open_store``;
    ``OSError`` if the key file's directory cannot be written.  On any error the store
    opens with the old key or the new one.
    """
    store, recovered = open_store(path, key_file)
    try:
        new_key = os.urandom(MASTER_KEY_SIZE)
        _write_key(pending_key_file(key_file), new_key)
        blocks, service_keys = store.reencrypt(new_key)
    finally:
        store.close()
    os.replace(pending_key_file(key_file), key_file)
    _fsync_directory(key_file.parent)
    return Rotation(blocks, service_keys, recovered)
