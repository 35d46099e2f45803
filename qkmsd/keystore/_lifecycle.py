"""The life cycle of a key block in the node's key store.

Theory of operation: a block arrives from the QKD driver as RECEIVED.  It
becomes READY once both ends of the link have confirmed they hold it; if only
one end has it when the synchronisation time-out runs out, or the peer discards
it, it is DISCARDED.  A READY block is RESERVED when it is allocated to a
consumer (a service key or a relay hop), EXPIRED when it outlives the maximum
age, or DISCARDED by an operator flush or a peer.  A reservation ends DELIVERED
or DISCARDED, never back in READY: key material that may have left the store is
never offered twice.  Every ending passes through ERASED, which is terminal.
Entering EXPIRED, DISCARDED or ERASED erases the material; the row stays as a
tombstone so that a block id is never accepted twice.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ._errors import IllegalTransition


class KeyState(enum.StrEnum):
    RECEIVED = "received"
    READY = "ready"
    RESERVED = "reserved"
    DELIVERED = "delivered"
    ERASED = "erased"
    EXPIRED = "expired"
    DISCARDED = "discarded"


TRANSITIONS: Final[Mapping[KeyState, frozenset[KeyState]]] = MappingProxyType(
    {
        KeyState.RECEIVED: frozenset({KeyState.READY, KeyState.DISCARDED}),
        KeyState.READY: frozenset({KeyState.RESERVED, KeyState.EXPIRED, KeyState.DISCARDED}),
        KeyState.RESERVED: frozenset({KeyState.DELIVERED, KeyState.DISCARDED}),
        KeyState.DELIVERED: frozenset({KeyState.ERASED}),
        KeyState.EXPIRED: frozenset({KeyState.ERASED}),
        KeyState.DISCARDED: frozenset({KeyState.ERASED}),
        KeyState.ERASED: frozenset(),
    }
)
"""``{state: states it may move to}``; an edge not listed here is illegal."""

TERMINAL: Final = frozenset(state for state, nxt in TRANSITIONS.items() if not nxt)
"""States with no way out (ERASED)."""

USABLE: Final = frozenset({KeyState.READY})
"""States from which key may be allocated to a consumer."""

HOLDS_MATERIAL: Final = frozenset(
    {KeyState.RECEIVED, KeyState.READY, KeyState.RESERVED, KeyState.DELIVERED}
)
"""States whose rows still hold (encrypted) key material; the others are tombstones."""


def is_legal(old: KeyState, new: KeyState) -> bool:
    return new in TRANSITIONS[old]


def check_transition(
    old: KeyState, new: KeyState, *, link_id: str | None = None, block_id: int | None = None
) -> None:
    """Raise ``IllegalTransition`` unless the table allows ``old -> new``.

    With ``link_id`` and ``block_id`` the message names the block:
    ``block L/123: illegal transition ready -> received``.
    """
    if is_legal(old, new):
        return
    where = f"block {link_id}/{block_id}: " if link_id is not None else ""
    raise IllegalTransition(f"{where}illegal transition {old} -> {new}")
