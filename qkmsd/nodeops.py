"""Operating the node at runtime: drain and undrain its ETSI 014 front, its supply
policies, and its QKD devices' drivers (``qkmsctl node drain|undrain|status``, ``qkmsctl
policy show|set|unset|reload``, ``qkmsctl devices [register|remove]``, ``qkmsctl device
stop|start|restart``).

A device stopped by an operator stays stopped across restarts (``<state_dir>/devices.json``)
until started again; blocks already stored stay, and synchronisation of them goes on.

A device registered at runtime (``devices register``: a driver kind, its parameters, the
link id and the peer it serves) is a QKD link like one of the config file, kept in the
same file and taken up again at every start until ``devices remove``.  Removing one stops
its driver and forgets the link; blocks it stored stay in the key store (until they
expire) but are served no more.  A link of the config file is not removed here: its
section in the file is.

Draining is for maintenance: the front refuses new ``enc_keys`` with 503 and a message
that says why, while ``dec_keys`` still hands slaves the keys their masters already have
(refusing them would strand those keys), ``status`` answers, and key synchronisation and
relays go on.  The drained state is kept in ``<state_dir>/drained`` so that a node
restarted during maintenance stays drained until ``undrain``.

A wiring module like ``status.py``: it holds the front and the policy book, not an agent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from protocol import LINK_ID_RE
from qkd_drivers import DriverConfigError, driver_class

from .admin import AdminParamsError
from .config import Config, ConfigError, LinkConfig, load_config
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


class RegisterParams(msgspec.Struct, forbid_unknown_fields=True):
    link: Annotated[str, msgspec.Meta(min_length=1, max_length=140)]
    peer: Annotated[str, msgspec.Meta(min_length=1, max_length=140)]
    driver: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    params: dict[str, Any] = {}


class Registration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A device registered at runtime, as ``devices.json`` keeps it (parameters as given)."""

    peer: str
    driver: str
    params: dict[str, Any] = {}


@dataclasses.dataclass
class DeviceHooks:
    """What registering and removing a device at runtime changes (``app.py``'s doing)."""

    link_to: Callable[[], dict[str, str]]
    """Peer -> link id of every link this node keeps (QKD links and end-to-end pools)."""
    add: Callable[[LinkConfig], Awaitable[None]]
    """Start the new link's driver and serve its key like a configured link's."""
    remove: Callable[[str, str], Awaitable[None]]
    """``(link id, peer)``: stop the link's driver and forget the link."""


def link_config(cfg: Config, link_id: str, reg: Registration) -> LinkConfig:
    """``reg`` checked against ``cfg`` as a link of the config file would be.

    Raises ``AdminParamsError`` naming the problem and the fix.
    """
    where = f"devices register {link_id}"
    if not LINK_ID_RE.fullmatch(link_id):
        raise AdminParamsError(
            f"{where}: not a valid link id (1-129 of A-Z a-z 0-9 _ . : ~ -); e.g."
            f" {'~'.join(sorted((cfg.node_id, reg.peer)))}"
        )
    if link_id in cfg.links:
        raise AdminParamsError(
            f"{where}: the link is in the config file {cfg.source}; change its"
            f" [links.{link_id}] section there and restart"
        )
    if reg.peer == cfg.node_id:
        raise AdminParamsError(f"{where}: peer {reg.peer} is this node; name the other end")
    if reg.peer not in cfg.peers:
        known = ", ".join(sorted(cfg.peers)) or "none"
        raise AdminParamsError(
            f"{where}: peer {reg.peer!r} is not in [peers] of {cfg.source} (known: {known});"
            f" add [peers.{reg.peer}] with its address, restart, then register"
        )
    try:
        cls = driver_class(reg.driver)
        raw = dict(reg.params)
        for name in cls.path_params:  # as the config file resolves them: against its folder
            if isinstance(raw.get(name), str):
                raw[name] = str((cfg.source.parent / Path(raw[name]).expanduser()).resolve())
        params = cls.parse_params(raw)
    except DriverConfigError as exc:
        raise AdminParamsError(f"{where}: {exc}") from None
    return LinkConfig(link_id, reg.peer, reg.driver, params)


def registered_devices(cfg: Config) -> dict[str, LinkConfig]:
    """The devices registered at runtime (``<state_dir>/devices.json``) that still fit the
    config; one that does not (its peer left [peers], the file now has its link) is logged
    and left out, but stays in the file."""
    out: dict[str, LinkConfig] = {}
    taken = {link.peer: link_id for link_id, link in cfg.links.items()}
    taken.update({pool.peer: link_id for link_id, pool in cfg.relay_pools.items()})
    for link_id, reg in _read_devices(cfg.state_dir / "devices.json")[1].items():
        try:
            link = link_config(cfg, link_id, reg)
            if reg.peer in taken:
                raise AdminParamsError(f"peer {reg.peer} has link {taken[reg.peer]} already")
        except AdminParamsError as exc:
            log.error("device.registration_ignored", link=link_id, error=str(exc))
            continue
        out[link_id] = link
        taken[reg.peer] = link_id
    return out


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
        config: Config | None = None,
        device_hooks: DeviceHooks | None = None,
    ) -> None:
        """``config`` and ``device_hooks``: without them, devices cannot be registered or
        removed at runtime."""
        self._node_id = node_id
        self._front = front
        self._book = book
        self._config_path = config_path
        self._keys = keys
        self._devices_file = state_dir / "devices.json"
        self._config = config
        self._hooks = device_hooks
        stopped, self._registered = _read_devices(self._devices_file)
        for link in stopped:
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
            "device_register": self._device_register,
            "device_remove": self._device_remove,
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
                    "registered": s.link_id in self._registered,
                }
                for s in links
                if not s.e2e
            ]
        }

    async def _device_register(self, params: dict[str, Any]) -> dict[str, Any]:
        p = _convert("device_register", params, RegisterParams)
        if self._config is None or self._hooks is None:
            raise AdminParamsError("device_register: this node cannot take devices at runtime")
        where = f"devices register {p.link}"
        reg = Registration(p.peer, p.driver, dict(p.params))
        if p.link in self._registered:
            old = self._registered[p.link]
            raise AdminParamsError(
                f"{where}: registered already (peer {old.peer}, driver {old.driver}); remove"
                f" it first with `qkmsctl devices remove {p.link}`"
            )
        link_to = self._hooks.link_to()
        if p.link in link_to.values():
            raise AdminParamsError(f"{where}: the node has a link or pool of that id already")
        link = link_config(self._config, p.link, reg)
        if p.peer in link_to:
            held = link_to[p.peer]
            raise AdminParamsError(
                f"{where}: peer {p.peer} has link {held} already (a node keeps one link or"
                f" end-to-end pool per peer); remove that one first"
            )
        try:
            json.dumps(reg.params)
        except (TypeError, ValueError):
            raise AdminParamsError(f"{where}: parameters must be JSON values") from None
        registered = {**self._registered, p.link: reg}
        self._save(registered=registered)
        self._registered = registered
        await self._hooks.add(link)
        log.warning("device.registered", link=p.link, peer=p.peer, driver=p.driver)
        return await self._devices({})

    async def _device_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        link = _convert("device_remove", params, DeviceParams).link
        if link not in self._registered:
            if self._config is not None and link in self._config.links:
                raise AdminParamsError(
                    f"devices remove {link}: the link is in the config file"
                    f" {self._config.source}; delete its [links.{link}] section and restart"
                    f" (or stop its driver: `qkmsctl device stop {link}`)"
                )
            known = ", ".join(sorted(self._registered)) or "none"
            raise AdminParamsError(
                f"devices remove {link}: no device registered for it (registered: {known})"
            )
        assert self._hooks is not None
        reg = self._registered[link]
        registered = {k: v for k, v in self._registered.items() if k != link}
        self._save(registered=registered)  # first: a crash now leaves it removed
        self._registered = registered
        await self._hooks.remove(link, reg.peer)
        self._save()
        log.warning("device.removed", link=link, peer=reg.peer)
        return await self._devices({})

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
        self._save()

    def _save(self, *, registered: dict[str, Registration] | None = None) -> None:
        """Write the stopped devices and the registered ones (``registered``, or those
        held).  Raises ``AdminParamsError`` if the file cannot be written: nothing changed."""
        stopped = sorted(s.link_id for s in self._keys.qkd_links() if OPERATOR in s.stopped)
        data = {
            "stopped": stopped,
            "registered": msgspec.to_builtins(
                self._registered if registered is None else registered
            ),
        }
        try:
            replace_file(self._devices_file, json.dumps(data, sort_keys=True).encode())
        except OSError as exc:
            raise AdminParamsError(
                f"devices: cannot write {self._devices_file} ({exc.strerror or exc});"
                " nothing changed"
            ) from None

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


def _read_devices(path: Path) -> tuple[list[str], dict[str, Registration]]:
    """The stopped devices and the registered ones in ``path`` (none if it is missing or
    unreadable: logged)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return [], {}
    except (OSError, ValueError) as exc:
        log.error("device.state_unreadable", file=str(path), error=str(exc))
        return [], {}
    if not isinstance(data, dict):
        return [], {}
    stopped = data.get("stopped")
    names = [s for s in stopped if isinstance(s, str)] if isinstance(stopped, list) else []
    try:
        registered = msgspec.convert(data.get("registered") or {}, dict[str, Registration])
    except msgspec.ValidationError as exc:
        log.error("device.registrations_unreadable", file=str(path), error=str(exc))
        registered = {}
    return names, registered


def _convert(method: str, params: dict[str, Any], kind: type[_P]) -> _P:
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise AdminParamsError(f"{method}: {exc}") from None
