from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qkmsd.keystore import KeyStore

from .keystore_support import FakeClock


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def store(store_path: Path, master_key: bytes, clock: FakeClock) -> Iterator[KeyStore]:
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        yield s
