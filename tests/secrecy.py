"""A scanner for key material in text and files: raw bytes, hex and base64.

A secret is cut into aligned chunks of ``CHUNK`` bytes; a leak of any run of at least
``2 * CHUNK - 1`` bytes of it contains a whole chunk, whatever its offset.  Each chunk is
looked for raw, as hex (either case), and as standard and URL-safe base64 at each of the
three byte alignments base64 can start at.  Whole secrets shorter than a chunk pair (a
service key of 32 bytes and less) are looked for whole as well.

Hits name the source, the offset, the encoding and the secret's index: never the secret.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np

CHUNK = 16
_PREFIX = 8  # bytes compared at every offset at once (numpy), then the whole needle


@dataclasses.dataclass(frozen=True)
class Hit:
    where: str
    offset: int
    encoding: str
    secret: int

    def __str__(self) -> str:
        return f"{self.where}@{self.offset}: secret #{self.secret} as {self.encoding}"


def _base64_forms(chunk: bytes) -> Iterator[tuple[str, bytes]]:
    for k in range(3):
        part = chunk[k:]
        part = part[: len(part) // 3 * 3]
        if len(part) >= 12:  # 16 characters: long enough to mean something
            yield "base64", base64.b64encode(part)
            yield "base64url", base64.urlsafe_b64encode(part)


class SecretScanner:
    """Looks for every secret given, in every encoding above, in the data it is shown."""

    def __init__(self, secrets: Iterable[bytes], *, chunk: int = CHUNK) -> None:
        self.secrets = 0
        self._exact: dict[bytes, list[tuple[bytes, str, int]]] = {}
        self._lower: dict[bytes, list[tuple[bytes, str, int]]] = {}
        for index, secret in enumerate(secrets):
            self.secrets += 1
            pieces = [secret[o : o + chunk] for o in range(0, len(secret) - chunk + 1, chunk)]
            if len(secret) < 2 * chunk - 1 and len(secret) >= _PREFIX:
                pieces.append(secret)
            for piece in pieces:
                self._add(self._exact, piece, "raw", index)
                self._add(self._lower, piece.hex().encode(), "hex", index)
                for encoding, text in _base64_forms(piece):
                    self._add(self._exact, text, encoding, index)

    @staticmethod
    def _add(
        table: dict[bytes, list[tuple[bytes, str, int]]], needle: bytes, encoding: str, index: int
    ) -> None:
        table.setdefault(needle[:_PREFIX], []).append((needle, encoding, index))

    def scan(self, where: str, data: bytes | str) -> list[Hit]:
        """Every place a secret occurs in ``data`` (text is scanned as UTF-8)."""
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        hits = list(self._find(where, raw, self._exact))
        hits += self._find(where, raw.lower(), self._lower)
        return hits

    @staticmethod
    def _find(
        where: str, hay: bytes, table: dict[bytes, list[tuple[bytes, str, int]]]
    ) -> Iterator[Hit]:
        if not table or len(hay) < _PREFIX:
            return
        prefixes = np.frombuffer(b"".join(table), dtype="<u8")
        for k in range(_PREFIX):
            count = (len(hay) - k) // _PREFIX
            if count <= 0:
                continue
            values = np.frombuffer(hay, dtype="<u8", count=count, offset=k)
            for j in np.flatnonzero(np.isin(values, prefixes)).tolist():
                offset = k + _PREFIX * j
                for needle, encoding, index in table[hay[offset : offset + _PREFIX]]:
                    if hay.startswith(needle, offset):
                        yield Hit(where, offset, encoding, index)
