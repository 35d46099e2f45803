"""Failover and election in the simulator: how long after a fault relays go round it, and how
long after the controller's crash a new controller holds the role.

Network: ``grid:12`` (4 columns, 3 rows, 20 km links of 13,000 b/s; N05, N06 and N01 are
the controller-eligible nodes, N05 elected first), the daemon's default heartbeat (0.25 s:
a peer silent for 1 s is down).  Each run is ``python -m qkmssim --json`` in a subprocess.

- **Failover**: closed-loop demand on N01->N03 and N00->N03, whose shortest routes run
  N01-N02-N03; at 15 s one fault hits that route: the link N01-N02 cut (``link-down``: both
  ends' sessions close) or silent (``link-silent``: bytes and key vanish, nothing closes),
  or the node N02 crashed (``node-crash``: its sessions close) or silent (``node-silent``:
  every wire of N02 silent).  Figure: qkmssim's time to reroute, from the fault to each
  affected pair's first relay confirmed on a route around it (a pair is affected when its
  last relay before the fault crossed the link or node); 20 virtual s follow the fault.
- **Election**: demand on N01->N03 only; at 12 s the controller's node crashes (and stays
  down).  Figure: from the crash to the next node holding the role (the simulator looks
  every 0.25 s), for ``[controller] lease_s`` of 1, 2 and 4 s (drift 0.1 s; the election
  time-out is ``(lease + drift, 2 (lease + drift))``, one slot per eligible node).

Several seeds per case (they change the SAEs' start times and the election's random
time-outs); median and spread (min-max) over them.  Writes
``benchmarks/results/sim_failover.json``.

    python benchmarks/sim_failover.py [--seeds 5] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sim_failover.json"
TOPOLOGY = "grid:12"
FAULT_AT = 15.0
AFTER_S = 20.0
FAULTS = {
    "link-down": f"link-down@{FAULT_AT:g}:N01-N02",
    "link-silent": f"link-silent@{FAULT_AT:g}:N01-N02",
    "node-crash": f"node-crash@{FAULT_AT:g}:N02",
    "node-silent": f"node-silent@{FAULT_AT:g}:N02",
}
FAILOVER_PAIRS = ("N01-N03", "N00-N03")
CRASH_AT = 12.0
LEASES = (1.0, 2.0, 4.0)


def sim(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "qkmssim", "--topology", TOPOLOGY, "--drain", "3", "--json"]
    out = subprocess.run(cmd + args, capture_output=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"qkmssim {' '.join(args)}: {out.stderr.decode()[-2000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def failover(kind: str, seed: int) -> dict[str, Any]:
    args = ["--seconds", f"{FAULT_AT + AFTER_S:g}", "--seed", str(seed), "--fault", FAULTS[kind]]
    for pair in FAILOVER_PAIRS:
        args += ["--pair", pair]
    r = sim(args)
    f = r["faults"][0]
    return {
        "case": kind,
        "seed": seed,
        "fault": f["fault"],
        "affected_pairs": f["affected_pairs"],
        "reroute_s_median": f["reroute_s_median"],
        "reroute_s_max": f["reroute_s_max"],
        "not_rerouted": f["not_rerouted"],
        "recovered_s_max": f["recovered_s_max"],
        "keys_delivered": r["keys_delivered"],
        "relays_done": r["relays_done"],
        "relays_failed": r["relays_failed"],
        "relays_unresolved": r["relays_unresolved"],
        "served_twice": r["served_twice"] + r["value_reused"] + r["two_values"],
        "leaders": r["leaders"],
        "cpu_s": r["cpu_s"],
    }


def election(lease: float, seed: int) -> dict[str, Any]:
    args = [
        "--seconds",
        f"{CRASH_AT + 12:g}",
        "--seed",
        str(seed),
        "--lease",
        f"{lease:g}",
        "--pair",
        "N01-N03",
        "--fault",
        f"controller-crash@{CRASH_AT:g}",
    ]
    r = sim(args)
    f = r["faults"][0]
    first = next((t for t, who in r["leaders"] if who is not None), None)
    return {
        "case": f"lease {lease:g} s",
        "lease_s": lease,
        "seed": seed,
        "crashed": f["target"],
        "new_leader_s": f["new_leader_s"],
        "first_leader_at_s": first,
        "leaders": r["leaders"],
        "served_twice": r["served_twice"] + r["value_reused"] + r["two_values"],
        "cpu_s": r["cpu_s"],
    }


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    seeds = range(1, args.seeds + 1)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        fo = [pool.submit(failover, k, s) for k in FAULTS for s in seeds]
        el = [pool.submit(election, lease, s) for lease in LEASES for s in seeds]
        fo_runs = [f.result() for f in fo]
        el_runs = [f.result() for f in el]
    summary: dict[str, Any] = {"failover": {}, "election": {}}
    print("failover (fault at 15 s on the route N01-N02-N03; time to a relay around it)")
    for kind in FAULTS:
        runs = [r for r in fo_runs if r["case"] == kind]
        medians = [r["reroute_s_median"] for r in runs if r["reroute_s_median"] is not None]
        worst = [r["reroute_s_max"] for r in runs if r["reroute_s_max"] is not None]
        s = {
            "reroute_s": spread(medians),
            "reroute_s_worst": spread(worst),
            "affected_pairs": sum(r["affected_pairs"] for r in runs),
            "not_rerouted": sum(r["not_rerouted"] for r in runs),
            "runs_with_no_affected_pair": sum(1 for r in runs if not r["affected_pairs"]),
        }
        summary["failover"][kind] = s
        m = s["reroute_s"]
        print(
            f"  {kind:<12} median {m['median']} s (min {m['min']}, max {m['max']}) over "
            f"{m['n']} runs; worst pair {s['reroute_s_worst']['max']} s; "
            f"{s['affected_pairs']} affected pairs, {s['not_rerouted']} never rerouted"
        )
    print("election (controller's node crashed at 12 s; time to the next controller)")
    for lease in LEASES:
        runs = [r for r in el_runs if r["lease_s"] == lease]
        times = [r["new_leader_s"] for r in runs if r["new_leader_s"] is not None]
        firsts = [r["first_leader_at_s"] for r in runs if r["first_leader_at_s"] is not None]
        s = {
            "new_leader_s": spread(times),
            "over_lease": None if not times else round(statistics.median(times) / lease, 3),
            "first_leader_at_s": spread(firsts),
            "no_new_leader": sum(1 for r in runs if r["new_leader_s"] is None),
        }
        summary["election"][f"{lease:g}"] = s
        m = s["new_leader_s"]
        print(
            f"  lease {lease:g} s: new controller after {m['median']} s (min {m['min']}, "
            f"max {m['max']}; {s['over_lease']} leases), first election at "
            f"{s['first_leader_at_s']['median']} s; {s['no_new_leader']} runs without one"
        )
    doc = {
        "command": f"python benchmarks/sim_failover.py --seeds {args.seeds}",
        "topology": TOPOLOGY,
        "seeds": list(seeds),
        "summary": summary,
        "failover_runs": fo_runs,
        "election_runs": el_runs,
        "cpu_s_total": round(sum(r["cpu_s"] for r in fo_runs + el_runs), 1),
        "wall_s_total": round(time.perf_counter() - started, 1),
    }
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    where = RESULTS.relative_to(ROOT)
    print(f"{doc['cpu_s_total']} CPU s, {doc['wall_s_total']} wall s -> {where}")
    bad = sum(r["served_twice"] for r in fo_runs + el_runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
