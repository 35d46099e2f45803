"""``qkmsctl keystore``: work on a stopped node's key store.

The store is the daemon's own (SQLite, encrypted with the node master key), so these
commands run ``qkmsd`` itself (``qkmsd rotate-master --config FILE``) rather than
reaching into it from here: qkmsctl never imports the daemon.
"""

from __future__ import annotations

import subprocess
import sys

import click

from ._errors import CliError, Group


@click.group(cls=Group)
def keystore() -> None:
    """Maintain a stopped node's key store."""


@keystore.command("rotate-master")
@click.option(
    "--config",
    "config",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The node's qkmsd.toml ([node] master_key_file names the key file).",
)
def rotate_master(config: str) -> None:
    """Re-encrypt the key store under a new random master key, crash-safe.

    The node must be stopped (the store's lock refuses a running one).  The new key
    replaces the file named by [node] master_key_file; a crash at any point leaves a
    store that opens with the old key or the new one, and the next start (or the next
    rotate-master) finishes what was interrupted.
    """
    done = subprocess.run(
        [sys.executable, "-m", "qkmsd", "rotate-master", "--config", config],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.stdout:
        click.echo(done.stdout, nl=False)
    if done.returncode != 0:
        message = done.stderr.strip().removeprefix("qkmsd: ") or f"qkmsd exited {done.returncode}"
        raise CliError(message)
