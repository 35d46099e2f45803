"""Shared fixtures: a network PKI and node configs written the way an operator would."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli._pki import init_ca, issue_node, issue_sae
from qkmsd.config import Config, load_config
from qkmsd.keystore import generate_master_key

from .soaktable import note_outcome, render, soak_table, write_report

__all__ = ["soak_table"]  # a fixture for every test

NODES = ("KME_A", "KME_B", "KME_C", "KME_D", "KME_E")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One network CA with nodes KME_A..C and SAEs SAE_A..C."""
    directory = tmp_path_factory.mktemp("pki")
    init_ca(directory)
    for node in NODES:
        issue_node(directory, node)
    for sae in ("SAE_A", "SAE_B", "SAE_C"):
        issue_sae(directory, sae)
    return directory


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA that issues certificates with the same node names: never trusted."""
    directory = tmp_path_factory.mktemp("rogue-pki")
    init_ca(directory, common_name="rogue CA")
    for node in NODES:
        issue_node(directory, node)
    return directory


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value)


def _table(name: str, values: dict[str, Any]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items())]


def _supply_lines(supply: dict[str, Any]) -> list[str]:
    """``[supply]`` as TOML: top-level keys, ``default`` as a table, ``pairs`` as an array."""
    top = {k: v for k, v in supply.items() if k not in ("default", "pairs")}
    lines = _table("supply", top)
    if "default" in supply:
        lines += _table("supply.default", supply["default"])
    for pair in supply.get("pairs", []):
        lines += ["[[supply.pairs]]", *(f"{k} = {_toml(v)}" for k, v in pair.items())]
    return lines


ConfigFactory = Callable[..., Config]


@pytest.fixture
def node_config(tmp_path: Path, pki: Path) -> ConfigFactory:
    """Write a node config (and its master key) and load it like qkmsd does.

    ``peers`` maps node id to "host:port"; ``links`` maps link id to
    ``(peer, driver, params)``.  ``api=True`` serves the ETSI 014 API on a free
    loopback port; ``saes`` maps SAE id to its ``[saes.X]`` table (e.g.
    ``{"kme": "KME_A"}``); ``supply`` is the ``[supply]`` section, with ``default`` a
    table and ``pairs`` a list of tables; ``relay`` is the ``[relay]`` section, with
    ``pools`` mapping a peer to its ``[relay.pools.X]`` table; ``crl`` is ``[tls] crl``.
    """

    def make(
        node: str,
        *,
        peers: dict[str, str] | None = None,
        links: dict[str, tuple[str, str, dict[str, Any]]] | None = None,
        port: int = 0,
        ca_dir: Path | None = None,
        sync: dict[str, float] | None = None,
        api: bool = False,
        saes: dict[str, dict[str, Any]] | None = None,
        supply: dict[str, Any] | None = None,
        relay: dict[str, Any] | None = None,
        controller: dict[str, Any] | None = None,
        crl: Path | None = None,
    ) -> Config:
        home = tmp_path / node
        home.mkdir(exist_ok=True)
        key = home / "master.key"
        if not key.exists():
            generate_master_key(key)
        certs = ca_dir or pki
        lines = [
            "[node]",
            f'id = "{node}"',
            f'state_dir = "{home / "state"}"',
            f'master_key_file = "{key}"',
            "[tls]",
            f'ca = "{certs / "ca.pem"}"',
            f'cert = "{certs / "nodes" / f"{node}.pem"}"',
            f'key = "{certs / "nodes" / f"{node}.key"}"',
            *([f'crl = "{crl}"'] if crl is not None else []),
            "[listen]",
            f'peer = "127.0.0.1:{port}"',
            f'admin_socket = "{home / "admin.sock"}"',
            *(['api = "127.0.0.1:0"'] if api else []),
            "[sync]",
            *(
                f"{k} = {v}"
                for k, v in (
                    sync or {"timeout_s": 10.0, "heartbeat_s": 1.0, "announce_interval_s": 0.05}
                ).items()
            ),
        ]
        for peer, address in (peers or {}).items():
            lines += [f'[peers."{peer}"]', f'address = "{address}"']
        for link_id, (peer, driver, params) in (links or {}).items():
            lines += [f'[links."{link_id}"]', f'peer = "{peer}"', f'driver = "{driver}"']
            lines += [f"params = {_toml(params)}"]
        for sae, table in (saes or {}).items():
            lines += _table(f'saes."{sae}"', table)
        if supply is not None:
            lines += _supply_lines(supply)
        if controller is not None:
            lines += _table("controller", controller)
        if relay is not None:
            lines += _table("relay", {k: v for k, v in relay.items() if k != "pools"})
            for peer, pool in relay.get("pools", {}).items():
                lines += _table(f'relay.pools."{peer}"', pool)
        path = home / "qkmsd.toml"
        path.write_text("\n".join(lines) + "\n")
        return load_config(path)

    return make


# --- the soak table (tests/soaktable.py) -------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    note_outcome(report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = render()
    if len(lines) > 2:
        terminalreporter.write_sep("=", "soak table")
        for line in lines:
            terminalreporter.write_line(line)
    write_report()
