"""Plain HTTP (no TLS) on a management address: the metrics endpoint and the dashboard."""

from __future__ import annotations

import trio

from ..log import get_logger
from ._server import serve_connection
from ._types import Handler, Limits

log = get_logger("qkms.http")


async def serve_tcp_plain(
    handler: Handler,
    host: str,
    port: int,
    *,
    name: str,
    limits: Limits,
    max_connections: int = 16,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` over plain HTTP on ``host:port``; ``task_status`` gets the port.

    Meant for a loopback or management address: no TLS, no client identity.  At most
    ``max_connections`` connections are served at once; more are closed at once.  Raises
    ``OSError`` if the address cannot be bound.  On cancellation the listener and every
    connection close.  ``name`` labels the log line (``metrics.listening``).
    """
    slots = trio.Semaphore(max_connections)

    async def connection(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await stream.aclose()
            return
        try:
            await serve_connection(stream, handler, limits=limits)
        finally:
            slots.release()

    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, connection, listeners)
        bound: int = listeners[0].socket.getsockname()[1]
        log.info(f"{name}.listening", host=host, port=bound)
        task_status.started(bound)
