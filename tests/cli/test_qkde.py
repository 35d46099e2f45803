"""``qkmsctl qkde emulate``: an emulated device end a driver can talk to."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
from click.testing import CliRunner

from cli.qkde import qkde
from qkd_drivers import LinkEnd
from qkd_drivers.vendor import (
    VendorSerialDriver,
    VendorSerialParams,
    VendorTcpDriver,
    VendorTcpParams,
)

FAST = ["--link-id", "L1", "--seed", "cli-test-seed", "--block-bits", "256", "--rate-bps", "12800"]


async def first_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, "the emulator exited before printing its endpoint"
        data += chunk
    return data.split(b"\n", 1)[0].decode()


async def run_emulator(*args: str) -> tuple[trio.Process, str]:
    command = [sys.executable, "-c", "from cli.qkde import qkde; qkde()", "emulate", *args]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, await first_line(process.stdout)


async def take_one(driver: VendorTcpDriver | VendorSerialDriver) -> int:
    async with driver:
        async for block in driver.blocks():
            assert block.link_id == "L1"
            return block.block_id
    raise AssertionError("no block")  # pragma: no cover


async def test_emulate_tcp_prints_its_address_and_serves_blocks() -> None:
    with trio.fail_after(20):
        process, address = await run_emulator("--tcp", "127.0.0.1:0", "--role", "bob", *FAST)
        try:
            host, port = address.rsplit(":", 1)
            params = VendorTcpParams(host=host, port=int(port), role="bob", device_id="qkde-L1-bob")
            await take_one(VendorTcpDriver(LinkEnd("L1", "b", "a"), params))
        finally:
            process.terminate()
            await process.wait()


async def test_emulate_pty_prints_the_tty_path_and_serves_blocks() -> None:
    with trio.fail_after(20):
        process, path = await run_emulator("--pty", "--role", "alice", *FAST)
        try:
            assert path.startswith("/dev/")
            params = VendorSerialParams(path=path, role="alice")
            await take_one(VendorSerialDriver(LinkEnd("L1", "a", "b"), params))
        finally:
            process.terminate()
            await process.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "alice"], "exactly one of --tcp HOST:PORT or --pty"),
        (["--role", "alice", "--pty", "--tcp", "127.0.0.1:1"], "exactly one of"),
        (["--role", "alice", "--tcp", "10.0.0.1:7000"], "not a loopback address"),
        (["--role", "alice", "--tcp", "localhost"], "is not HOST:PORT"),
        (["--role", "carol", "--pty"], "'carol' is not one of 'alice', 'bob'"),
        (["--role", "alice", "--pty", "--block-bits", "100"], "not a multiple of 8"),
        (["--role", "alice", "--pty", "--device-id", "has space"], "--link-id/--device-id"),
    ],
)
def test_emulate_refuses_bad_options_with_a_usage_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(qkde, ["emulate", *FAST, *args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_remote_address_needs_allow_remote() -> None:
    result = CliRunner().invoke(qkde, ["emulate", *FAST, "--role", "bob", "--tcp", "0.0.0.0:0"])
    assert result.exit_code == 2
    assert "--allow-remote" in result.output
