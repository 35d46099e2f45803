"""``qkmsctl controller``: who holds the controller role, as a node sees it."""

from __future__ import annotations

import json
from typing import Any

import click

from ._errors import Command
from .node import _call, _target


def controller_report(result: dict[str, Any]) -> str:
    """The ``controller`` answer in a few lines."""
    reporting = result.get("reporting") or {}
    electors = ", ".join(
        f"{n} (priority {p})" for n, p in sorted((result.get("electors") or {}).items())
    )
    if not result.get("eligible"):
        lines = [
            f"node        {result['node_id']} (not eligible for the controller role)",
            f"controller  {result.get('controller') or 'none known'}"
            + (f" (term {result['term']})" if result.get("controller") else ""),
        ]
        if electors:
            lines.append(f"eligible    {electors}")
    else:
        lease = result.get("lease_left_s")
        lines = [
            f"node        {result['node_id']} ({result['role']}, term {result['term']})",
            f"controller  {result.get('controller') or 'none known'}"
            + (f" (this node; lease {lease:.1f} s left)" if lease is not None else ""),
            f"eligible    {electors}",
        ]
    if reporting:
        lines.append(
            f"reports     {reporting['reports_sent']} sent to"
            f" {reporting['following'] or 'no one now'}, {reporting['reports_refused']} refused;"
            f" routes from the controller to {', '.join(reporting['routes_installed']) or 'none'}"
        )
    return "\n".join(lines)


@click.command(cls=Command)
@_target
def controller(ctx: click.Context, as_json: bool) -> None:
    """Who holds the controller role, the term, the lease left, the eligible nodes."""
    result = _call(ctx, "controller")
    click.echo(json.dumps(result, indent=2) if as_json else controller_report(result))
