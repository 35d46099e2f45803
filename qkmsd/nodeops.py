"""Operating the node at runtime: drain and undrain its ETSI 014 front, its supply
policies, and its QKD devices' drivers (``qkmsctl node drain|undrain|status``, ``qkmsctl
policy show|set|unset|reload``, ``qkmsctl devices``, ``qkmsctl device stop|start|restart``).

A device stopped by an operator stays stopped across restarts (``<state_dir>/devices.json``)
until started again; blocks already stored stay, and synchronisation of them goes on.

Draining is for maintenance: the front refuses new ``enc_keys`` with 503 and a message
that says why, while ``dec_keys`` still hands slaves the keys their masters already have
(refusing them would strand those keys), ``status`` answers, and key synchronisation and
relays go on.  The drained state is kept in ``<state_dir>/drained`` so that a node
restarted during maintenance stays drained until ``undrain``.

A wiring module like ``status.py``: it holds the front and the policy book, not an agent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from .admin import AdminParamsError
from .config import ConfigError, load_config
from .durable import replace_file
from .keymanager import KeyManager
from .log import get_logger
from .supply import Etsi014Front, PolicyBook, SupplyError

log = get_logger("qkms.node")

_P = TypeVar("_P", bound=msgspec.Struct)


class PolicySetParams(msgspec.Struct, forbid_unknown_fields=True):
    scope: Annotated[str, msgspec.Meta(min_length=1, max_length=140)]
    changes: dict[str, Any]


class PolicyUnsetParams(msgspec.Struct, forbid_unknown_fields=True):
    scope: Annotated[str, msgspec.Meta(min_length=1, max_length=140)]


class DeviceParams(msgspec.Struct, forbid_unknown_fields=True):
    link: Annotated[str, msgspec.Meta(min_length=1, max_length=140)]


OPERATOR = "operator"
"""The stop reason of a device stopped by ``qkmsctl device stop``."""


class NodeOperations:
    """The admin methods that change how the node serves.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        front: Etsi014Front,
        book: PolicyBook,
        keys: KeyManager,
        config_path: Path,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node_id = node_id
        self._front = front
        self._book = book
        self._config_path = config_path
        self._keys = keys
        self._devices_file = state_dir / "devices.json"
        for link in _read_stopped(self._devices_file):
            try:
                keys.stop_driver(link, OPERATOR)
                log.warning("device.still_stopped", link=link)
            except KeyError:
                log.warning("device.unknown_stopped", link=link, file=str(self._devices_file))
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
            "devices": self._devices,
            "device_stop": self._device_stop,
            "device_start": self._device_start,
            "device_restart": self._device_restart,
        }

    async def _devices(self, params: dict[str, Any]) -> dict[str, Any]:
        links = await self._keys.links_status()
        return {
            "devices": [
                {
                    "link": s.link_id,
                    "peer": s.peer,
                    "driver": s.driver,
                    "state": s.driver_state,
                    "detail": s.driver_detail,
                    "stopped": s.stopped,
                }
                for s in links
                if not s.e2e
            ]
        }

    async def _device_stop(self, params: dict[str, Any]) -> dict[str, Any]:
        link = self._device_link("device_stop", params)
        self._keys.stop_driver(link, OPERATOR)
        self._save_stopped()
        log.warning("device.stopped_by_operator", link=link)
        return await self._devices({})

    async def _device_start(self, params: dict[str, Any]) -> dict[str, Any]:
        link = self._device_link("device_start", params)
        self._keys.start_driver(link, OPERATOR)
        self._save_stopped()
        log.info("device.started_by_operator", link=link)
        return await self._devices({})

    async def _device_restart(self, params: dict[str, Any]) -> dict[str, Any]:
        link = self._device_link("device_restart", params)
        self._keys.stop_driver(link, "restart")
        self._keys.start_driver(link, "restart")
        log.info("device.restarted_by_operator", link=link)
        return await self._devices({})

    def _device_link(self, method: str, params: dict[str, Any]) -> str:
        link = _convert(method, params, DeviceParams).link
        known = {s.link_id for s in self._keys.qkd_links()}
        if link not in known:
            raise AdminParamsError(
                f"{method}: no QKD link {link!r} (links: {', '.join(sorted(known)) or 'none'})"
            )
        return link

    def _save_stopped(self) -> None:
        stopped = sorted(s.link_id for s in self._keys.qkd_links() if OPERATOR in s.stopped)
        replace_file(self._devices_file, json.dumps({"stopped": stopped}).encode())

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


def _read_stopped(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.error("device.state_unreadable", file=str(path), error=str(exc))
        return []
    stopped = data.get("stopped") if isinstance(data, dict) else None
    return [s for s in stopped if isinstance(s, str)] if isinstance(stopped, list) else []


def _convert(method: str, params: dict[str, Any], kind: type[_P]) -> _P:
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise AdminParamsError(f"{method}: {exc}") from None
