"""Fixtures: a throwaway PKI and a fake KME on loopback mutual TLS (see ``fake_kme``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from fake_kme import FakeKme, Pki, RunningKme, make_pki, server_context

from qkmsd.http import Limits, serve_tcp_tls


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def running_kme(pki: Pki) -> AsyncIterator[RunningKme]:
    kme = FakeKme()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_tcp_tls(
                kme.handle,
                server_context(pki),
                "127.0.0.1",
                0,
                limits=Limits(idle_timeout=0.3),
                task_status=task_status,
            )
        )
        yield RunningKme(kme, f"https://127.0.0.1:{port}")
        nursery.cancel_scope.cancel()
