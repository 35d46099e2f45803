"""The ETSI 014 benchmark's figures: targets, statistics, verdicts, summaries and the table.

Pure functions of result rows (dicts, as written to the JSON), so that the tests can
specify them without a daemon.  A row is one timed window of one load generator against
one kind of server (``kms``: ``qkmsd``, or ``null`` for the null KMEs, the same HTTPS
stack with no key management behind it).
"""

from __future__ import annotations

import statistics
from typing import Any

# The issue's targets.
TARGET_BATCHED_KEYS_PER_S = 2000.0
TARGET_SINGLE_RT_PER_S = 500.0
TARGET_SINGLE_P99_MS = 20.0
TARGET_SINGLE_PAIRS = 8
# The tracked figure: qkmsd's single-key round trips/s over the null KMEs' on the same
# load, in twin windows.  What qkmsd keeps of what the HTTP stack alone can do.
TARGET_SINGLE_RATIO = 0.7
# A paced window "held" its rate if it delivered at least this share of the planned round trips.
RATE_HELD = 0.99
# Which servers a row measured.
QKMSD = "qkmsd"
NULL_KMS = "null"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values`` by the nearest-rank rule; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def throughput(row: dict[str, Any]) -> float:
    """The figure a row is compared on: keys/s when batched, round trips/s for single keys."""
    return float(row["keys_per_s"] if row["keys_per_request"] > 1 else row["round_trips_per_s"])


# --- verdicts ---------------------------------------------------------------------------------


def verdict(row: dict[str, Any]) -> str:
    """A row against the issue's targets: "met ...", "MISSED ...", or "" if none applies."""
    if row.get("kms") == NULL_KMS:
        return "control"  # the HTTP stack alone: a measure of the machine, not a result
    if row["keys_per_request"] > 1:
        ok = row["keys_per_s"] >= TARGET_BATCHED_KEYS_PER_S
        return f"{'met' if ok else 'MISSED'} (>= {TARGET_BATCHED_KEYS_PER_S:,.0f} keys/s)"
    if row["pairs"] != TARGET_SINGLE_PAIRS:
        return ""
    rate = row["paced_round_trips_per_s"]
    if rate is None:  # saturation: both halves of the target, at whatever rate 8 pairs reach
        ok = (
            row["round_trips_per_s"] >= TARGET_SINGLE_RT_PER_S
            and row["p99_ms"] < TARGET_SINGLE_P99_MS
        )
        return (
            f"{'met' if ok else 'MISSED'} (>= {TARGET_SINGLE_RT_PER_S:,.0f} rt/s with "
            f"p99 < {TARGET_SINGLE_P99_MS:g} ms, at saturation)"
        )
    if rate < TARGET_SINGLE_RT_PER_S:
        return ""  # a lighter load than the target's (a sweep of rates): nothing to judge
    ok = row["round_trips_per_s"] >= RATE_HELD * rate and row["p99_ms"] < TARGET_SINGLE_P99_MS
    return (
        f"{'met' if ok else 'MISSED'} ({TARGET_SINGLE_RT_PER_S:,.0f} rt/s held, "
        f"p99 < {TARGET_SINGLE_P99_MS:g} ms)"
    )


def ratio_verdict(summary: dict[str, Any]) -> str:
    """A ratio summary against the tracked target (single keys only)."""
    if summary["keys_per_request"] != 1 or summary["ratio_median"] is None:
        return ""
    ok = summary["ratio_median"] >= TARGET_SINGLE_RATIO
    return f"{'met' if ok else 'MISSED'} (>= {TARGET_SINGLE_RATIO:g} of the null KMEs)"


# --- qkmsd against the null KMEs, closed loop ---------------------------------------------------


def twins(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], list[tuple[Any, Any]]]:
    """Closed-loop rows of qkmsd and of the null KMEs on the same load, paired in run order.

    Keyed by (generator, pairs, keys per request): the i-th qkmsd window with the i-th null
    window of that load, which the benchmark runs right before or after it.
    """
    split: dict[tuple[str, int, int], tuple[list[Any], list[Any]]] = {}
    for r in rows:
        if r["paced_round_trips_per_s"] is not None:
            continue
        ours, null = split.setdefault((r["generator"], r["pairs"], r["keys_per_request"]), ([], []))
        (null if r.get("kms") == NULL_KMS else ours).append(r)
    return {k: list(zip(ours, null, strict=False)) for k, (ours, null) in split.items() if null}


def ratio_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per closed-loop load: qkmsd's throughput over the null KMEs', twin by twin.

    The ratio of each twin (two windows a few seconds apart, so the machine's drift mostly
    cancels) and their median, which is the figure to track; the medians of each side's
    own throughput beside it.  Loads without a null twin are left out.
    """
    out = []
    for (generator, pairs, batch), matched in twins(rows).items():
        if not matched:
            continue
        finite = sorted(throughput(q) / throughput(n) for q, n in matched if throughput(n) > 0)
        unit = "keys_per_s" if batch > 1 else "round_trips_per_s"
        summary = {
            "generator": generator,
            "pairs": pairs,
            "keys_per_request": batch,
            "unit": unit,
            "twins": len(matched),
            f"qkmsd_{unit}_median": statistics.median(throughput(q) for q, _ in matched),
            f"null_{unit}_median": statistics.median(throughput(n) for _, n in matched),
            "ratios": finite,
            "ratio_median": statistics.median(finite) if finite else None,
        }
        out.append(summary | {"target": ratio_verdict(summary)})
    return out


def ratio_lines(summary: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in summary:
        unit = s["unit"]
        name = "round trips/s" if unit == "round_trips_per_s" else "keys/s"
        ratio = s["ratio_median"]
        what = "single keys" if s["keys_per_request"] == 1 else f"{s['keys_per_request']} keys/req"
        lines.append(
            f"{s['generator']:<8} {s['pairs']:>2} pairs, {what:<12} "
            f"qkmsd {s[f'qkmsd_{unit}_median']:9.1f} {name:<13} "
            f"null {s[f'null_{unit}_median']:9.1f}   "
            + ("ratio -" if ratio is None else f"ratio {ratio:.3f}")
            + (f" [{', '.join(f'{x:.2f}' for x in s['ratios'])}]" if len(s["ratios"]) > 1 else "")
            + (f"  {s['target']}" if s["target"] else "")
        )
    return lines


# --- paced windows ----------------------------------------------------------------------------


def paced_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per server, generator and paced load: how many windows held the latency target."""
    groups: dict[tuple[str, str, int, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r["paced_round_trips_per_s"] is not None:
            key = (r.get("kms", QKMSD), r["generator"], r["pairs"], r["paced_round_trips_per_s"])
            groups.setdefault(key, []).append(r)
    out = []
    for (kms, generator, pairs, rate), group in groups.items():
        p99 = sorted(r["p99_ms"] for r in group)
        held = [r for r in group if r["round_trips_per_s"] >= RATE_HELD * rate]
        out.append(
            {
                "kms": kms,
                "generator": generator,
                "pairs": pairs,
                "paced_round_trips_per_s": rate,
                "windows": len(group),
                "windows_rate_held": len(held),
                "windows_p99_under_target": sum(r["p99_ms"] < TARGET_SINGLE_P99_MS for r in held),
                "p99_ms_min_median_max": [p99[0], statistics.median(p99), p99[-1]],
                # The p99 of every round trip of every window held, as one measurement.
                "p99_ms_all_windows": _pooled_p99(held),
                "generator_cpu_ms_per_round_trip_median": statistics.median(
                    r["load_generator_cpu_ms_per_round_trip"] for r in group
                ),
            }
        )
    return out


def _pooled_p99(rows: list[dict[str, Any]]) -> float | None:
    if not rows or any("_latencies_ms" not in r for r in rows):
        return None
    return percentile([x for r in rows for x in r["_latencies_ms"]], 0.99)


def for_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without their raw latencies (thousands a row)."""
    return [{k: v for k, v in r.items() if k != "_latencies_ms"} for r in rows]


def summary_lines(summary: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in summary:
        low, mid, high = s["p99_ms_min_median_max"]
        pooled = s.get("p99_ms_all_windows")
        who = s["generator"] + (" against null KMEs" if s.get("kms") == NULL_KMS else "")
        lines.append(
            f"{who:<8} {s['pairs']} pairs at {s['paced_round_trips_per_s']:g}/s: "
            f"p99 < {TARGET_SINGLE_P99_MS:g} ms in {s['windows_p99_under_target']} of "
            f"{s['windows']} windows (p99 {low:.1f} / {mid:.1f} / {high:.1f} ms "
            "min / median / max"
            + ("" if pooled is None else f"; {pooled:.1f} ms over all their round trips")
            + f"; generator {s['generator_cpu_ms_per_round_trip_median']:.2f} ms CPU "
            "per round trip)"
        )
    return lines


def control_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How qkmsd's paced windows fared against the machine's speed at the time.

    With ``--control`` each paced window of qkmsd has a twin against the null KMEs, run
    right before or after it.  Per generator and load: qkmsd's windows under the target,
    all and split at the median of their twins' p99 (the machine's faster and slower
    half of the run), and the rank correlation of the two p99s.
    """
    paired: dict[tuple[str, int, float], tuple[list[float], list[float]]] = {}
    for r in rows:
        if r["paced_round_trips_per_s"] is None:
            continue
        key = (r["generator"], r["pairs"], r["paced_round_trips_per_s"])
        ours, null = paired.setdefault(key, ([], []))
        (null if r.get("kms") == NULL_KMS else ours).append(r["p99_ms"])
    out = []
    for (generator, pairs, rate), (ours, null) in paired.items():
        n = min(len(ours), len(null))
        if n == 0:
            continue
        # Twins in run order; sorted, the machine's fastest windows come first.
        pairs_p99 = sorted(zip(null[:n], ours[:n], strict=True))
        faster, slower = pairs_p99[: (n + 1) // 2], pairs_p99[(n + 1) // 2 :]
        out.append(
            {
                "generator": generator,
                "pairs": pairs,
                "paced_round_trips_per_s": rate,
                "twins": n,
                "under_target": _under_target(pairs_p99),
                "faster_half": {"windows": len(faster), "under_target": _under_target(faster)},
                "slower_half": {"windows": len(slower), "under_target": _under_target(slower)},
                "null_p99_median_ms": statistics.median(x for x, _ in pairs_p99),
                "rank_correlation": _rank_correlation(pairs_p99),
            }
        )
    return out


def _under_target(pairs_p99: list[tuple[float, float]]) -> int:
    """How many of the (null p99, qkmsd p99) twins have qkmsd under the target."""
    return sum(ours < TARGET_SINGLE_P99_MS for _, ours in pairs_p99)


def _ranks(values: list[float]) -> list[int]:
    ranks = [0] * len(values)
    for rank, i in enumerate(sorted(range(len(values)), key=values.__getitem__)):
        ranks[i] = rank
    return ranks


def _rank_correlation(pairs: list[tuple[float, float]]) -> float | None:
    """Spearman's rho of the pairs (no ties expected in measured latencies)."""
    n = len(pairs)
    if n < 3:
        return None
    a, b = _ranks([x for x, _ in pairs]), _ranks([y for _, y in pairs])
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / (n * (n * n - 1))


def control_lines(summary: list[dict[str, Any]]) -> list[str]:
    lines = []
    for c in summary:
        rho = c["rank_correlation"]
        lines.append(
            f"{c['generator']:<8} {c['pairs']} pairs at {c['paced_round_trips_per_s']:g}/s, "
            f"against the null KMEs' twin windows (median p99 {c['null_p99_median_ms']:.1f} ms): "
            f"under {TARGET_SINGLE_P99_MS:g} ms in {c['under_target']} of {c['twins']}; "
            f"{c['faster_half']['under_target']} of {c['faster_half']['windows']} in the "
            f"machine's faster half, {c['slower_half']['under_target']} of "
            f"{c['slower_half']['windows']} in its slower half"
            + ("" if rho is None else f"; rank correlation {rho:.2f}")
        )
    return lines


# --- the table --------------------------------------------------------------------------------


def _wait_cell(row: dict[str, Any]) -> str:
    waits = row.get("cpu_wait_ms_per_s", {})
    a, b = waits.get("KME_A"), waits.get("KME_B")
    return "-" if a is None or b is None else f"{a:.0f}/{b:.0f}"


def _store_cell(row: dict[str, Any]) -> str:
    """KME_B's store commits and calls run inline, per round trip (its admin status)."""
    b = row.get("server", {}).get("KME_B")
    if not b or not row.get("round_trips"):
        return "-"
    trips = row["round_trips"]
    return f"{b['store_batches'] / trips:.2f}/{b['store_inline'] / trips:.2f}"


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        f"{'kms':<5} {'generator':<8} {'load':>7} {'pairs':>5} {'keys/req':>8} {'rt/s':>8} "
        f"{'keys/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} {'gen ms/rt':>9} "
        f"{'cpu A':>6} {'cpu B':>6} {'B commit/inline':>16} {'A/B wait':>9}  target"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cpu = r["cpu_cores"]
        rate = r["paced_round_trips_per_s"]
        load = "closed" if rate is None else f"{rate:g}/s"
        lines.append(
            f"{r.get('kms', QKMSD):<5} {r['generator']:<8} {load:>7} {r['pairs']:>5} "
            f"{r['keys_per_request']:>8} {r['round_trips_per_s']:>8.1f} {r['keys_per_s']:>9.1f} "
            f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {sum(r['errors'].values()):>4} "
            f"{r['load_generator_cpu_ms_per_round_trip']:>9.2f} "
            f"{cpu.get('KME_A', float('nan')):>6.2f} {cpu.get('KME_B', float('nan')):>6.2f} "
            f"{_store_cell(r):>16} {_wait_cell(r):>9}  {verdict(r)}"
        )
    lines.append(
        "B commit/inline: KME_B's store commits and store calls run inline, per round trip "
        "(its admin status); A/B wait: ms per s each server waited for a core"
    )
    return lines
