"""The controller's network alarm history at its default bound: memory and time.

17 nodes (the kreonet17 backbone) each report alarm events in reports of 256 (the most a
report carries) until the history holds its default bound of 20,000 events, then 17
reports more (every add past the bound prunes).  Measured on the real ``NetworkAlarms``:
the memory it holds at the bound (``tracemalloc``: the events and their index), the time
to take one full report, and the time of the queries ``qkmsctl alarm history --network``
makes (the newest 1000; one node's; one code's), as CPU time of this process (the machine
is shared: wall time would count the other processes).  Printed and written to
``benchmarks/results/ops_network_alarms.json``.

Run: ``python benchmarks/ops_network_alarms.py`` (a few seconds).
"""

from __future__ import annotations

import json
import statistics
import time
import tracemalloc
from pathlib import Path

from protocol import MAX_ALARMS_PER_REPORT, CtlAlarmEvent
from qkmsd.controller import NetworkAlarms

RESULTS = Path(__file__).parent / "results" / "ops_network_alarms.json"
NODES = [f"KME_{i}" for i in range(1, 18)]
CODES = ["link-down", "peer-down", "qber-high", "pool-low", "key-rate-low", "clock-skew"]
BOUND = 20_000
NOW = 1_800_000_000.0


def report(node: int, first: int) -> list[CtlAlarmEvent]:
    """A report's worth of distinct events, in the shapes the nodes send."""
    out = []
    for i in range(first, first + MAX_ALARMS_PER_REPORT):
        kind = ("raised", "cleared", "acknowledged", "changed", "fault")[i % 5]
        out.append(
            CtlAlarmEvent(
                kind=kind,  # type: ignore[arg-type]
                code=CODES[i % len(CODES)],
                resource=f"KME_{node}~KME_{node % 17 + 1}",
                severity="cleared" if kind == "cleared" else "major",
                previous="major" if kind == "cleared" else "cleared",
                at=NOW - 86400 + i * 0.5 + node * 1e-3,
                value=0.5 + i % 7,
            )
        )
    return out


def main() -> None:
    clock = [NOW]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    alarms = NetworkAlarms(max_age_s=7 * 86400, max_events=BOUND, clock=lambda: clock[0])
    adds: list[float] = []
    sent = 0
    while len(alarms) < BOUND or sent < BOUND + 17 * MAX_ALARMS_PER_REPORT:
        for n, node in enumerate(NODES, start=1):
            batch = report(n, sent)
            t = time.process_time()
            alarms.add(node, batch)
            adds.append(time.process_time() - t)
        sent += MAX_ALARMS_PER_REPORT
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    queries: dict[str, list[float]] = {"newest 1000": [], "one node": [], "one code": []}
    for _ in range(20):
        for name, kwargs in (
            ("newest 1000", {"limit": 1000}),
            ("one node", {"node": "KME_3", "limit": 1000}),
            ("one code", {"code": "qber-high", "limit": 1000}),
        ):
            t = time.process_time()
            alarms.events(**kwargs)  # type: ignore[arg-type]
            queries[name].append(time.process_time() - t)
    full_adds = adds[-len(NODES) :]
    result = {
        "events_held": len(alarms),
        "memory_mib": round(held / 2**20, 2),
        "bytes_per_event": round(held / len(alarms)),
        "report_add_ms_median_at_bound": round(statistics.median(full_adds) * 1e3, 2),
        "query_ms_median": {k: round(statistics.median(v) * 1e3, 2) for k, v in queries.items()},
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
