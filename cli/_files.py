"""Writing files that hold secrets, and the directories that hold them.

A secret file is created with mode 0600 from its first byte (``os.open`` with the mode,
then an atomic rename), never made private after the fact; its directory is kept 0700.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = ["private_dir", "write_private", "write_public"]


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory of mode 0700, whatever the umask,
    also if it existed with a looser mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from the first byte."""
    # The umask keeps its say here: it can only make a key stricter than 0600.
    _write_atomically(path, data, 0o600, exact_mode=False)


def write_public(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0644."""
    # A certificate is public: 0644 whatever the umask, so every service can read it.
    _write_atomically(path, data, 0o644, exact_mode=True)


def _write_atomically(path: Path, data: bytes, mode: int, *, exact_mode: bool) -> None:
    # A fresh file created with its final mode, then renamed over the target: a key is never
    # readable by others, not even for an instant, and a crash leaves the old file or the
    # new one, never half of each. O_EXCL so that a stale temporary file is never reused.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if exact_mode:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
