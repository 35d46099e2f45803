"""``qkmsctl``'s errors, and the one place that turns them into exit statuses and lines.

Exit statuses:

====  ==================================================================================
0     done
1     the command failed: a daemon unreachable or refusing, a lab, PKI, topology, PQC or
      ETSI 014 error; ``Error: <one line>`` on stderr names the thing and the fix
2     bad usage (click's ``UsageError``, with the usage line); ``config check`` of an
      invalid config (the daemon's own status, passed through)
====  ==================================================================================

Commands raise a ``CliError`` whose ``str()`` is the operator's line, built where the
context is (which file, which KME).  ``operator_errors`` is the one translation to click's
exit; every command and group gets it by being a ``Command`` or a ``Group``.  A new error
subclasses ``CliError`` and sets ``exit_code`` only if it needs another documented status.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, Final

import click

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CODES: Final = frozenset({EXIT_OK, EXIT_FAILED, EXIT_USAGE})
"""Every status ``qkmsctl`` exits with, as documented above."""


class CliError(Exception):
    """Root of every error ``qkmsctl`` raises on purpose.  ``str()`` is the operator's line."""

    exit_code: ClassVar[int] = EXIT_FAILED


@contextlib.contextmanager
def operator_errors() -> Iterator[None]:
    """Turn a ``CliError`` into ``Error: <its line>`` on stderr and its kind's exit status."""
    try:
        yield
    except CliError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(exc.exit_code) from None


class Command(click.Command):
    """A command whose ``CliError`` reaches the operator through ``operator_errors``."""

    def invoke(self, ctx: click.Context) -> Any:
        with operator_errors():
            return super().invoke(ctx)


class Group(click.Group):
    """A group whose commands, and sub-groups, are ``Command`` and ``Group``."""

    command_class = Command
    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        with operator_errors():
            return super().invoke(ctx)
