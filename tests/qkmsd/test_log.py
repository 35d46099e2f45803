"""Structured logs: one line per event, fields as key=value, never a crash."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from qkmsd.log import EventLogger, JsonFormatter, KeyValueFormatter, configure


def record_of(caplog: pytest.LogCaptureFixture, **fields: object) -> logging.LogRecord:
    with caplog.at_level(logging.INFO, logger="qkms.test"):
        EventLogger("qkms.test").info("thing.happened", **fields)
    return caplog.records[-1]


def test_fields_named_like_record_attributes_do_not_break_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = record_of(caplog, message="hello", args="x", peer="KME_B")
    line = KeyValueFormatter().format(record)
    assert "event=thing.happened" in line
    assert "message_=hello" in line and "peer=KME_B" in line


def test_key_value_quotes_values_with_spaces(caplog: pytest.LogCaptureFixture) -> None:
    line = KeyValueFormatter().format(record_of(caplog, reason="connection refused"))
    assert 'reason="connection refused"' in line


def test_json_lines_parse(caplog: pytest.LogCaptureFixture) -> None:
    out = json.loads(JsonFormatter().format(record_of(caplog, count=3, link="A~B")))
    assert out["event"] == "thing.happened" and out["count"] == 3 and out["link"] == "A~B"


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    saved = {
        name: (lg.handlers[:], lg.level, lg.propagate)
        for name in ("qkms", "qkd_drivers")
        for lg in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def test_driver_logs_come_out_structured_too(
    capsys: pytest.CaptureFixture[str], restore_loggers: None
) -> None:
    configure("info", "kv", node_id="KME_A")
    logging.getLogger("qkd_drivers.vendor").warning("device.lost", extra={"link": "A~B"})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "event=device.lost" in line and "link=A~B" in line and "node=KME_A" in line
