"""SAE demand, driven straight into each node's ETSI 014 front (no HTTP), and the SAE-side
ledger that checks what was delivered.

Every node has one SAE, ``SAE_<node>``.  A demand pair (master node, slave node) asks the
master's KME for keys (``enc_keys``) and fetches them at the slave's (``dec_keys``), paced
(``paced:BPS``: one request every ``bits / BPS`` seconds) or closed loop (``closed``: the
next request as soon as the last is answered, after a short pause when it was refused).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

from qkmsd.http import PeerInfo, Request, Response

REFUSED_PAUSE_S = 0.25
"""A closed loop waits this long after a refused request (503: no key yet)."""


class DemandSpecError(ValueError):
    """A ``--demand`` the simulator cannot parse."""


@dataclasses.dataclass(frozen=True)
class Demand:
    kind: str  # "paced" or "closed"
    bps: float = 0.0


def parse_demand(spec: str) -> Demand:
    """``paced:BPS`` or ``closed``.  Raises ``DemandSpecError``."""
    if spec == "closed":
        return Demand("closed")
    kind, _, rate = spec.partition(":")
    if kind == "paced":
        try:
            bps = float(rate)
        except ValueError:
            bps = -1.0
        if bps > 0:
            return Demand("paced", bps)
    raise DemandSpecError(f"demand {spec!r}: expected paced:BPS (bits per second > 0) or closed")


def sae_of(node: str) -> str:
    return f"SAE_{node}"


def enc_request(master: str, slave: str, number: int, size: int) -> Request:
    target = f"/api/v1/keys/{slave}/enc_keys"
    body = json.dumps({"number": number, "size": size}).encode()
    return _request(master, target, body)


def dec_request(slave: str, master: str, key_ids: list[str]) -> Request:
    target = f"/api/v1/keys/{master}/dec_keys"
    body = json.dumps({"key_IDs": [{"key_ID": k} for k in key_ids]}).encode()
    return _request(slave, target, body)


def _request(sae: str, target: str, body: bytes) -> Request:
    path, _, query = target.partition("?")
    return Request(
        method="POST",
        target=target,
        path=path,
        query=query,
        headers=(("content-type", "application/json"),),
        body=body,
        peer=PeerInfo(sae, "sae"),
    )


def keys_of(response: Response) -> list[tuple[str, bytes]]:
    """The (key id, key) pairs of a 200 answer's key container."""
    container = json.loads(response.body)
    return [(k["key_ID"].lower(), base64.b64decode(k["key"])) for k in container["keys"]]


@dataclasses.dataclass
class PairTally:
    requests: int = 0
    refused: int = 0
    """``enc_keys`` answered with an error (503: not enough key yet, and the like)."""
    timed_out: int = 0
    keys_delivered: int = 0
    bits_delivered: int = 0
    fetch_failed: int = 0
    """Keys ``enc_keys`` gave whose ``dec_keys`` at the slave failed."""
    first_delivery_at: list[float] = dataclasses.field(default_factory=list)
    """Virtual times of each delivery (one per request), for reroute times."""


class Ledger:
    """The SAEs' own records: every key id and a digest of every value they were given.

    ``served_twice``: a key id ``enc_keys`` handed out before (to this pair or another);
    ``value_reused``: one value under two ids (or to two pairs); ``two_values``: the slave
    got another value than the master under the same id.  All must stay 0.  Only digests
    are kept, never key material.
    """

    def __init__(self) -> None:
        self._ids: dict[str, tuple[tuple[str, str], bytes]] = {}
        self._values: dict[bytes, str] = {}
        self.served_twice = 0
        self.value_reused = 0
        self.two_values = 0

    def enc(self, pair: tuple[str, str], keys: list[tuple[str, bytes]]) -> None:
        for key_id, key in keys:
            digest = hashlib.blake2b(key, digest_size=16).digest()
            if key_id in self._ids:
                self.served_twice += 1
            else:
                self._ids[key_id] = (pair, digest)
            if self._values.setdefault(digest, key_id) != key_id:
                self.value_reused += 1

    def dec(self, pair: tuple[str, str], keys: list[tuple[str, bytes]]) -> int:
        """Check the slave's keys against the master's; returns how many agree."""
        good = 0
        for key_id, key in keys:
            digest = hashlib.blake2b(key, digest_size=16).digest()
            known = self._ids.get(key_id)
            if known is None or known[0] != pair or known[1] != digest:
                self.two_values += 1
            else:
                good += 1
        return good
