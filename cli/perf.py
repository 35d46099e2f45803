"""``qkmsctl perf [RESOURCE] --since 1h``: a node's performance history, through its admin
socket, as a table with a sparkline per series (``--plot FILE.png`` draws them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from ._admin import AdminClient
from ._errors import CliError, Command
from ._render import table
from .node import _config, _json, _lab, _node, _socket, _socket_from

SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``7d`` (or bare seconds) in seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if found is None or float(found.group(1)) <= 0:
        raise click.BadParameter(f"{text!r}: give a duration such as 90s, 15m, 1h or 7d")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """The last ``width`` values as block characters scaled between their min and max."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARKS[0] * len(values)
    scale = (len(SPARKS) - 1) / (high - low)
    return "".join(SPARKS[round((v - low) * scale)] for v in values)


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def perf_report(result: dict[str, Any]) -> str:
    rows = []
    for resource, metrics in sorted(result["series"].items()):
        for metric, points in sorted(metrics.items()):
            means = [p["mean"] for p in points]
            rows.append(
                [
                    resource,
                    metric,
                    _number(means[-1]),
                    _number(sum(means) / len(means)),
                    _number(min(p["low"] for p in points)),
                    _number(max(p["high"] for p in points)),
                    sparkline(means),
                ]
            )
    span = (result["now"] - result["since"]) / 3600
    head = f"last {span:g} h, one point per {result['bucket_s']:g} s"
    return head + "\n" + table(["resource", "metric", "last", "mean", "min", "max", ""], rows)


def plot_png(result: dict[str, Any], path: Path) -> int:
    """Draw every series into ``path``, one panel per metric; returns the panels drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'qkms[plot]'") from None
    panels = [
        (resource, metric, points)
        for resource, metrics in sorted(result["series"].items())
        for metric, points in sorted(metrics.items())
    ]
    if not panels:
        raise CliError("nothing to plot: no samples in that period")
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.8 * len(panels)), squeeze=False)
    for ax, (resource, metric, points) in zip(axes[:, 0], panels, strict=True):
        at = [(p["at"] - result["now"]) / 60 for p in points]
        ax.plot(at, [p["mean"] for p in points], linewidth=1)
        ax.fill_between(
            at, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2, linewidth=0
        )
        ax.set_title(f"{resource} {metric}", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("minutes before now")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(panels)


@click.command(cls=Command)
@click.argument("resource", required=False)
@click.option("--since", default="1h", show_default=True, help="how far back: 90s, 15m, 1h, 7d")
@click.option(
    "--plot",
    "plot_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="also draw the series into this PNG file",
)
@_socket
@_config
@_lab
@_node
@_json
def perf(
    resource: str | None,
    since: str,
    plot_to: Path | None,
    socket_path: str | None,
    config: Path | None,
    lab_dir: Path | None,
    node: str | None,
    as_json: bool,
) -> None:
    """A node's performance history: links (key rate, QBER, availability), pools (level,
    inflow, outflow), SAEs (requests, keys, errors), relays and the node itself.

    RESOURCE is a link or pool id, an SAE name, ``node`` or ``relay``; all if left out.
    """
    seconds = parse_duration(since)
    params: dict[str, Any] = {"since_s": seconds}
    if resource is not None:
        params["resource"] = resource
    result = AdminClient(_socket_from(config, socket_path, lab_dir, node)).call("perf", **params)
    click.echo(json.dumps(result, indent=2) if as_json else perf_report(result))
    if plot_to is not None:
        drawn = plot_png(result, plot_to)
        click.echo(f"{drawn} series drawn into {plot_to}", err=True)
