"""The profile agent: the profile book's admin methods and its sampling of the pools.

``qkmsctl profile add|set|list|show|remove|activate|deactivate`` call the methods here
(``profile_add``, ``profile_set``, ``profiles``, ``profile``, ``profile_remove``,
``profile_activate``, ``profile_deactivate``).  A change is written to
``<state_dir>/profiles.json`` before it is answered, and applies to the next key request
and the next relay decision.

In a network with a controller (``forward`` given), a change is not made here: it goes
to the controller, which sends it to every node that reports to it, and each node applies
it (``apply``) only if the profile concerns it (its node pairs name the node, or its SAE
pairs have an SAE of the node).  The answer then lists each node's outcome.  ``local:
true`` changes this node only, as without a controller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import trio

from ..errors import QkmsError
from ..log import get_logger
from ._book import NAME_PATTERN, Profile, ProfileBook, ProfileError, ProfileStatus

log = get_logger("qkms.profiles")
_P = TypeVar("_P", bound=msgspec.Struct)

SAMPLE_S = 1.0
"""How often the pools' key counters are read for the profiles' generated bits."""


class _Name(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]


class _Add(msgspec.Struct, forbid_unknown_fields=True):
    profile: dict[str, Any]
    local: bool = False


class _Set(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    changes: dict[str, Any]
    local: bool = False


class _Change(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    local: bool = False


Outcome = Literal["applied", "removed", "skipped", "refused"]

Forward = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""``(op, name, fields)`` to the controller; its answer, or None without a controller."""


def status_view(status: ProfileStatus) -> dict[str, Any]:
    """A profile's status as the admin methods answer it (counts and settings, no keys)."""
    view: dict[str, Any] = msgspec.to_builtins(status)
    view["name"] = status.profile.name
    return view


class ProfileAgent:
    """Runs the profile book of one node: its admin methods and pool sampling."""

    def __init__(
        self,
        book: ProfileBook,
        *,
        link_bits: Callable[[], Awaitable[Mapping[str, int]]],
        forward: Forward | None = None,
    ) -> None:
        """``link_bits``: key bits stored into each pool since the node started, by peer.
        ``forward``: sends a change to the controller (see the module docstring)."""
        self.book = book
        self._link_bits = link_bits
        self.forward = forward

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample the pools every ``SAMPLE_S`` until cancelled.  A store that cannot be read
        (its own alarm says why) skips a sample; it never stops the node."""
        await self._sample()
        task_status.started()
        while True:
            await trio.sleep(SAMPLE_S)
            await self._sample()

    async def _sample(self) -> None:
        try:
            bits = await self._link_bits()
        except QkmsError as exc:  # the levels come from the key store
            log.debug("profiles.sample_skipped", error=type(exc).__name__)
            return
        self.book.sample(bits)

    def statuses(self) -> list[ProfileStatus]:
        return self.book.statuses()

    def admin_methods(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        return {
            "profiles": self._list,
            "profile": self._show,
            "profile_add": self._add,
            "profile_set": self._set,
            "profile_remove": self._remove,
            "profile_activate": self._activate,
            "profile_deactivate": self._deactivate,
        }

    async def _list(self, params: dict[str, Any]) -> dict[str, Any]:
        _convert("profiles", params, _Empty)
        return {"profiles": [status_view(s) for s in self.book.statuses()]}

    async def _show(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _convert("profile", params, _Name).name
        return status_view(self.book.status(name))

    async def _add(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("profile_add", params, _Add)
        if not p.local:
            profile = self.book.check(p.profile)  # refused here, not at every node
            fields = msgspec.to_builtins(profile)
            sent = await self._via_controller("add", profile.name, fields)
            if sent is not None:
                return sent
        status = self.book.add(p.profile)
        log.info("profile.added", profile=status.profile.name, active=status.active)
        return status_view(status)

    async def _set(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("profile_set", params, _Set)
        if not p.local:
            sent = await self._via_controller("set", p.name, p.changes)
            if sent is not None:
                return sent
        status = self.book.set(p.name, p.changes)
        log.info("profile.changed", profile=p.name, fields=",".join(sorted(p.changes)))
        return status_view(status)

    async def _remove(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("profile_remove", params, _Change)
        if not p.local:
            sent = await self._via_controller("remove", p.name, {})
            if sent is not None:
                return {**sent, "removed": p.name, "profiles": self.book.names()}
        self.book.remove(p.name)
        log.info("profile.removed", profile=p.name)
        return {"removed": p.name, "profiles": self.book.names()}

    async def _activate(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("profile_activate", params, _Change)
        if not p.local:
            sent = await self._via_controller("activate", p.name, {})
            if sent is not None:
                return sent
        status = self.book.activate(p.name)
        log.info("profile.activated", profile=p.name)
        return status_view(status)

    async def _deactivate(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("profile_deactivate", params, _Change)
        if not p.local:
            sent = await self._via_controller("deactivate", p.name, {})
            if sent is not None:
                return sent
        status = self.book.deactivate(p.name)
        log.info("profile.deactivated", profile=p.name)
        return status_view(status)

    async def _via_controller(
        self, op: str, name: str, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The controller's answer with this node's status of the profile added (``status``,
        None if this node does not hold it); None without a controller."""
        if self.forward is None:
            return None
        answer = await self.forward(op, name, fields)
        if answer is None:
            return None
        held = self.book.holds(name)
        return {**answer, "status": status_view(self.book.status(name)) if held else None}

    # --- from the controller ---------------------------------------------------------

    def apply(
        self, op: str, name: str, fields: Mapping[str, Any]
    ) -> tuple[Outcome, str, dict[str, Any]]:
        """Apply a change the controller distributes, if the profile concerns this node.

        Returns ``(result, message, profile)``: ``result`` is ``applied``, ``removed`` (a
        change made the profile no longer concern this node), ``skipped`` (it does not
        concern this node, or the node does not hold it) or ``refused`` (the message says
        why: nothing changed); ``profile`` is the profile as changed, as fields ({} if
        this node does not know it), which the controller sends on to the nodes it now
        concerns.
        """
        try:
            result, message, profile = self._apply(op, name, fields)
        except ProfileError as exc:
            return "refused", str(exc), {}
        return result, message, msgspec.to_builtins(profile) if profile is not None else {}

    def _apply(
        self, op: str, name: str, fields: Mapping[str, Any]
    ) -> tuple[Outcome, str, Profile | None]:
        book = self.book
        if op in ("add", "put"):
            profile = book.check({**fields, "name": name})
            if not book.concerns(profile):
                if op == "put" and book.holds(name):
                    book.remove(name)
                    log.info("profile.removed", profile=name, by="controller")
                    return "removed", "no longer concerns this node", profile
                return "skipped", "does not concern this node", None
            if op == "add":
                book.add(msgspec.to_builtins(profile))
            else:
                book.put(profile)
            log.info("profile.stored", profile=name, by="controller", active=profile.active)
            return "applied", "", profile
        if not book.holds(name):
            return "skipped", "not held here", None
        if op == "set":
            changed = book.changed(name, fields)
            if not book.concerns(changed):
                book.remove(name)
                log.info("profile.removed", profile=name, by="controller")
                return "removed", "no longer concerns this node", changed
            book.put(changed)
        elif op == "remove":
            book.remove(name)
            log.info("profile.removed", profile=name, by="controller")
            return "applied", "", None
        elif op == "activate":
            book.activate(name)
        elif op == "deactivate":
            book.deactivate(name)
        else:
            return "refused", f"unknown change {op!r}", None
        log.info("profile.changed", profile=name, op=op, by="controller")
        return "applied", "", book.profile(name)


class _Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


def _convert(method: str, params: dict[str, Any], kind: type[_P]) -> _P:
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise ProfileError(f"{method}: {exc}") from None
