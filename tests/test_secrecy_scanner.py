"""The secrecy scanner finds key material planted in a log line, in every form, and nothing
in clean text."""

from __future__ import annotations

import base64
import os

import pytest

from tests.secrecy import SecretScanner

BLOCK = os.urandom(512)
KEY = os.urandom(32)


def scanner() -> SecretScanner:
    return SecretScanner([BLOCK, KEY])


@pytest.mark.parametrize(
    ("encode", "encoding"),
    [
        (lambda b: b.hex(), "hex"),
        (lambda b: b.hex().upper(), "hex"),
        (lambda b: base64.b64encode(b).decode(), "base64"),
        (lambda b: base64.urlsafe_b64encode(b).decode(), "base64url"),
    ],
)
@pytest.mark.parametrize("start", [0, 1, 2, 7, 33, 100])
def test_a_key_cut_from_a_block_and_planted_in_a_log_line_is_found(
    encode: object, encoding: str, start: int
) -> None:
    service_key = BLOCK[start : start + 32]  # any 32 bytes of a block, at any offset
    line = f'ts=1 level=info event=supply.delivered key="{encode(service_key)}" n=1\n'  # type: ignore[operator]
    hits = scanner().scan("qkmsd.log", line)
    assert hits and encoding in {h.encoding for h in hits}
    assert {h.secret for h in hits} == {0}
    assert all(h.where == "qkmsd.log" for h in hits)


def test_raw_bytes_in_a_file_are_found() -> None:
    data = b"\x00header" + KEY + b"trailer"
    hits = scanner().scan("state/file", data)
    assert [(h.offset, h.encoding, h.secret) for h in hits] == [(7, "raw", 1), (23, "raw", 1)]


def test_a_whole_delivered_key_in_base64_is_found() -> None:
    encoded = base64.b64encode(KEY).decode()
    hits = scanner().scan("out", f'{{"key": "{encoded}"}}')
    assert {h.secret for h in hits} == {1}


def test_clean_text_and_other_random_bytes_have_no_hits() -> None:
    clean = (
        "ts=1 level=info event=link.block_ready link=KME1~KME2 block=7 bits=4096\n"
        + os.urandom(4096).hex()
        + base64.b64encode(os.urandom(4096)).decode()
    )
    assert scanner().scan("log", clean) == []
    assert scanner().scan("bin", os.urandom(1 << 16)) == []


def test_a_hit_names_where_and_how_but_never_the_secret() -> None:
    [hit, *_] = scanner().scan("log", KEY.hex())
    assert KEY.hex() not in str(hit) and KEY.hex()[:16] not in repr(hit)
