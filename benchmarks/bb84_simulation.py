"""Simulation speed (per-pulse and event-sampled) and simulated vs analytic key rates."""

# Tables print wide rows; the timed lambdas run at once, inside their loop iteration.
# ruff: noqa: E501, B023

from __future__ import annotations

import numpy as np
from _bb84_common import best_of, write

from qkd_drivers.bb84 import (
    GYS,
    analytic_rate,
    asymptotic_estimate,
    count_classes,
    event_counts,
    parse_eve,
    run_block,
    simulate,
)


def rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def main() -> None:
    speed = []
    print("speed (one core, best of 3)")
    for d in (0.0, 50.0):
        n = 20_000_000
        t, _ = best_of(lambda: simulate(GYS, d, n, rng(1), mode="pulse"))
        speed.append({"mode": "pulse", "distance_km": d, "pulses": n, "pulses_per_s": n / t})
        print(f"  per-pulse   {d:>5.0f} km: {n / t:.3g} pulses/s  (target >= 4e6)")
        for n_ev in (10**9, 10**10) if d == 0 else (10**10, 10**11):
            t, _ = best_of(lambda: simulate(GYS, d, n_ev, rng(2), mode="event"))
            speed.append(
                {"mode": "event", "distance_km": d, "pulses": n_ev, "pulses_per_s": n_ev / t}
            )
            print(
                f"  event (detections drawn) {d:>5.0f} km, {n_ev:.0e}: {n_ev / t:.3g} pulse-eq/s (target >= 1e9)"
            )
        n_c = 10**13
        t, _ = best_of(lambda: event_counts(GYS, d, n_c, rng(3)))
        speed.append(
            {"mode": "event-counts", "distance_km": d, "pulses": n_c, "pulses_per_s": n_c / t}
        )
        print(f"  event (counts only) {d:>5.0f} km: {n_c / t:.3g} pulse-eq/s")
    rates = []
    print("rate from simulated counts vs analytic (GYS settings, 1e13 pulses per point)")
    for d, tol in ((0, 0.05), (25, 0.05), (50, 0.05), (100, 0.10), (140, None), (150, None)):
        est = asymptotic_estimate(count_classes(event_counts(GYS, d, 10**13, rng(4)), GYS), GYS)
        an = analytic_rate(GYS, d)
        dev = est.rate_per_pulse / an - 1 if an > 0 else None
        rates.append(
            {
                "distance_km": d,
                "simulated": est.rate_per_pulse,
                "analytic": an,
                "deviation": dev,
                "tolerance": tol,
            }
        )
        dev_s = f"{dev:+.2%}" if dev is not None else "  n/a"
        print(
            f"  {d:>4} km: sim {est.rate_per_pulse:.4g}  analytic {an:.4g}  dev {dev_s}  (tol {tol})"
        )
    eves = []
    print("intercept-resend (25 km, 1e9 pulses)")
    for f in (0.0, 0.2, 0.5, 1.0):
        r = run_block(GYS, 25.0, 10**9, rng(5), eve=parse_eve(f"intercept-resend={f}"))
        eves.append(
            {"fraction": f, "qber": r.qber, "aborted": r.aborted, "abort_reason": r.abort_reason}
        )
        print(
            f"  F={f:.1f}: QBER {r.qber:.4f} (expect ~{GYS.misalignment + f / 4 - GYS.misalignment * f / 2:.4f}) aborted={r.aborted} {r.abort_reason}"
        )
    write("bb84_simulation", {"speed": speed, "rates": rates, "intercept_resend": eves})


if __name__ == "__main__":
    main()
