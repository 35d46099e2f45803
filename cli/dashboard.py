"""``qkmsctl dashboard``: where a lab node's live dashboard is (open it in a browser)."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import Command
from ._lab import Lab


@click.command(cls=Command)
@click.option(
    "--lab",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="lab directory (lab.json)",
)
@click.option("--node", required=True, help="node id, e.g. KME1")
def dashboard(directory: Path, node: str) -> None:
    """Print the URL of a lab node's dashboard (loopback HTTP)."""
    click.echo(Lab(directory).dashboard_url(node))
