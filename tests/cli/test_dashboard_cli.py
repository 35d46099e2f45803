"""``qkmsctl dashboard``: a lab node's dashboard URL, and a browser opened on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import qkmsctl

URL = "http://127.0.0.1:41877/"


def _lab(tmp_path: Path) -> Path:
    (tmp_path / "lab.json").write_text(json.dumps({"kmes": {"KME1": {"dashboard_url": URL}}}))
    return tmp_path


def test_the_url_is_printed_and_opened_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    args = ["dashboard", "--lab", str(_lab(tmp_path)), "--node", "KME1"]
    result = CliRunner().invoke(qkmsctl, args)
    assert (result.exit_code, result.output, opened) == (0, URL + "\n", [])
    result = CliRunner().invoke(qkmsctl, [*args, "--open"])
    assert (result.exit_code, result.output, opened) == (0, URL + "\n", [URL])


def _config(tmp_path: Path, listen: str) -> Path:
    config = tmp_path / "qkmsd.toml"
    config.write_text(f'[listen]\nadmin_socket = "admin.sock"\n{listen}\n')
    return config


def test_the_local_node_s_urls_come_from_its_config(tmp_path: Path) -> None:
    config = _config(tmp_path, 'dashboard = "127.0.0.1:8081"\ndashboard_tls = "0.0.0.0:8443"')
    result = CliRunner().invoke(qkmsctl, ["dashboard", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output == "http://127.0.0.1:8081/\nhttps://127.0.0.1:8443/\n"
    config = _config(tmp_path, 'dashboard_tls = "[::1]:8443"')
    result = CliRunner().invoke(qkmsctl, ["dashboard", "--config", str(config)])
    assert result.output == "https://[::1]:8443/\n"


def test_a_node_without_a_dashboard_or_a_bad_call_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(qkmsctl, ["dashboard", "--config", str(_config(tmp_path, ""))])
    assert result.exit_code != 0
    assert "serves no dashboard: set [listen] dashboard" in result.output
    missing = tmp_path / "nowhere.toml"
    result = CliRunner().invoke(qkmsctl, ["dashboard", "--config", str(missing)])
    assert result.exit_code != 0 and "cannot read it" in result.output
    result = CliRunner().invoke(qkmsctl, ["dashboard", "--node", "KME1"])
    assert result.exit_code != 0 and "--lab and --node go together" in result.output
