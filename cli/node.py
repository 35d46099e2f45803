"""``qkmsctl status|peers|links|config``: talk to one node through its admin socket.

A node is named by ``--socket``, by ``--config`` (its admin socket is read from there), or
in a lab by ``--lab DIR --node N``; by default ``/run/qkms/admin.sock``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from ._admin import AdminClient
from ._errors import CliError, Command, Group
from ._lab import Lab
from ._render import ago, bits, link_driver, node_status, peer_tls, table

DEFAULT_SOCKET = "/run/qkms/admin.sock"


def _socket_from(
    config: Path | None,
    socket_path: str | None,
    lab_dir: Path | None = None,
    node: str | None = None,
) -> str:
    if (lab_dir is None) != (node is None):
        raise click.UsageError("--lab and --node go together: the lab directory and a node in it")
    if lab_dir is not None and (socket_path or config is not None):
        raise click.UsageError("name the node by --lab/--node, --socket or --config, not several")
    if lab_dir is not None and node is not None:
        return Lab(lab_dir).admin_socket(node)
    if socket_path:
        return socket_path
    if config is not None:
        try:
            data = tomllib.loads(config.read_text())
            return str((config.parent / data["listen"]["admin_socket"]).resolve())
        except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
            raise CliError(f"config {config}: cannot find [listen] admin_socket ({exc})") from None
    return DEFAULT_SOCKET


def _call(ctx: click.Context, method: str, **params: Any) -> dict[str, Any]:
    obj = ctx.obj or {}
    path = _socket_from(obj.get("config"), obj.get("socket"), obj.get("lab"), obj.get("node"))
    return AdminClient(path).call(method, **params)


_socket = click.option("--socket", "socket_path", help=f"admin socket (default {DEFAULT_SOCKET})")
_config = click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="read the socket path from this node config",
)
_lab = click.option(
    "--lab",
    "lab_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="a lab directory (`qkmsctl lab up`); with --node",
)
_node = click.option("--node", help="the lab node to ask; with --lab")
_json = click.option("--json", "as_json", is_flag=True, help="print JSON")


def _target(f: Any) -> Any:
    @_socket
    @_config
    @_lab
    @_node
    @_json
    @click.pass_context
    def wrapper(
        ctx: click.Context,
        socket_path: str | None,
        config: Path | None,
        lab_dir: Path | None,
        node: str | None,
        as_json: bool,
    ) -> None:
        ctx.obj = {"socket": socket_path, "config": config, "lab": lab_dir, "node": node}
        f(ctx, as_json)

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


@click.command(cls=Command)
@_target
def status(ctx: click.Context, as_json: bool) -> None:
    """A node's status: peers, links and pool levels."""
    result = _call(ctx, "status")
    click.echo(json.dumps(result, indent=2) if as_json else node_status(result))


@click.command(cls=Command)
@_target
def peers(ctx: click.Context, as_json: bool) -> None:
    """A node's peers and their session state."""
    result = _call(ctx, "peers")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    rows = [
        [
            p["node_id"],
            p["address"],
            p["state"],
            ago(p["connected_since"] or p.get("down_since")),
            peer_tls(p),
            p.get("down_reason") or "-",
            p["last_error"],
        ]
        for p in result["peers"]
    ]
    heads = ["peer", "address", "state", "since", "tls", "down because", "last error"]
    click.echo(table(heads, rows))


@click.command(cls=Command)
@_target
def links(ctx: click.Context, as_json: bool) -> None:
    """A node's QKD links and end-to-end pools, and their key."""
    result = _call(ctx, "links")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    rows = [
        [
            link["link_id"],
            link["peer"],
            link_driver(link),
            link["driver_state"],
            bits(link["ready_bits"]),
            link["ready_keys"],
            link["unconfirmed_blocks"],
        ]
        for link in result["links"]
    ]
    click.echo(table(["link", "peer", "driver", "state", "ready", "keys", "unconfirmed"], rows))


@click.group(cls=Group)
def config() -> None:
    """Node configuration files."""


@config.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Validate a node config exactly as qkmsd does (exit 0 valid, 2 invalid)."""
    result = subprocess.run(
        [sys.executable, "-m", "qkmsd", "--config", str(file), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    out = (result.stdout or result.stderr).strip().removeprefix("qkmsd: ")
    click.echo(out, err=result.returncode != 0)
    sys.exit(result.returncode)
