"""One error root in the daemon, and each kind mapped once to its wire code, HTTP status
and exit status."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from typing import Any

import pytest
import trio

import qkmsd
from cli._admin import AdminClient, AdminError
from protocol import ErrorCode, etsi014
from qkmsd.admin import AdminParamsError, AdminServer
from qkmsd.config import ConfigError
from qkmsd.controller import BadReport, NoController, RegistrationRefused
from qkmsd.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    PeerConnectionLost,
    PeerUnavailable,
    QkmsError,
    StartupError,
)
from qkmsd.http._client import HttpClientError
from qkmsd.keystore import (
    CorruptStoreError,
    IllegalTransition,
    InsufficientKey,
    KeyStoreError,
    MasterKeyError,
    MasterKeyMismatch,
    NotAuthorised,
    SegmentRefused,
    ServiceKeyNotFound,
    StoreUnavailable,
)
from qkmsd.main import main
from qkmsd.perf import PerfHistoryError, PushError
from qkmsd.profiles import ProfileError
from qkmsd.relay import RelayFailed
from qkmsd.sharing import SharingError
from qkmsd.state import AlarmHistoryError
from qkmsd.supply import BadRequest, RateLimited, SupplyError, Unauthorised, Unavailable
from qkmsd.supply._errors import HANDLED, error_response
from qkmsd.tls import CertificateIdentityError, TlsConfigError, TlsError

INTERNAL, STORE = ErrorCode.INTERNAL, ErrorCode.STORE_ERROR

# Every kind the daemon raises: (wire code, ETSI 014 status, exit status).  A new error class
# is found by the walk below and must be added here, with a decision for each edge.
MAPPING: dict[type[QkmsError], tuple[ErrorCode, int | None, int]] = {
    QkmsError: (INTERNAL, None, EXIT_FAILURE),
    StartupError: (INTERNAL, None, EXIT_FAILURE),
    PeerConnectionLost: (INTERNAL, None, EXIT_FAILURE),
    PeerUnavailable: (INTERNAL, None, EXIT_FAILURE),
    RelayFailed: (INTERNAL, None, EXIT_FAILURE),
    SharingError: (INTERNAL, None, EXIT_FAILURE),
    BadReport: (ErrorCode.BAD_REPORT, None, EXIT_FAILURE),
    NoController: (ErrorCode.NO_CONTROLLER, None, EXIT_FAILURE),
    RegistrationRefused: (ErrorCode.BAD_REGISTRATION, None, EXIT_FAILURE),
    AlarmHistoryError: (INTERNAL, None, EXIT_FAILURE),
    PerfHistoryError: (INTERNAL, None, EXIT_FAILURE),
    PushError: (INTERNAL, None, EXIT_FAILURE),
    ProfileError: (ErrorCode.BAD_MESSAGE, None, EXIT_FAILURE),
    HttpClientError: (INTERNAL, None, EXIT_FAILURE),
    ConfigError: (INTERNAL, None, EXIT_CONFIG),
    TlsError: (INTERNAL, None, EXIT_FAILURE),
    TlsConfigError: (INTERNAL, None, EXIT_FAILURE),
    CertificateIdentityError: (ErrorCode.WRONG_PEER, None, EXIT_FAILURE),
    AdminParamsError: (ErrorCode.BAD_MESSAGE, None, EXIT_FAILURE),
    KeyStoreError: (STORE, None, EXIT_FAILURE),
    IllegalTransition: (STORE, None, EXIT_FAILURE),
    CorruptStoreError: (STORE, None, EXIT_FAILURE),
    MasterKeyError: (STORE, None, EXIT_FAILURE),
    MasterKeyMismatch: (STORE, None, EXIT_FAILURE),
    InsufficientKey: (STORE, 503, EXIT_FAILURE),
    StoreUnavailable: (STORE, 503, EXIT_FAILURE),
    SegmentRefused: (ErrorCode.SEGMENT_REFUSED, None, EXIT_FAILURE),
    ServiceKeyNotFound: (STORE, 400, EXIT_FAILURE),
    NotAuthorised: (STORE, 401, EXIT_FAILURE),
    SupplyError: (INTERNAL, None, EXIT_FAILURE),
    BadRequest: (INTERNAL, 400, EXIT_FAILURE),
    Unauthorised: (INTERNAL, 401, EXIT_FAILURE),
    Unavailable: (INTERNAL, 503, EXIT_FAILURE),
    RateLimited: (INTERNAL, 429, EXIT_FAILURE),
}


def _daemon_exception_classes() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    modules = pkgutil.walk_packages(qkmsd.__path__, prefix="qkmsd.")
    for info in modules:
        if info.name.endswith("__main__"):
            continue  # it runs the daemon
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("qkmsd"):
                found.add(obj)
    return found


def test_every_error_class_of_the_daemon_derives_from_qkms_error() -> None:
    found = _daemon_exception_classes()
    assert found, "the walk found nothing"
    strays = sorted(
        f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, QkmsError)
    )
    assert strays == []


def test_every_error_class_of_the_daemon_has_its_mapping_listed() -> None:
    found = _daemon_exception_classes()
    names = sorted(c.__qualname__ for c in found ^ set(MAPPING))
    assert names == [], "add them to MAPPING (or remove them from it)"


@pytest.mark.parametrize("cls", list(MAPPING), ids=lambda c: c.__name__)
def test_each_kind_is_mapped_once_on_its_class(cls: type[QkmsError]) -> None:
    assert (cls.wire_code, cls.http_status, cls.exit_code) == MAPPING[cls]


def test_the_etsi014_agent_answers_exactly_the_kinds_that_have_a_status() -> None:
    handled = [c for c in HANDLED if c is not etsi014.ApiRequestError]
    assert all(issubclass(c, QkmsError) and c.http_status is not None for c in handled)
    with_status = [c for c in MAPPING if c.http_status is not None]
    assert all(issubclass(c, tuple(handled)) for c in with_status)


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (BadRequest("size is too big", details=[{"max": 8}]), 400, "size is too big"),
        (Unauthorised("no SAE certificate"), 401, None),
        (NotAuthorised("service key k: SAE_C is not a named slave"), 401, None),
        (Unavailable("target KME KME_B is unreachable"), 503, "target KME KME_B is unreachable"),
        (InsufficientKey("link A~B: 64 bits ready"), 503, "link A~B: 64 bits ready"),
        (ServiceKeyNotFound("service key k: not found"), 400, etsi014.MSG_KEYS_NOT_FOUND),
    ],
)
def test_an_sae_is_answered_with_the_status_of_the_errors_kind(
    exc: QkmsError, status: int, body: str | None
) -> None:
    answer = error_response(exc)
    assert answer.status == status
    if body is None:
        assert not answer.body
    else:
        assert json.loads(answer.body)["message"] == body
    if isinstance(exc, SupplyError) and exc.details:
        assert json.loads(answer.body)["details"] == exc.details


def test_an_error_without_a_status_is_not_answered_to_an_sae() -> None:
    with pytest.raises(TypeError, match="KeyStoreError has no ETSI 014 answer"):
        error_response(KeyStoreError("key store /x: disk I/O error"))


async def test_the_admin_socket_answers_with_the_errors_wire_code(tmp_path: Path) -> None:
    async def params(_: dict[str, Any]) -> dict[str, Any]:
        raise AdminParamsError("check: last must be at least first")

    async def store(_: dict[str, Any]) -> dict[str, Any]:
        raise KeyStoreError("key store /var/lib/qkms/keystore.sqlite: disk I/O error")

    async def lost(_: dict[str, Any]) -> dict[str, Any]:
        raise PeerConnectionLost("KME_B closed the connection")

    async def bug(_: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("a bug")

    server = AdminServer(
        tmp_path / "a.sock", {"params": params, "store": store, "lost": lost, "bug": bug}
    )

    def call(method: str) -> AdminError:
        with pytest.raises(AdminError) as info:
            AdminClient(tmp_path / "a.sock").call(method)
        return info.value

    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        refused = await trio.to_thread.run_sync(call, "params")
        assert (refused.code, str(refused)) == (
            "bad-message",
            "check: last must be at least first",
        )
        failed = await trio.to_thread.run_sync(call, "store")
        assert failed.code == "store-error" and "disk I/O error" in str(failed)
        for method in ("lost", "bug"):  # the text stays in the log
            failed = await trio.to_thread.run_sync(call, method)
            assert (failed.code, str(failed)) == ("internal", "internal error; see the daemon log")
        nursery.cancel_scope.cancel()


def test_qkmsd_exits_with_the_config_errors_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "missing.toml")]) == EXIT_CONFIG == 2
    assert capsys.readouterr().err == f"qkmsd: config {tmp_path / 'missing.toml'}: file not found\n"


def test_qkmsd_exits_with_the_master_key_errors_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "master.key"
    assert main(["--generate-master-key", str(key)]) == 0
    capsys.readouterr()
    assert main(["--generate-master-key", str(key)]) == EXIT_FAILURE == 1
    assert capsys.readouterr().err.startswith(f"qkmsd: master key {key}: ")
