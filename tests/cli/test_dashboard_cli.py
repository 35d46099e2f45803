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
