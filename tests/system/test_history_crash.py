"""The alarm history and the performance history survive ``kill -9`` of their node."""

from __future__ import annotations

from typing import Any

import pytest

from cli._admin import AdminClient, AdminError
from cli._lab import Lab
from cli._topology import load_topology

from .test_lab import PAIR, invoke, wait_exited, wait_until

pytestmark = pytest.mark.system


def call(lab: Lab, node: str, method: str, **params: Any) -> dict[str, Any]:
    socket = lab.manifest()["kmes"][node]["admin_socket"]
    return AdminClient(socket, timeout=5.0).call(method, **params)


def peer_down_events(lab: Lab) -> list[dict[str, Any]]:
    history = call(lab, "KME_A", "alarms", limit=100)["history"]
    return [e for e in history if e["code"] == "peer-down"]


def perf_points(lab: Lab) -> int:
    try:
        series = call(lab, "KME_A", "perf", resource="node", since_s=3600)["series"]
    except AdminError:  # no sample yet
        return 0
    return len(series.get("node", {}).get("open_fds", []))


def test_alarm_and_performance_history_survive_kill_9(lab: Lab) -> None:
    lab.up(load_topology(PAIR))
    wait_until(lambda: perf_points(lab) >= 1, what="KME_A's first performance sample", timeout=40)
    invoke("lab", "kill", "--dir", str(lab.dir), "KME_B")
    wait_until(lambda: len(peer_down_events(lab)) >= 1, what="peer-down raised at KME_A")
    raised = peer_down_events(lab)
    points = perf_points(lab)

    pid = lab.manifest()["kmes"]["KME_A"]["pid"]
    invoke("lab", "kill", "--dir", str(lab.dir), "KME_A")
    wait_exited(pid)
    invoke("lab", "start", "--dir", str(lab.dir), "KME_A")
    wait_until(lambda: _answers(lab), what="KME_A to answer after its restart")

    assert peer_down_events(lab)[-len(raised) :] == raised  # the same events, kept
    active = call(lab, "KME_A", "alarms")["active"]
    assert any(a["code"] == "peer-down" for a in active)  # restored as active at start
    assert perf_points(lab) >= points


def _answers(lab: Lab) -> bool:
    try:
        call(lab, "KME_A", "status")
    except AdminError:
        return False
    return True
