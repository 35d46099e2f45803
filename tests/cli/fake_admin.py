"""A fake qkmsd admin socket: canned answers by method, and a record of what was asked."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protocol import NEED_DATA, AdminRequest, AdminResponse, Error, admin_connection


class FakeAdmin:
    """Serves ``answers[method]`` (a result map, or an ``Error`` to refuse) on ``path``."""

    def __init__(self, path: Path, answers: dict[str, dict[str, Any] | Error]) -> None:
        self.path = path
        self.answers = answers
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # closed
            with sock:
                self._answer(sock)

    def _answer(self, sock: socket.socket) -> None:
        conn = admin_connection()
        while (request := conn.next_event()) is NEED_DATA:
            data = sock.recv(65536)
            if not data:
                return
            conn.receive_data(data)
        assert isinstance(request, AdminRequest)
        self.requests.append((request.method, dict(request.params)))
        answer = self.answers.get(request.method)
        if answer is None:
            reply: Any = Error(code="unknown_method", message=request.method, id=request.id)
        elif isinstance(answer, Error):
            reply = Error(code=answer.code, message=answer.message, id=request.id)
        else:
            reply = AdminResponse(id=request.id, result=answer)
        sock.sendall(conn.send(reply))


@contextlib.contextmanager
def fake_admin(path: Path, answers: dict[str, dict[str, Any] | Error]) -> Iterator[FakeAdmin]:
    server = FakeAdmin(path, answers)
    server._thread.start()
    try:
        yield server
    finally:
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            server._listener.shutdown(socket.SHUT_RDWR)
        server._listener.close()
        server._thread.join(timeout=5)
