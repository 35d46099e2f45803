"""``qkmsctl bb84``: run the decoy-state BB84 engine on its own, for physics studies."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Literal

import click
import numpy as np

from qkd_drivers.bb84 import (
    Bb84Params,
    Bb84ParamsError,
    BlockResult,
    Eve,
    load_params,
    optimised_rate,
    parse_eve,
    plob_bound_at,
    run_block,
    run_stream,
)
from qkd_drivers.bb84._driver import pulses_per_block

from ._errors import CliError, Group


class _Count(click.ParamType):  # type: ignore[type-arg]
    """An integer that may be written 1e9 or 1_000_000."""

    name = "count"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < 1 or number != int(number):
            self.fail(f"{value!r} is not a positive whole number", param, ctx)
        return int(number)


def _setup(params: str, eve: str | None) -> tuple[Bb84Params, Eve]:
    try:
        return load_params(params), parse_eve(eve)
    except Bb84ParamsError as exc:
        raise CliError(str(exc)) from None


def _run(
    physics: Bb84Params,
    distance: float,
    pulses: int,
    seed: int,
    eve: Eve,
    mode: str,
    block_bits: int | None = None,
) -> BlockResult:
    rng = np.random.Generator(np.random.PCG64(seed))
    kind: Literal["pulse", "event"] = "pulse" if mode == "pulse" else "event"
    try:
        if block_bits is None:
            return run_block(physics, distance, pulses, rng, eve=eve, mode=kind)
        block = pulses_per_block(physics, distance, eve, block_bits)
        return run_stream(
            physics, distance, pulses, rng, block_pulses=block, eve=eve, mode=kind, keep_key=False
        )
    except Bb84ParamsError as exc:
        raise CliError(str(exc)) from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_STAGES = [
    ("quantum", ["n_pulses", "blocks", "detections", "double_clicks"]),
    ("sifting", ["sifted_bits"]),
    ("estimation", ["sample_bits", "qber", "y1_lower", "e1_upper", "asymptotic_rate_from_counts"]),
    (
        "cascade",
        ["key_bits_before_ec", "qber_key", "ec_disclosed_bits", "ec_messages", "ec_efficiency"],
    ),
    ("verification", ["verified", "tag_bits", "residual_errors"]),
    ("finite key", ["s_x0", "s_x1", "phi_x", "secret_bits", "secret_key_rate_per_pulse"]),
    ("analytic", ["analytic_key_rate_per_pulse"]),
    ("outcome", ["aborted", "abort_reason"]),
]


@click.group(cls=Group)
def bb84() -> None:
    """Simulate decoy-state BB84 links: one block, or a sweep over distance."""


@bb84.command()
@click.option("--distance-km", type=click.FloatRange(min=0.0), default=25.0, show_default=True)
@click.option("--pulses", type=_Count(), default="1e8", show_default=True, help="Pulses sent.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--params", "params", default="gys", show_default=True, help="gys, lim2014 or a TOML file."
)
@click.option("--eve", default=None, help="intercept-resend=F, pns or beam-splitting.")
@click.option("--mode", type=click.Choice(["pulse", "event"]), default="event", show_default=True)
@click.option(
    "--block-bits",
    type=_Count(),
    default=str(1 << 20),
    show_default=True,
    help="Expected key bits per block of pulses: memory follows this, not --pulses.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def simulate(
    distance_km: float,
    pulses: int,
    seed: int,
    params: str,
    eve: str | None,
    mode: str,
    block_bits: int,
    as_json: bool,
) -> None:
    """Run the pulses through every stage and print each stage's figures.

    A run longer than one block is simulated and corrected block by block, with one
    finite-key analysis and one privacy amplification over the whole run.
    """
    physics, attacker = _setup(params, eve)
    result = _run(physics, distance_km, pulses, seed, attacker, mode, block_bits)
    figures = result.figures()
    if as_json:
        click.echo(json.dumps(figures, indent=2, sort_keys=True))
        return
    click.echo(
        f"bb84 {physics.name} at {distance_km:g} km, {pulses:g} pulses, {mode} mode, eve {attacker}"
    )
    for stage, names in _STAGES:
        click.echo(f"{stage}:")
        for name in names:
            click.echo(f"  {name:32s} {_fmt(figures[name])}")


@bb84.command()
@click.option("--from-km", type=click.FloatRange(min=0.0), default=0.0, show_default=True)
@click.option("--to-km", type=click.FloatRange(min=0.0), default=200.0, show_default=True)
@click.option("--step-km", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option(
    "--block-bits",
    type=_Count(),
    default="65536",
    show_default=True,
    help="Expected key bits per point.",
)
@click.option("--max-pulses", type=_Count(), default="1e12", show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--params", "params", default="gys", show_default=True)
@click.option("--eve", default=None)
@click.option("--mode", type=click.Choice(["pulse", "event"]), default="event", show_default=True)
@click.option(
    "--plot", type=click.Path(dir_okay=False, writable=True), default=None, help="PNG to draw."
)
@click.option("--json", "as_json", is_flag=True)
def sweep(
    from_km: float,
    to_km: float,
    step_km: float,
    block_bits: int,
    max_pulses: int,
    seed: int,
    params: str,
    eve: str | None,
    mode: str,
    plot: str | None,
    as_json: bool,
) -> None:
    """Simulated key rate against distance, beside the analytic curves and PLOB."""
    physics, attacker = _setup(params, eve)
    distances = [float(d) for d in np.arange(from_km, to_km + step_km / 2, step_km)]
    rows: list[dict[str, Any]] = []
    with click.progressbar(distances, label="distances", file=sys.stderr) as bar:
        for i, distance in enumerate(bar):
            pulses = min(max_pulses, pulses_per_block(physics, distance, attacker, block_bits))
            result = _run(physics, distance, pulses, seed + i, attacker, mode)
            rows.append(
                {
                    "distance_km": distance,
                    "pulses": pulses,
                    "qber": result.qber,
                    "secret_key_rate_per_pulse": result.secret_key_rate_per_pulse,
                    "asymptotic_rate_from_counts": result.asymptotic_rate_from_counts,
                    "analytic_key_rate_per_pulse": result.analytic_key_rate_per_pulse,
                    "infinite_decoy_rate": optimised_rate(physics, distance),
                    "vacuum_weak_decoy_rate": optimised_rate(physics, distance, decoys="vw"),
                    "plob_bound": plob_bound_at(physics, distance),
                    "aborted": result.aborted,
                    "abort_reason": result.abort_reason,
                }
            )
    if plot is not None:
        _plot(rows, physics, plot)
    if as_json:
        clean = [{k: None if v == math.inf else v for k, v in row.items()} for row in rows]
        click.echo(json.dumps(clean, indent=2))
        return
    cols = [
        "distance_km",
        "qber",
        "secret_key_rate_per_pulse",
        "asymptotic_rate_from_counts",
        "analytic_key_rate_per_pulse",
        "infinite_decoy_rate",
        "plob_bound",
    ]
    click.echo("  ".join(f"{c:>12.12s}" for c in cols))
    for row in rows:
        click.echo("  ".join(f"{_fmt(row[c]):>12s}" for c in cols))


def _plot(rows: list[dict[str, Any]], physics: Bb84Params, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'qkms[plot]'") from None
    d = [r["distance_km"] for r in rows]

    def series(key: str) -> list[float]:
        return [r[key] if r[key] and r[key] > 0 else math.nan for r in rows]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(d, series("plob_bound"), "k-", label="PLOB bound -log2(1-eta)")
    ax.semilogy(d, series("infinite_decoy_rate"), "C0-", label="GLLP, infinite decoys (opt. mu)")
    ax.semilogy(
        d, series("vacuum_weak_decoy_rate"), "C1--", label="GLLP, vacuum + weak decoy (opt. mu)"
    )
    ax.semilogy(
        d, series("analytic_key_rate_per_pulse"), "C2:", label="GLLP at these settings x p_mu"
    )
    ax.semilogy(d, series("asymptotic_rate_from_counts"), "C2o", label="from simulated counts")
    ax.semilogy(
        d, series("secret_key_rate_per_pulse"), "C3s", label="finite key (Lim 2014), simulated"
    )
    ax.set_xlabel("distance (km)")
    ax.set_ylabel("secret key bits per pulse")
    ax.set_title(f"decoy-state BB84, {physics.name} parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
