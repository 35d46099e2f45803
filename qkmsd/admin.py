"""The admin endpoint: the framed protocol on a Unix socket.

The socket is the only door to the node's administration, and its file mode is the lock:
0600 (this user only) by default, 0660 with ``[listen] admin_group`` (that group too).  It
is created under a umask that allows no more than that, then checked after bind: a socket
file that is not ours or is open to anyone else stops the node at start.

Requests are ``{"type": "request", "id": n, "method": "status", "params": {}}``;
answers echo ``id`` as ``{"type": "response", "id": n, "result": {...}}`` or
``{"type": "error", "id": n, "code": ..., "message": ...}``.  An unknown method
or bad params get an error and the connection stays open; bytes that are not
a frame of the protocol get an error frame and the connection is closed.
Either way the daemon keeps serving everyone else.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from protocol import (
    NEED_DATA,
    AdminRequest,
    AdminResponse,
    Error,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    admin_connection,
)

from .errors import QkmsError, StartupError
from .log import get_logger

log = get_logger("qkms.admin")

Method = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class AdminParamsError(QkmsError):
    """A method's params are invalid; the message goes back to the client."""

    wire_code = ErrorCode.BAD_MESSAGE


class AdminServer:
    def __init__(
        self,
        path: Path,
        methods: dict[str, Method],
        *,
        max_connections: int = 64,
        group: str | None = None,
    ) -> None:
        self.path = path
        self.methods = methods
        self.group = group
        self._slots = trio.CapacityLimiter(max_connections)

    async def run(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(path)`` once listening.

        Raises ``StartupError`` if the socket cannot be made, the group is unknown, or the
        socket file is not this user's with mode 0600 (0660 and the group, given one).
        """
        gid = _group_id(self.path, self.group)
        mode = 0o600 if gid is None else 0o660
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(self.path)
            # The umask is the process's: set only around bind, so that the socket is never,
            # even for an instant, open to more than its final mode allows.
            old_umask = os.umask(0o777 & ~mode)
            try:
                await sock.bind(str(self.path))
            finally:
                os.umask(old_umask)
            if gid is not None:
                os.chown(self.path, -1, gid)
            os.chmod(self.path, mode)
            check_socket_file(self.path, mode=mode, gid=gid)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise StartupError(f"admin socket {self.path}: {exc.strerror or exc}") from None
        except StartupError:
            sock.close()
            self.path.unlink(missing_ok=True)
            raise
        listener = trio.SocketListener(sock)
        log.info("admin.listening", socket=str(self.path))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._serve, [listener])
                task_status.started(self.path)
        finally:
            try:
                self.path.unlink()
            except OSError:
                pass

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with self._slots, stream:
            conn = admin_connection()
            try:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    while (message := conn.next_event()) is not NEED_DATA:
                        reply = await self._answer(message)
                        try:
                            frame = conn.send(reply)
                        except LocalProtocolError:
                            log.error("admin.result_unencodable", exc_info=True)
                            frame = conn.send(_internal_error(reply.id))
                        await stream.send_all(frame)
            except RemoteProtocolError as exc:
                log.warning("admin.bad_input", code=str(exc.code), error=exc.message)
                try:
                    await stream.send_all(
                        conn.send(Error(code=str(exc.code), message=exc.message[:1000]))
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _answer(self, message: Any) -> Error | AdminResponse:
        if not isinstance(message, AdminRequest):
            return Error(code=str(ErrorCode.UNEXPECTED_MESSAGE), message="send requests only")
        method = self.methods.get(message.method)
        if method is None:
            known = ", ".join(sorted(self.methods))
            return Error(
                code=str(ErrorCode.UNKNOWN_REQUEST),
                message=f"unknown method {message.method!r} (known: {known})",
                id=message.id,
            )
        try:
            return AdminResponse(id=message.id, result=await method(message.params))
        except QkmsError as exc:
            if exc.wire_code is ErrorCode.INTERNAL:
                log.error("admin.method_failed", method=message.method, exc_info=True)
                return _internal_error(message.id)
            return Error(code=str(exc.wire_code), message=str(exc), id=message.id)
        except Exception:
            log.error("admin.method_failed", method=message.method, exc_info=True)
            return _internal_error(message.id)


def _internal_error(request_id: int | None) -> Error:
    return Error(
        code=str(ErrorCode.INTERNAL), message="internal error; see the daemon log", id=request_id
    )


def check_socket_file(path: Path, *, mode: int, gid: int | None) -> None:
    """Check that ``path`` is a socket owned by this user with exactly ``mode`` (and group
    ``gid``, if given).  Raises ``StartupError`` naming what is wrong and the fix."""
    st = path.lstat()
    uid = os.geteuid()
    found = stat.S_IMODE(st.st_mode)
    if not stat.S_ISSOCK(st.st_mode):
        problem = "is not a socket"
    elif st.st_uid != uid:
        problem = f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
    elif found != mode:
        problem = f"has mode {found:04o}, not {mode:04o}"
    elif gid is not None and st.st_gid != gid:
        problem = f"has group {st.st_gid}, not {gid}"
    else:
        return
    raise StartupError(
        f"admin socket {path} {problem}: anyone it lets in may administer this node; "
        "check the directory's file system and [listen] admin_group"
    )


def _group_id(path: Path, group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StartupError(
            f"admin socket {path}: [listen] admin_group {group!r} is not a group on this "
            "host; create it or remove admin_group (the socket is then 0600)"
        ) from None


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a dead daemon; refuse to clobber anything else or a live one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise OSError(errno.EADDRINUSE, "another daemon is listening on it")
    finally:
        probe.close()
