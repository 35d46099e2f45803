"""kill -9 in the middle of a write loop leaves a consistent store."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from qkmsd.keystore import KeyState, KeyStore, generate_master_key, load_master_key

LINK = "crash:link"
BATCH = 10

# Adds batches of BATCH 4 KiB blocks, each batch one transaction, and marks the previous
# batch ready; prints a batch number only after its transaction committed.
CHILD = """
import hashlib, sys
from pathlib import Path
from qkmsd.keystore import KeyStore, NewBlock, load_master_key

def key(i):
    return hashlib.sha256(b"%d" % i).digest() * 128

store = KeyStore.open(Path(sys.argv[1]), load_master_key(Path(sys.argv[2])))
start = store.max_block_id("crash:link")
batch = 0 if start is None else (start + 1) // 10
while True:
    ids = range(batch * 10, batch * 10 + 10)
    store.add_blocks([NewBlock("crash:link", i, key(i), 0.01, 1.0, True) for i in ids])
    store.mark_ready("crash:link", range(max(0, batch * 10 - 10), batch * 10))
    print(batch, flush=True)
    batch += 1
"""


def key(i: int) -> bytes:
    return hashlib.sha256(b"%d" % i).digest() * 128  # 4 KiB: a batch spans many pages


def run_child_and_kill(db: Path, key_file: Path, batches: int, delay: float) -> int:
    """Start the writer; SIGKILL it ``delay`` s after its ``batches``-th commit.

    Returns the last batch it reported.  The delays vary so that the kill lands
    at different points of a transaction (this is no timing assertion).
    """
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(key_file)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    last = -1
    try:
        for _ in range(batches):
            line = child.stdout.readline()
            assert line, "writer died early"
            last = int(line)
        time.sleep(delay)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return last


def test_sigkill_mid_write_leaves_whole_batches_all_readable(tmp_path: Path) -> None:
    db, key_file = tmp_path / "keys.db", tmp_path / "master.key"
    generate_master_key(key_file)
    for batches, delay in ((7, 0.0), (19, 0.001), (11, 0.002), (13, 0.0035), (5, 0.005)):
        last = run_child_and_kill(db, key_file, batches, delay)
        with KeyStore.open(db, load_master_key(key_file)) as store:
            top = store.max_block_id(LINK)
            assert top is not None
            ids = list(range(top + 1))
            states = store.states(LINK, ids)
            # Every batch the child reported is there, and no batch is there in part.
            assert top >= last * BATCH + BATCH - 1, "a committed batch was lost"
            assert (top + 1) % BATCH == 0, "a batch is there in part"
            assert sorted(states) == ids
            assert set(states.values()) <= {KeyState.RECEIVED, KeyState.READY}
            for i in ids:
                assert store.read_block(LINK, i) == key(i)
