"""Network namespaces for the lab: one per node, one veth pair per pair of nodes that talk.

Theory of operation
-------------------
``qkmsctl lab up --netns`` puts every node in a network namespace of its own, named
``qkms-<lab>-<n>`` (``<lab>``: 8 hex digits of the lab directory's path, so that two labs
never share a name; ``<n>``: the node's index in sorted order).  Every pair of nodes that
talk (QKD neighbours, the two ends of an end-to-end pool, eligible controller nodes) gets
its own veth pair: one end in each namespace, named ``qk<index of the other node>``, with
the two addresses of a /30 of 10.200.0.0/16 (the pair's index times four, plus 1 and 2).
The addresses exist only inside the lab's namespaces: nothing is added to the root
namespace, so they cannot clash with the host's networks.  Each node listens on all
addresses of its namespace and dials a peer at the peer's end of their veth pair.

``cut A B`` sets both ends of the A-B pair down: every packet between A and B vanishes
(the kernel drops the routes over the link, so nothing is sent and nothing is answered),
no connection is closed, and no other pair notices.  ``heal A B`` sets them up again; the
kernel puts the routes back and TCP retransmits what was queued.  No netem, no firewall:
the kernel the lab runs on need have neither.

Each namespace's loopback is up, so a node's API, metrics and dashboard listen on
127.0.0.1 *inside* its namespace (reach them with ``ip netns exec NS ...``).  The admin
sockets are files, so ``qkmsctl`` reaches them from anywhere.

``down`` deletes every namespace whose name starts with the lab's prefix, whether or not
``lab.json`` lists it: a lab that crashed half-way is cleaned up by the next ``down``.

This module only plans and runs ``ip`` commands; ``cli/_lab.py`` calls it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ._errors import CliError

NET = ipaddress.IPv4Network("10.200.0.0/16")
"""Where the veth pairs' /30s come from (inside the lab's namespaces only)."""
MAX_PAIRS = NET.num_addresses // 4

Run = Callable[[Sequence[str]], None]


class NetnsError(CliError):
    """A namespace operation failed; the message names the command and the fix."""


@dataclasses.dataclass(frozen=True)
class Veth:
    """One veth pair: end ``dev_a`` (address ``addr_a``) in ``a``'s namespace, and so on."""

    a: str
    b: str
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str
    prefix_len: int = 30


@dataclasses.dataclass(frozen=True)
class NetnsPlan:
    """The namespaces and veth pairs of one lab."""

    prefix: str
    """Every namespace of this lab is named with it; ``down`` deletes what starts with it."""
    namespaces: dict[str, str]
    """Node id -> namespace name."""
    veths: list[Veth]

    def veth(self, a: str, b: str) -> Veth:
        """The pair between ``a`` and ``b``.  Raises ``NetnsError`` if they do not talk."""
        for veth in self.veths:
            if {veth.a, veth.b} == {a, b}:
                return veth
        raise NetnsError(f"nodes {a} and {b} have no link in this lab (they never talk)")

    def address_of(self, peer: str, *, seen_from: str) -> str:
        """``peer``'s address on its veth pair with ``seen_from``."""
        veth = self.veth(peer, seen_from)
        return veth.addr_a if veth.a == peer else veth.addr_b

    def exec_prefix(self, node: str) -> list[str]:
        """The command prefix that runs a program in ``node``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[node]]

    def up_commands(self) -> list[list[str]]:
        """The ``ip`` commands that make the namespaces and pairs, in order."""
        out: list[list[str]] = []
        for ns in self.namespaces.values():
            out.append(["ip", "netns", "add", ns])
            out.append(["ip", "-n", ns, "link", "set", "lo", "up"])
        for v in self.veths:
            ns_a, ns_b = self.namespaces[v.a], self.namespaces[v.b]
            out.append(
                ["ip", "-n", ns_a, "link", "add", v.dev_a, "type", "veth"]
                + ["peer", "name", v.dev_b, "netns", ns_b]
            )
            out.append(["ip", "-n", ns_a, "addr", "add", f"{v.addr_a}/{v.prefix_len}"])
            out[-1] += ["dev", v.dev_a]
            out.append(["ip", "-n", ns_b, "addr", "add", f"{v.addr_b}/{v.prefix_len}"])
            out[-1] += ["dev", v.dev_b]
            out += self._set(v, "up")
        return out

    def cut_commands(self, a: str, b: str) -> list[list[str]]:
        """Both ends of the ``a``-``b`` pair down: their packets vanish, nothing closes."""
        return self._set(self.veth(a, b), "down")

    def heal_commands(self, a: str, b: str) -> list[list[str]]:
        """Both ends of the ``a``-``b`` pair up again."""
        return self._set(self.veth(a, b), "up")

    def _set(self, v: Veth, state: str) -> list[list[str]]:
        return [
            ["ip", "-n", self.namespaces[v.a], "link", "set", v.dev_a, state],
            ["ip", "-n", self.namespaces[v.b], "link", "set", v.dev_b, state],
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "namespaces": dict(self.namespaces),
            "veths": [dataclasses.asdict(v) for v in self.veths],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetnsPlan:
        return cls(
            prefix=str(data["prefix"]),
            namespaces={str(k): str(v) for k, v in data["namespaces"].items()},
            veths=[Veth(**v) for v in data["veths"]],
        )


def lab_prefix(lab_dir: Path) -> str:
    """The namespace name prefix of the lab in ``lab_dir`` (stable for that path)."""
    digest = hashlib.sha256(str(lab_dir.resolve()).encode()).hexdigest()[:8]
    return f"qkms-{digest}-"


def plan(lab_dir: Path, nodes: Sequence[str], pairs: Iterable[tuple[str, str]]) -> NetnsPlan:
    """The namespaces of ``nodes`` and a veth pair for each of ``pairs`` (either order)."""
    order = sorted(nodes)
    index = {node: i for i, node in enumerate(order)}
    prefix = lab_prefix(lab_dir)
    unique = sorted({tuple(sorted(pair)) for pair in pairs if pair[0] != pair[1]})
    if len(unique) > MAX_PAIRS:
        raise NetnsError(f"{len(unique)} node pairs talk; a netns lab has room for {MAX_PAIRS}")
    veths = []
    for p, (a, b) in enumerate(unique):
        if a not in index or b not in index:
            raise NetnsError(f"pair {a}-{b} names a node that is not in the lab")
        base = int(NET.network_address) + 4 * p
        veths.append(
            Veth(
                a=a,
                b=b,
                dev_a=f"qk{index[b]}",
                dev_b=f"qk{index[a]}",
                addr_a=str(ipaddress.IPv4Address(base + 1)),
                addr_b=str(ipaddress.IPv4Address(base + 2)),
            )
        )
    return NetnsPlan(prefix, {node: f"{prefix}{index[node]}" for node in order}, veths)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"qkms-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        reason = made.stderr.strip() or f"exit status {made.returncode}"
        return f"`ip netns add` fails ({reason}); it needs root (CAP_SYS_ADMIN)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run_ip(command: Sequence[str]) -> None:
    """Run one ``ip`` command.  Raises ``NetnsError`` with its stderr if it fails."""
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")


def apply(commands: Iterable[Sequence[str]], run: Run = run_ip) -> None:
    for command in commands:
        run(command)


def existing(prefix: str) -> list[str]:
    """The namespaces whose names start with ``prefix``."""
    if shutil.which("ip") is None:
        return []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(prefix))


def remove(prefix: str, run: Run = run_ip) -> list[str]:
    """Delete every namespace of the lab with ``prefix`` (veth pairs go with them)."""
    gone = existing(prefix)
    for ns in gone:
        run(["ip", "netns", "del", ns])
    return gone
