"""Tables and sizes for humans; ``--json`` output bypasses all of this."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bits(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("Mbit", 1 << 20), ("kbit", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bit"


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0.0, time.time() - ts)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago"


def peer_tls(peer: dict[str, Any]) -> str:
    """The last handshake's TLS version and key exchange group; daemons before them: -."""
    version, group = peer.get("tls_version"), peer.get("tls_group")
    return f"{version} {group}" if version else "-"


def link_driver(link: dict[str, Any]) -> str:
    """A link's driver, or ``relay (e2e)`` for an end-to-end pool kept by key relay."""
    return "relay (e2e)" if link.get("e2e") else str(link["driver"])


def path_text(path: Sequence[str]) -> str:
    return " -> ".join(path)


def routes_table(result: dict[str, Any]) -> str:
    """A node's ``routes`` answer: one row a destination; then, for pools that split or
    spread their keys, the node-disjoint paths they use now."""
    text = _single_routes(result)
    split = result.get("split") or []
    if split:
        rows = [
            [s["destination"], " | ".join(path_text(p) for p in s["paths"]) or "-", s["source"]]
            for s in split
        ]
        text += "\n\nnode-disjoint paths (split or spread keys):\n"
        text += table(["destination", "paths", "source"], rows)
    return text


def _single_routes(result: dict[str, Any]) -> str:
    return table(
        ["destination", "path", "hops", "source", "cost", "age", "held"],
        [
            [
                r["destination"],
                path_text(r["path"]),
                len(r["path"]) - 1,
                r["source"],
                r["cost"],
                f"{r['age_s']:.0f}s",
                f"{r['held_s']:.1f}s" if r.get("held_s") else "-",
            ]
            for r in result["routes"]
        ],
    )


def relays_table(result: dict[str, Any]) -> str:
    """A node's ``relays`` answer (recent relays, newest first)."""
    return table(
        ["relay", "pool", "path", "role", "state", "key", "started", "took", "error"],
        [
            [
                r["relay_id"],
                r["e2e_link_id"],
                path_text(r["path"]),
                r["role"],
                r["state"],
                bits(r["bits"]),
                ago(r["started_at"]),
                _took(r["started_at"], r["ended_at"]),
                r["error"],
            ]
            for r in result["relays"]
        ],
    )


def _took(started: float, ended: float | None) -> str:
    return "-" if ended is None else f"{(ended - started) * 1e3:.0f} ms"


RELAY_OVERHEAD_BYTES = 64
"""Link key one relay spends on a hop besides the pad of its key: a pad for the
destination's 32-byte confirmation key and a 32-byte one-time MAC key (docs/relay.md)."""


def relay_hops_table(result: dict[str, Any]) -> str:
    """The link key a ``relay_test`` spent on each link it crossed (relays may take
    different routes): how many relays crossed it, the pads of their keys, the rest."""
    per_relay = result["bytes"] // result["relays"] if result["relays"] else 0
    rows = []
    for hop in result["hops"]:
        spent = hop["bytes"]
        crossed, rest = divmod(spent, per_relay + RELAY_OVERHEAD_BYTES) if per_relay else (0, 1)
        split = (
            [crossed, f"{crossed * per_relay} B", f"{crossed * RELAY_OVERHEAD_BYTES} B"]
            if crossed and not rest
            else ["-", "-", "-"]  # not as this version of the protocol spends it
        )
        rows.append([hop.get("link_id") or hop.get("hop"), f"{spent} B", *split])
    return table(
        ["link", "link key spent", "relays", "pads of the keys", "confirmation and MAC keys"],
        rows,
    )


def relay_test_report(source: str, result: dict[str, Any]) -> str:
    """A ``relay_test`` answer for humans: what went where, what it cost, what is left."""
    pool = result.get("e2e_link_id") or f"of {source} with {result['destination']}"
    return (
        f"{source} -> {result['destination']}: {result['relays']} relay(s) carried "
        f"{result['bytes']} B ({bits(8 * result['bytes'])}) of end-to-end key "
        f"in {result['seconds']:.2f} s\n\n{relay_hops_table(result)}\n\n"
        f"the end-to-end pool {pool} now holds {bits(result['pool_ready_bits'])} ready"
    )


def node_status(status: dict[str, Any]) -> str:
    """A readable page for one node's ``status`` answer."""
    head = (
        f"node {status['node_id']}  pid {status['pid']}  up {status['uptime_s']:.0f}s  "
        f"peer port {status['peer_listen']}"
    )
    peers = table(
        ["peer", "state", "since", "last seen", "connects", "tls", "last error"],
        [
            [
                p["node_id"],
                p["state"],
                ago(p["connected_since"]),
                ago(p["last_seen"]),
                p["connects"],
                peer_tls(p),
                p["last_error"],
            ]
            for p in status["peers"]
        ],
    )
    links = table(
        [
            "link",
            "peer",
            "driver",
            "state",
            "ready",
            "keys",
            "blocks",
            "unconfirmed",
            "discarded",
            "qber",
        ],
        [
            [
                link["link_id"],
                link["peer"],
                link_driver(link),
                link["driver_state"],
                bits(link["ready_bits"]),
                link["ready_keys"],
                link["ready_blocks"],
                link["unconfirmed_blocks"],
                link["discarded_blocks"],
                # An end-to-end pool measures no error rate: its key came through links.
                "-" if link["qber"] is None or link.get("e2e") else f"{link['qber']:.2%}",
            ]
            for link in status["links"]
        ],
    )
    page = f"{head}\n\n{peers}\n\n{links}"
    store = status.get("store")
    if store:
        per_batch = store["calls"] / store["batches"] if store["batches"] else 0.0
        page += (
            f"\n\nkey store: {store['batches']} commits on the store thread carrying "
            f"{store['calls']} calls ({per_batch:.1f} per commit), {store['inline']} calls inline"
        )
    api = status.get("api")
    if api:
        supply = api.get("supply", {})
        page += (
            f"\n\nETSI 014 API {api['listen']}  enc_keys {supply.get('enc_keys', 0)}  "
            f"dec_keys {supply.get('dec_keys', 0)}  keys out {supply.get('keys_out', 0)}  "
            f"refused {supply.get('refused', 0)}  stocked {supply.get('stock_keys_in', 0)} "
            f"(handed out {supply.get('stock_keys_out', 0)})"
        )
        tls = api.get("tls")
        if tls:
            page += "\n" + _tls_line(tls, api.get("hybrid_pq_tls_groups", False))
    return page


def _tls_line(tls: dict[str, Any], hybrid_offered: bool) -> str:
    """The API's TLS handshakes: how many, which versions and key exchange groups."""
    counts = ", ".join(f"{name} {n}" for name, n in sorted(tls["groups"].items())) or "-"
    versions = ", ".join(f"{name} {n}" for name, n in sorted(tls["versions"].items())) or "-"
    return (
        f"TLS handshakes {tls['handshakes']} (failed {tls['failed']}, "
        f"timed out {tls['timed_out']})  versions {versions}  groups {counts}  "
        f"hybrid PQ group offered: {'yes' if hybrid_offered else 'no'}"
    )
