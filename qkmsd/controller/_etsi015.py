"""The controller's topology in the names of ETSI GS QKD 015 (V2.1.1, YANG module
``etsi-qkd-sdn-node``, revision 2022-01-30): one ``qkd_node`` per node.

015 names nodes, links and applications by UUID; ours have names, so each gets a
name-based UUID (``uuid5`` of ``qkms:<kind>:<name>``), the same at every controller,
and ``qkms_names`` maps them back.  What each leaf holds is in docs/controller.md.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from protocol import CtlReport

from ._topology import LinkView, NodeView, Topology

MODULE = "etsi-qkd-sdn-node"
_NAMESPACE = uuid.UUID("6b0c8a0e-4f4e-5b43-9a34-716b6d730015")


def qkms_uuid(kind: str, name: str) -> str:
    """The UUID 015 knows our node, link or application ``name`` by."""
    return str(uuid.uuid5(_NAMESPACE, f"qkms:{kind}:{name}"))


_NODE_STATUS = {
    "up": "OPERATING",
    "lost": "FAILURE",
    "silent": "FAILURE",
    "removed": "OUT",
    "registered": "NEW",
}


def etsi015_view(topology: Topology, now: float) -> dict[str, Any]:
    names: dict[str, str] = {}

    def ref(kind: str, name: str) -> str:
        key = qkms_uuid(kind, name)
        names[key] = name
        return key

    links = topology.links(now)
    nodes = []
    for node in topology.node_ids():
        view = topology.nodes.get(node)
        entry = topology.registry.get(("node", node))
        location = (view.location if view else "") or (entry.location if entry else "")
        mine = [link for link in links if node in (link.a, link.b)]
        interfaces = {link.link_id: i for i, link in enumerate(mine, start=1)}
        qkd_links = [_physical(link, node, interfaces[link.link_id], ref) for link in mine]
        apps, backing, asked = _applications(view, node, ref)
        if view is not None:
            for link in view.links.values():
                if link.virtual:
                    qkd_links.append(_virtual(node, link, ref))
        for item in qkd_links:
            item["qkdl_applications"] = backing.get(item["qkdl_id"], [])
            consumption = int(min(asked.get(item["qkdl_id"], 0.0), 2**32 - 1))
            item["qkdl_performance"]["expected_consumption"] = consumption
        nodes.append(
            {
                "qkd_node": {
                    "qkdn_id": ref("node", node),
                    "qkdn_status": _NODE_STATUS[topology.node_state(node, now)],
                    "qkdn_version": (view.software if view else "") or "",
                    "qkdn_location_id": location,
                    "qkdn_capabilities": {
                        "link_stats_support": True,
                        "application_stats_support": True,
                        "key_relay_mode_enable": True,
                    },
                    "qkd_applications": {"qkd_app": apps},
                    "qkd_interfaces": {
                        "qkd_interface": [
                            {
                                "qkdi_id": interfaces[link.link_id],
                                "qkdi_status": _iface_status(link, node),
                            }
                            for link in mine
                        ]
                    },
                    "qkd_links": {"qkd_link": qkd_links},
                }
            }
        )
    return {"module": MODULE, "revision": "2022-01-30", "nodes": nodes, "qkms_names": names}


def node_etsi015(report: CtlReport, now: float, wall: float) -> dict[str, Any]:
    """One node's own ``qkd_node`` from its own report (``Reporter.build_report``), as a
    controller that heard only from it would give it: what the node serves at its
    RESTCONF path.  Raises ``BadReport`` for a report a controller would refuse."""
    topology = Topology(lost_after=float("inf"))
    topology.apply_report(report.node, report, now, wall)
    me = qkms_uuid("node", report.node)
    for entry in etsi015_view(topology, now)["nodes"]:
        node: dict[str, Any] = entry["qkd_node"]
        if node["qkdn_id"] == me:
            return node
    raise AssertionError("a node's own report names it")  # pragma: no cover


def _iface_status(link: LinkView, node: str) -> str:
    end = link.ends.get(node)
    if end is None:
        return "DISABLED"
    return "ENABLED" if end.device in ("up", "starting") else "FAILED"


def _link_status(up: bool, rate: float, ready: int, reported: bool) -> str:
    if not reported:
        return "PENDING"
    if up and rate > 0:
        return "ACTIVE"
    return "PASSIVE" if ready > 0 else "OFF"


def _physical(link: LinkView, node: str, interface: int, ref: Any) -> dict[str, Any]:
    other = link.b if node == link.a else link.a
    ready = link.ready_bits(node) + link.ready_bits(other)
    skr = int(link.rate_bps)
    eskr = int(max(0.0, link.rate_bps - link.spent_bps))
    perf: dict[str, Any] = {"skr": skr, "eskr": eskr, "expected_consumption": 0}
    if link.qber is not None:
        perf["phys_perf"] = [{"perf_type": "QBER", "value": round(link.qber, 3)}]
    return {
        "qkdl_id": ref("link", link.link_id),
        "qkdl_status": _link_status(link.up, link.rate_bps, ready, bool(link.ends)),
        "qkdl_enable": not link.removed,
        "qkdl_local": {"qkdn_id": ref("node", node), "qkdi_id": interface},
        "qkdl_remote": {"qkdn_id": ref("node", other)},
        "qkdl_type": "PHYS",
        "qkdl_performance": perf,
    }


def _virtual(node: str, link: Any, ref: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "qkdl_id": ref("link", link.link_id),
        "qkdl_status": _link_status(
            link.up, link.rate_bps, link.ready_here + link.ready_there, True
        ),
        "qkdl_enable": True,
        "qkdl_local": {"qkdn_id": ref("node", node)},
        "qkdl_remote": {"qkdn_id": ref("node", link.peer)},
        "qkdl_type": "VIRT",
        "qkdl_performance": {
            "skr": int(link.rate_bps),
            "eskr": int(link.rate_bps),
            "expected_consumption": 0,
        },
    }
    if len(link.hops) >= 2:
        # This end relays from itself: no previous hop; its next hop is the path's second node.
        item["virt_next_hop"] = [ref("node", link.hops[1])]
    return item


def _applications(
    view: NodeView | None, node: str, ref: Any
) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, float]]:
    """This node's SAE pairs as ``qkd_app`` entries; the apps each link backs, and the
    key per second they asked of it over the last report period."""
    if view is None:
        return [], {}, {}
    apps = []
    backing: dict[str, list[str]] = {}
    asked: dict[str, float] = {}
    for d in view.demand:
        app_id = ref("app", f"{d.master}->{d.slave}")
        backed_by = None
        for link in view.links.values():
            if link.peer == d.kme:
                backed_by = ref("link", link.link_id)
                break
        app: dict[str, Any] = {
            "app_id": app_id,
            "app_status": "ON",
            "app_type": "CLIENT",
            "server_app_id": d.master,
            "client_app_id": [d.slave],
            "local_qkdn_id": ref("node", node),
            "remote_qkdn_id": ref("node", d.kme),
            "backing_qkdl_id": [backed_by] if backed_by else [],
        }
        window = view.windows.get((d.master, d.slave, d.kme))
        if window is not None and window.end > window.start:
            app["app_statistics"] = {
                "statistics": [
                    {
                        "start_time": _iso(window.start),
                        "end_time": _iso(window.end),
                        "consumed_bits": min(window.served_bits, 2**32 - 1),
                    }
                ]
            }
        apps.append(app)
        if backed_by:
            backing.setdefault(backed_by, []).append(app_id)
            if window is not None:
                asked[backed_by] = asked.get(backed_by, 0.0) + window.asked_bps
    return apps, backing, asked


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")
