"""The controller election: terms, votes and leases, as a sans-IO state machine.

Theory of operation
-------------------
Every node with ``controller = true`` runs one ``Election``; all of them are configured
with the same eligible set (node id to priority).  The machine owns no clock, no socket and
no randomness: the daemon feeds it its own monotonic time (``now``, which must never go
back) and, on ``tick``, a uniform ``rand`` in [0, 1); it answers with actions: messages to
send, state to store, and leadership events.  Roles::

    FOLLOWER --timeout--> CANDIDATE --majority--> LEADER
        ^                   |   ^ timeout              |
        +---leader-seen-----+   +---------+            |
        +---newer-term (from any role)------------------+
        +---lease-lapsed---------------------------------+

Terms and votes (Raft's rules, without a log).  A follower that has heard nothing from a
leader for its election timeout stands: it moves to the next term, votes for itself and
asks every eligible node with ``ElectVote``.  A node grants at most one vote per term
(``voted_for``, stored through ``Persist`` *before* any message of the same call is sent,
and loaded again by a restarted node).  A candidate with votes from a majority of the
eligible nodes is the leader of its term.  Any message of a newer term moves the receiver
to that term as a follower.  So there is at most one leader per term: two would need two
majorities of one term, which share a node, and that node voted once.

Leases.  A leader acts only while ``now < lease_until``.  It sends ``ElectHeartbeat`` at
once when it wins and then every ``heartbeat_interval``; each reply echoes the heartbeat's
*send* time ``stamp`` (the leader's clock), and the lease is ``q + lease`` where ``q`` is
the latest stamp that a majority (the leader counting itself at its last heartbeat) has
answered.  ``BecameLeader`` comes with the first lease, ``LeaseRenewed`` with each
extension.  A node that answers a heartbeat makes a promise: for ``lease + drift`` on its
own clock from the moment it answered, it grants no vote to anyone else (and so does not
stand either).  A vote is no promise: candidates never hold each other up, and a lease
starts only once the election is over.

Why two leases never overlap.  Take X's lease until ``q + lease``, backed by a majority M
that answered heartbeats sent at ``q`` or later.  Each member answered after the send, and
``drift`` covers the clocks' rate difference over one lease (with rates within ``1 ± r``
of true time, ``drift >= 2 r lease / (1 - r)``), so each promise outlasts the lease in
true time.  A leader Y of a newer term acts only after votes from a majority, which shares
a node m with M.  m answered X in X's term, hence before it voted in Y's (afterwards it
would have refused X's term), so it voted only once its promise ran out: after X's lease
ended.  Y acts later still.  (If m is X itself, X left its term before voting.)  A leader
that cannot renew (or gets no first lease within ``lease`` of winning) steps down on the
first ``tick`` or ``receive`` at or after ``lease_until``; between calls
``is_leader(now)`` already says no, and the daemon bounds controller work by
``lease_until`` itself.

A restarted node may have promised before it crashed, and promises are not stored (a
monotonic clock does not survive a reboot): for ``lease + drift`` after it starts it votes
for no one.  Heartbeats of a leader of the current or a newer term are always answered:
that leader's election already waited out every older lease.

Priority only orders who stands first: the election timeouts of the eligible nodes,
ranked by priority (ties by node id), fall in successive, disjoint slots of
``election_timeout``, so the highest-priority node that can reach a majority usually
stands and wins first.  A running leader is never pre-empted for a higher-priority one.
``election_timeout[0]`` must be at least ``lease + drift``, so a follower's timer never
fires while the promise it made to a live leader still holds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

import msgspec

from ._messages import (
    ElectHeartbeat,
    ElectHeartbeatReply,
    ElectMessage,
    ElectVote,
    ElectVoteReply,
)


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class ElectionState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a node must store durably and load when it restarts."""

    term: int = 0
    voted_for: str | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to node ``to`` (a lost message is fine: the protocol retries)."""

    to: str
    message: ElectMessage


@dataclass(frozen=True, slots=True)
class Persist:
    """Store ``state`` durably before sending any message of the same call."""

    state: ElectionState


@dataclass(frozen=True, slots=True)
class BecameLeader:
    """This node is the controller of ``term``, with a lease until ``lease_until``."""

    term: int
    lease_until: float


@dataclass(frozen=True, slots=True)
class LeaseRenewed:
    """The leader's lease now runs until ``lease_until`` (its own clock)."""

    term: int
    lease_until: float


@dataclass(frozen=True, slots=True)
class SteppedDown:
    """This node stopped being the controller of ``term``: ``reason`` says why."""

    term: int
    reason: str


Action: TypeAlias = Send | Persist | BecameLeader | LeaseRenewed | SteppedDown

# (role, trigger) -> next role.  Every role change goes through this table; a pair absent
# from it is a bug in this module, not something a peer can cause.
TRANSITIONS: Final[dict[tuple[Role, str], Role]] = {
    (Role.FOLLOWER, "timeout"): Role.CANDIDATE,
    (Role.CANDIDATE, "timeout"): Role.CANDIDATE,
    (Role.CANDIDATE, "majority"): Role.LEADER,
    (Role.CANDIDATE, "leader-seen"): Role.FOLLOWER,
    (Role.FOLLOWER, "newer-term"): Role.FOLLOWER,
    (Role.CANDIDATE, "newer-term"): Role.FOLLOWER,
    (Role.LEADER, "newer-term"): Role.FOLLOWER,
    (Role.LEADER, "lease-lapsed"): Role.FOLLOWER,
}

_ANYONE: Final = ""
"""``promised_to`` after a restart: whoever it was, it is forgotten (not a node id)."""


class Election:
    """One eligible node's view of the controller election.

    ``eligible`` maps every eligible node id (this one included) to its priority, higher
    first.  Times are on this node's monotonic clock, in seconds: ``lease`` is how long a
    majority's answers keep a leader in office, ``drift`` the clock-rate margin added to
    every promise, ``election_timeout`` the ``(low, high)`` range of follower timeouts
    (``low >= lease + drift``), ``heartbeat_interval`` (default ``lease / 4``) how often a
    leader renews.  ``now`` is the time of construction; ``state`` what ``persistent()``
    returned before a restart.  Raises ``ValueError`` on inconsistent parameters.
    """

    def __init__(
        self,
        node_id: str,
        eligible: Mapping[str, int],
        *,
        lease: float,
        drift: float,
        election_timeout: tuple[float, float],
        now: float,
        heartbeat_interval: float | None = None,
        state: ElectionState | None = None,
    ) -> None:
        low, high = election_timeout
        heartbeat = lease / 4 if heartbeat_interval is None else heartbeat_interval
        if node_id not in eligible:
            raise ValueError(f"node {node_id!r} is not in the eligible set {sorted(eligible)}")
        if not (lease > 0 and drift >= 0 and math.isfinite(lease + drift)):
            raise ValueError(f"lease ({lease}) must be positive and drift ({drift}) >= 0")
        if not 0 < heartbeat < lease:
            raise ValueError(f"heartbeat_interval ({heartbeat}) must be in (0, lease={lease})")
        if not lease + drift <= low < high:
            raise ValueError(
                f"election_timeout {election_timeout} must satisfy "
                f"lease + drift ({lease + drift}) <= low < high"
            )
        state = state or ElectionState()
        self.node_id = node_id
        self.eligible = dict(eligible)
        self.lease = lease
        self.drift = drift
        self.election_timeout = (low, high)
        self.heartbeat_interval = heartbeat
        self.majority = len(self.eligible) // 2 + 1
        self._peers = tuple(sorted(n for n in self.eligible if n != node_id))
        ranked = sorted(self.eligible, key=lambda n: (-self.eligible[n], n))
        self._slot = (high - low) / len(ranked)
        self._slot_start = low + self._slot * ranked.index(node_id)
        self._term = state.term
        self._voted_for = state.voted_for
        self._role = Role.FOLLOWER
        self._leader: str | None = None
        self._lease_until = -math.inf
        # Nobody but _promised_to gets a vote before _promise_until.
        self._promised_to = _ANYONE
        self._promise_until = now + lease + drift
        self._heard = now
        self._timeout: float | None = None  # drawn on the next tick
        self._term_started = now
        self._votes: set[str] = set()  # candidate: who voted for it
        self._answered: dict[str, float] = {}  # leader: latest heartbeat stamp each answered
        self._won_at = -math.inf
        self._announced = False  # BecameLeader sent for this term
        self._next_heartbeat = now

    # --- what the daemon reads ---------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> str | None:
        """The leader of the current term, as far as this node knows."""
        return self._leader

    @property
    def lease_until(self) -> float | None:
        """While leader: until when it may act (this node's clock).  Else ``None``."""
        return self._lease_until if self._role is Role.LEADER and self._announced else None

    def is_leader(self, now: float) -> bool:
        """Whether this node may act as controller at ``now``."""
        return self._role is Role.LEADER and now < self._lease_until

    def persistent(self) -> ElectionState:
        """The state to store durably (also announced by ``Persist`` when it changes)."""
        return ElectionState(term=self._term, voted_for=self._voted_for)

    def next_deadline(self) -> float:
        """The earliest time at which ``tick`` may have something to do."""
        if self._role is Role.LEADER:
            return min(self._next_heartbeat, max(self._lease_until, self._won_at + self.lease))
        if self._timeout is None:
            return self._heard
        return max(self._heard + self._timeout, self._promise_until)

    # --- inputs ------------------------------------------------------------------------

    def tick(self, now: float, rand: float) -> list[Action]:
        """Time passed: renew the lease, step down, or stand, as due.  ``0 <= rand < 1``."""
        before = self.persistent()
        out: list[Action] = []
        self._check_lease(now, out)
        if self._role is Role.LEADER:
            if now >= self._next_heartbeat:
                self._heartbeat(now, out)
        else:
            if self._timeout is None:
                self._timeout = self._draw(rand)
            if now >= self._heard + self._timeout and not self._blocked(self.node_id, now):
                self._stand(now, rand, out)
        return self._finish(before, out)

    def receive(self, message: ElectMessage, from_node: str, now: float) -> list[Action]:
        """A message from ``from_node`` (the id the session authenticated).

        Messages from nodes outside the eligible set are ignored.
        """
        before = self.persistent()
        out: list[Action] = []
        self._check_lease(now, out)
        if from_node in self._peers:
            if message.term > self._term:
                self._adopt(message.term, out)
            if isinstance(message, ElectVote):
                self._on_vote(message, from_node, now, out)
            elif isinstance(message, ElectVoteReply):
                self._on_vote_reply(message, from_node, now, out)
            elif isinstance(message, ElectHeartbeat):
                self._on_heartbeat(message, from_node, now, out)
            else:
                self._on_heartbeat_reply(message, from_node, now, out)
        return self._finish(before, out)

    # --- transitions -------------------------------------------------------------------

    def _move(self, trigger: str) -> None:
        self._role = TRANSITIONS[(self._role, trigger)]

    def _finish(self, before: ElectionState, out: list[Action]) -> list[Action]:
        after = self.persistent()
        if after != before:
            out.insert(0, Persist(after))
        return out

    def _draw(self, rand: float) -> float:
        # The last fifth of each slot stays empty: ranks never draw the same timeout.
        return self._slot_start + 0.8 * self._slot * min(max(rand, 0.0), 1.0)

    def _blocked(self, candidate: str, now: float) -> bool:
        return now < self._promise_until and self._promised_to != candidate

    def _promise(self, to: str, now: float) -> None:
        self._promised_to = to
        self._promise_until = max(self._promise_until, now + self.lease + self.drift)
        self._heard = now
        self._timeout = None

    def _valid_stamp(self, stamp: float, now: float) -> bool:
        return self._term_started <= stamp <= now

    def _quorum_stamp(self) -> float:
        stamps = sorted(self._answered.values(), reverse=True)
        return stamps[self.majority - 1] if len(stamps) >= self.majority else -math.inf

    def _check_lease(self, now: float, out: list[Action]) -> None:
        if self._role is Role.LEADER and now >= max(self._lease_until, self._won_at + self.lease):
            self._move("lease-lapsed")
            self._leader = None
            self._heard = now
            self._timeout = None
            self._step_down("lease lapsed", out)

    def _step_down(self, reason: str, out: list[Action]) -> None:
        self._lease_until = -math.inf
        if self._announced:
            self._announced = False
            out.append(SteppedDown(self._term, reason))

    def _adopt(self, term: int, out: list[Action]) -> None:
        if self._role is not Role.FOLLOWER:
            was_leader = self._role is Role.LEADER
            self._move("newer-term")
            if was_leader:
                self._step_down(f"term {term} began", out)
        self._term = term
        self._voted_for = None
        self._leader = None
        self._votes = set()
        self._answered = {}

    def _stand(self, now: float, rand: float, out: list[Action]) -> None:
        self._move("timeout")
        self._term += 1
        self._voted_for = self.node_id
        self._leader = None
        self._term_started = now
        self._votes = {self.node_id}
        self._heard = now
        self._timeout = self._draw(rand)
        vote = ElectVote(term=self._term, stamp=now)
        out.extend(Send(peer, vote) for peer in self._peers)
        self._try_win(now, out)

    def _try_win(self, now: float, out: list[Action]) -> None:
        if len(self._votes) >= self.majority:
            self._move("majority")
            self._leader = self.node_id
            self._won_at = now
            self._answered = {}
            self._heartbeat(now, out)

    def _heartbeat(self, now: float, out: list[Action]) -> None:
        self._answered[self.node_id] = now
        self._next_heartbeat = now + self.heartbeat_interval
        beat = ElectHeartbeat(term=self._term, stamp=now)
        out.extend(Send(peer, beat) for peer in self._peers)
        self._renew(out)

    def _renew(self, out: list[Action]) -> None:
        until = self._quorum_stamp() + self.lease
        if until > self._lease_until:
            self._lease_until = until
            if self._announced:
                out.append(LeaseRenewed(self._term, until))
            else:
                self._announced = True
                out.append(BecameLeader(self._term, until))

    # --- messages ----------------------------------------------------------------------

    def _on_vote(self, vote: ElectVote, candidate: str, now: float, out: list[Action]) -> None:
        granted = (
            vote.term == self._term
            and self._voted_for in (None, candidate)
            and not self._blocked(candidate, now)
        )
        if granted:
            self._voted_for = candidate
            self._heard = now
            self._timeout = None
        reply = ElectVoteReply(term=self._term, granted=granted, stamp=vote.stamp)
        out.append(Send(candidate, reply))

    def _on_vote_reply(
        self, reply: ElectVoteReply, voter: str, now: float, out: list[Action]
    ) -> None:
        if (
            self._role is Role.CANDIDATE
            and reply.term == self._term
            and reply.granted
            and self._valid_stamp(reply.stamp, now)
        ):
            self._votes.add(voter)
            self._try_win(now, out)

    def _on_heartbeat(
        self, beat: ElectHeartbeat, leader: str, now: float, out: list[Action]
    ) -> None:
        if beat.term < self._term:
            out.append(Send(leader, ElectHeartbeatReply(term=self._term, stamp=beat.stamp)))
            return
        if self._role is Role.LEADER:
            return  # a second leader of our term: impossible unless a peer lies
        if self._role is Role.CANDIDATE:
            self._move("leader-seen")
            self._votes = set()
        self._leader = leader
        self._promise(leader, now)
        out.append(Send(leader, ElectHeartbeatReply(term=self._term, stamp=beat.stamp)))

    def _on_heartbeat_reply(
        self, reply: ElectHeartbeatReply, follower: str, now: float, out: list[Action]
    ) -> None:
        if (
            self._role is Role.LEADER
            and reply.term == self._term
            and self._valid_stamp(reply.stamp, now)
        ):
            self._answered[follower] = max(self._answered.get(follower, -math.inf), reply.stamp)
            self._renew(out)
