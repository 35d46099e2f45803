"""Election in a lab: how long from losing the controller to a new one, against the lease.

A ``qkmsctl lab`` of ``examples/paper-3node.toml`` (KME1, KME2, KME3, all eligible) runs
with ``--netns``: every node a real ``qkmsd`` in a network namespace of its own.  For each
lease length (``[controller] lease_s``, written into every node's config; ``drift_s``
stays 0.1 s and the election timeout is the daemon's ``(lease + drift, 2 (lease +
drift))``), once one controller is followed by all, each round loses it in one of two ways:

- ``kill``: ``kill -9`` of the controller (its kernel closes its connections at once);
  started again after the round;
- ``cut``: ``lab cut`` of every link of the controller, a silent partition that leaves it
  alone in a minority: nothing is closed, its packets vanish; healed after the round.

Figures per round, in seconds after the fault, from polling every node's ``qkmsctl
controller`` (admin socket) every 20 ms:

- ``new_leader_s``: a node other than the old one holds the role in a newer term (its
  own view: leader with lease left);
- ``followed_s``: every other live node follows it in that term;
- ``stepped_down_s`` (``cut``): the old controller no longer claims the role (its lease
  lapsed without a majority's answers);
- ``new_rank``: the new controller's place in the order of standing (0: highest priority).
  Each eligible node's election timeout falls in a slot of its own, in that order, so the
  time to a new leader depends on who is left: in paper-3node, losing KME2 (rank 0) leaves
  KME1 (rank 1) to stand one slot later than KME2 would have.

Default: leases 1, 2 (the default) and 4 s, 5 rounds of each kind, about eight minutes.
Writes ``benchmarks/results/election_lab.json``.  Needs root for ``--netns``; without
namespaces only the kill rounds run (loopback lab, said on stderr).
"""

# ruff: noqa: E402

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli import _netns
from cli._admin import AdminClient, AdminError
from cli._lab import Lab
from cli._topology import load_topology

T = TypeVar("T")
TOPOLOGY = ROOT / "examples" / "paper-3node.toml"
RESULTS = HERE / "results" / "election_lab.json"
DRIFT_S = 0.1
POLL_S = 0.02


def view(lab: Lab, node: str) -> dict[str, Any] | None:
    try:
        return AdminClient(lab.admin_socket(node), timeout=2.0).call("controller")
    except AdminError:
        return None


def holds(v: dict[str, Any] | None) -> bool:
    return v is not None and v.get("role") == "leader" and v.get("lease_left_s") is not None


def agreed(lab: Lab, nodes: list[str]) -> tuple[str, int] | None:
    """``(leader, term)`` when exactly one of ``nodes`` holds the role and all follow it."""
    views = {n: view(lab, n) for n in nodes}
    holding = [n for n, v in views.items() if holds(v)]
    if len(holding) != 1:
        return None
    leader = holding[0]
    term = views[leader]["term"]  # type: ignore[index]
    if all(
        v is not None and (v["controller"], v["term"]) == (leader, term) for v in views.values()
    ):
        return leader, int(term)
    return None


def wait(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"election_lab: timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


def set_lease(lab: Lab, nodes: list[str], lease_s: float) -> None:
    """Every node killed, ``lease_s`` written into its config, started again."""
    manifest = lab.manifest()
    for node in nodes:
        if manifest["kmes"][node]["pid"]:
            lab.kill(node)
    for node in nodes:
        config = Path(manifest["kmes"][node]["config"])
        text = re.sub(r"\nlease_s = [0-9.]+", "", config.read_text())
        text = text.replace("[controller]\n", f"[controller]\nlease_s = {lease_s!r}\n", 1)
        config.write_text(text)
    for node in nodes:
        lab.start(node)


def run_round(lab: Lab, nodes: list[str], kind: str, ranks: dict[str, int]) -> dict[str, Any]:
    old, term = wait("one controller followed by all", lambda: agreed(lab, nodes))
    others = [n for n in nodes if n != old]
    start = time.monotonic()
    if kind == "kill":
        lab.kill(old)
    else:
        for node in others:
            lab.cut(old, node)
    found: dict[str, float] = {}
    new: tuple[str, int] | None = None
    while time.monotonic() - start < 60.0 and not (
        "followed_s" in found and (kind == "kill" or "stepped_down_s" in found)
    ):
        now = time.monotonic() - start
        views = {n: view(lab, n) for n in others}
        for n, v in views.items():
            if "new_leader_s" not in found and holds(v) and v["term"] > term:  # type: ignore[index]
                found["new_leader_s"], new = now, (n, v["term"])  # type: ignore[index]
        if new is not None and "followed_s" not in found:
            if all(v is not None and (v["controller"], v["term"]) == new for v in views.values()):
                found["followed_s"] = now
        if kind == "cut" and "stepped_down_s" not in found and not holds(view(lab, old)):
            found["stepped_down_s"] = now
        time.sleep(POLL_S)
    if kind == "kill":
        lab.start(old)
    else:
        for node in others:
            lab.heal(old, node)
    result: dict[str, Any] = {"kind": kind, "old": old, "term": term}
    result["new"] = new[0] if new else None
    result["new_rank"] = ranks[new[0]] if new else None
    result |= {k: round(v, 3) for k, v in found.items()}
    print(json.dumps(result), flush=True)
    return result


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leases", default="1,2,4", help="lease lengths in seconds")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind per lease")
    parser.add_argument("--topology", type=Path, default=TOPOLOGY)
    args = parser.parse_args()
    leases = [float(x) for x in args.leases.split(",")]
    topo = load_topology(args.topology)
    nodes = sorted(n for n, spec in topo.nodes.items() if spec.controller)
    # The election's order of standing: priority, then node id (protocol/_election.py).
    ranked = sorted(nodes, key=lambda n: (-topo.nodes[n].priority, n))
    ranks = {n: i for i, n in enumerate(ranked)}

    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="election-lab-") as tmp:
        lab = Lab(Path(tmp) / "lab")
        said: list[str] = []
        lab.up(topo, netns=True, progress=said.append)
        fallback = next((s for s in said if "loopback instead" in s), None)
        if fallback:
            print(f"election_lab: {fallback}; only the kill rounds run", file=sys.stderr)
        kinds = ["kill"] if fallback else ["kill", "cut"]
        try:
            for lease in leases:
                set_lease(lab, list(topo.nodes), lease)
                for _ in range(args.rounds):
                    for kind in kinds:
                        rounds.append({"lease_s": lease} | run_round(lab, nodes, kind, ranks))
        finally:
            lab.down()
        leftovers = _netns.existing(_netns.lab_prefix(lab.dir))

    summary: dict[str, Any] = {}
    for lease in leases:
        for kind in kinds:
            mine = [r for r in rounds if r["lease_s"] == lease and r["kind"] == kind]
            keys = ["new_leader_s", "followed_s"] + (["stepped_down_s"] if kind == "cut" else [])
            summary[f"lease {lease:g} s, {kind}"] = {
                k: spread([r[k] for r in mine if k in r]) for k in keys
            } | {
                "failed": sum(1 for r in mine if "followed_s" not in r),
                "new_leader_ranks": sorted({r["new_rank"] for r in mine if r["new"]}),
            }
    out = {
        "benchmark": "election_lab",
        "topology": os.path.relpath(args.topology.resolve(), ROOT),
        "eligible": nodes,
        "ranks": ranks,
        "netns": fallback is None,
        "fallback": fallback,
        "drift_s": DRIFT_S,
        "election_timeout": "(lease + drift, 2 (lease + drift)), one slot per eligible node",
        "poll_s": POLL_S,
        "rounds": rounds,
        "summary": summary,
        "namespaces_left": leftovers,
        "command": "python benchmarks/election_lab.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
