"""The profile agent: the profile book's admin methods and its sampling of the pools.

``qkmsctl profile add|set|list|show|remove|activate|deactivate`` call the methods here
(``profile_add``, ``profile_set``, ``profiles``, ``profile``, ``profile_remove``,
``profile_activate``, ``profile_deactivate``).  A change is written to
``<state_dir>/profiles.json`` before it is answered, and applies to the next key request
and the next relay decision.  The controller, once it distributes profiles, will call the
same book through these methods on each node a profile concerns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar

import msgspec
import trio

from ..errors import QkmsError
from ..log import get_logger
from ._book import NAME_PATTERN, ProfileBook, ProfileError, ProfileStatus

log = get_logger("qkms.profiles")
_P = TypeVar("_P", bound=msgspec.Struct)

SAMPLE_S = 1.0
"""How often the pools' key counters are read for the profiles' generated bits."""


class _Name(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]


class _Add(msgspec.Struct, forbid_unknown_fields=True):
    profile: dict[str, Any]


class _Set(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    changes: dict[str, Any]


def status_view(status: ProfileStatus) -> dict[str, Any]:
    """A profile's status as the admin methods answer it (counts and settings, no keys)."""
    view: dict[str, Any] = msgspec.to_builtins(status)
    view["name"] = status.profile.name
    return view


class ProfileAgent:
    """Runs the profile book of one node: its admin methods and pool sampling."""

    def __init__(
        self, book: ProfileBook, *, link_bits: Callable[[], Awaitable[Mapping[str, int]]]
    ) -> None:
        """``link_bits``: key bits stored into each pool since the node started, by peer."""
        self.book = book
        self._link_bits = link_bits

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
        fields = _convert("profile_add", params, _Add).profile
        status = self.book.add(fields)
        log.info("profile.added", profile=status.profile.name, active=status.active)
        return status_view(status)

    async def _set(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("profile_set", params, _Set)
        status = self.book.set(p.name, p.changes)
        log.info("profile.changed", profile=p.name, fields=",".join(sorted(p.changes)))
        return status_view(status)

    async def _remove(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _convert("profile_remove", params, _Name).name
        self.book.remove(name)
        log.info("profile.removed", profile=name)
        return {"removed": name, "profiles": self.book.names()}

    async def _activate(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _convert("profile_activate", params, _Name).name
        status = self.book.activate(name)
        log.info("profile.activated", profile=name)
        return status_view(status)

    async def _deactivate(self, params: dict[str, Any]) -> dict[str, Any]:
        name = _convert("profile_deactivate", params, _Name).name
        status = self.book.deactivate(name)
        log.info("profile.deactivated", profile=name)
        return status_view(status)


class _Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


def _convert(method: str, params: dict[str, Any], kind: type[_P]) -> _P:
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise ProfileError(f"{method}: {exc}") from None
