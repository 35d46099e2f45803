"""Small state files written so that a crash leaves the old content or the new, never
neither: the election vote, the registry, policy overrides, key profiles, stopped devices."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably: a new file, fsynced, renamed over
    the old one, and the directory fsynced so that the rename survives a power cut."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
