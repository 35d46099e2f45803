"""The floor under the ETSI 014 figures: the same HTTPS stack with no key management behind it.

Two "null KMEs" answer every request with one fixed key container, through the code qkmsd
serves its API with (``qkmsd.http.serve_tcp_tls``: ``trio.SSLStream``, h11, limits, the
access log to a file) and the same TLS set-up (``qkmsd.tls.api_context``: mutual TLS, client
certificates from the network CA).  The round trips, load generators, schedules and table
are ``etsi014_bench``'s: ``enc_keys`` at the first, ``dec_keys`` at the second, 8 SAE pairs.
What separates these figures from ``etsi014_bench``'s, taken at about the same time, is the
key management itself: the stock, the durable fetch at KME_B, the peer protocol, the store.

Run::

    .venv/bin/python benchmarks/etsi014_null_kms.py      # about a minute

It prints a table and writes ``benchmarks/results/etsi014_null_kms.json``.
"""

# ruff: noqa: E501

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import etsi014_bench as bench  # noqa: E402

from cli import _pki  # noqa: E402

RESULTS = HERE / "results" / "etsi014_null_kms.json"
# A valid ETSI 014 key container with one 256-bit key: every answer, enc_keys and dec_keys alike.
_KEY_ID = "0192b2a4-8c4e-7b7e-9d3c-0123456789ab"
_ANSWER = json.dumps(
    {"keys": [{"key_ID": _KEY_ID, "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]}
).encode()


def serve(ca: Path, cert: Path, key: Path, node_id: str) -> None:
    """A null KME: print the bound port, then answer every request with ``_ANSWER``."""
    from qkmsd.http import Response, serve_tcp_tls
    from qkmsd.log import configure
    from qkmsd.tls import api_context

    configure("info", "kv", node_id=node_id)

    async def handler(request: Any) -> Response:
        return Response(200, _ANSWER)

    async def main() -> None:
        context = api_context(ca, cert, key)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_tcp_tls, handler, context, "127.0.0.1", 0)
            gc.freeze()  # as qkmsd does after start-up
            print(port, flush=True)

    trio.run(main)


def start_pair(
    directory: Path,
) -> tuple[dict[str, int], list[bench.Pair], list[subprocess.Popen[bytes]]]:
    ca = _pki.init_ca(directory)
    urls: dict[str, str] = {}
    pids: dict[str, int] = {}
    procs: list[subprocess.Popen[bytes]] = []
    for node in ("KME_A", "KME_B"):
        issued = _pki.issue_node(directory, node)
        log = (directory / f"{node}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(ca.cert),
                str(issued.cert),
                str(issued.key),
                node,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"null {node} did not start; see {directory / f'{node}.log'}")
        urls[node] = f"https://127.0.0.1:{int(line)}"
        pids[node] = proc.pid
    pairs = []
    for i in range(bench.TARGET_SINGLE_PAIRS):
        master = _pki.issue_sae(directory, f"SAE_M{i}")
        slave = _pki.issue_sae(directory, f"SAE_S{i}")
        pairs.append(
            bench.Pair(
                master=f"SAE_M{i}",
                slave=f"SAE_S{i}",
                a_url=urls["KME_A"],
                b_url=urls["KME_B"],
                ca=str(ca.cert),
                m_cert=str(master.cert),
                m_key=str(master.key),
                s_cert=str(slave.cert),
                s_key=str(slave.key),
            )
        )
    return pids, pairs, procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--serve", nargs=4, metavar=("CA", "CERT", "KEY", "NODE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="per window (default 4)")
    parser.add_argument(
        "--windows", type=int, default=3, help="paced windows per generator (default 3)"
    )
    parser.add_argument("--generators", default="trio,threads,curl")
    parser.add_argument(
        "--rate", type=float, default=bench.TARGET_SINGLE_RT_PER_S, help="paced round trips/s"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.serve:
        ca, cert, key, node = args.serve
        serve(Path(ca), Path(cert), Path(key), node)
        return

    info = bench.machine()
    generators = args.generators.split(",")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qkms-null-kms-") as tmp:
        pids, pairs, procs = start_pair(Path(tmp))
        try:
            runs: list[tuple[str, float | None]] = [(g, None) for g in generators]
            for w in range(args.windows):
                runs += [(g, args.rate) for g in (generators if w % 2 == 0 else generators[::-1])]
            for generator, rate in runs:
                logs = {n: Path(tmp) / f"{n}.log" for n in pids}
                row = bench.scenario(pids, generator, pairs, 1, args.seconds, rate, logs=logs)
                rows.append(row)
                load = "closed loop" if rate is None else f"paced at {rate:g} rt/s"
                print(
                    f"  {generator:<7} {len(pairs)} pairs, {load}: {row['round_trips_per_s']:7.1f} rt/s, "
                    f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms",
                    flush=True,
                )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=10)
    print()
    bench.print_table(rows)
    summary = bench.paced_summary(rows)
    for line in bench.summary_lines(summary):
        print(line)
    result = {
        "benchmark": "etsi014_null_kms",
        "description": "the ETSI 014 round trip of etsi014_bench against two servers on qkmsd's "
        "HTTPS stack that answer every request with one fixed key container",
        "machine": info,
        "rows": bench.for_json(rows),
        "paced_summary": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
