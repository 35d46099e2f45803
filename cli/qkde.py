"""``qkmsctl qkde``: the QKD device emulator.

``qkmsctl qkde emulate --tcp 127.0.0.1:7001 --link-id L --role alice --seed S``
serves one end of an emulated link; run a second one with ``--role bob`` and
the same seed for the other end.  The endpoint (``HOST:PORT`` or the pty path)
goes to stdout, alone on its line, for scripts; the rest goes to stderr.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable

import click
import msgspec
import trio

from protocol._device import DEVICE_PROTOCOL_VERSIONS, MAX_KEY_BYTES, DeviceHello
from qkd_drivers import DriverConfigError
from qkd_drivers.vendor import DeviceEmulator, bb84_source, is_loopback, seeded_source

from ._errors import CliError, Group


@click.group(cls=Group)
def qkde() -> None:
    """Emulate QKD devices speaking the qkms device protocol."""


def _split_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(
            f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:7001, or [::1]:7001)", param_hint="--tcp"
        )
    return host.removeprefix("[").removesuffix("]"), int(port)


@qkde.command()
@click.option("--tcp", metavar="HOST:PORT", help="Serve on TCP (port 0: any free port).")
@click.option("--pty", is_flag=True, help="Serve on a new pseudo-terminal; prints its path.")
@click.option("--link-id", required=True, help="The link this device serves.")
@click.option("--role", type=click.Choice(["alice", "bob"]), required=True, help="Link end.")
@click.option(
    "--seed",
    required=True,
    envvar="QKMS_QKDE_SEED",
    help="Shared by both ends: identical blocks (or in $QKMS_QKDE_SEED, off the command line).",
)
@click.option("--device-id", help="Device id in the hello [default: qkde-LINK-ROLE].")
@click.option(
    "--rate-bps", type=click.FloatRange(min=1.0, max=1e9), default=8192.0, show_default=True
)
@click.option(
    "--block-bits",
    type=click.IntRange(min=64, max=MAX_KEY_BYTES * 8),
    default=8192,
    show_default=True,
    help="Bits per key block (a multiple of 8).",
)
@click.option(
    "--qber",
    type=click.FloatRange(0.0, 0.5),
    default=0.02,
    show_default=True,
    help="QBER reported.",
)
@click.option(
    "--engine",
    type=click.Choice(["seeded", "bb84"]),
    default="seeded",
    show_default=True,
    help="seeded: blocks hashed from the seed; bb84: the photon-level BB84 engine (slow).",
)
@click.option("--bb84-params", default="gys", show_default=True, help="bb84: set name or TOML.")
@click.option(
    "--distance-km", type=click.FloatRange(min=0.0), default=10.0, show_default=True, help="bb84."
)
@click.option(
    "--pulses-per-block",
    type=click.IntRange(min=1000),
    default=10**9,
    show_default=True,
    help="bb84: pulses simulated per block.",
)
@click.option(
    "--pulse-rate-hz",
    type=click.FloatRange(min=1.0),
    default=1e9,
    show_default=True,
    help="bb84: source repetition rate (sets the block interval).",
)
@click.option("--allow-remote", is_flag=True, help="Listen on a non-loopback address.")
def emulate(
    tcp: str | None,
    pty: bool,
    link_id: str,
    role: str,
    seed: str,
    device_id: str | None,
    rate_bps: float,
    block_bits: int,
    qber: float,
    engine: str,
    bb84_params: str,
    distance_km: float,
    pulses_per_block: int,
    pulse_rate_hz: float,
    allow_remote: bool,
) -> None:
    """Serve one end of an emulated QKD link until interrupted.

    Not QKD: anyone who knows the seed knows every key.  Hence loopback only,
    unless --allow-remote.
    """
    if (tcp is None) == (not pty):
        raise click.UsageError("give exactly one of --tcp HOST:PORT or --pty")
    if block_bits % 8:
        raise click.BadParameter(f"{block_bits} is not a multiple of 8", param_hint="--block-bits")
    device_id = device_id or f"qkde-{link_id}-{role}"
    try:
        hello = msgspec.convert(
            {
                "type": "hello",
                "device_id": device_id,
                "link_id": link_id,
                "role": role,
                "versions": list(DEVICE_PROTOCOL_VERSIONS),
            },
            DeviceHello,
        )
    except msgspec.ValidationError as exc:
        raise click.BadParameter(
            f"{exc} (ids: 1-64 letters, digits and _.:-; link ids may also use ~)",
            param_hint="--link-id/--device-id",
        ) from None
    if engine == "bb84":
        try:
            source = bb84_source(
                seed,
                link_id,
                params=bb84_params,
                distance_km=distance_km,
                pulses_per_block=pulses_per_block,
                pulse_rate_hz=pulse_rate_hz,
            )
        except DriverConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--bb84-params") from None
        interval = pulses_per_block / pulse_rate_hz
    else:
        source = seeded_source(seed, link_id, block_bits=block_bits, qber=qber, skr=rate_bps)
        interval = block_bits / rate_bps
    emulator = DeviceEmulator(
        device_id=hello.device_id,
        link_id=hello.link_id,
        role=hello.role,
        source=source,
        interval=interval,
        source_in_thread=engine == "bb84",
    )
    if tcp is not None:
        host, port = _split_host_port(tcp)
        if not (allow_remote or is_loopback(host)):
            raise click.BadParameter(
                f"{host} is not a loopback address: an emulator gives its keys to anyone "
                "who connects (add --allow-remote to insist)",
                param_hint="--tcp",
            )
        serve: Callable[..., Awaitable[None]] = functools.partial(
            emulator.run_tcp, host, port, allow_remote=allow_remote
        )
    else:
        serve = emulator.run_pty
    try:
        trio.run(_run, emulator, serve)
    except KeyboardInterrupt:
        click.echo("qkde: stopped", err=True)
    except OSError as exc:
        raise CliError(f"cannot serve: {exc.strerror or exc}") from None


async def _run(emulator: DeviceEmulator, serve: Callable[..., Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(serve)
        where = f"{endpoint[0]}:{endpoint[1]}" if isinstance(endpoint, tuple) else endpoint
        hello = emulator.hello
        click.echo(where)
        sys.stdout.flush()
        click.echo(
            f"qkde: device {hello.device_id} ({hello.role} of link {hello.link_id}) on {where}, "
            f"one block every {emulator.interval:g} s; not QKD: the seed is every key",
            err=True,
        )
