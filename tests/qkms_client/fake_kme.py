"""A throwaway PKI and a tiny fake KME for the client tests (served by our HTTP shell).

The fake KME keeps keys in a dict and follows ETSI GS QKD 014's rules that a client can
observe: 401 for an SAE not named in the request, the mandated 400 messages, 503 when told
to, and PQC wrapping for SAEs that registered a hybrid key.  The real KME comes later.
"""

from __future__ import annotations

import os
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cli._pki import init_ca, issue_node, issue_sae
from protocol._etsi014 import (
    MSG_KEYS_NOT_FOUND,
    MSG_SIZE_NOT_MULTIPLE_OF_8,
    ApiKind,
    ApiRequestError,
    Key,
    KeyContainer,
    KeyRequest,
    Status,
    decode_key_ids,
    decode_key_request,
    encode_json,
    error_body,
    parse_api_path,
)
from qkms_pqc import (
    ETSI014_CONTEXT,
    HybridPublicKey,
    wrap,
    wrapped_key_extension,
)
from qkmsd.http import Request, Response

SAES = ("SAE_A", "SAE_B", "SAE_C")


@dataclass(frozen=True)
class Pki:
    """A network PKI as ``qkmsctl pki`` lays it out, plus a stranger CA beside it."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def stranger_ca(self) -> Path:
        return self.directory / "stranger" / "ca.pem"

    def cert(self, name: str) -> Path:
        return self._dir(name) / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self._dir(name) / f"{name}.key"

    def _dir(self, name: str) -> Path:
        return self.directory / ("saes" if name in SAES else "nodes")


def make_pki(directory: Path) -> Pki:
    """The network CA; KME_A (node, 127.0.0.1); SAE_A..SAE_C; and a stranger CA."""
    init_ca(directory)
    issue_node(directory, "KME_A")
    for sae in SAES:
        issue_sae(directory, sae)
    init_ca(directory / "stranger", common_name="stranger CA")
    return Pki(directory)


@dataclass
class Stored:
    master: str
    slaves: set[str]
    key: bytes = field(repr=False)


@dataclass
class FakeKme:
    """ETSI 014 as a client sees it, over a dict of keys."""

    kme_id: str = "KME_A"
    default_size: int = 256
    keys: dict[str, Stored] = field(default_factory=dict)
    pqc_keys: dict[str, HybridPublicKey] = field(default_factory=dict)
    unavailable: bool = False
    short_change: bool = False
    peers_seen: list[object] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        self.peers_seen.append(request.peer)
        if request.peer is None:
            return Response(401)
        caller = request.peer.common_name
        try:
            call = parse_api_path(request.method, request.target)
            if self.unavailable:
                return Response(503, error_body("key store is empty"))
            if call.kind is ApiKind.STATUS:
                return Response(200, encode_json(self._status(caller, call.sae_id)))
            if call.kind is ApiKind.ENC_KEYS:
                return self._enc_keys(
                    caller, call.sae_id, call.key_request or decode_key_request(request.body)
                )
            key_ids = call.key_ids or decode_key_ids(request.body)
            return self._dec_keys(caller, call.sae_id, [k.key_ID for k in key_ids.key_IDs])
        except ApiRequestError as exc:
            allow = (("allow", ", ".join(exc.allowed)),) if exc.allowed else ()
            return Response(exc.http_status, error_body(exc.message), headers=allow)

    def _status(self, caller: str, slave: str) -> Status:
        return Status(
            source_KME_ID=self.kme_id,
            target_KME_ID="KME_B",
            master_SAE_ID=caller,
            slave_SAE_ID=slave,
            key_size=self.default_size,
            stored_key_count=1000,
            max_key_count=100000,
            max_key_per_request=128,
            max_key_size=1024,
            min_key_size=64,
            max_SAE_ID_count=2,
        )

    def _enc_keys(self, caller: str, slave: str, req: KeyRequest) -> Response:
        size = req.size if req.size is not None else self.default_size
        if size % 8:
            return Response(400, error_body(MSG_SIZE_NOT_MULTIPLE_OF_8))
        slaves = {slave, *(req.additional_slave_SAE_IDs or [])}
        issued = []
        for _ in range((req.number or 1) - (1 if self.short_change else 0)):
            key_id = str(uuid.uuid4())
            self.keys[key_id] = Stored(caller, slaves, os.urandom(size // 8))
            issued.append(key_id)
        return self._deliver(caller, issued)

    def _dec_keys(self, caller: str, master: str, key_ids: list[str]) -> Response:
        for key_id in key_ids:
            stored = self.keys.get(key_id)
            if stored is None:
                return Response(400, error_body(MSG_KEYS_NOT_FOUND))
            if stored.master != master or caller not in stored.slaves:
                return Response(401)
        return self._deliver(caller, key_ids)

    def _deliver(self, caller: str, key_ids: list[str]) -> Response:
        pairs = [(k, self.keys[k].key) for k in key_ids]
        public = self.pqc_keys.get(caller)
        if public is None:
            container = KeyContainer(keys=[Key(key_ID=k, key=v) for k, v in pairs])
        else:
            bundle = wrap(public, pairs, context=ETSI014_CONTEXT)
            container = KeyContainer(
                keys=[
                    Key(key_ID=w.key_id, key=w.ciphertext, key_extension=wrapped_key_extension())
                    for w in bundle.keys
                ],
                key_container_extension=bundle.container_extension(),
            )
        return Response(200, encode_json(container))


def server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=pki.ca)
    ctx.load_cert_chain(pki.cert("KME_A"), pki.key("KME_A"))
    return ctx


@dataclass
class RunningKme:
    kme: FakeKme
    url: str
