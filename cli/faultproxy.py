"""A loopback fault proxy: forwards TCP between two peers and misbehaves on a schedule.

Run as ``python -m cli.faultproxy`` (``qkmsctl lab up --fault`` starts it for a lab) or
use ``FaultProxy`` in a trio run.  It carries bytes, never looks inside them: TLS passes
through untouched, so a fault that drops, duplicates or reorders bytes corrupts TLS
records, and the expected outcome is that the peers' session fails cleanly and they
reconnect, not that it survives.

Theory of operation
-------------------
Each accepted connection gets a connection to the target and, per direction, a reader
and a writer joined by a queue.  The reader takes what arrives in chunks (one
``receive_some``, up to ``CHUNK`` bytes) and decides each chunk's fate from the
current spec: dropped, sent twice, held back and sent after the next one (reordered),
cut short (truncate), and when it is due (delay, in order).  The writer sends each
chunk when it is due.  A cut closes both sockets of every open connection at once;
``cut`` alone also closes every new connection as soon as it is accepted (a partition).
Changing the spec (``set_spec``) takes effect on the next chunk of every open
connection; it restarts the clock of ``cut@`` and ``cutevery:`` and the random stream.

The spec language: terms separated by commas, each applied to both directions::

    none | pass         forward untouched (the default)
    delay:50ms          hold every chunk this long (order kept)
    drop:0.01           drop each chunk with this probability
    dup:0.01            send each chunk twice with this probability
    reorder:0.01        swap each chunk with the next with this probability
    truncate@4096       forward this many bytes per direction, then close the connection
    cut@5s              close every open connection once, this long after the spec is set
    cutevery:2s         ...and again every this long
    cut                 a partition: close everything now and refuse new connections
    seed:42             seed of the random choices (default 0)

Durations take ``ms`` or ``s`` (a bare number is seconds); sizes take ``k`` or ``M``.
It listens and connects on loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from ._errors import CliError

CHUNK = 4096
"""Most bytes one read takes: the unit a fault applies to."""
LOOPBACK = ("127.0.0.1", "::1", "localhost")
QUEUE = 256
"""Chunks queued per direction before the reader waits (back-pressure)."""


class FaultSpecError(CliError):
    """A fault spec that does not parse; the message names the term and the form."""


@dataclasses.dataclass(frozen=True)
class FaultSpec:
    """What the proxy does to the byte stream (see the module's docstring)."""

    delay_s: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    truncate_at: int | None = None
    cut_at_s: float | None = None
    cut_every_s: float | None = None
    partition: bool = False
    seed: int = 0
    text: str = "none"


_TERM = re.compile(r"^(?P<name>[a-z]+)(?:(?P<sep>[:@])(?P<value>.+))?$")
_DURATION = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]*)?)(?P<unit>ms|s)?$")
_SIZE = re.compile(r"^(?P<num>[0-9]+)(?P<unit>[kM])?$")
_FORMS = (
    "none, delay:50ms, drop:0.01, dup:0.01, reorder:0.01, truncate@4096, cut@5s, "
    "cutevery:2s, cut, seed:42"
)


def parse_spec(text: str) -> FaultSpec:
    """Parse a spec such as ``delay:20ms,drop:0.001,seed:7``.  Raises ``FaultSpecError``."""
    fields: dict[str, Any] = {}
    terms = [t.strip() for t in text.split(",") if t.strip()]
    if not terms:
        raise FaultSpecError(f"empty fault spec (forms: {_FORMS})")
    for term in terms:
        match = _TERM.match(term)
        if match is None:
            raise FaultSpecError(f"fault spec term {term!r} not understood (forms: {_FORMS})")
        name, sep, value = match["name"], match["sep"], match["value"]
        key = (name, sep)
        if key in (("none", None), ("pass", None)):
            continue
        if key == ("cut", None):
            fields["partition"] = True
        elif key == ("delay", ":"):
            fields["delay_s"] = _duration(term, value)
        elif key in (("drop", ":"), ("dup", ":"), ("duplicate", ":"), ("reorder", ":")):
            field = {"dup": "duplicate"}.get(name, name)
            fields[field] = _probability(term, value)
        elif key == ("truncate", "@"):
            fields["truncate_at"] = _size(term, value)
        elif key == ("cut", "@"):
            fields["cut_at_s"] = _duration(term, value)
        elif key == ("cutevery", ":"):
            every = _duration(term, value)
            if every <= 0:
                raise FaultSpecError(f"fault spec term {term!r}: the period must be above 0")
            fields["cut_every_s"] = every
        elif key == ("seed", ":"):
            if not value.isdigit():
                raise FaultSpecError(f"fault spec term {term!r}: the seed is a whole number")
            fields["seed"] = int(value)
        else:
            raise FaultSpecError(f"fault spec term {term!r} not understood (forms: {_FORMS})")
    return FaultSpec(**fields, text=",".join(terms))


def _duration(term: str, value: str) -> float:
    match = _DURATION.match(value)
    if match is None:
        raise FaultSpecError(f"fault spec term {term!r}: a duration is like 50ms or 2s")
    seconds = float(match["num"]) / (1000.0 if match["unit"] == "ms" else 1.0)
    if not math.isfinite(seconds) or seconds > 3600:
        raise FaultSpecError(f"fault spec term {term!r}: at most an hour")
    return seconds


def _probability(term: str, value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if not 0.0 <= p <= 1.0:
        raise FaultSpecError(f"fault spec term {term!r}: a probability is from 0 to 1")
    return p


def _size(term: str, value: str) -> int:
    match = _SIZE.match(value)
    if match is None:
        raise FaultSpecError(f"fault spec term {term!r}: a size is like 4096, 64k or 1M")
    return int(match["num"]) * {None: 1, "k": 1024, "M": 1 << 20}[match["unit"]]


@dataclasses.dataclass
class FaultStatistics:
    """What the proxy has done since it started (all connections, both directions)."""

    connections: int = 0
    refused: int = 0
    """Connections closed on accept by a partition, or whose target did not answer."""
    bytes_in: int = 0
    bytes_out: int = 0
    chunks: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    truncated: int = 0
    cuts: int = 0
    """Connections closed by ``cut``, ``cut@``, ``cutevery:`` or a partition."""

    def faults(self) -> int:
        """Faults injected: chunks dropped, duplicated, reordered, truncations and cuts."""
        return self.dropped + self.duplicated + self.reordered + self.truncated + self.cuts


class _Connection:
    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope


class FaultProxy:
    """Forwards connections on a loopback port to ``target``, applying a ``FaultSpec``."""

    def __init__(
        self,
        target: tuple[str, int],
        spec: FaultSpec | None = None,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        name: str = "proxy",
    ) -> None:
        for host in (target[0], listen[0]):
            if host not in LOOPBACK:
                raise FaultSpecError(f"fault proxy {name}: {host} is not a loopback address")
        self.name = name
        self.target = target
        self.listen = listen
        self.port: int | None = None
        self.stats = FaultStatistics()
        self._open: set[_Connection] = set()
        self._spec = FaultSpec()
        self._rng = random.Random(0)
        self._changed = trio.Event()
        self._set_at = 0.0
        if spec is not None:
            self._spec, self._rng = spec, random.Random(spec.seed)

    @property
    def spec(self) -> FaultSpec:
        return self._spec

    def set_spec(self, spec: FaultSpec) -> None:
        """Apply ``spec`` from now on, to open connections too (see the module docstring)."""
        self._spec = spec
        self._rng = random.Random(spec.seed)
        self._set_at = trio.current_time()
        self._changed.set()
        self._changed = trio.Event()
        if spec.partition:
            self.cut()

    def cut(self) -> int:
        """Close every open connection now.  Returns how many."""
        for conn in list(self._open):
            conn.scope.cancel()
        self.stats.cuts += len(self._open)
        return len(self._open)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and forward until cancelled.  ``task_status.started(port)`` once listening."""
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = int(listeners[0].socket.getsockname()[1])
        self._set_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cutter)
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.port)

    async def _cutter(self) -> None:
        """Runs ``cut@`` and ``cutevery:`` against the clock of the current spec."""
        while True:
            spec, changed = self._spec, self._changed
            first = spec.cut_at_s if spec.cut_at_s is not None else spec.cut_every_s
            if first is None:
                await changed.wait()
                continue
            due = self._set_at + first
            while True:
                with trio.move_on_at(due):
                    await changed.wait()
                if changed.is_set():
                    break
                self.cut()
                if spec.cut_every_s is None:
                    await changed.wait()
                    break
                due += spec.cut_every_s

    async def _serve(self, client: trio.SocketStream) -> None:
        self.stats.connections += 1
        if self._spec.partition:
            self.stats.refused += 1
            self.stats.cuts += 1
            await trio.aclose_forcefully(client)
            return
        conn = _Connection(trio.CancelScope())
        self._open.add(conn)  # from now on a cut closes it, the dial to the target included
        server: trio.SocketStream | None = None
        try:
            with conn.scope:
                try:
                    server = await trio.open_tcp_stream(*self.target)
                except OSError:
                    self.stats.refused += 1
                    return
                async with trio.open_nursery() as nursery:
                    done = [0]
                    nursery.start_soon(self._direction, client, server, nursery, done)
                    nursery.start_soon(self._direction, server, client, nursery, done)
        finally:
            self._open.discard(conn)
            for stream in (client, server):
                if stream is not None:
                    await trio.aclose_forcefully(_linger0(stream))

    async def _direction(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        nursery: trio.Nursery,
        done: list[int],
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](QUEUE)
        async with trio.open_nursery() as inner:
            inner.start_soon(self._writer, sink, receive)
            async with send:
                ended = await self._reader(source, send)
        if ended != "eof":  # truncated, or the socket broke: the whole connection goes
            nursery.cancel_scope.cancel()
            return
        # One side finished sending: pass the half-close on, and end with the other side.
        try:
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            nursery.cancel_scope.cancel()
        done[0] += 1
        if done[0] == 2:
            nursery.cancel_scope.cancel()

    async def _reader(
        self, source: trio.SocketStream, send: trio.MemorySendChannel[tuple[float, bytes]]
    ) -> str:
        try:
            return await self._read_chunks(source, send)
        except trio.BrokenResourceError:  # the writer's socket broke: so does the connection
            return "closed"

    async def _read_chunks(
        self, source: trio.SocketStream, send: trio.MemorySendChannel[tuple[float, bytes]]
    ) -> str:
        forwarded = 0
        held: bytes | None = None
        while True:
            try:
                data = await source.receive_some(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return "closed"
            if not data:
                if held is not None:
                    await send.send((trio.current_time(), held))
                return "eof"
            spec, rng = self._spec, self._rng
            self.stats.bytes_in += len(data)
            self.stats.chunks += 1
            data = bytes(data)
            if spec.drop and rng.random() < spec.drop:
                self.stats.dropped += 1
                continue
            truncated = False
            if spec.truncate_at is not None and forwarded + len(data) >= spec.truncate_at:
                data = data[: max(0, spec.truncate_at - forwarded)]
                truncated = True
            copies = [data]
            if spec.duplicate and rng.random() < spec.duplicate:
                self.stats.duplicated += 1
                copies.append(data)
            if held is None and spec.reorder and not truncated and rng.random() < spec.reorder:
                self.stats.reordered += 1
                held = data
                continue
            if held is not None:
                copies.append(held)
                held = None
            due = trio.current_time() + spec.delay_s
            if spec.delay_s:
                self.stats.delayed += 1
            for chunk in copies:
                forwarded += len(chunk)
                await send.send((due, chunk))
            if truncated:
                self.stats.truncated += 1
                return "truncated"

    async def _writer(
        self, sink: trio.SocketStream, receive: trio.MemoryReceiveChannel[tuple[float, bytes]]
    ) -> None:
        async with receive:
            async for due, chunk in receive:
                await trio.sleep_until(due)
                try:
                    await sink.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                self.stats.bytes_out += len(chunk)


def _linger0(stream: trio.SocketStream) -> trio.SocketStream:
    """Close with a reset, as a cut link looks to the peers, not with a polite FIN."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
    except OSError:
        pass
    return stream


# --- the program: several routes, a control socket ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Route:
    """One proxied pair: ``name`` (e.g. ``KME1-KME2``) listening on ``listen``."""

    name: str
    listen: tuple[str, int]
    target: tuple[str, int]
    spec: FaultSpec


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9000`` or ``[::1]:9000``.  Raises ``FaultSpecError``."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or host not in LOOPBACK:
        raise FaultSpecError(f"address {text!r}: expected a loopback HOST:PORT")
    return host, int(port)


async def serve(
    routes: Sequence[Route],
    control: Path | None,
    *,
    task_status: trio.TaskStatus[dict[str, FaultProxy]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one proxy per route and, if ``control`` is given, answer on that Unix socket.

    The control protocol is one JSON line in, one JSON line out:
    ``{"route": "A-B", "spec": "drop:0.01"}`` sets a spec (``"route": "*"`` sets it on
    every route), ``{"stats": true}`` returns every route's spec and counts.
    """
    proxies = {r.name: FaultProxy(r.target, r.spec, listen=r.listen, name=r.name) for r in routes}
    async with trio.open_nursery() as nursery:
        for proxy in proxies.values():
            await nursery.start(proxy.run)
        if control is not None:
            await nursery.start(_control, control, proxies)
        task_status.started(proxies)


async def _control(
    path: Path, proxies: dict[str, FaultProxy], *, task_status: trio.TaskStatus[None]
) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            with trio.move_on_after(5):
                while b"\n" not in data and len(data) < 65536:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
            reply = control_request(proxies, data.split(b"\n", 1)[0])
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, answer, [listener])
        task_status.started()


def control_request(proxies: dict[str, FaultProxy], line: bytes) -> dict[str, Any]:
    """Answer one control request (see ``serve``); errors are answers, never exceptions."""
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        if request.get("stats"):
            return {"ok": True, "routes": {n: describe(p) for n, p in proxies.items()}}
        route, text = request.get("route"), request.get("spec")
        if not isinstance(route, str) or not isinstance(text, str):
            raise ValueError('expected {"route": NAME, "spec": SPEC} or {"stats": true}')
        spec = parse_spec(text)
        chosen = list(proxies) if route == "*" else [route]
        for name in chosen:
            if name not in proxies:
                known = ", ".join(sorted(proxies)) or "none"
                raise ValueError(f"no fault proxy on {name} (proxied: {known})")
        for name in chosen:
            proxies[name].set_spec(spec)
        return {"ok": True, "routes": {n: describe(proxies[n]) for n in chosen}}
    except (ValueError, FaultSpecError) as exc:
        return {"ok": False, "error": str(exc)}


def describe(proxy: FaultProxy) -> dict[str, Any]:
    """A route as the control socket shows it: spec, addresses and counts."""
    return {
        "spec": proxy.spec.text,
        "listen": f"{proxy.listen[0]}:{proxy.port}",
        "target": f"{proxy.target[0]}:{proxy.target[1]}",
        "open": len(proxy._open),
        **dataclasses.asdict(proxy.stats),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cli.faultproxy",
        description="Loopback TCP proxy that drops, delays, duplicates, reorders, "
        "truncates and cuts the byte stream on a schedule.",
    )
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="NAME=LISTEN>TARGET",
        help="e.g. KME1-KME2=127.0.0.1:9100>127.0.0.1:9001 (repeatable)",
    )
    parser.add_argument(
        "--spec", action="append", default=[], metavar="NAME=SPEC", help="a route's faults"
    )
    parser.add_argument("--control", type=Path, help="Unix socket to change specs at run time")
    args = parser.parse_args(argv)
    try:
        specs = {}
        for item in args.spec:
            name, _, text = item.partition("=")
            specs[name] = parse_spec(text)
        routes = []
        for item in args.route:
            name, _, rest = item.partition("=")
            listen, sep, target = rest.partition(">")
            if not name or not sep:
                raise FaultSpecError(f"--route {item!r}: expected NAME=LISTEN>TARGET")
            spec = specs.pop(name, FaultSpec())
            routes.append(Route(name, parse_address(listen), parse_address(target), spec))
        if specs:
            raise FaultSpecError(f"--spec for unknown route(s): {', '.join(sorted(specs))}")
        if not routes:
            raise FaultSpecError("no --route given")
    except FaultSpecError as exc:
        print(f"faultproxy: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(serve, routes, args.control)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"faultproxy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
