"""Topology files: the nodes, QKD links and SAEs of a lab network."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from protocol import NODE_ID_PATTERN, NODE_ID_RE, SAE_ID_RE
from qkd_drivers import DriverConfigError, driver_class

from ._errors import CliError
from ._labdevices import DEVICE_DRIVERS, EMULATOR_OPTIONS, driver_params

Id = Annotated[str, msgspec.Meta(pattern=NODE_ID_PATTERN)]


class TopologyError(CliError):
    """The topology file is invalid; the message names the file and the key."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class NodeSpec(_Strict, frozen=True):
    controller: bool = False
    priority: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    hosts: list[str] = []
    city: str = ""
    coordinates: (
        tuple[
            Annotated[float, msgspec.Meta(ge=-180, le=180)],
            Annotated[float, msgspec.Meta(ge=-90, le=90)],
        ]
        | None
    ) = None
    """Longitude and latitude in degrees: where the dashboard draws the node."""


class LinkSpec(_Strict, frozen=True):
    a: Id
    b: Id
    driver: str | None = None
    distance_km: Annotated[float, msgspec.Meta(ge=0, le=1000)] | None = None
    params: dict[str, Any] = {}
    device: dict[str, float | int] = {}
    """A ``vendor-tcp`` link's emulators in a lab: ``rate_bps``, ``block_bits``, ``qber``."""

    @property
    def link_id(self) -> str:
        return "~".join(sorted((self.a, self.b)))


class SaeSpec(_Strict, frozen=True):
    kme: Id
    pqc: bool = False
    """Give the SAE a hybrid ML-KEM-768 + X25519 key: its keys are delivered wrapped."""
    limits: dict[str, float] = {}
    """The SAE's ``[saes.X.limits]`` at its node (requests_per_s, burst_requests,
    keys_per_s, burst_keys); the node checks them at start."""


class Defaults(_Strict, frozen=True):
    driver: str = "paired"
    params: dict[str, Any] = {}


class RelaySpec(_Strict, frozen=True):
    """How the lab's end-to-end pools relay (``[relay]`` of a topology file)."""

    paths: Annotated[int, msgspec.Meta(ge=1, le=8)] | Literal["disjoint"] = 1
    """1, or split each key into XOR shares over N (or all) node-disjoint paths."""


class Topology(_Strict, frozen=True):
    name: str
    nodes: dict[str, NodeSpec]
    links: list[LinkSpec] = []
    saes: dict[str, SaeSpec] = {}
    description: str = ""
    defaults: Defaults = Defaults()
    relay: RelaySpec = RelaySpec()
    alarms: dict[str, Any] = {}
    """``[alarms]`` settings every lab node gets (checked by the node's config)."""

    def driver_of(self, link: LinkSpec) -> str:
        return link.driver or self.defaults.driver

    def params_of(self, link: LinkSpec, *, seed: str | None = None) -> dict[str, Any]:
        """Driver parameters of a link: defaults, the link's own, its distance, the seed.

        The distance and the shared seed go only to drivers that take them.
        """
        params = {**self.defaults.params, **link.params}
        fields = driver_class(self.driver_of(link)).Params.__struct_fields__
        if link.distance_km is not None and "distance_km" in fields:
            params.setdefault("distance_km", link.distance_km)
        if seed is not None and "seed" in fields:
            params.setdefault("seed", seed)
        return params

    def neighbours(self, node: str) -> list[str]:
        ends = [(link.a, link.b) for link in self.links if node in (link.a, link.b)]
        return sorted({b if a == node else a for a, b in ends})


def load_topology(path: Path) -> Topology:
    """Read and validate a topology file.  Raises ``TopologyError``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TopologyError(f"topology {path}: file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TopologyError(f"topology {path}: {exc}") from None
    return topology_from_mapping(data, label=str(path))


def topology_from_mapping(data: dict[str, Any], *, label: str) -> Topology:
    try:
        topo = msgspec.convert(data, Topology, strict=True)
    except msgspec.ValidationError as exc:
        raise TopologyError(f"topology {label}: {exc}") from None
    for node in topo.nodes:
        if not NODE_ID_RE.fullmatch(node):
            raise TopologyError(f"topology {label}: [nodes.{node}] is not a valid node id")
    seen: set[str] = set()
    for i, link in enumerate(topo.links):
        where = f"topology {label}: links[{i}] ({link.a}-{link.b})"
        for end in (link.a, link.b):
            if end not in topo.nodes:
                raise TopologyError(f"{where}: node {end!r} is not in [nodes]")
        if link.a == link.b:
            raise TopologyError(f"{where}: a link joins two different nodes")
        if link.link_id in seen:
            raise TopologyError(f"{where}: duplicate link")
        seen.add(link.link_id)
        params = topo.params_of(link, seed="x" * 32)
        if topo.driver_of(link) in DEVICE_DRIVERS:  # the lab's emulators, one per end
            unknown = sorted(set(link.device) - set(EMULATOR_OPTIONS))
            if unknown:
                raise TopologyError(
                    f"{where}: device: unknown option(s) {', '.join(unknown)}"
                    f" (known: {', '.join(EMULATOR_OPTIONS)})"
                )
            params |= driver_params({"port": 1, "role": "alice"})
        elif link.device:
            raise TopologyError(
                f"{where}: device: only {', '.join(sorted(DEVICE_DRIVERS))} links run"
                " device emulators"
            )
        try:
            driver_class(topo.driver_of(link)).parse_params(params)
        except DriverConfigError as exc:
            raise TopologyError(f"{where}: {exc}") from None
    for sae, spec in topo.saes.items():
        if not SAE_ID_RE.fullmatch(sae):
            raise TopologyError(f"topology {label}: [saes.{sae}] is not a valid SAE id")
        if spec.kme not in topo.nodes:
            raise TopologyError(
                f"topology {label}: [saes.{sae}] kme {spec.kme!r} is not in [nodes]"
            )
        if sae in topo.nodes:
            raise TopologyError(f"topology {label}: {sae!r} is both a node and an SAE")
    return topo
