"""Admin methods of the controller: ``topology``, ``register`` and ``network_alarms``
(``qkmsctl topology``, ``qkmsctl node|link add|remove``, ``qkmsctl alarm history
--network``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from protocol import LINK_ID_PATTERN, NODE_ID_PATTERN, CtlEntry

from ..admin import AdminParamsError
from ._etsi015 import etsi015_view
from ._reporter import Reporter
from ._service import ControllerService, NoController

_NAME_OR_NOTHING = f"^({LINK_ID_PATTERN[1:-1]})?$"
NodeName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NODE_ID_PATTERN)]


class TopologyParams(msgspec.Struct, forbid_unknown_fields=True):
    format: Literal["qkms", "etsi015"] = "qkms"


class RegisterParams(msgspec.Struct, forbid_unknown_fields=True):
    kind: Literal["node", "link"]
    action: Literal["add", "remove"]
    name: Annotated[str, msgspec.Meta(max_length=129, pattern=_NAME_OR_NOTHING)] = ""
    """The node's id; for a link, its link id (default ``A~B``, the ends sorted)."""
    a: NodeName | None = None
    b: NodeName | None = None
    location: Annotated[str, msgspec.Meta(max_length=128)] = ""


class NetworkAlarmsParams(msgspec.Struct, forbid_unknown_fields=True):
    since: float | None = None
    """Only events at or after this Unix time."""
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    node: NodeName | None = None
    """Only this node's events."""
    code: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class ControllerAdmin:
    """``topology`` answers on the controller; ``register`` on any node (forwarded)."""

    def __init__(self, service: ControllerService | None, reporter: Reporter) -> None:
        self._service = service
        self._reporter = reporter

    def methods(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "register": self.register,
            "network_alarms": self.network_alarms,
        }

    def _leading(self, method: str) -> ControllerService:
        service = self._service
        if service is None or not service.leading:
            following = self._reporter.following
            where = f" ask {following}, the controller" if following else " no controller is known"
            raise NoController(f"{method}: {self._reporter.node_id} is not the controller;{where}")
        return service

    async def network_alarms(self, params: dict[str, Any]) -> dict[str, Any]:
        """The network's alarm history (every node's events, newest first), answered by
        the controller."""
        try:
            p = msgspec.convert(params, NetworkAlarmsParams)
        except msgspec.ValidationError as exc:
            raise AdminParamsError(f"network_alarms: {exc}") from None
        service = self._leading("network_alarms")
        events = service.alarms.events(since=p.since, node=p.node, code=p.code, limit=p.limit)
        return {"controller": service.node_id, "kept": len(service.alarms), "events": events}

    async def topology(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            p = msgspec.convert(params, TopologyParams)
        except msgspec.ValidationError as exc:
            raise AdminParamsError(f"topology: {exc}") from None
        service = self._leading("topology")
        if p.format == "etsi015":
            return etsi015_view(service.topology, service.now())
        return service.topology_view()

    async def register(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            p = msgspec.convert(params, RegisterParams)
            entry = _entry(p)
        except (msgspec.ValidationError, ValueError) as exc:
            raise AdminParamsError(f"register: {exc}") from None
        service = self._service
        if service is not None and service.leading:
            await service.register(entry)
            controller = service.node_id
        else:
            controller = await self._reporter.forward(entry)
        return {"controller": controller, "entry": msgspec.to_builtins(entry)}


def _entry(p: RegisterParams) -> CtlEntry:
    removed = p.action == "remove"
    if p.kind == "node":
        if p.a is not None or p.b is not None:
            raise ValueError("a node has no ends: give only its name")
        if not p.name:
            raise ValueError("name the node")
        msgspec.convert(p.name, NodeName)
        return CtlEntry("node", p.name, location=p.location, removed=removed)
    if p.a is None or p.b is None:
        raise ValueError("a link needs both ends, a and b")
    if p.a == p.b:
        raise ValueError(f"a link joins two different nodes, not {p.a} and {p.b}")
    name = p.name or "~".join(sorted((p.a, p.b)))
    return CtlEntry("link", name, a=p.a, b=p.b, location=p.location, removed=removed)
