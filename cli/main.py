"""``qkmsctl``: administer qkms nodes, run a lab network, and more."""

from __future__ import annotations

import click

from ._errors import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qkms")
def qkmsctl() -> None:
    """Administer qkms nodes, build their PKI and run local lab networks."""


from .alarms import alarm, alarms  # noqa: E402
from .bb84 import bb84  # noqa: E402
from .controller import controller  # noqa: E402
from .dashboard import dashboard  # noqa: E402
from .demo import demo  # noqa: E402
from .keystore import keystore  # noqa: E402
from .lab import lab  # noqa: E402
from .network import link, node, topology  # noqa: E402
from .node import config, links, peers, status  # noqa: E402
from .operate import device, devices, policy  # noqa: E402
from .perf import perf  # noqa: E402
from .pki import pki  # noqa: E402
from .profile import profile  # noqa: E402
from .qkde import qkde  # noqa: E402
from .relay import relay, relays, routes  # noqa: E402
from .sae import sae  # noqa: E402
from .sim import sim  # noqa: E402

for _command in (
    bb84,
    dashboard,
    demo,
    pki,
    lab,
    status,
    peers,
    links,
    routes,
    relays,
    relay,
    alarms,
    alarm,
    perf,
    policy,
    profile,
    devices,
    device,
    controller,
    topology,
    node,
    link,
    config,
    qkde,
    sae,
    keystore,
    sim,
):
    qkmsctl.add_command(_command)


def main() -> None:
    qkmsctl()
