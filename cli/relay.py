"""``qkmsctl routes|relays|relay test``: a node's key relay, through its admin socket."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._admin import AdminClient
from ._errors import Command, Group
from ._lab import Lab
from ._render import relay_test_report, relays_table, routes_table
from .node import DEFAULT_SOCKET, _call, _target


@click.command(cls=Command)
@_target
def routes(ctx: click.Context, as_json: bool) -> None:
    """A node's routes to the far ends of its end-to-end pools."""
    result = _call(ctx, "routes")
    click.echo(json.dumps(result, indent=2) if as_json else routes_table(result))


@click.command(cls=Command)
@_target
def relays(ctx: click.Context, as_json: bool) -> None:
    """A node's recent relays (as source, intermediate or destination), newest first."""
    result = _call(ctx, "relays")
    click.echo(json.dumps(result, indent=2) if as_json else relays_table(result))


@click.group(cls=Group)
def relay() -> None:
    """Key relay between nodes that share no QKD link."""


@relay.command("test")
@click.argument("source")
@click.argument("destination")
@click.option("--bytes", "size", type=click.IntRange(min=1), required=True, help="key to relay")
@click.option(
    "--lab",
    "lab_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="a lab directory: SOURCE is asked through its admin socket there",
)
@click.option("--socket", "socket_path", help=f"SOURCE's admin socket (default {DEFAULT_SOCKET})")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="seconds to wait for the answer",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def relay_test(
    source: str,
    destination: str,
    size: int,
    lab_dir: Path | None,
    socket_path: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Relay --bytes of key from SOURCE to DESTINATION now; show what each hop spent.

    The key goes into their end-to-end pool, like the relays that keep it filled.
    """
    if lab_dir is not None and socket_path:
        raise click.UsageError("--lab and --socket both name SOURCE's socket: give one")
    path = Lab(lab_dir).admin_socket(source) if lab_dir is not None else socket_path
    client = AdminClient(path or DEFAULT_SOCKET, timeout=timeout)
    result = client.call("relay_test", destination=destination, bytes=size)
    click.echo(json.dumps(result, indent=2) if as_json else relay_test_report(source, result))
