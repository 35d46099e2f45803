"""Structured logs: one line per event, fields as key=value, never a crash."""

from __future__ import annotations

import json
import logging

import pytest

from qkmsd.log import EventLogger, JsonFormatter, KeyValueFormatter


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
