"""One SAE floods the ETSI 014 front; how much slower does another SAE get its keys?

A lab of two qkmsd daemons (one fast simulated link) with two SAE pairs.  Every SAE has
per-SAE rate limits (``[saes.X.limits]``).  The well-behaved master SAE_M0 asks KME_A for
one key at a time, sequentially, and the benchmark times each ``enc_keys`` round trip:

1. ``quiet``: nobody else talks to KME_A;
2. ``flood``: meanwhile ``--flooders`` processes, each with its own TLS connection as
   SAE_M1, send ``enc_keys`` as fast as they can: nearly all are answered 429;
3. ``quiet again``: the flood is over.

It prints p50/p99 of SAE_M0's latency per phase, what the flooders got (200 vs 429), and
writes ``benchmarks/results/etsi014_flood.json``.

    .venv/bin/python benchmarks/etsi014_flood.py [--seconds 20] [--flooders 4] [--no-limits]

``--no-limits`` runs the same with no limits (``etsi014_flood_no_limits.json``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _bb84_common import write  # noqa: E402
from _etsi014_harness import pairs_of, wait_for_key  # noqa: E402
from _etsi014_load import Pair  # noqa: E402
from _etsi014_stats import percentile  # noqa: E402

from cli._lab import Lab  # noqa: E402
from cli._topology import topology_from_mapping  # noqa: E402
from qkms_client import Etsi014Client, RateLimited  # noqa: E402

LIMITS = {"requests_per_s": 50.0, "burst_requests": 50, "keys_per_s": 200.0, "burst_keys": 200}


def topology(limits: dict[str, float]) -> Any:
    saes: dict[str, Any] = {}
    for i in range(2):
        saes[f"SAE_M{i}"] = {"kme": "KME_A", "limits": limits}
        saes[f"SAE_S{i}"] = {"kme": "KME_B", "limits": limits}
    return topology_from_mapping(
        {
            "name": "etsi014-flood",
            "description": "KME_A and KME_B, one fast simulated link, two SAE pairs",
            "defaults": {"driver": "paired", "params": {"rate_bps": 5e6, "block_bits": 1 << 20}},
            "nodes": {"KME_A": {"controller": True, "priority": 100}, "KME_B": {}},
            "links": [{"a": "KME_A", "b": "KME_B"}],
            "saes": saes,
        },
        label="etsi014 flood topology",
    )


def flood(pair: Pair, until: float, out: Any) -> None:
    ok = limited = other = 0
    with Etsi014Client(pair.a_url, ca=pair.ca, cert=pair.m_cert, key=pair.m_key) as client:
        while time.monotonic() < until:
            try:
                client.get_key(pair.slave, number=1)
                ok += 1
            except RateLimited:
                limited += 1
            except Exception:  # noqa: BLE001 - counted, the flood goes on
                other += 1
    out.put((ok, limited, other))


def timed(pair: Pair, seconds: float) -> list[float]:
    """SAE_M0's enc_keys latencies (ms) over ``seconds``, one request at a time."""
    lat: list[float] = []
    with Etsi014Client(pair.a_url, ca=pair.ca, cert=pair.m_cert, key=pair.m_key) as client:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            t0 = time.perf_counter()
            client.get_key(pair.slave, number=1)
            lat.append((time.perf_counter() - t0) * 1000.0)
            time.sleep(0.025)  # 40 calls/s: under its own 50/s limit
    return lat


def summary(name: str, lat: list[float]) -> dict[str, Any]:
    row = {
        "phase": name,
        "requests": len(lat),
        "p50_ms": percentile(lat, 0.5),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": max(lat) if lat else None,
    }
    print(
        f"  {name:12s} {row['requests']:6d} requests  p50 {row['p50_ms']:6.2f} ms"
        f"  p99 {row['p99_ms']:6.2f} ms  max {row['max_ms']:6.2f} ms"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument(
        "--no-limits", action="store_true", help="the same run with no rate limits, to compare"
    )
    args = parser.parse_args()
    limits = {} if args.no_limits else LIMITS
    with tempfile.TemporaryDirectory(prefix="qkms-flood-") as tmp:
        lab = Lab(Path(tmp))
        manifest = lab.up(topology(limits))
        try:
            victim, flooder = pairs_of(manifest, 2)
            wait_for_key(victim, 256)
            print(f"SAE_M0 latency, one enc_keys at a time; limits per SAE {limits or 'none'}")
            rows = [summary("quiet", timed(victim, args.seconds))]
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            until = time.monotonic() + args.seconds + 1.0
            procs = [
                ctx.Process(target=flood, args=(flooder, until, out)) for _ in range(args.flooders)
            ]
            for p in procs:
                p.start()
            time.sleep(0.5)  # the flooders are connected and sending
            rows.append(summary("flood", timed(victim, args.seconds)))
            got = [out.get() for _ in procs]
            for p in procs:
                p.join()
            ok, limited, other = (sum(g[i] for g in got) for i in range(3))
            rows.append(summary("quiet again", timed(victim, args.seconds)))
        finally:
            lab.down()
    span = args.seconds + 1.0
    flood_row = {
        "flooders": args.flooders,
        "answered_200": ok,
        "answered_429": limited,
        "other": other,
        "requests_per_s": (ok + limited + other) / span,
    }
    print(
        f"  flooders: {args.flooders} connections, {flood_row['requests_per_s']:.0f} requests/s:"
        f" {ok} answered with keys, {limited} with 429, {other} otherwise"
    )
    ratio = rows[1]["p99_ms"] / rows[0]["p99_ms"]
    print(f"  SAE_M0 p99 under flood / quiet: {ratio:.2f}")
    name = "etsi014_flood_no_limits" if args.no_limits else "etsi014_flood"
    write(name, rows, limits=limits, flood=flood_row, p99_ratio=ratio, command=" ".join(sys.argv))


if __name__ == "__main__":
    main()
