"""What noting link key in flight costs: ``KeyStore.allocate_link_key`` (a relay hop's pad
and MAC key) with and without ``in_flight=True``, on a durable store (WAL,
``synchronous=FULL``: one fsync a commit), and the batched ``forget_in_flight`` that
follows the answers.

The rows ride in the allocation's own transaction: no extra commit, only a few more
rows.  Alternating rounds of each kind, so that disk noise falls on both.  Printed and
written to ``benchmarks/results/burns_in_flight.json``.

Run: ``python benchmarks/burns_in_flight.py`` (about half a minute; ``--hops`` sets the
count per round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from qkmsd.keystore import KeyStore, NewBlock

RESULTS = Path(__file__).parent / "results" / "burns_in_flight.json"
LINK = "A~B"
HOP_BYTES = (544, 32)  # a 512-byte key with its 32-byte confirmation key; the MAC key


def _round(store: KeyStore, hops: int, in_flight: bool) -> tuple[float, float]:
    start = time.perf_counter()
    taken = [
        store.allocate_link_key(LINK, list(HOP_BYTES), in_flight=in_flight) for _ in range(hops)
    ]
    alloc_s = (time.perf_counter() - start) / hops
    start = time.perf_counter()
    if in_flight:
        store.forget_in_flight(LINK, [s for pair in taken for a in pair for s in a.segments])
    forget_s = time.perf_counter() - start
    return alloc_s, forget_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = KeyStore.open(Path(tmp) / "keys.db", os.urandom(32))
        need = sum(HOP_BYTES) * args.hops * args.rounds * 2
        blocks = need // 65536 + 1
        store.add_blocks(
            [NewBlock(LINK, i, os.urandom(65536), 0.01, 1.0, True) for i in range(blocks)]
        )
        store.mark_ready(LINK, list(range(blocks)))
        plain, noted, forget = [], [], []
        for _ in range(args.rounds):
            plain.append(_round(store, args.hops, False)[0])
            a, f = _round(store, args.hops, True)
            noted.append(a)
            forget.append(f)
        store.close()
    result = {
        "hops_per_round": args.hops,
        "rounds": args.rounds,
        "allocate_us_median": round(statistics.median(plain) * 1e6, 1),
        "allocate_in_flight_us_median": round(statistics.median(noted) * 1e6, 1),
        "forget_batch_ms_median": round(statistics.median(forget) * 1e3, 2),
    }
    print(
        f"allocate_link_key per hop: {result['allocate_us_median']} us plain,"
        f" {result['allocate_in_flight_us_median']} us with in_flight"
        f" (median of {args.rounds} rounds of {args.hops});"
        f" forget_in_flight for {args.hops} hops in one batch:"
        f" {result['forget_batch_ms_median']} ms"
    )
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
