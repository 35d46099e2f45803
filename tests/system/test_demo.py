"""``qkmsctl demo`` end to end on the paper's 3-node line, then the relay commands against
the lab it leaves running."""

from __future__ import annotations

import json
import re
import time

import pytest
from click.testing import CliRunner, Result

from cli._lab import Lab
from cli.main import qkmsctl

pytestmark = pytest.mark.system


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(qkmsctl, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 0, result.output
    return result


def test_demo_relays_key_to_sae1_and_sae3_and_the_relay_commands_show_it(lab: Lab) -> None:
    out = invoke("demo", "--dir", str(lab.dir), "--keep").stdout
    for n, title in enumerate(
        (
            "QKD key arrives on each link of the route and is synchronised",
            "The key is reformatted into service keys",
            "A key is relayed KME1 -> KME2 -> KME3",
            "KME1 and KME3 hold the same end-to-end key",
            "SAE1 and SAE3 get the same keys over ETSI GS QKD 014",
        ),
        start=1,
    ):
        assert f"\n[{n}/5] {title}\n" in out
    assert "  KME1~KME2: same key at both ends\n" in out
    assert "  KME2~KME3: same key at both ends\n" in out
    for link in ("KME1~KME2", "KME2~KME3"):  # two relays of 512 bytes crossed each link
        assert re.search(rf"^\s+{link}\s+1152 B\s+2\s+1024 B\s+128 B$", out, re.MULTILINE), out
    assert "Identical at both ends: KME1 and KME3 share this key" in out
    assert "  SAE1 and SAE3 hold the same keys.\n" in out
    fingerprints = re.findall(r"^  SAE[13] got key (\S+)  fingerprint ([0-9a-f]{16})$", out, re.M)
    assert len(fingerprints) == 4 and fingerprints[:2] == fingerprints[2:]

    routes = json.loads(invoke("routes", "--lab", str(lab.dir), "--node", "KME1", "--json").stdout)
    [route] = [r for r in routes["routes"] if r["destination"] == "KME3"]
    assert route["path"] == ["KME1", "KME2", "KME3"]
    # The pool's background relays may hold the link key a moment: try again while they do.
    deadline = time.monotonic() + 20
    while True:
        args = ["relay", "test", "KME1", "KME3", "--bytes", "512", "--lab", str(lab.dir)]
        result = CliRunner().invoke(qkmsctl, args)
        if result.exit_code == 0 or time.monotonic() > deadline:
            break
        assert "owned ready bits available" in result.stderr, result.output
        time.sleep(0.5)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("KME1 -> KME3: ")
    relays = invoke("relays", "--lab", str(lab.dir), "--node", "KME2").stdout
    assert re.search(r"KME1~KME3\s+KME1 -> KME2 -> KME3\s+intermediate\s", relays), relays
    status = invoke("status", "--lab", str(lab.dir), "--node", "KME3").stdout
    assert re.search(r"^KME1~KME3\s+KME1\s+relay \(e2e\)\s", status, re.MULTILINE), status
