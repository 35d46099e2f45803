"""Failover in a ring: how long after a silent cut or a killed node keys flow again.

A ``qkmsctl lab`` of ``examples/ring4.toml`` (KME_1-KME_2-KME_3-KME_4-KME_1; SAE_1 on
KME_1, SAE_3 on KME_3; the end-to-end pool KME_1~KME_3 splits each key into two XOR
shares, one over each side) runs with ``--netns``: every node a real ``qkmsd`` in a
network namespace of its own.  Where namespaces cannot be made it falls back to loopback
and says so; the cut rounds are then left out (a loopback lab cannot cut).

SAE_1 asks KME_1 for keys for SAE_3 (ETSI 014 ``enc_keys``, one 256-bit key a call) in a
closed loop, from a worker process in KME_1's namespace, which records when each call
succeeded.  Each round, once keys flow:

- ``cut``: ``lab cut KME_2 KME_3``, a link on the split's B side that KME_1 cannot see;
  healed after the round;
- ``freeze``: ``kill -STOP`` of KME_2, a hung node: its kernel still accepts and
  acknowledges, the daemon says nothing (``kill -CONT`` after the round);
- ``kill``: ``kill -9`` of KME_2, the middle node of that side; its kernel resets the
  connections, so this one is seen at once; started again after.

Figures per round, in seconds after the fault:

- ``detected_s``: the node next to the fault declares the peer down (its ``down_since``;
  KME_2 for KME_3 on a cut, KME_1 for KME_2 otherwise), and the reason it gives;
- ``first_alternate_relay_s``: KME_1's first relay confirmed over KME_1-KME_4-KME_3 that
  started after the fault (a key sent whole round the side that still works);
- ``first_key_after_alternate_s``: the first key SAE_1 got at or after that relay
  (target < 2 s);
- ``longest_gap_s``: the longest time without a key for SAE_1 from 1 s before the fault to
  the end of the round, and the keys it got in the 10 s after the fault.

Default run: 3 rounds of each kind, about five minutes.  Writes
``benchmarks/results/failover_lab.json``.  Needs root for ``--netns``.
"""

# ruff: noqa: E402

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli import _netns
from cli._admin import AdminClient, AdminError
from cli._lab import Lab
from cli._topology import load_topology

RING = ROOT / "examples" / "ring4.toml"
RESULTS = HERE / "results" / "failover_lab.json"
SOURCE, DESTINATION = "KME_1", "KME_3"
ALTERNATE = ["KME_1", "KME_4", "KME_3"]


# --- the SAE worker (runs in KME_1's namespace) ------------------------------------------


def sae_worker(lab_dir: Path, sae: str, slave: str) -> None:
    """Get keys in a closed loop; one line per call: ``ok <time>`` or ``err <time> <code>``.

    Key material and key ids are never printed.
    """
    from qkms_client import Etsi014Client, Etsi014Error

    manifest = json.loads((lab_dir / "lab.json").read_text())
    me = manifest["saes"][sae]
    url = manifest["kmes"][me["kme"]]["url"]
    client = None
    while True:
        try:
            if client is None:
                client = Etsi014Client(
                    url, ca=manifest["ca"], cert=me["cert"], key=me["key"], timeout=5.0
                )
            client.get_key(slave)
            print(f"ok {time.time():.4f}", flush=True)
        except Etsi014Error as exc:
            print(f"err {time.time():.4f} {type(exc).__name__}", flush=True)
            if client is not None:
                client.close()
            client = None
            time.sleep(0.05)


class Deliveries:
    """Reads the worker's lines on a thread: the times SAE_1 got a key."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.ok: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = line.split()
            if parts[:1] == ["ok"]:
                self.ok.append(float(parts[1]))
            elif parts[:1] == ["err"]:
                self.errors.append((float(parts[1]), parts[2]))

    def since(self, t: float) -> list[float]:
        return [x for x in list(self.ok) if x >= t]


# --- the lab -------------------------------------------------------------------------------


def admin(lab: Lab, node: str, method: str) -> dict[str, Any]:
    return AdminClient(lab.admin_socket(node), timeout=5.0).call(method)


def peer_of(lab: Lab, node: str, other: str) -> dict[str, Any] | None:
    try:
        peers = admin(lab, node, "peers")["peers"]
    except AdminError:
        return None
    return next((p for p in peers if p["node_id"] == other), None)


def wait(what: str, predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"failover_lab: timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def all_connected(lab: Lab, pairs: list[tuple[str, str]]) -> bool:
    for a, b in pairs:
        seen = peer_of(lab, a, b)
        if seen is None or seen["state"] != "connected":
            return False
    return True


def keys_flowing(deliveries: Deliveries, seconds: float = 3.0) -> bool:
    now = time.time()
    recent = deliveries.since(now - seconds)
    return len(recent) >= 3 and now - recent[-1] < 0.5


def split_relays_again(lab: Lab, since: float) -> bool:
    """KME_1 confirmed a key split over both sides again (the healed side is used)."""
    try:
        relays = admin(lab, SOURCE, "relays")["relays"]
    except AdminError:
        return False
    return any(
        r["role"] == "source"
        and r["state"] == "confirmed"
        and "#" in r["relay_id"]
        and "KME_2" in r["path"]
        and r["started_at"] >= since
        for r in relays
    )


def source_relays(lab: Lab, into: dict[str, dict[str, Any]]) -> None:
    """Add KME_1's recent relays to ``into`` (the node keeps only the last 256: read often)."""
    try:
        relays = admin(lab, SOURCE, "relays")["relays"]
    except AdminError:
        return
    for r in relays:
        if r["role"] == "source":
            into[r["relay_id"]] = r


def first_alternate_relay(relays: list[dict[str, Any]], fault_at: float) -> float | None:
    ends = [
        r["ended_at"]
        for r in relays
        if r["role"] == "source"
        and r["state"] == "confirmed"
        and "#" not in r["relay_id"]
        and r["path"] == ALTERNATE
        and r["started_at"] >= fault_at
        and r["ended_at"] is not None
    ]
    return min(ends) if ends else None


def longest_gap(times: list[float], start: float, end: float) -> float:
    points = [start] + [t for t in times if start <= t <= end] + [end]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


def run_round(lab: Lab, deliveries: Deliveries, kind: str, observe_s: float) -> dict[str, Any]:
    pid = lab.manifest()["kmes"]["KME_2"]["pid"]
    if kind == "cut":
        watcher, watched = "KME_2", "KME_3"
        fault_at = time.time()
        lab.cut("KME_2", "KME_3")
    elif kind == "freeze":
        watcher, watched = SOURCE, "KME_2"
        fault_at = time.time()
        os.kill(pid, signal.SIGSTOP)
    else:
        watcher, watched = SOURCE, "KME_2"
        fault_at = time.time()
        lab.kill("KME_2")
    declared: dict[str, Any] | None = None
    deadline = fault_at + observe_s
    relays: dict[str, dict[str, Any]] = {}
    while time.time() < deadline:
        if declared is None:
            seen = peer_of(lab, watcher, watched)
            if seen is not None and seen["state"] == "disconnected":
                declared = seen
        source_relays(lab, relays)
        time.sleep(0.1)
    alternate = first_alternate_relay(list(relays.values()), fault_at)
    after = [t for t in deliveries.since(alternate)] if alternate is not None else []
    window = [t for t in deliveries.since(fault_at) if t < fault_at + 10.0]
    result: dict[str, Any] = {
        "kind": kind,
        "fault": FAULTS[kind],
        "detected_by": f"{watcher} (peer {watched})",
        "detected_s": None
        if declared is None or declared["down_since"] is None
        else round(declared["down_since"] - fault_at, 3),
        "reason": None if declared is None else declared["down_reason"],
        "first_alternate_relay_s": None if alternate is None else round(alternate - fault_at, 3),
        "first_key_after_alternate_s": round(after[0] - fault_at, 3) if after else None,
        "longest_gap_s": round(longest_gap(list(deliveries.ok), fault_at - 1.0, deadline), 3),
        "keys_in_10_s_after": len(window),
        "keys_in_10_s_before": len([t for t in deliveries.ok if fault_at - 10 <= t < fault_at]),
        "sae_errors_in_10_s_after": len(
            [t for t, _ in deliveries.errors if fault_at <= t < fault_at + 10]
        ),
    }
    # Repair, and wait until the ring is whole again and keys are split over both sides.
    repaired_at = time.time()
    if kind == "cut":
        lab.heal("KME_2", "KME_3")
    elif kind == "freeze":
        os.kill(pid, signal.SIGCONT)
    else:
        lab.start("KME_2")
    wait("the ring to reconnect", lambda: all_connected(lab, PAIRS), timeout=60)
    result["reconnected_s"] = round(time.time() - repaired_at, 3)
    wait("split relays over both sides", lambda: split_relays_again(lab, repaired_at), 60)
    result["split_again_s"] = round(time.time() - repaired_at, 3)
    print(json.dumps(result), flush=True)
    return result


FAULTS = {
    "cut": "lab cut KME_2 KME_3",
    "freeze": "kill -STOP KME_2 (a hung node: its kernel still answers TCP)",
    "kill": "kill -9 KME_2 (its kernel resets the connections)",
}
PAIRS = [("KME_1", "KME_2"), ("KME_2", "KME_3"), ("KME_3", "KME_4"), ("KME_4", "KME_1")]


def summary(rounds: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    values = [r[key] for r in rounds if r[key] is not None]
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    parser.add_argument("--observe-s", type=float, default=12.0)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--sae-worker", nargs=3, metavar=("LAB", "SAE", "SLAVE"))
    args = parser.parse_args()
    if args.sae_worker:
        lab_dir, sae, slave = args.sae_worker
        sae_worker(Path(lab_dir), sae, slave)
        return

    with tempfile.TemporaryDirectory(prefix="failover-lab-") as tmp:
        lab = Lab(Path(tmp) / "lab")
        said: list[str] = []
        lab.up(load_topology(RING), netns=True, progress=said.append)
        fallback = next((s for s in said if "loopback instead" in s), None)
        if fallback:
            print(f"failover_lab: {fallback}; only the kill rounds run", file=sys.stderr)
        worker = None
        try:
            wait("the ring's sessions", lambda: all_connected(lab, PAIRS))
            where = [] if fallback else ["ip", "netns", "exec", lab.netns(SOURCE)]
            worker = subprocess.Popen(
                [*where, sys.executable, __file__, "--sae-worker", str(lab.dir), "SAE_1", "SAE_3"],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            deliveries = Deliveries(worker)
            wait("keys for SAE_1", lambda: keys_flowing(deliveries), timeout=90)
            time.sleep(args.warmup_s)
            kinds = (["freeze", "kill"] if fallback else ["cut", "freeze", "kill"]) * args.rounds
            rounds = [run_round(lab, deliveries, kind, args.observe_s) for kind in kinds]
        finally:
            if worker is not None:
                worker.kill()
                worker.wait()
            lab.down()
        leftovers = _netns.existing(_netns.lab_prefix(lab.dir))

    out = {
        "benchmark": "failover_lab",
        "topology": "examples/ring4.toml",
        "netns": fallback is None,
        "fallback": fallback,
        "silence_s": 1.0,
        "heartbeat_s": 0.25,
        "rounds": rounds,
        "summary": {
            kind: {
                key: summary([r for r in rounds if r["kind"] == kind], key)
                for key in (
                    "detected_s",
                    "first_alternate_relay_s",
                    "first_key_after_alternate_s",
                    "longest_gap_s",
                    "reconnected_s",
                )
            }
            for kind in sorted({r["kind"] for r in rounds})
        },
        "namespaces_left": leftovers,
        "command": "python benchmarks/failover_lab.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
