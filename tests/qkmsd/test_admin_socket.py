"""The admin socket's file: 0600 by default, 0660 with its group, checked after bind."""

from __future__ import annotations

import grp
import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from qkmsd.admin import AdminServer, check_socket_file
from qkmsd.errors import StartupError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


async def serve_once(path: Path, *, group: str | None = None) -> os.stat_result:
    """Start an admin server, read its socket file's status, stop it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(AdminServer(path, {}, group=group).run)
        st = os.lstat(path)
        nursery.cancel_scope.cancel()
    return st


async def test_the_socket_is_0600_by_default_even_under_a_permissive_umask(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        st = await serve_once(tmp_path / "admin.sock")
    finally:
        os.umask(old)

    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


async def test_with_an_admin_group_the_socket_is_0660_and_the_groups(tmp_path: Path) -> None:
    own_group = grp.getgrgid(os.getegid())

    st = await serve_once(tmp_path / "admin.sock", group=own_group.gr_name)

    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == own_group.gr_gid


async def test_an_unknown_admin_group_stops_the_node_at_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="admin_group 'no-such-group-qkms' is not a group"):
        await AdminServer(tmp_path / "admin.sock", {}, group="no-such-group-qkms").run()
    assert not (tmp_path / "admin.sock").exists()


async def test_a_socket_file_left_looser_than_asked_stops_the_node_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file system that does not keep the mode it is given (the daemon cannot tell why).
    chmod = os.chmod
    monkeypatch.setattr(os, "chmod", lambda path, _mode: chmod(path, 0o666))
    path = tmp_path / "admin.sock"

    with pytest.raises(StartupError, match="has mode 0666, not 0600: anyone it lets in"):
        await AdminServer(path, {}).run()
    assert not path.exists()


def test_check_socket_file_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        check_socket_file(path, mode=0o600, gid=None)
        os.chmod(path, 0o660)
        with pytest.raises(StartupError, match="has mode 0660, not 0600"):
            check_socket_file(path, mode=0o600, gid=None)
        with pytest.raises(StartupError, match=f"has group {os.getegid()}, not 12345"):
            check_socket_file(path, mode=0o660, gid=12345)
    regular = tmp_path / "f"
    regular.write_text("")
    with pytest.raises(StartupError, match="is not a socket"):
        check_socket_file(regular, mode=0o600, gid=None)
