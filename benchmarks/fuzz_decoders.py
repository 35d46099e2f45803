"""Fuzz every wire decoder and report how many cases each ran and what failed.

    python benchmarks/fuzz_decoders.py                      # atheris, 60 s per decoder
    python benchmarks/fuzz_decoders.py --seconds 600        # longer
    python benchmarks/fuzz_decoders.py --runs 5000 --engine hypothesis

The targets are in ``tests/fuzz/targets.py``: any byte string into the frame decoder,
the peer and admin message decoders, the device protocol at both ends, the ETSI 014 bodies
and the ETSI 014 request routing; each must answer with messages, "need more data" or a
``RemoteProtocolError`` and hold no more than its wire limit.

With atheris (coverage-guided libFuzzer, ``pip install atheris``) each decoder runs in a
child process of its own, instrumented over ``protocol``, starting from the target's
seed corpus; a failing input is saved under ``benchmarks/results/fuzz-crashes/``.  Without
atheris (or with ``--engine hypothesis``) hypothesis generates the inputs: random bytes
and mutations of the seeds, no coverage feedback.  Results go to stdout (a table) and to
``benchmarks/results/fuzz_decoders.json``; the exit status is 1 if any decoder failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"#(\d+)\s")
_RSS_LIMIT_MB = 1024


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# --- atheris: one child process per target -------------------------------------------


def _child(name: str, argv: list[str]) -> None:
    """Run in the child: instrument the decoders, then hand over to libFuzzer (no return)."""
    import atheris

    with atheris.instrument_imports(include=["protocol", "tests.fuzz"]):
        from tests.fuzz.targets import TARGETS
    target = TARGETS[name].run
    atheris.Setup([sys.argv[0], *argv], target)
    atheris.Fuzz()


def run_atheris(name: str, *, runs: int | None, seconds: float | None) -> dict[str, Any]:
    """One target under libFuzzer: cases run, seconds, and the failure if there was one."""
    from tests.fuzz.targets import TARGETS

    crashes = RESULTS / "fuzz-crashes"
    with tempfile.TemporaryDirectory(prefix=f"qkms-fuzz-{name}-") as corpus:
        for i, seed in enumerate(TARGETS[name].seeds):
            Path(corpus, f"seed-{i}").write_bytes(seed)
        args = [f"-rss_limit_mb={_RSS_LIMIT_MB}", "-print_final_stats=1", "-max_len=8192"]
        if runs is not None:
            args.append(f"-runs={runs}")
        if seconds is not None:
            args.append(f"-max_total_time={max(1, int(seconds))}")
        crashes.mkdir(parents=True, exist_ok=True)
        args += [f"-artifact_prefix={crashes}/{name}-", corpus]
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        elapsed = time.monotonic() - started
    log = proc.stderr
    done = _DONE.search(log)
    if done is not None:
        cases = int(done.group(1))
    else:  # stopped by a failure: the last status line says how far it got
        seen = _STAT.findall(log)
        cases = int(seen[-1]) if seen else 0
    failure = None
    if proc.returncode != 0:
        lines = [ln for ln in log.splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if "Uncaught Python exception" in ln), None)
        failure = "\n".join(lines[start : start + 12] if start is not None else lines[-12:])
    return {
        "target": name,
        "engine": "atheris",
        "cases": cases,
        "seconds": round(elapsed, 1),
        "failure": failure,
    }


# --- hypothesis: in this process -----------------------------------------------------


def run_hypothesis(name: str, *, runs: int) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.fuzz.targets import TARGETS

    target = TARGETS[name]
    count = 0

    @settings(
        max_examples=runs,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_inputs(target.seeds, st))
    def run(data: bytes) -> None:
        nonlocal count
        count += 1
        target.run(data)

    started = time.monotonic()
    failure = None
    try:
        run()
    except Exception as exc:  # the failure is the report
        failure = f"{type(exc).__name__}: {exc}"[:2000]
    return {
        "target": name,
        "engine": "hypothesis",
        "cases": count,
        "seconds": round(time.monotonic() - started, 1),
        "failure": failure,
    }


def fuzz_inputs(seeds: tuple[bytes, ...], st: Any) -> Any:
    """Random bytes, and seeds with bytes flipped, cut, repeated or spliced in."""

    def mutate(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
        out = bytearray(seed)
        for kind, where, value in edits:
            at = where % (len(out) + 1)
            if kind == 0 and out and at < len(out):
                out[at] = value
            elif kind == 1:
                out[at:at] = bytes([value]) * (1 + value % 8)
            elif kind == 2:
                del out[at : at + 1 + value % 16]
            else:
                out += out[at:][: 1 + value]
        return bytes(out)

    edits = st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6
    )
    mutated = st.builds(mutate, st.sampled_from(seeds), edits)
    with_choice = st.builds(
        lambda choice, rest: bytes([choice]) + rest, st.integers(0, 255), st.binary(max_size=600)
    )
    return st.one_of(st.binary(max_size=2048), with_choice, mutated)


# --- the report ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[3:])
        return 0  # not reached: libFuzzer exits
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("--runs", type=int, help="cases per decoder (hypothesis default 2000)")
    parser.add_argument("--seconds", type=float, help="seconds per decoder (atheris, default 60)")
    parser.add_argument("--targets", nargs="*", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--json", type=Path, default=RESULTS / "fuzz_decoders.json")
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "hypothesis"
    results = []
    for name in args.targets:
        if engine == "atheris":
            seconds = args.seconds if args.seconds or args.runs else 60.0
            result = run_atheris(name, runs=args.runs, seconds=seconds)
        else:
            result = run_hypothesis(name, runs=args.runs or 2000)
        results.append(result)
        verdict = "ok" if result["failure"] is None else "FAILED"
        print(
            f"{name:18} {result['engine']:10} {result['cases']:>12,} cases"
            f" {result['seconds']:>8.1f} s  {verdict}",
            flush=True,
        )
        if result["failure"]:
            print(result["failure"], flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"python": sys.version.split()[0], "engine": engine, "results": results}, indent=2
        )
        + "\n"
    )
    return 1 if any(r["failure"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
