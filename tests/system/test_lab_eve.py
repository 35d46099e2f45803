"""``qkmsctl lab eve``: a simulated eavesdropper on a bb84sim link raises qber-high with its
action at both ends, and the alarm clears once she has gone (real daemons)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cli._admin import AdminClient
from cli._lab import Lab
from cli._topology import load_topology

from .test_lab import invoke, wait_until

pytestmark = pytest.mark.system

LINK = "KME_A~KME_B"
# Blocks this small never make key (the finite-key length is negative) but cost little to
# simulate, and their QBER is measured all the same: enough to watch the alarm.
TOPOLOGY = """
name = "eve-test"
[defaults]
driver = "bb84sim"
params = { params = "lim2014", block_bits = 16384 }
[alarms]
hold_down_s = 2.0
[nodes.KME_A]
[nodes.KME_B]
[[links]]
a = "KME_A"
b = "KME_B"
distance_km = 5.0
"""


def qber_alarms(lab: Lab, node: str) -> list[dict[str, Any]]:
    socket = lab.manifest()["kmes"][node]["admin_socket"]
    active = AdminClient(socket, timeout=5.0).call("alarms")["active"]
    return [a for a in active if a["code"] == "qber-high" and a["resource"] == LINK]


def test_an_eavesdropper_raises_qber_high_at_both_ends_and_it_clears_when_she_goes(
    lab: Lab, tmp_path: Path
) -> None:
    topology = tmp_path / "eve.toml"
    topology.write_text(TOPOLOGY)
    lab.up(load_topology(topology))
    result = invoke(
        "lab", "eve", "--dir", str(lab.dir), "KME_A", "KME_B", "intercept-resend=1", "--in", "0"
    )
    assert result.exit_code == 0, result.output
    assert "eavesdropper intercept-resend=1 from" in result.stdout
    for node in ("KME_A", "KME_B"):
        wait_until(
            lambda n=node: bool(qber_alarms(lab, n)), what=f"qber-high at {node}", timeout=60
        )
    [alarm] = qber_alarms(lab, "KME_A")
    assert alarm["severity"] == "major" and alarm["action"] == "stop-link" and alarm["value"] > 0.2
    result = invoke("lab", "eve", "--dir", str(lab.dir), "KME_A", "KME_B", "none", "--in", "0")
    assert result.exit_code == 0, result.output
    for node in ("KME_A", "KME_B"):
        wait_until(
            lambda n=node: not qber_alarms(lab, n), what=f"qber-high cleared at {node}", timeout=60
        )


def test_lab_eve_refuses_a_link_that_simulates_no_photons(lab: Lab) -> None:
    pair = Path(__file__).resolve().parents[2] / "examples" / "pair.toml"
    lab.up(load_topology(pair))
    result = invoke("lab", "eve", "--dir", str(lab.dir), "KME_A", "KME_B", "pns")
    assert result.exit_code != 0 and "only 'bb84sim' links" in result.output
    result = invoke("lab", "eve", "--dir", str(lab.dir), "KME_A", "KME_C", "pns")
    assert result.exit_code != 0 and "no link KME_A~KME_C" in result.output
