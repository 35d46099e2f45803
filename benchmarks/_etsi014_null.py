"""Null KMEs: qkmsd's HTTPS stack with no key management behind it, the floor under its figures.

Each null KME serves the ETSI 014 API through the code qkmsd serves it with
(``qkmsd.http.serve_tcp_tls``: ``trio.SSLStream``, h11, limits, the access log to a file)
and the same TLS set-up (``qkmsd.tls.api_context``: mutual TLS, client certificates from
the network CA), and answers from a fixed key: ``enc_keys`` with as many keys as asked
(fixed UUIDs), ``dec_keys`` with the IDs asked for.  No stock, no peer, no store, no
fsync: what separates qkmsd's figures from these, on the same load at about the same
time, is the key management itself.

``start_null(directory, pairs)`` starts two of them as subprocesses (this file, run with
``--serve``) and returns the harness's ``Servers``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import trio  # noqa: E402
from _etsi014_harness import Servers, process_alive  # noqa: E402
from _etsi014_load import Pair  # noqa: E402
from _etsi014_stats import NULL_KMS  # noqa: E402

from cli import _pki  # noqa: E402

# Not key material: the same 32 bytes in every key, and the null KMEs deliver nothing else.
_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
# Bounds the answers kept (one per distinct request body; the benchmark sends a handful).
_CACHE_MAX = 256


def key_id(i: int) -> str:
    """The i-th fixed key ID (a UUID, as ETSI 014 clients check)."""
    return f"0192b2a4-8c4e-7b7e-9d3c-{i:012x}"


def answer(endpoint: str, body: bytes) -> tuple[int, bytes]:
    """The status and body a null KME answers a POST to ``endpoint`` with ``body``.

    ``enc_keys``: ``number`` keys (1 if not given) with IDs ``key_id(0..number-1)``;
    ``dec_keys``: the key IDs asked for.  Anything else, or a body that is not what the
    API expects, is a 400.
    """
    try:
        request = json.loads(body or b"{}")
        if endpoint == "enc_keys":
            ids = [key_id(i) for i in range(int(request.get("number", 1)))]
        elif endpoint == "dec_keys":
            ids = [str(k["key_ID"]) for k in request["key_IDs"]]
        else:
            raise ValueError(endpoint)
    except (ValueError, TypeError, KeyError, AttributeError):
        return 400, b'{"message": "bad request"}'
    keys = [{"key_ID": i, "key": _KEY} for i in ids]
    return 200, json.dumps({"keys": keys}).encode()


def serve(ca: Path, cert: Path, key: Path, node_id: str) -> None:
    """A null KME: print the bound port, then answer every request until terminated."""
    from qkmsd.http import Request, Response, serve_tcp_tls
    from qkmsd.log import configure
    from qkmsd.tls import api_context

    configure("info", "kv", node_id=node_id)
    cache: dict[tuple[str, bytes], tuple[int, bytes]] = {}

    async def handler(request: Request) -> Response:
        endpoint = request.path.rsplit("/", 1)[-1]
        cached = cache.get((endpoint, request.body))
        if cached is None:
            cached = answer(endpoint, request.body)
            if len(cache) < _CACHE_MAX:
                cache[(endpoint, request.body)] = cached
        status, body = cached
        return Response(status, body)

    async def main() -> None:
        context = api_context(ca, cert, key)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_tcp_tls, handler, context, "127.0.0.1", 0)
            gc.freeze()  # as qkmsd does after start-up
            print(port, flush=True)

    trio.run(main)


def start_null(directory: Path, pairs: int) -> Servers:
    """Two null KMEs (KME_A, KME_B) with their PKI in ``directory``, and ``pairs`` SAE pairs.

    Raises ``SystemExit`` if one does not start (its log is ``directory/<node>.log``).
    """
    ca = _pki.init_ca(directory)
    urls: dict[str, str] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def stop() -> None:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=10)

    try:
        for node in ("KME_A", "KME_B"):
            issued = _pki.issue_node(directory, node)
            with (directory / f"{node}.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--serve"]
                    + [str(ca.cert), str(issued.cert), str(issued.key), node],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            procs[node] = proc
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"null {node} did not start; see {directory / f'{node}.log'}")
            urls[node] = f"https://127.0.0.1:{int(line)}"
    except BaseException:
        stop()
        raise
    sae_pairs = []
    for i in range(pairs):
        master = _pki.issue_sae(directory, f"SAE_M{i}")
        slave = _pki.issue_sae(directory, f"SAE_S{i}")
        sae_pairs.append(
            Pair(
                master=f"SAE_M{i}",
                slave=f"SAE_S{i}",
                a_url=urls["KME_A"],
                b_url=urls["KME_B"],
                ca=str(ca.cert),
                m_cert=str(master.cert),
                m_key=str(master.key),
                s_cert=str(slave.cert),
                s_key=str(slave.key),
            )
        )

    def check() -> None:
        for node, proc in procs.items():
            if proc.poll() is not None or not process_alive(proc.pid):
                log = (directory / f"{node}.log").read_text(errors="replace").splitlines()
                raise SystemExit(f"null {node} died; its log ends:\n" + "\n".join(log[-30:]))

    return Servers(
        kms=NULL_KMS,
        pids={n: p.pid for n, p in procs.items()},
        pairs=sae_pairs,
        admin={},
        check=check,
        stop=stop,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a null KME (started by start_null)")
    parser.add_argument("--serve", nargs=4, metavar=("CA", "CERT", "KEY", "NODE"), required=True)
    args: Any = parser.parse_args(argv)
    ca, cert, key, node = args.serve
    serve(Path(ca), Path(cert), Path(key), node)


if __name__ == "__main__":
    main()
