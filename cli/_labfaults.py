"""Fault proxies in a lab: misbehaving links between chosen nodes, changed at run time.

``qkmsctl lab up --fault KME1-KME2=SPEC`` (``all=SPEC`` for every peer session) puts a
``cli.faultproxy`` route on that peer session: of the two nodes, the lower id dials (the
peer manager's rule), so its config names the proxy's port as the other's address, and
the proxy forwards to the other's real peer port.  One proxy process serves every route of
a lab and listens on ``D/faults.sock`` for changes: ``qkmsctl lab fault A B SPEC``,
``lab partition GROUP GROUP`` (every proxied session between the groups cut) and
``lab heal``.  Everything listens and connects on loopback.

``lab.json`` keeps the proxy under ``"faults"``: its pid, control socket, log, and per
route the listening and target addresses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._errors import CliError
from ._topology import Topology
from .faultproxy import FaultSpecError, parse_spec

START_TIMEOUT_S = 10.0


class LabFaultError(CliError):
    """A fault option or command the lab cannot carry out; the message says why."""


def session_pairs(topo: Topology) -> list[tuple[str, str]]:
    """Every pair of nodes with a peer session in the lab, each sorted (see
    ``_lab.talking_pairs``)."""
    from ._lab import talking_pairs  # _lab calls into this module: import when used

    return talking_pairs(topo)


def parse_pair(text: str, pairs: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """``KME1-KME2`` (either order) as one of ``pairs``; node ids may hold ``-`` too."""
    known = set(pairs)
    for i, char in enumerate(text):
        if char != "-":
            continue
        a, b = text[:i], text[i + 1 :]
        pair = (min(a, b), max(a, b))
        if pair in known:
            return pair
    names = ", ".join(f"{a}-{b}" for a, b in sorted(known)) or "none"
    raise LabFaultError(f"{text!r} is not a pair of nodes with a peer session (pairs: {names})")


def parse_fault_options(
    options: Sequence[str], pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """``--fault PAIR=SPEC`` options (``all=SPEC`` for every pair) to a spec per pair."""
    out: dict[tuple[str, str], str] = {}
    for option in options:
        name, sep, spec = option.partition("=")
        if not sep:
            raise LabFaultError(f"--fault {option!r}: expected PAIR=SPEC, e.g. KME1-KME2=drop:0.01")
        try:
            parse_spec(spec)
        except FaultSpecError as exc:
            raise LabFaultError(f"--fault {option!r}: {exc}") from None
        chosen = list(pairs) if name == "all" else [parse_pair(name, pairs)]
        for pair in chosen:
            out[pair] = spec
    return out


def route_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-{pair[1]}"


def plan(
    faults: Mapping[tuple[str, str], str],
    peer_ports: Mapping[str, int],
    proxy_ports: Sequence[int],
    sessions: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The proxy's routes: for each pair, a port of ``proxy_ports`` in front of the higher
    id's peer port (the lower id dials).  Returns the manifest's ``"faults"`` entry."""
    routes = {}
    for (a, b), port in zip(sorted(faults), proxy_ports, strict=True):
        routes[route_name((a, b))] = {
            "dialer": a,
            "listen": f"127.0.0.1:{port}",
            "target": f"127.0.0.1:{peer_ports[b]}",
            "spec": faults[(a, b)],
        }
    return {"pid": None, "routes": routes, "sessions": [route_name(p) for p in sessions]}


def dial_addresses(entry: Mapping[str, Any] | None) -> dict[tuple[str, str], str]:
    """(dialer, peer) -> the address the dialer's config names for the peer: the proxy."""
    if not entry:
        return {}
    out = {}
    for name, route in entry["routes"].items():
        a = route["dialer"]
        b = name[len(a) + 1 :]
        out[(a, b)] = route["listen"]
    return out


def start(lab_dir: Path, entry: dict[str, Any]) -> None:
    """Start the lab's proxy process for ``entry``'s routes; fills in pid, control, log."""
    control = lab_dir / "faults.sock"
    log_path = lab_dir / "faultproxy.log"
    command = [sys.executable, "-m", "cli.faultproxy", "--control", str(control)]
    for name, route in entry["routes"].items():
        command += ["--route", f"{name}={route['listen']}>{route['target']}"]
        command += ["--spec", f"{name}={route['spec']}"]
    control.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    entry.update(pid=proc.pid, control=str(control), log=str(log_path))
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            request(entry, {"stats": True})
            return
        except LabFaultError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(entry)
                tail = log_path.read_text(errors="replace")[-2000:]
                raise LabFaultError(f"the fault proxy did not start:\n{tail}") from None
            time.sleep(0.05)


def stop(entry: Mapping[str, Any] | None) -> bool:
    """Stop the lab's proxy process, if it runs.  Returns whether it did."""
    if not entry or not entry.get("pid"):
        return False
    pid = int(entry["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if b"cli.faultproxy" not in cmdline:  # a recycled pid
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 5.0
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return True


def request(entry: Mapping[str, Any] | None, message: Mapping[str, Any]) -> dict[str, Any]:
    """One control request to the lab's proxy; its answer.  Raises ``LabFaultError``."""
    if not entry or not entry.get("control"):
        raise LabFaultError("this lab has no fault proxy (start it with `lab up --fault ...`)")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(entry["control"])
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise LabFaultError(f"fault proxy at {entry['control']}: {exc}") from None
    try:
        answer: dict[str, Any] = json.loads(data)
    except ValueError:
        raise LabFaultError(f"fault proxy at {entry['control']}: no answer") from None
    if not answer.get("ok"):
        raise LabFaultError(f"fault proxy: {answer.get('error', 'refused')}")
    return answer


def set_fault(entry: Mapping[str, Any] | None, a: str, b: str, spec: str) -> dict[str, Any]:
    """Change the spec of the route between ``a`` and ``b``; the route's state after."""
    routes = (entry or {}).get("routes", {})
    name = route_name((min(a, b), max(a, b)))
    if name not in routes:
        proxied = ", ".join(sorted(routes)) or "none"
        raise LabFaultError(
            f"no fault proxy between {a} and {b} (proxied: {proxied}); put one there with"
            f" `lab up --fault {name}=none`"
        )
    answer = request(entry, {"route": name, "spec": spec})
    return dict(answer["routes"][name])


def partition(
    entry: Mapping[str, Any] | None, left: Sequence[str], right: Sequence[str]
) -> list[str]:
    """Cut every proxied session between ``left`` and ``right``; the routes cut.  Refuses
    (cutting nothing) when a session between them has no proxy."""
    routes = (entry or {}).get("routes", {})
    if set(left) & set(right):
        raise LabFaultError(f"a node cannot be on both sides: {sorted(set(left) & set(right))}")
    sessions = set((entry or {}).get("sessions", routes))
    crossing = [
        route_name((min(a, b), max(a, b)))
        for a in left
        for b in right
        if route_name((min(a, b), max(a, b))) in sessions
    ]
    bare = sorted(set(crossing) - set(routes))
    if bare:
        raise LabFaultError(
            f"sessions {', '.join(bare)} have no fault proxy: start the lab with"
            " `lab up --fault all=none` to partition it"
        )
    chosen = sorted(crossing)
    if not chosen:
        raise LabFaultError("no peer session joins the two groups")
    for name in chosen:
        request(entry, {"route": name, "spec": "cut"})
    return chosen


def heal(entry: Mapping[str, Any] | None) -> list[str]:
    """Every route back to ``none``; the routes."""
    answer = request(entry, {"route": "*", "spec": "none"})
    return sorted(answer["routes"])
