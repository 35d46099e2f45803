"""Small helpers the system tests share: waiting on a condition, a node's admin socket, an
SAE's ETSI 014 client in a lab."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
