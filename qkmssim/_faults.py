"""Scripted faults: ``KIND@SECONDS:TARGET[:restart=SECONDS]``.

- ``link-down@20:A-B``: the link between A and B is cut at virtual second 20 (both ends'
  sessions close); ``link-up@40:A-B`` mends it.
- ``link-silent@20:A-B``: the link stops carrying bytes (and key) but nothing closes;
  ``link-up`` mends it too.
- ``node-crash@20:A`` stops node A's task; ``node-crash@20:A:restart=35`` restarts it
  from its state directory at second 35.
- ``node-silent@20:A``: every wire of node A (its QKD links and its sessions over the IP
  network) goes silent, as a host that hangs or drops off the network without a reset;
  the drain after the run mends it.
- ``controller-crash@20`` stops whichever node holds the controller role at second 20
  (``controller-crash@20:restart=35`` restarts it).
"""

from __future__ import annotations

import dataclasses

KINDS = ("link-down", "link-silent", "link-up", "node-crash", "node-silent", "controller-crash")


class FaultSpecError(ValueError):
    """A ``--fault`` the simulator cannot parse; the message shows the form."""


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    target: tuple[str, ...] = ()
    """The link's two nodes, the node, or nothing (controller-crash)."""
    restart_at: float | None = None

    def label(self) -> str:
        what = "-".join(self.target) or "controller"
        return f"{self.kind}@{self.at:g}:{what}"


def parse_fault(spec: str) -> Fault:
    """Raises ``FaultSpecError`` naming the spec and the expected form."""
    form = (
        f"fault {spec!r}: expected link-down@S:A-B, link-silent@S:A-B, link-up@S:A-B, "
        "node-crash@S:NODE[:restart=S], node-silent@S:NODE or controller-crash@S[:restart=S]"
    )
    kind, sep, rest = spec.partition("@")
    if not sep or kind not in KINDS:
        raise FaultSpecError(form)
    parts = rest.split(":")
    try:
        at = float(parts[0])
    except ValueError:
        raise FaultSpecError(form) from None
    if at < 0:
        raise FaultSpecError(f"fault {spec!r}: the time must be >= 0")
    args = parts[1:]
    restart = None
    if args and args[-1].startswith("restart="):
        if not kind.endswith("crash"):
            raise FaultSpecError(f"fault {spec!r}: only crashes take restart=")
        try:
            restart = float(args.pop()[len("restart=") :])
        except ValueError:
            raise FaultSpecError(form) from None
        if restart <= at:
            raise FaultSpecError(f"fault {spec!r}: restart must come after the crash")
    if kind == "controller-crash":
        if args:
            raise FaultSpecError(form)
        return Fault(kind, at, (), restart)
    if len(args) != 1 or not args[0]:
        raise FaultSpecError(form)
    if kind in ("node-crash", "node-silent"):
        return Fault(kind, at, (args[0],), restart)
    a, dash, b = args[0].partition("-")
    if not dash or not a or not b:
        raise FaultSpecError(form)
    return Fault(kind, at, (a, b), restart)
