"""Structured logs: one event per line, ``key=value`` or JSON, to stderr.

Call sites log an event name and fields: ``log.info("peer.connected", peer="KME_B")``.
Fields are for identifiers, counts and states.  Key material never goes here:
``KeyBlock`` hides its key from ``repr`` and nothing in the daemon formats key bytes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


_NEEDS_QUOTES = re.compile(r'[ ="\n]')


def _kv(value: Any) -> str:
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    # The access log writes a line per request: the timestamp's seconds are formatted
    # once per second, not once per line.
    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        parts = [f"ts={self._stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}"]
        parts.append(f"event={_kv(record.getMessage())}")
        parts.extend(f"{k}={_kv(v)}" for k, v in _fields(record).items())
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(f"error={_kv(repr(record.exc_info[1]))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        out.update(
            {
                k: v if isinstance(v, int | float | bool) else str(v)
                for k, v in _fields(record).items()
            }
        )
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = repr(record.exc_info[1])
        return json.dumps(out)


class EventLogger:
    """``log.info("event.name", field=value, ...)``: fields become structured data."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            # A field named like a LogRecord attribute ("message", "args") would make
            # logging raise: logging must never take the daemon down, so rename it.
            safe = {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}
            self._logger.log(level, event, extra=safe, exc_info=exc, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)


def configure(level: str = "info", fmt: str = "kv", *, node_id: str | None = None) -> None:
    """Send qkms logs to stderr in the chosen format."""
    # Our lines never show the caller, thread or process: don't look them up for each
    # record (the logging docs' "Optimization" section; the access log is per request).
    logging._srcfile = None  # documented there under this name
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    if node_id is not None:
        handler.addFilter(_NodeFilter(node_id))
    # The daemon's own loggers, and the drivers' (a separate package, same format).
    for name in ("qkms", "qkd_drivers"):
        root = logging.getLogger(name)
        root.handlers[:] = [handler]
        root.setLevel(level.upper())
        root.propagate = False


class _NodeFilter(logging.Filter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = self.node_id
        return True
