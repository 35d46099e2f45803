"""qkmsctl: one error root, and one place that turns errors into exit statuses and lines."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import ClassVar

import click
from click.testing import CliRunner

import cli
from cli._admin import AdminError
from cli._errors import EXIT_CODES, EXIT_FAILED, EXIT_USAGE, CliError, Command, Group
from cli._lab import LabError
from cli._pki import PkiError
from cli._topology import TopologyError
from cli.main import qkmsctl


def _cli_exception_classes() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for info in pkgutil.walk_packages(cli.__path__, prefix="cli."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("cli."):
                found.add(obj)
    return found


def test_every_error_class_of_the_cli_derives_from_cli_error() -> None:
    found = _cli_exception_classes()
    assert {CliError, AdminError, LabError, PkiError, TopologyError} <= found
    assert sorted(c.__qualname__ for c in found if not issubclass(c, CliError)) == []


def test_every_error_class_of_the_cli_exits_with_a_documented_status() -> None:
    for cls in _cli_exception_classes():
        assert issubclass(cls, CliError) and cls.exit_code in EXIT_CODES - {0}, cls


def _commands(command: click.Command) -> list[click.Command]:
    if isinstance(command, click.Group):
        return [command, *(c for sub in command.commands.values() for c in _commands(sub))]
    return [command]


def test_every_command_reaches_the_operator_through_the_one_translation() -> None:
    strays = [c.name for c in _commands(qkmsctl) if not isinstance(c, Command | Group)]
    assert strays == []


def test_an_unreachable_daemon_exits_1_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(qkmsctl, ["status", "--socket", str(tmp_path / "a.sock")])
    assert result.exit_code == EXIT_FAILED == 1
    assert result.output == f"Error: {tmp_path / 'a.sock'}: no such socket (is qkmsd running?)\n"


def test_a_lab_error_exits_1_with_its_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(qkmsctl, ["lab", "kill", "--dir", str(tmp_path), "KME_A"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_bad_usage_exits_2() -> None:
    result = CliRunner().invoke(
        qkmsctl, ["pki", "issue", "--dir", "x", "--node", "A", "--sae", "B"]
    )
    assert result.exit_code == EXIT_USAGE == 2
    assert "give one of --node ID or --sae ID, not both" in result.output


def test_an_error_kind_with_its_own_status_exits_with_it() -> None:
    class Interrupted(CliError):
        exit_code: ClassVar[int] = EXIT_USAGE

    @click.command(cls=Command)
    def fails() -> None:
        raise Interrupted("stopped: run it again with --force")

    result = CliRunner().invoke(fails)
    assert (result.exit_code, result.output) == (2, "Error: stopped: run it again with --force\n")
