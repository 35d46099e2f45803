"""What monitoring costs, and how fast a fault becomes an alarm (issue: operations).

Two KME pairs run in this one trio process over mutual TLS on loopback, each a ``paired``
QKD link with SAE_A on KME_A and SAE_B on KME_B:

- **on**: the state agent looks every second (the default), the performance agent samples
  every second (10x its default) and ``/metrics`` is scraped every second;
- **off**: the state agent looks once an hour, no performance agent, no metrics endpoint.

Overhead: ETSI 014 single-key ``enc_keys`` from SAE_A in a closed loop (``--workers`` at
once), in windows that alternate between the pairs, in turns (on, off), (off, on), ... (both
pairs run all the time, so the background is the same in every window).  The figure is
keys/s of **on** over keys/s of **off**, over all windows (target >= 0.95).

Alarm latency, at default periods: on fresh **on** pairs, (1) KME_B stopped (its sockets
closed, as a killed process's are): time until KME_A's active alarms show ``peer-down``;
(2) a QKD device stopped (a ``vendor-tcp`` link whose in-process device emulator at KME_A's
end stops): time until ``link-down``.  ``--repeats`` of each (target < 2 s).

Run: ``python benchmarks/ops_monitoring.py`` (about two minutes).  Writes
``benchmarks/results/ops_monitoring.json``.
"""

# ruff: noqa: E402

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import msgspec
import trio
from _etsi014_harness import code_version, machine
from _relay_common import _table

from cli._pki import init_ca, issue_node, issue_sae
from qkd_drivers.testing import emulator_pair
from qkms_client import Etsi014Error, TrioEtsi014Client
from qkmsd.app import Node, NodeInfo
from qkmsd.config import load_config
from qkmsd.keystore import generate_master_key

RESULTS = HERE / "results" / "ops_monitoring.json"
LINK = "KME_A~KME_B"
ON = {"alarms": {"interval_s": 1.0}, "perf": {"interval_s": 1.0}, "metrics": True}
OFF = {"alarms": {"interval_s": 3600.0}, "perf": {"enabled": False}, "metrics": False}


def node_toml(
    node: str,
    peer: str,
    home: Path,
    pki: Path,
    *,
    peer_address: str,
    mode: dict[str, Any],
    link: dict[str, Any],
) -> str:
    listen = {"peer": "127.0.0.1:0", "admin_socket": home / "admin.sock", "api": "127.0.0.1:0"}
    if mode["metrics"]:
        listen["metrics"] = "127.0.0.1:0"
    lines = [
        *_table("node", {"id": node, "state_dir": home / "state", "master_key_file": home / "mk"}),
        *_table(
            "tls",
            {
                "ca": pki / "ca.pem",
                "cert": pki / "nodes" / f"{node}.pem",
                "key": pki / "nodes" / f"{node}.key",
            },
        ),
        *_table("listen", listen),
        *_table(f'peers."{peer}"', {"address": peer_address}),
        *_table(f'links."{LINK}"', {"peer": peer, **link}),
        *_table('saes."SAE_A"', {"kme": "KME_A"}),
        *_table('saes."SAE_B"', {"kme": "KME_B"}),
        *_table("alarms", mode["alarms"]),
        *_table("perf", mode["perf"]),
    ]
    return "\n".join(lines) + "\n"


async def _run(
    node: Node, *, task_status: trio.TaskStatus[tuple[NodeInfo, trio.CancelScope]]
) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(node.run)
            task_status.started((info, scope))


class Pair:
    def __init__(
        self,
        nodes: dict[str, Node],
        infos: dict[str, NodeInfo],
        scopes: dict[str, trio.CancelScope],
    ) -> None:
        self.nodes, self.infos, self.scopes = nodes, infos, scopes


@contextlib.asynccontextmanager
async def pair(
    work: Path, pki: Path, mode: dict[str, Any], links: dict[str, dict[str, Any]]
) -> AsyncIterator[Pair]:
    """KME_B, then KME_A dialling it; ``links[node]``: the driver and params of its end."""
    async with trio.open_nursery() as nursery:
        nodes: dict[str, Node] = {}
        infos: dict[str, NodeInfo] = {}
        scopes: dict[str, trio.CancelScope] = {}
        for node, peer in (("KME_B", "KME_A"), ("KME_A", "KME_B")):
            home = work / node
            home.mkdir(parents=True)
            generate_master_key(home / "mk")
            address = f"127.0.0.1:{infos[peer].peer_port}" if peer in infos else "127.0.0.1:1"
            path = home / "qkmsd.toml"
            path.write_text(
                node_toml(node, peer, home, pki, peer_address=address, mode=mode, link=links[node])
            )
            nodes[node] = Node(load_config(path))
            infos[node], scopes[node] = await nursery.start(_run, nodes[node])
        yield Pair(nodes, infos, scopes)
        nursery.cancel_scope.cancel()


def paired(seed: str) -> dict[str, dict[str, Any]]:
    link = {
        "driver": "paired",
        "params": {"rate_bps": 4_000_000.0, "block_bits": 65536, "seed": seed},
    }
    return {"KME_A": link, "KME_B": link}


async def scrape_forever(port: int) -> None:
    while True:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            while await stream.receive_some():
                pass
        await trio.sleep(1.0)


async def overhead(work: Path, pki: Path, args: argparse.Namespace) -> dict[str, Any]:
    tally = {"on": [0, 0.0, 0], "off": [0, 0.0, 0]}  # keys, seconds, errors
    async with contextlib.AsyncExitStack() as stack:
        pairs = {
            "on": await stack.enter_async_context(
                pair(work / "on", pki, ON, paired("ops-bench-on-0001"))
            ),
            "off": await stack.enter_async_context(
                pair(work / "off", pki, OFF, paired("ops-bench-off-001"))
            ),
        }
        nursery = await stack.enter_async_context(trio.open_nursery())
        metrics_port = pairs["on"].infos["KME_A"].metrics_port
        assert metrics_port
        nursery.start_soon(scrape_forever, metrics_port)
        clients = {}
        for name, p in pairs.items():
            c = TrioEtsi014Client(
                f"https://127.0.0.1:{p.infos['KME_A'].api_port}",
                ca=pki / "ca.pem",
                cert=pki / "saes" / "SAE_A.pem",
                key=pki / "saes" / "SAE_A.key",
                kme_id="KME_A",
            )
            stack.push_async_callback(c.aclose)
            clients[name] = c
        await trio.sleep(args.warmup_s)  # pools fill, sessions settle
        for r in range(args.rounds):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                t = tally[name]
                end = time.monotonic() + args.window_s

                async def worker(
                    client: TrioEtsi014Client = clients[name], t: list[Any] = t, end: float = end
                ) -> None:
                    while time.monotonic() < end:
                        try:
                            t[0] += len(await client.get_key("SAE_B"))
                        except Etsi014Error:
                            t[2] += 1
                            await trio.sleep(0.01)

                began = time.monotonic()
                async with trio.open_nursery() as workers:
                    for _ in range(args.workers):
                        workers.start_soon(worker)
                t[1] += time.monotonic() - began
        nursery.cancel_scope.cancel()
    rates = {name: t[0] / t[1] for name, t in tally.items()}
    return {
        "keys_per_s": rates,
        "errors": {name: t[2] for name, t in tally.items()},
        "ratio_on_over_off": rates["on"] / rates["off"],
    }


async def wait_alarm(node: Node, code: str, began: float) -> float:
    assert node.state is not None
    while not any(a.code == code for a in node.state.alarms()):  # noqa: ASYNC110 (5 ms polls)
        await trio.sleep(0.005)
    return time.monotonic() - began


async def peer_killed(work: Path, pki: Path, seed: str) -> float:
    async with pair(work, pki, ON, paired(seed)) as p:
        await trio.sleep(2.0)  # connected and settled
        began = time.monotonic()
        p.scopes["KME_B"].cancel()
        with trio.fail_after(30):
            return await wait_alarm(p.nodes["KME_A"], "peer-down", began)


async def device_stopped(work: Path, pki: Path, n: int) -> float:
    alice, bob = emulator_pair(
        link_id=LINK, seed=f"ops-bench-device-{n:04d}", block_bits=4096, interval=0.01
    )
    for emulator in (alice, bob):  # a device id may not hold the link id's "~"
        emulator.hello = msgspec.structs.replace(emulator.hello, device_id=f"dev-{n}")
    async with trio.open_nursery() as devices:
        alice_scope = trio.CancelScope()

        async def run_alice(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
            with alice_scope:
                await alice.run_tcp(task_status=task_status)

        host_a, port_a = await devices.start(run_alice)
        host_b, port_b = await devices.start(bob.run_tcp)
        links = {
            "KME_A": {
                "driver": "vendor-tcp",
                "params": {"host": host_a, "port": port_a, "role": "alice"},
            },
            "KME_B": {
                "driver": "vendor-tcp",
                "params": {"host": host_b, "port": port_b, "role": "bob"},
            },
        }
        async with pair(work, pki, ON, links) as p:
            await trio.sleep(2.0)
            began = time.monotonic()
            alice_scope.cancel()
            with trio.fail_after(30):
                elapsed = await wait_alarm(p.nodes["KME_A"], "link-down", began)
        devices.cancel_scope.cancel()
    return elapsed


async def latencies(work: Path, pki: Path, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, list[float]] = {"peer_killed_s": [], "device_stopped_s": []}
    for i in range(args.repeats):
        out["peer_killed_s"].append(
            await peer_killed(work / f"kill{i}", pki, f"ops-bench-kill-{i:04d}")
        )
        out["device_stopped_s"].append(await device_stopped(work / f"dev{i}", pki, i))
    return {
        name: {
            "each": [round(v, 3) for v in values],
            "median": round(statistics.median(values), 3),
            "max": round(max(values), 3),
        }
        for name, values in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pki = work / "pki"
        init_ca(pki)
        for node in ("KME_A", "KME_B"):
            issue_node(pki, node)
        for sae in ("SAE_A", "SAE_B"):
            issue_sae(pki, sae)
        cost = trio.run(overhead, work / "overhead", pki, args)
        alarm = trio.run(latencies, work / "latency", pki, args)
    result = {
        "machine": machine(),
        "code": code_version(HERE.parent),
        "args": vars(args),
        "overhead": cost,
        "alarm_latency": alarm,
    }
    rates = cost["keys_per_s"]
    print(
        f"ETSI 014 keys/s, monitoring on {rates['on']:.0f} / off {rates['off']:.0f}:"
        f" ratio {cost['ratio_on_over_off']:.3f} (target >= 0.95);"
        f" errors on {cost['errors']['on']}, off {cost['errors']['off']}"
    )
    for name, figures in alarm.items():
        print(
            f"{name}: median {figures['median']} s, max {figures['max']} s (target < 2 s):"
            f" {figures['each']}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
