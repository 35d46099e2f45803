"""The controller agent: this node's part in electing the controller, and knowing who it is.

Theory of operation
-------------------
Every node with ``[controller] eligible = true`` runs the election state machine of
``protocol/_election.py`` over its peer sessions with the other eligible nodes: it feeds
the machine its monotonic clock, random draws and the election messages it receives, and
carries out what the machine says: store the term and vote (``Persist``: a small file
written and fsynced before any message of the same step leaves), send messages, and log
when this node becomes or stops being the controller.  A node acts as controller only
while ``is_leader(now)``: its lease, renewed by a majority's answers, has not run out.

Safety of keys never depends on the election: the controller computes routes and budgets,
and relays stay atomic whatever it says.  This agent only elects; the work done under the
lease (topology, routes, registrations) is ``_service.py``'s, told of every change of
role through ``on_change``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from protocol import (
    BecameLeader,
    Election,
    ElectionState,
    ElectMessage,
    LeaseRenewed,
    Persist,
    Send,
    SteppedDown,
)

from ..durable import replace_file
from ..log import get_logger

log = get_logger("qkms.controller")

SendFn = Callable[[str, Any], Awaitable[bool]]


class ControllerStatus(msgspec.Struct, frozen=True):
    """Who holds the controller role, as this node sees it (``qkmsctl controller``)."""

    node_id: str
    eligible: bool
    role: str
    """``follower``, ``candidate`` or ``leader``; ``not eligible`` for other nodes."""
    term: int
    controller: str | None
    """The node this one follows (or itself), if it knows one."""
    lease_left_s: float | None
    """On the controller: seconds of lease left."""
    electors: dict[str, int]
    """The eligible nodes and their priorities."""


class ControllerAgent:
    """Runs this node's election.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        electors: dict[str, int],
        lease: float,
        drift: float,
        send: SendFn,
        state_path: Path,
        clock: Callable[[], float] = trio.current_time,
        rand: Callable[[], float] = random.random,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.node_id = node_id
        self.electors = dict(electors)
        self._lease = lease
        self._drift = drift
        self._send = send
        self._path = state_path
        self._clock = clock
        self._rand = rand
        self._on_change = on_change
        self._election: Election | None = None
        self._wake = trio.Event()
        self._steps = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the stored vote, then tick the election at its deadlines.  Until cancelled."""
        low = self._lease + self._drift
        self._election = Election(
            self.node_id,
            self.electors,
            lease=self._lease,
            drift=self._drift,
            election_timeout=(low, 2 * low),
            now=self._clock(),
            state=self._load(),
        )
        task_status.started()
        while True:
            with trio.move_on_at(self._election.next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            await self._apply(self._election.tick(self._clock(), self._rand()))

    async def on_message(self, peer: str, message: ElectMessage) -> None:
        """An election message from ``peer``: feed it to the machine, act on the answer."""
        if self._election is None or peer not in self.electors:
            return
        await self._apply(self._election.receive(message, peer, self._clock()))
        self._wake.set()  # the next deadline may have moved

    async def _apply(self, actions: list[Any]) -> None:
        # One step at a time, in the order the machine made them: the timer and the
        # message handlers both get steps, and two writes of the vote file at once would
        # race on its temporary file (a node died of it) or store an older state last.
        async with self._steps:
            await self._apply_step(actions)

    async def _apply_step(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Persist):
                await trio.to_thread.run_sync(self._store, action.state)
            elif isinstance(action, Send):
                await self._send(action.to, action.message)
            elif isinstance(action, BecameLeader):
                log.info("controller.elected", term=action.term)
                self._on_change()
            elif isinstance(action, SteppedDown):
                log.warning("controller.stepped_down", term=action.term, reason=action.reason)
                self._on_change()
            elif isinstance(action, LeaseRenewed):
                pass

    def is_controller(self) -> bool:
        """Whether this node holds the role now (its lease has not run out)."""
        return self._election is not None and self._election.is_leader(self._clock())

    def term(self) -> int:
        return self._election.term if self._election is not None else 0

    def leader(self) -> str | None:
        """The node this one believes holds the role (itself while its lease runs)."""
        if self._election is None:
            return None
        return self.node_id if self.is_controller() else self._election.leader

    def status(self) -> ControllerStatus:
        e = self._election
        if e is None:
            return ControllerStatus(self.node_id, True, "starting", 0, None, None, self.electors)
        now = self._clock()
        lease = e.lease_until
        leading = e.is_leader(now)
        return ControllerStatus(
            node_id=self.node_id,
            eligible=True,
            role=e.role.value,
            term=e.term,
            controller=self.node_id if leading else e.leader,
            lease_left_s=round(lease - now, 3) if leading and lease is not None else None,
            electors=self.electors,
        )

    # --- the stored vote -------------------------------------------------------------

    def _load(self) -> ElectionState:
        try:
            return msgspec.json.decode(self._path.read_bytes(), type=ElectionState)
        except FileNotFoundError:
            return ElectionState()

    def _store(self, state: ElectionState) -> None:
        """Write the term and vote durably: a new file, fsynced, renamed over the old."""
        replace_file(self._path, msgspec.json.encode(state))
