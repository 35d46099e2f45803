"""``qkmsctl dashboard``: where a node's live dashboard is (open it in a browser).

A node's dashboard addresses are in its config (``[listen] dashboard``, plain HTTP on
loopback, and ``dashboard_tls``, HTTPS for operators with a certificate); a lab node's
are in the lab's manifest.
"""

from __future__ import annotations

import tomllib
import webbrowser
from pathlib import Path
from typing import Any

import click

from ._errors import CliError, Command
from ._lab import Lab

DEFAULT_CONFIG = Path("/etc/qkms/qkmsd.toml")


def _url(scheme: str, address: Any, key: str, config: Path) -> str:
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CliError(f"config {config}: [listen] {key} = {address!r} is not HOST:PORT")
    if host in ("0.0.0.0", "::", "[::]"):
        # Bound to every address: this machine reaches it on loopback.
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


def config_urls(config: Path) -> list[str]:
    """The dashboard URLs a node config serves: plain HTTP first, then HTTPS."""
    try:
        data = tomllib.loads(config.read_text())
    except OSError as exc:
        raise CliError(f"config {config}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"config {config}: not valid TOML ({exc})") from None
    listen = data.get("listen")
    if not isinstance(listen, dict):
        raise CliError(f"config {config}: no [listen] table")
    urls = []
    if listen.get("dashboard"):
        urls.append(_url("http", listen["dashboard"], "dashboard", config))
    if listen.get("dashboard_tls"):
        urls.append(_url("https", listen["dashboard_tls"], "dashboard_tls", config))
    if not urls:
        raise CliError(
            f"config {config}: the node serves no dashboard: set [listen] dashboard "
            '(e.g. "127.0.0.1:8081") or dashboard_tls, then restart the node'
        )
    return urls


@click.command(cls=Command)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"the node's config [default: {DEFAULT_CONFIG}]",
)
@click.option(
    "--lab",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="a lab directory (lab.json); with --node",
)
@click.option("--node", help="the lab node, e.g. KME1; with --lab")
@click.option("--open", "open_it", is_flag=True, help="also open it in the default browser")
def dashboard(config: Path | None, directory: Path | None, node: str | None, open_it: bool) -> None:
    """Print the URL of a node's dashboard: the local node's (from its config), or a lab
    node's (--lab, --node)."""
    if (directory is None) != (node is None):
        raise click.UsageError("--lab and --node go together")
    if directory is not None and config is not None:
        raise click.UsageError("give --config or --lab/--node, not both")
    if directory is not None and node is not None:
        urls = [Lab(directory).dashboard_url(node)]
    else:
        urls = config_urls(config or DEFAULT_CONFIG)
    for url in urls:
        click.echo(url)
    if open_it and not webbrowser.open(urls[0]):
        click.echo("no browser could be started here: open the URL by hand", err=True)
