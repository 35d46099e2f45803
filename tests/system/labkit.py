"""Small helpers the system tests share: waiting on a condition, a node's admin socket, an
SAE's ETSI 014 client in a lab, background traffic threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

from cli._admin import AdminClient
from cli._lab import Lab
from qkms_client import Etsi014Client

WAIT_S = 30.0


def wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = WAIT_S) -> None:
    """Poll ``predicate`` every 0.1 s until it holds; ``AssertionError`` naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def admin(lab: Lab, node: str, method: str, **params: Any) -> dict[str, Any]:
    """One admin call to a lab node.  Raises ``AdminError``."""
    return AdminClient(lab.admin_socket(node), timeout=15.0).call(method, **params)


def client(manifest: dict[str, Any], sae: str, *, timeout: float = 10.0) -> Etsi014Client:
    """An ETSI 014 client for ``sae`` at its own KME, as the lab's manifest describes it."""
    entry = manifest["saes"][sae]
    return Etsi014Client(
        manifest["kmes"][entry["kme"]]["url"],
        ca=manifest["ca"],
        cert=entry["cert"],
        key=entry["key"],
        timeout=timeout,
    )


class Workers:
    """Threads that load a lab while the test kills, cuts and heals it.

    Each thread runs ``work(*job)`` for one of ``jobs`` until ``stop`` is set (``work``
    loops on ``stop``). Leaving the ``with`` block sets ``stop`` and joins them: a thread
    still running ``join_s`` seconds later fails the test, and so does the first exception
    a thread raised (an assertion on what an SAE got, say), re-raised in the test's thread.
    """

    join_s = 30.0

    def __init__(self, jobs: Sequence[tuple[Any, ...]], *, name: str) -> None:
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._guarded, args=job, name=f"{name}-{i}", daemon=True)
            for i, job in enumerate(jobs)
        ]

    def work(self, *job: Any) -> None:
        raise NotImplementedError

    def _guarded(self, *job: Any) -> None:
        try:
            self.work(*job)
        except BaseException as exc:  # handed to the test's thread at exit
            self.failures.append(exc)

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.join_s)
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"{', '.join(alive)} did not stop within {self.join_s:g} s"
        if self.failures:
            raise self.failures[0]
