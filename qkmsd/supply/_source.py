"""The seam between the ETSI 014 front and where keys come from.

The front validates a request, checks the pair's policy and shapes the answer; a
``KeySource`` makes the keys.  Each source serves the target KMEs it can reach: this node
itself (``LocalSource``), the neighbours over QKD links (``DirectLinkSource``), and, with
key relay, any node with an end-to-end pool.  A key a source hands out is recorded at
every KME whose SAEs must fetch it before the source returns, so the front can answer at
once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from ..config import SupplyPolicy
from ..keystore import CutKey


@dataclasses.dataclass(frozen=True, slots=True)
class KeyOrder:
    """New keys the front wants: ``number`` keys of ``size_bits`` from ``master`` for
    ``slaves`` (``slaves[0]`` is the pair's slave), whose KME is ``target_kme``."""

    master: str
    slaves: tuple[str, ...]
    target_kme: str
    number: int
    size_bits: int
    policy: SupplyPolicy

    @property
    def slave(self) -> str:
        return self.slaves[0]


class KeySource(Protocol):
    """Where the keys of SAE pairs come from, for the target KMEs it ``serves``."""

    def serves(self, target_kme: str) -> bool:
        """Whether this source makes keys for SAEs attached to ``target_kme``."""
        ...

    async def new_keys(self, order: KeyOrder) -> list[CutKey]:
        """``order.number`` fresh keys, recorded wherever their slaves fetch them.

        Raises ``Unavailable`` (nothing handed out) when the keys cannot be made now.
        """
        ...

    async def available(
        self, master: str, slave: str, target_kme: str, policy: SupplyPolicy
    ) -> int:
        """How many keys of the pair's size the source could hand out now (Status
        ``stored_key_count``, before the policy's cap)."""
        ...

    async def fetch(
        self, key_ids: Sequence[str], *, master: str, requester: str
    ) -> list[tuple[str, bytes]]:
        """Hand ``requester`` the keys recorded here for it under ``key_ids``, once each.

        All or nothing.  Raises the key store's ``NotAuthorised`` or ``ServiceKeyNotFound``.
        """
        ...
