"""Helpers for the controller scenarios in a lab of real ``qkmsd`` subprocesses.

- ``SaePair``: a master SAE asks its KME for keys in a closed loop and its slave fetches
  each one by id from its own KME, on a thread of the test process.  In a ``--netns`` lab
  the thread enters each KME's network namespace before each call (``setns(2)`` changes
  the calling thread only, and a socket stays in the namespace it was made in), so one
  thread reaches both APIs, which listen on 127.0.0.1 inside their namespaces.  It records
  when the slave got each key and checks the two copies agree; key material and key ids
  are never printed.
- Reading who holds the controller role (admin ``controller``) and waiting on a condition
  with a deadline that fails the test.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cli._admin import AdminClient, AdminError
from cli._lab import Lab
from qkms_client import Etsi014Client, Etsi014Error

from .labkit import Workers

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace ``name`` (``ip netns`` name)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Poll ``probe`` until it returns something other than None or False; fail the test
    (``AssertionError`` naming ``what``) if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def admin(lab: Lab, node: str, method: str, **params: Any) -> dict[str, Any] | None:
    """One admin call, or None if the node does not answer (down, or refusing)."""
    try:
        return AdminClient(lab.admin_socket(node), timeout=5.0).call(method, **params)
    except AdminError:
        return None


def controller_views(lab: Lab, nodes: list[str]) -> dict[str, dict[str, Any]]:
    """``qkmsctl controller`` of each node that answers."""
    views = {}
    for node in nodes:
        view = admin(lab, node, "controller")
        if view is not None:
            views[node] = view
    return views


def leaders(views: dict[str, dict[str, Any]]) -> list[str]:
    """The nodes that say they hold the role now (leader with lease left)."""
    return sorted(
        n for n, v in views.items() if v.get("role") == "leader" and v.get("lease_left_s")
    )


def agreed_leader(lab: Lab, nodes: list[str]) -> tuple[str, int] | None:
    """``(leader, term)`` if exactly one of ``nodes`` holds the role and every one of
    them follows it in that term; else None."""
    views = controller_views(lab, nodes)
    if set(views) != set(nodes):
        return None
    holding = leaders(views)
    if len(holding) != 1:
        return None
    leader = holding[0]
    term = views[leader]["term"]
    for view in views.values():
        if view.get("controller") != leader or view.get("term") != term:
            return None
    return leader, int(term)


def confirmed_relay(lab: Lab, source: str, path: list[str], since: float) -> float | None:
    """When ``source`` confirmed its first relay over exactly ``path`` (a whole key, not a
    share) that started at or after ``since`` (wall clock), or None."""
    answer = admin(lab, source, "relays")
    if answer is None:
        return None
    ends = [
        r["ended_at"]
        for r in answer["relays"]
        if r["role"] == "source"
        and r["state"] == "confirmed"
        and "#" not in r["relay_id"]
        and r["path"] == path
        and r["started_at"] >= since
        and r["ended_at"] is not None
    ]
    return min(ends) if ends else None


class SaePair(Workers):
    """``master`` gets keys for ``slave`` in a closed loop; ``slave`` fetches each by id.

    ``delivered`` holds the wall-clock times at which the slave got a key the master got
    (both copies equal), ``asked`` the times the master asked for each of them;
    ``mismatches`` counts keys the two got differently and
    ``repeated`` key ids handed out twice (both must stay 0).
    """

    join_s = 15.0

    def __init__(self, lab: Lab, master: str, slave: str) -> None:
        super().__init__([()], name=f"sae-{master}")
        manifest = lab.manifest()
        self._ends = []
        for sae in (master, slave):
            entry = manifest["saes"][sae]
            kme = manifest["kmes"][entry["kme"]]
            self._ends.append((sae, kme.get("netns"), kme["url"], entry))
        self._ca = manifest["ca"]
        self.delivered: list[float] = []
        self.asked: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self.mismatches = 0
        self.repeated = 0
        self._ids: set[str] = set()

    def since(self, t: float) -> list[float]:
        return [x for x in list(self.delivered) if x >= t]

    def first_since(self, t: float) -> float | None:
        """When the slave got the first key the master asked for at or after ``t``."""
        pairs = list(zip(list(self.asked), list(self.delivered), strict=False))
        return next((got for asked, got in pairs if asked >= t), None)

    def flowing(self) -> bool:
        """Keys arrived in the last 2 s, the newest within the last 0.5 s."""
        now = time.time()
        recent = self.since(now - 2.0)
        return len(recent) >= 3 and now - recent[-1] < 0.5

    def _client(self, end: tuple[str, str | None, str, dict[str, Any]]) -> Etsi014Client:
        _, _, url, entry = end
        return Etsi014Client(url, ca=self._ca, cert=entry["cert"], key=entry["key"], timeout=5.0)

    def work(self) -> None:
        (master, master_ns, _, _), (slave, slave_ns, _, _) = self._ends
        clients = [self._client(end) for end in self._ends]
        try:
            while not self.stop.is_set():
                asked = time.time()
                try:
                    if master_ns:
                        enter_netns(master_ns)
                    (key,) = clients[0].get_key(slave)
                    if key.key_id in self._ids:
                        self.repeated += 1
                    self._ids.add(key.key_id)
                    digest = hashlib.sha256(key.key).digest()
                    if slave_ns:
                        enter_netns(slave_ns)
                    (copy,) = clients[1].get_key_with_ids(master, [key.key_id])
                    if hashlib.sha256(copy.key).digest() != digest:
                        self.mismatches += 1
                    else:
                        self.asked.append(asked)
                        self.delivered.append(time.time())
                except Etsi014Error as exc:
                    self.errors.append((time.time(), type(exc).__name__))
                    self.stop.wait(0.05)
        finally:
            for client in clients:
                client.close()
