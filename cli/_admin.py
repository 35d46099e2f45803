"""A blocking client for a daemon's admin socket (the CLI's only door into a node)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from protocol import (
    NEED_DATA,
    AdminRequest,
    AdminResponse,
    Error,
    RemoteProtocolError,
    admin_connection,
)

from ._errors import CliError


class AdminError(CliError):
    """The daemon could not be reached or refused the request."""

    def __init__(self, message: str, *, code: str = "unreachable") -> None:
        super().__init__(message)
        self.code = code


class AdminClient:
    def __init__(self, path: Path | str, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._next_id = 1

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one request and wait for its answer.  Raises ``AdminError``."""
        request_id = self._next_id
        self._next_id += 1
        conn = admin_connection()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(conn.send(AdminRequest(id=request_id, method=method, params=params)))
                while True:
                    data = sock.recv(65536)
                    if not data:
                        raise AdminError(f"{self.path}: the daemon closed the connection")
                    conn.receive_data(data)
                    message = conn.next_event()
                    if message is not NEED_DATA:
                        break
        except FileNotFoundError:
            raise AdminError(f"{self.path}: no such socket (is qkmsd running?)") from None
        except ConnectionRefusedError:
            raise AdminError(f"{self.path}: connection refused (is qkmsd running?)") from None
        except TimeoutError:
            raise AdminError(f"{self.path}: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise AdminError(f"{self.path}: {exc.strerror or exc}") from None
        except RemoteProtocolError as exc:
            raise AdminError(f"{self.path}: bad answer: {exc}", code="protocol") from None
        if isinstance(message, Error):
            raise AdminError(message.message, code=message.code)
        if not isinstance(message, AdminResponse) or message.id != request_id:
            raise AdminError(
                f"{self.path}: unexpected answer {type(message).__name__}", code="protocol"
            )
        return message.result
