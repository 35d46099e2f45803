"""``qkmsctl``: administer qkms nodes, run a lab network, and more."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qkms")
def qkmsctl() -> None:
    """Administer qkms nodes, build their PKI and run local lab networks."""


def main() -> None:
    qkmsctl()
