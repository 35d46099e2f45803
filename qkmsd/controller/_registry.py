"""The operator's registrations (nodes and links added or taken out at runtime), stored
durably on every eligible node.

Theory of operation
-------------------
Registrations are the one part of the controller's state that node reports cannot give
back, so they are replicated, not soft.  The registry is a set of ``CtlEntry`` with a
version ``(term, n)``: the controller term that made the last change and a count within
it.  The controller changes it, stores the new version (a new file, fsynced, renamed
over the old), and sends it whole to the other eligible nodes (``ctl.registry``); each
stores it if newer than its own and answers with what it holds.  A registration is
acknowledged to the operator once a majority of the eligible nodes stored it.

A new controller first asks every eligible node for its registry (the same message,
carrying its own) and adopts the newest version among a majority's answers.  Any two
majorities share a node, so every acknowledged registration is in what it adopts; a
later term's versions are newer than any of an earlier term, so the adopted registry
then wins everywhere.  A registration that was refused for want of a majority may still
survive, if a node that stored it is in that majority (as in any replicated log).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from protocol import CtlEntry

from ..durable import replace_file


class StoredRegistry(msgspec.Struct, frozen=True):
    version: tuple[int, int] = (0, 0)
    entries: list[CtlEntry] = []


class Registry:
    """One node's copy of the registry, in ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.version: tuple[int, int] = (0, 0)
        self.entries: dict[tuple[str, str], CtlEntry] = {}

    def load(self) -> None:
        try:
            stored = msgspec.json.decode(self._path.read_bytes(), type=StoredRegistry)
        except FileNotFoundError:
            return
        self.version = stored.version
        self.entries = {(e.kind, e.name): e for e in stored.entries}

    def listing(self) -> list[CtlEntry]:
        return [self.entries[k] for k in sorted(self.entries)]

    def with_entry(self, entry: CtlEntry) -> list[CtlEntry]:
        """The registry's entries with ``entry`` in place of the one of the same name."""
        entries = dict(self.entries)
        entries[(entry.kind, entry.name)] = entry
        return [entries[k] for k in sorted(entries)]

    def adopt(self, version: tuple[int, int], entries: list[CtlEntry]) -> bool:
        """Store ``entries`` durably if ``version`` is newer than ours.  Blocking (call it
        on a worker thread); whether it was newer."""
        if tuple(version) <= self.version:
            return False
        stored = StoredRegistry(version=(int(version[0]), int(version[1])), entries=entries)
        replace_file(self._path, msgspec.json.encode(stored))
        self.version = stored.version
        self.entries = {(e.kind, e.name): e for e in entries}
        return True
