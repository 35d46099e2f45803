"""sd_notify(3) without libsystemd: READY=1, WATCHDOG=1, STOPPING=1 to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket

import trio

from .log import get_logger

log = get_logger("qkms.systemd")


class Notifier:
    """Sends state strings to the service manager.  A no-op outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if wanted and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> None:
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("systemd.notify_failed", state=state.split("=")[0], error=str(exc))

    async def watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send WATCHDOG=1 at half the interval systemd asked for; forever."""
        task_status.started()
        if self.watchdog_interval is None:
            await trio.sleep_forever()
        assert self.watchdog_interval is not None
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)
