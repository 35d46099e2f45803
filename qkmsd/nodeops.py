"""Operating the node at runtime: drain and undrain its ETSI 014 front, and its supply
policies (``qkmsctl node drain|undrain|status``, ``qkmsctl policy show|set|unset|reload``).

Draining is for maintenance: the front refuses new ``enc_keys`` with 503 and a message
that says why, while ``dec_keys`` still hands slaves the keys their masters already have
(refusing them would strand those keys), ``status`` answers, and key synchronisation and
relays go on.  The drained state is kept in ``<state_dir>/drained`` so that a node
restarted during maintenance stays drained until ``undrain``.

A wiring module like ``status.py``: it holds the front and the policy book, not an agent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from .admin import AdminParamsError
from .config import ConfigError, load_config
from .log import get_logger
from .supply import Etsi014Front, PolicyBook, SupplyError

log = get_logger("qkms.node")

_P = TypeVar("_P", bound=msgspec.Struct)


class PolicySetParams(msgspec.Struct, forbid_unknown_fields=True):
    scope: Annotated[str, msgspec.Meta(min_length=1, max_length=140)]
    changes: dict[str, Any]


class PolicyUnsetParams(msgspec.Struct, forbid_unknown_fields=True):
    scope: Annotated[str, msgspec.Meta(min_length=1, max_length=140)]


class NodeOperations:
    """The admin methods that change how the node serves.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        front: Etsi014Front,
        book: PolicyBook,
        config_path: Path,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node_id = node_id
        self._front = front
        self._book = book
        self._config_path = config_path
        self._marker = state_dir / "drained"
        self._clock = clock
        self._since: float | None = None
        if self._marker.exists():
            self._since = self._marker.stat().st_mtime
            front.draining = True
            log.warning("node.still_drained", node=node_id, marker=str(self._marker))

    def methods(self) -> dict[str, Any]:
        return {
            "node": self._node,
            "node_drain": self._drain,
            "node_undrain": self._undrain,
            "policy": self._policy_show,
            "policy_set": self._policy_set,
            "policy_unset": self._policy_unset,
            "policy_reload": self._policy_reload,
        }

    async def _node(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "node_id": self._node_id,
            "draining": self._front.draining,
            "drained_since": self._since,
            "requests_in_flight": self._front.in_flight,
        }

    async def _drain(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self._front.draining:
            self._marker.touch(mode=0o600)
            self._since = self._clock()
            self._front.draining = True
            log.warning("node.drained", node=self._node_id)
        return await self._node(params)

    async def _undrain(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._front.draining:
            try:
                os.unlink(self._marker)
            except FileNotFoundError:
                pass
            self._since = None
            self._front.draining = False
            log.warning("node.undrained", node=self._node_id)
        return await self._node(params)

    async def _policy_show(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._book.show()

    async def _policy_set(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("policy_set", params, PolicySetParams)
        try:
            result = self._book.set(p.scope, p.changes)
        except SupplyError as exc:
            raise AdminParamsError(exc.message) from None
        log.info("policy.set", scope=p.scope, fields=",".join(sorted(p.changes)))
        return result

    async def _policy_unset(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("policy_unset", params, PolicyUnsetParams)
        try:
            result = self._book.unset(p.scope)
        except SupplyError as exc:
            raise AdminParamsError(exc.message) from None
        log.info("policy.unset", scope=p.scope)
        return result

    async def _policy_reload(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            config = load_config(self._config_path)
        except ConfigError as exc:
            raise AdminParamsError(f"policy_reload: {exc}") from None
        try:
            result = self._book.reload(config)
        except SupplyError as exc:
            raise AdminParamsError(f"policy_reload: {exc.message}") from None
        log.info("policy.reloaded", config=str(self._config_path))
        return result


def _convert(method: str, params: dict[str, Any], kind: type[_P]) -> _P:
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise AdminParamsError(f"{method}: {exc}") from None
