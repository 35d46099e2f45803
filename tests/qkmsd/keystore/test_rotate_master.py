"""Master key rotation: everything re-encrypted under the new key, and ``kill -9`` at any
point leaves a store that opens with the old key or the new one, never neither."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qkmsd.keystore import (
    CutKey,
    KeyStore,
    MasterKeyMismatch,
    NewBlock,
    generate_master_key,
    load_master_key,
    open_store,
    pending_key_file,
    rotate_master_key,
)

from ...soaktable import Record

LINK = "rot:link"
BLOCKS = 120
REPO = Path(__file__).resolve().parents[3]


def block(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest() * 1024  # 32 KiB


def make_store(tmp_path: Path) -> tuple[Path, Path]:
    db, key_file = tmp_path / "keys.db", tmp_path / "master.key"
    generate_master_key(key_file)
    with KeyStore.open(db, load_master_key(key_file)) as store:
        store.add_blocks([NewBlock(LINK, i, block(i), 0.01, 1.0, True) for i in range(BLOCKS)])
        store.mark_ready(LINK, range(BLOCKS // 2))
        store.record_local_service_keys(
            [CutKey(f"00000000-0000-4000-8000-{i:012d}", (), bytes([i]) * 32) for i in range(5)],
            master_sae="SAE_A",
            local_slaves=["SAE_B"],
            expires_at=time.time() + 3600,
        )
    return db, key_file


def check_contents(store: KeyStore) -> None:
    for i in range(BLOCKS):
        assert store.read_block(LINK, i) == block(i)


def test_rotation_re_encrypts_everything_and_the_old_key_no_longer_opens(
    tmp_path: Path,
) -> None:
    db, key_file = make_store(tmp_path)
    old = load_master_key(key_file)
    done = rotate_master_key(db, key_file)
    assert (done.blocks, done.service_keys, done.recovered) == (BLOCKS, 5, False)
    new = load_master_key(key_file)
    assert new != old
    assert not pending_key_file(key_file).exists()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(MasterKeyMismatch):
        KeyStore.open(db, old)
    with KeyStore.open(db, new) as store:
        check_contents(store)
        got = store.fetch_service_keys(
            [f"00000000-0000-4000-8000-{i:012d}" for i in range(5)],
            master_sae="SAE_A",
            requester="SAE_B",
        )
        assert [k for _, k in got] == [bytes([i]) * 32 for i in range(5)]
    # No ciphertext under the old key is left in the files (the WAL was checkpointed).
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0


def test_a_crash_after_the_commit_is_finished_at_the_next_open(tmp_path: Path) -> None:
    db, key_file = make_store(tmp_path)
    old = load_master_key(key_file)
    new = os.urandom(32)
    pending = pending_key_file(key_file)
    pending.write_text(new.hex())
    pending.chmod(0o600)
    with KeyStore.open(db, old) as store:
        store.reencrypt(new)
    # The state a kill -9 between the commit and the rename leaves.
    store, finished = open_store(db, key_file)
    with store:
        assert finished
        check_contents(store)
    assert load_master_key(key_file) == new
    assert not pending.exists()


def test_a_crash_before_the_commit_leaves_the_old_key_and_drops_the_pending_one(
    tmp_path: Path,
) -> None:
    db, key_file = make_store(tmp_path)
    old = load_master_key(key_file)
    pending = pending_key_file(key_file)
    pending.write_text(os.urandom(32).hex())
    pending.chmod(0o600)
    store, finished = open_store(db, key_file)
    with store:
        assert not finished
        check_contents(store)
    assert load_master_key(key_file) == old
    assert not pending.exists()


def test_a_store_under_neither_key_is_refused(tmp_path: Path) -> None:
    db, key_file = make_store(tmp_path)
    key_file.unlink()
    generate_master_key(key_file)
    with pytest.raises(MasterKeyMismatch):
        open_store(db, key_file)


# The child rotates once; it prints "go" when imported and the store's size is known, so
# that the kill delays are measured from there.
CHILD = """
import sys
from pathlib import Path
from qkmsd.keystore import rotate_master_key
print("go", flush=True)
rotate_master_key(Path(sys.argv[1]), Path(sys.argv[2]))
print("done", flush=True)
"""


def rotate_in_child(db: Path, key_file: Path, kill_after: float | None) -> tuple[bool, float]:
    """Run one rotation in a subprocess; SIGKILL it ``kill_after`` s after "go".

    Returns (whether it finished, seconds from "go" to the end).
    """
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(key_file)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == b"go\n"
        start = time.monotonic()
        if kill_after is not None:
            time.sleep(kill_after)  # where the kill lands, not a wait for a result
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        return child.returncode == 0, time.monotonic() - start
    finally:
        child.stdout.close()


def kill_cycles(tmp_path: Path, cycles: int, seed: int) -> dict[str, int]:
    db, key_file = make_store(tmp_path)
    finished, span = rotate_in_child(db, key_file, None)
    assert finished
    rng = random.Random(seed)
    outcomes = {"old key": 0, "new key": 0, "finished at open": 0}
    for _ in range(cycles):
        before = load_master_key(key_file)
        rotate_in_child(db, key_file, rng.uniform(0.0, span * 1.2))
        store, recovered = open_store(db, key_file)
        with store:
            check_contents(store)
        after = load_master_key(key_file)
        outcomes[
            "finished at open" if recovered else "new key" if after != before else "old key"
        ] += 1
    print(f"kill -9 during rotate-master, seed {seed}: {cycles} cycles, {outcomes}")
    return outcomes


def test_kill_9_at_random_points_of_a_rotation_leaves_a_store_that_opens(tmp_path: Path) -> None:
    outcomes = kill_cycles(tmp_path, 6, seed=1)
    assert sum(outcomes.values()) == 6


@pytest.mark.soak
def test_kill_9_at_random_points_of_many_rotations_leaves_a_store_that_opens(
    tmp_path: Path, soak_table: Record
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    outcomes = kill_cycles(tmp_path, 200, seed=seed)
    soak_table(
        tried=f"kill -9 of `keystore rotate-master` at a random moment; seed {seed}",
        cases="200 rotations",
        found=", ".join(f"{n} {what}" for what, n in outcomes.items())
        + "; every store opened with one of the two keys",
    )
    assert sum(outcomes.values()) == 200
