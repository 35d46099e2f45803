"""``qkmsctl alarms`` and ``qkmsctl alarm ack|clear|history``: a node's alarms, through its
admin socket; ``alarm history --network``: every node's, from the controller."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._admin import AdminClient
from ._errors import Command, Group
from ._render import ago, table
from .node import _call, _socket_from, _target
from .perf import parse_duration

FOLLOW_POLL_S = 1.0


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


def _history_rows(events: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])),
            e["kind"],
            e["code"],
            e["resource"],
            e["severity"],
            "-" if e["value"] is None else f"{e['value']:g}",
            e.get("by") or "",
        ]
        for e in events
    ]


HISTORY_HEADERS = ["at", "event", "code", "resource", "severity", "value", "by"]


def follow(
    fetch: Callable[[float], list[dict[str, Any]]],
    emit: Callable[[dict[str, Any]], None],
    *,
    since: float,
    pause: Callable[[], None],
    polls: int | None = None,
) -> None:
    """Emit history events as they come, oldest first, each once: ``fetch(since)`` returns
    the events at or after ``since`` (newest first); ``pause`` waits between polls."""
    seen: set[tuple[Any, ...]] = set()
    n = 0
    while polls is None or n < polls:
        n += 1
        events = sorted(fetch(since), key=lambda e: e["at"])
        for event in events:
            key = (event["at"], event["kind"], event["code"], event["resource"], event.get("node"))
            if key in seen:
                continue
            seen.add(key)
            emit(event)
        if events:
            latest = events[-1]["at"]
            seen = {k for k in seen if k[0] >= latest}  # only ties with the newest matter
            since = latest
        pause()


@alarm.command("history", cls=Command)
@click.option("--since", "since_text", default="1h", show_default=True, help="90s, 15m, 1h, 7d")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--follow", "following", is_flag=True, help="keep printing new events (Ctrl-C ends)")
@click.option("--json", "as_json", is_flag=True, help="print JSON (one event a line with --follow)")
@click.option(
    "--network",
    is_flag=True,
    help="every node's events, as the controller keeps them (ask the controller's node)",
)
@click.option("--from", "from_node", metavar="NODE", help="with --network: only NODE's events")
@click.option("--code", help="with --network: only events of this disruption code")
@_where
def alarm_history(
    since_text: str,
    limit: int,
    following: bool,
    as_json: bool,
    network: bool,
    from_node: str | None,
    code: str | None,
    **where: Any,
) -> None:
    """Alarm and fault events since a time, oldest first; --follow streams new ones."""
    if not network and (from_node or code):
        raise click.UsageError("--from and --code go with --network")
    path = _socket_from(where["config"], where["socket_path"], where["lab_dir"], where["node"])
    client = AdminClient(path)
    since = time.time() - parse_duration(since_text)
    filters = {k: v for k, v in (("node", from_node), ("code", code)) if v is not None}

    def fetch(after: float) -> list[dict[str, Any]]:
        if network:
            found = client.call("network_alarms", limit=limit, since=after, **filters)
            events: list[dict[str, Any]] = found["events"]
        else:
            events = client.call("alarms", limit=limit, since=after)["history"]
        return events

    def row(event: dict[str, Any]) -> list[Any]:
        cells = _history_rows([event])[0]
        return [event["node"], *cells] if network else cells

    headers = ["node", *HISTORY_HEADERS] if network else HISTORY_HEADERS
    if not following:
        events = sorted(fetch(since), key=lambda e: e["at"])
        if as_json:
            click.echo(json.dumps(events, indent=2))
        else:
            click.echo(table(headers, [row(e) for e in events]))
        return

    def emit(event: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(event))
        else:
            click.echo("  ".join(str(c) for c in row(event)).rstrip())

    with contextlib.suppress(KeyboardInterrupt):
        follow(fetch, emit, since=since, pause=lambda: time.sleep(FOLLOW_POLL_S))
