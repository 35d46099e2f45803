"""Identifier rules and size limits of the peer and admin wire, defined once.

The message types in this package validate with them; the daemon's key store and
configuration and the CLI import them from here rather than repeating a regex or a
number.  (The ETSI 014 API's own bounds live with it, in ``protocol.etsi014``.)

Every pattern is anchored (``^...$``) and carries its length bound, so msgspec's
``pattern`` (which searches) and ``re.fullmatch`` accept the same ids, except that under
search ``$`` also matches before a trailing newline; the compiled ``*_RE.fullmatch`` does not.
"""

from __future__ import annotations

import re
from typing import Final

NODE_ID_MAX_LENGTH: Final = 64
NODE_ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
"""A node (KME) id: 1-64 of ``A-Z a-z 0-9 _ . : -``."""
NODE_ID_RE: Final = re.compile(NODE_ID_PATTERN)

SAE_ID_MAX_LENGTH: Final = NODE_ID_MAX_LENGTH
SAE_ID_PATTERN: Final = NODE_ID_PATTERN
"""An SAE id as the KMEs name it among themselves and in configuration: a node id's rules.

(The ETSI 014 API itself takes any printable SAE id; the daemon's own are narrower.)
"""
SAE_ID_RE: Final = NODE_ID_RE

LINK_ID_MAX_LENGTH: Final = 129
LINK_ID_PATTERN: Final = r"^[A-Za-z0-9_.:~-]{1,129}$"
"""A link id: 1-129 of ``A-Z a-z 0-9 _ . : ~ -`` (lab networks name a link ``A~B``)."""
LINK_ID_RE: Final = re.compile(LINK_ID_PATTERN)

KEY_ID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""A service key id as the KMEs exchange and store it: a lower-case UUID."""
KEY_ID_RE: Final = re.compile(KEY_ID_PATTERN)

MAX_BLOCK_ID: Final = 2**63 - 1
"""Block ids are unsigned 63-bit integers (they fit SQLite's INTEGER)."""
MAX_IDS_PER_MESSAGE: Final = 4096
"""Block ids in one ``key.announce``, ``key.confirm`` or ``key.discard``."""
MAX_KEYS_PER_RESERVATION: Final = 4096
"""Service keys in one ``supply.reserve``."""
MAX_SEGMENTS_PER_KEY: Final = 64
"""Block segments one service key may be cut from."""
MAX_SLAVES_PER_RESERVATION: Final = 256
"""Slave SAEs one ``supply.reserve`` may name."""
