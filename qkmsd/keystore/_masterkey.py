"""The node master key: 32 bytes from a 0600 file or a systemd credential."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from ._errors import MasterKeyError

MASTER_KEY_SIZE: Final = 32
CREDENTIAL_NAME: Final = "master.key"
_MAX_FILE_SIZE: Final = 2 * MASTER_KEY_SIZE + 2  # 64 hex digits and a line ending


def load_master_key(path: Path | None = None) -> bytes:
    """Read the 32-byte master key.

    ``path`` None means the systemd credential ``$CREDENTIALS_DIRECTORY/master.key``
    (``LoadCredential=master.key:/etc/qkms/master.key`` in the unit).  The file
    holds 32 raw bytes or 64 hex digits with an optional newline.  It must be a
    regular file owned by this user with no group or other permission bits.

    Raises ``MasterKeyError`` naming the file and the fix.
    """
    credential = path is None
    if path is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise MasterKeyError(
                "no master key: give the path of the master key file, or run under systemd "
                f"with LoadCredential={CREDENTIAL_NAME}:/etc/qkms/master.key"
            )
        path = Path(directory) / CREDENTIAL_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if credential:
            raise MasterKeyError(
                f"master key {path}: not found; add LoadCredential={CREDENTIAL_NAME}:FILE "
                "to the qkmsd unit"
            ) from None
        raise MasterKeyError(f"master key {path}: not found") from None
    except OSError as exc:
        raise MasterKeyError(f"master key {path}: cannot open: {exc.strerror}") from None
    try:
        _check_file(path, os.fstat(fd), credential=credential)
        data = os.read(fd, _MAX_FILE_SIZE + 1)
    finally:
        os.close(fd)
    return _parse(path, data)


def _check_file(path: Path, st: os.stat_result, *, credential: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise MasterKeyError(f"master key {path}: not a regular file")
    uid = os.geteuid()
    # systemd writes a credential 0400, owned by root, and grants the service user
    # read access with a POSIX ACL; stat shows the ACL mask as group bits (0440).
    # The credential directory is private to the unit, so that form is accepted there.
    systemd_acl_form = credential and st.st_uid == 0
    if st.st_uid != uid and not systemd_acl_form:
        raise MasterKeyError(
            f"master key {path}: owned by uid {st.st_uid}, not by this user (uid {uid}); "
            f"run `chown {uid} {path}`"
        )
    forbidden = 0o037 if systemd_acl_form else 0o077
    mode = stat.S_IMODE(st.st_mode)
    if mode & forbidden:
        raise MasterKeyError(
            f"master key {path}: mode {mode:04o} lets other users read or change it; "
            f"run `chmod 600 {path}`"
        )


def _parse(path: Path, data: bytes) -> bytes:
    if len(data) == MASTER_KEY_SIZE:
        return data
    text = data.removesuffix(b"\n").removesuffix(b"\r")
    if len(text) == 2 * MASTER_KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except ValueError:
            pass
    shown = f"{len(data)} bytes" if len(data) <= _MAX_FILE_SIZE else "more bytes"
    raise MasterKeyError(
        f"master key {path}: expected {MASTER_KEY_SIZE} raw bytes or "
        f"{2 * MASTER_KEY_SIZE} hex digits, found {shown} of another form"
    )


def generate_master_key(path: Path) -> None:
    """Write a fresh random master key to ``path`` as 64 hex digits, mode 0600.

    Refuses to overwrite an existing file (``MasterKeyError``): a new master key
    would make every key store created with the old one unreadable.
    """
    key = os.urandom(MASTER_KEY_SIZE)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise MasterKeyError(
            f"master key {path}: already exists; refusing to overwrite it "
            "(key stores created with it would become unreadable)"
        ) from None
    except OSError as exc:
        raise MasterKeyError(f"master key {path}: cannot create: {exc.strerror}") from None
    try:
        data = key.hex().encode("ascii")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise MasterKeyError(f"master key {path}: cannot write: {exc.strerror}") from None
    os.close(fd)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
