"""``qkmsctl alarms`` and ``qkmsctl alarm ack|clear``: a node's alarms, through its admin
socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._admin import AdminClient
from ._errors import Command, Group
from ._render import ago, table
from .node import _call, _socket_from, _target


def alarms_report(result: dict[str, Any]) -> str:
    """The ``alarms`` answer: active alarms, then the newest history events."""
    active = table(
        ["severity", "code", "resource", "value", "raised", "ack", "action"],
        [
            [
                a["severity"],
                a["code"],
                a["resource"],
                "-" if a["value"] is None else f"{a['value']:g}",
                ago(a["raised_at"]),
                "yes" if a["acknowledged"] else "no",
                a["action"],
            ]
            for a in result["active"]
        ],
    )
    history = table(
        ["when", "event", "code", "resource", "severity", "value"],
        [
            [
                ago(e["at"]),
                e["kind"],
                e["code"],
                e["resource"],
                e["severity"],
                "-" if e["value"] is None else f"{e['value']:g}",
            ]
            for e in result["history"]
        ],
    )
    count = len(result["active"])
    return f"{count} active alarm(s)\n{active}\n\nhistory (newest first)\n{history}"


@click.command(cls=Command)
@_target
def alarms(ctx: click.Context, as_json: bool) -> None:
    """A node's active alarms and their recent history (X.733 severities)."""
    result = _call(ctx, "alarms")
    click.echo(json.dumps(result, indent=2) if as_json else alarms_report(result))


@click.group(cls=Group)
def alarm() -> None:
    """Act on one alarm: acknowledge it, or clear one that waits for an operator."""


def _act(method: str, code: str, resource: str, where: dict[str, Any]) -> dict[str, Any]:
    path = _socket_from(where["config"], where["socket_path"], where["lab_dir"], where["node"])
    return AdminClient(path).call(method, code=code, resource=resource)


def _where(f: Any) -> Any:
    for option in (
        click.option("--socket", "socket_path", help="the node's admin socket"),
        click.option(
            "--config",
            type=click.Path(dir_okay=False, path_type=Path),
            help="read the socket path from this node config",
        ),
        click.option(
            "--lab",
            "lab_dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="a lab directory; with --node",
        ),
        click.option("--node", help="the lab node; with --lab"),
    ):
        f = option(f)
    return f


@alarm.command("ack")
@click.argument("code")
@click.argument("resource")
@_where
def alarm_ack(code: str, resource: str, **where: Any) -> None:
    """Acknowledge alarm CODE on RESOURCE (it stays active until its cause goes)."""
    _act("alarm_ack", code, resource, where)
    click.echo(f"acknowledged {code} on {resource}")


@alarm.command("clear")
@click.argument("code")
@click.argument("resource")
@_where
def alarm_clear(code: str, resource: str, **where: Any) -> None:
    """Clear alarm CODE on RESOURCE by hand (for alarms latched until an operator clears)."""
    _act("alarm_clear", code, resource, where)
    click.echo(f"cleared {code} on {resource}")
