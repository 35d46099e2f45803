"""``qkmsctl dashboard``: where a lab node's live dashboard is (open it in a browser)."""

from __future__ import annotations

import webbrowser
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
@click.option("--open", "open_it", is_flag=True, help="also open it in the default browser")
def dashboard(directory: Path, node: str, open_it: bool) -> None:
    """Print the URL of a lab node's dashboard (loopback HTTP)."""
    url = Lab(directory).dashboard_url(node)
    click.echo(url)
    if open_it and not webbrowser.open(url):
        click.echo("no browser could be started here: open the URL by hand", err=True)
