"""Typed messages of the peer and admin protocols.

Every message is a frozen msgspec Struct encoded as a msgpack map whose
``type`` field names it.  Decoding (``from_wire``) validates types and bounds
at the trust boundary; what does not fit raises ``RemoteProtocolError``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._limits import (
    KEY_ID_PATTERN,
    LINK_ID_MAX_LENGTH,
    LINK_ID_PATTERN,
    MAX_BLOCK_ID,
    MAX_IDS_PER_MESSAGE,
    MAX_KEYS_PER_RESERVATION,
    MAX_SEGMENTS_PER_KEY,
    MAX_SLAVES_PER_RESERVATION,
    NODE_ID_MAX_LENGTH,
    NODE_ID_PATTERN,
    SAE_ID_MAX_LENGTH,
    SAE_ID_PATTERN,
)

PROTOCOL_VERSIONS: Final = (1,)
FEATURE_BURN_ACK: Final = "supply.burn-ack"
"""In a ``Hello``: this node answers a ``SupplyBurn`` that carries an ``id``."""
PEER_FEATURES: Final = (FEATURE_BURN_ACK,)
"""The features this version announces in its ``Hello``."""

NodeId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=NODE_ID_MAX_LENGTH, pattern=NODE_ID_PATTERN)
]
LinkId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=LINK_ID_MAX_LENGTH, pattern=LINK_ID_PATTERN)
]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
BlockId = Annotated[int, msgspec.Meta(ge=0, le=MAX_BLOCK_ID)]
ShortText = Annotated[str, msgspec.Meta(max_length=1024)]
BlockIds = Annotated[list[BlockId], msgspec.Meta(max_length=MAX_IDS_PER_MESSAGE)]


class _Message(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


# --- peer protocol -------------------------------------------------------------------


class Hello(_Message, tag="hello", frozen=True):
    """First message each side sends: who I am and what I speak."""

    node_id: NodeId
    versions: Annotated[list[U32], msgspec.Meta(min_length=1, max_length=16)]
    features: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=64)
    ] = []  # noqa: E501


class Error(_Message, tag="error", frozen=True):
    """A refusal.  ``id`` names the request it answers, if any.  Closes the session."""

    code: Annotated[str, msgspec.Meta(max_length=64)]
    message: ShortText
    id: U63 | None = None


class Ping(_Message, tag="ping", frozen=True):
    nonce: U63
    sent_at: float | None = None
    """The sender's wall clock (Unix time) when it sent this; lets it estimate the offset
    between the two clocks from the answer (absent from peers before it)."""


class Pong(_Message, tag="pong", frozen=True):
    nonce: U63
    echo: float | None = None
    """The ping's ``sent_at``, returned."""
    at: float | None = None
    """The answerer's wall clock when it answered."""


DeviceRef = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class KeyAnnounce(_Message, tag="key.announce", frozen=True):
    """I hold these blocks of ``link_id`` from my QKD device.

    ``refs``, when present, is parallel to ``block_ids``: the device's own name for each
    block (an ETSI 014 key ID of an upstream KME), for drivers that fetch by reference.
    """

    link_id: LinkId
    block_ids: BlockIds
    refs: Annotated[list[DeviceRef], msgspec.Meta(max_length=MAX_IDS_PER_MESSAGE)] = []

    def __post_init__(self) -> None:
        if self.refs and len(self.refs) != len(self.block_ids):
            raise ValueError("refs must be empty or as long as block_ids")


class KeyConfirm(_Message, tag="key.confirm", frozen=True):
    """I hold these blocks too: they are ready at my end."""

    link_id: LinkId
    block_ids: BlockIds


class KeyDiscard(_Message, tag="key.discard", frozen=True):
    """These blocks are discarded at my end: discard yours."""

    link_id: LinkId
    block_ids: BlockIds
    reason: Annotated[str, msgspec.Meta(max_length=64)]


SaeName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=SAE_ID_MAX_LENGTH, pattern=SAE_ID_PATTERN)
]
KeyId = Annotated[str, msgspec.Meta(pattern=KEY_ID_PATTERN)]


class SegmentRef(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Bytes ``[offset, offset + length)`` of block ``block_id``: ``[id, offset, length]``."""

    block_id: BlockId
    offset: U32
    length: Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)]


class ReservedKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key_id: KeyId
    segments: Annotated[
        list[SegmentRef], msgspec.Meta(min_length=1, max_length=MAX_SEGMENTS_PER_KEY)
    ]


class SupplyReserve(_Message, tag="supply.reserve", frozen=True):
    """Record these service keys, cut from our blocks of ``link_id``, for the slaves you serve.

    Answered by ``SupplyResult`` with the same ``id``.
    """

    id: U63
    link_id: LinkId
    master_sae: SaeName
    slave_saes: Annotated[
        list[SaeName], msgspec.Meta(min_length=1, max_length=MAX_SLAVES_PER_RESERVATION)
    ]
    expires_at: Annotated[float, msgspec.Meta(ge=0)]
    keys: Annotated[
        list[ReservedKey], msgspec.Meta(min_length=1, max_length=MAX_KEYS_PER_RESERVATION)
    ]


class SupplyBurn(_Message, tag="supply.burn", frozen=True, omit_defaults=True):
    """These bytes of our blocks of ``link_id`` were spent here for keys you never recorded
    or a relay hop that got no answer: consume them too, so that your copy of a block we
    used up is used up as well.  Segments you already used are skipped.

    With an ``id`` (sent only to a peer whose ``Hello`` lists ``FEATURE_BURN_ACK``) it is a
    request, answered by ``SupplyResult`` with the same ``id`` once the burn is durable
    (``ok``), or refused with a code (``unknown-link``; ``segment-refused`` for ranges
    outside their blocks or in blocks the sender does not own).  Without one (older
    peers) it is one-way, and encoded with no ``id`` key at all: an older decoder
    refuses fields it does not know."""

    link_id: LinkId
    segments: Annotated[
        list[SegmentRef], msgspec.Meta(min_length=1, max_length=MAX_IDS_PER_MESSAGE)
    ]
    id: U63 | None = None


class SupplyResult(_Message, tag="supply.result", frozen=True):
    """The answer to request ``id``: recorded durably (``ok``), or refused with a code."""

    id: U63
    ok: bool
    code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    message: ShortText = ""


MAX_RELAY_PATH: Final = 32
"""Nodes on one relay path, source and destination included."""
MAX_RELAY_KEY_BYTES: Final = 65536
"""Key one relay carries (the relayed key and its confirmation key)."""
RELAY_TAG_BYTES: Final = 16
"""A Poly1305 tag."""
MAX_RELAY_SHARES: Final = 8
"""Node-disjoint paths one key may be split over."""
RELAY_CONFIRM_KEY_BYTES: Final = 32
"""The last bytes of a relayed key: the one-time key of the destination's confirmation."""


class RelayHop(_Message, tag="relay.hop", frozen=True):
    """One hop of a key relay: the key, one-time padded with link key of this hop's link.

    The sender allocated ``pad`` (as long as ``ciphertext``) and ``mac_key`` (32 bytes)
    from blocks of ``link_id`` it owns; the receiver consumes exactly those bytes, checks
    ``tag`` (Poly1305 under ``mac_key`` over ``relay_hop_auth_data``), and recovers the
    key as ``ciphertext xor pad``.  ``path[hop]`` is the receiver; ``path[0]`` the source,
    ``path[-1]`` the destination, which keeps the key as block ``block_id`` of
    ``e2e_link_id``.  Answered by ``RelayResult`` with the same ``id``.
    """

    id: U63
    relay_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    e2e_link_id: LinkId
    block_id: U63
    path: Annotated[list[NodeId], msgspec.Meta(min_length=2, max_length=MAX_RELAY_PATH)]
    hop: Annotated[int, msgspec.Meta(ge=1, le=MAX_RELAY_PATH - 1)]
    link_id: LinkId
    pad: Annotated[list[SegmentRef], msgspec.Meta(min_length=1, max_length=MAX_SEGMENTS_PER_KEY)]
    mac_key: Annotated[
        list[SegmentRef], msgspec.Meta(min_length=1, max_length=MAX_SEGMENTS_PER_KEY)
    ]
    ciphertext: Annotated[
        bytes, msgspec.Meta(min_length=RELAY_CONFIRM_KEY_BYTES + 1, max_length=MAX_RELAY_KEY_BYTES)
    ]
    tag: Annotated[bytes, msgspec.Meta(min_length=RELAY_TAG_BYTES, max_length=RELAY_TAG_BYTES)]
    share: Annotated[int, msgspec.Meta(ge=0, le=MAX_RELAY_SHARES - 1)] = 0
    """Which share of the key this relay carries, when it is split over several paths."""
    shares: Annotated[int, msgspec.Meta(ge=1, le=MAX_RELAY_SHARES)] = 1
    """Into how many shares the key is split: the key is the XOR of them all, each relayed
    over its own node-disjoint path; the destination keeps it once every share arrived."""

    def __post_init__(self) -> None:
        if self.share >= self.shares:
            raise ValueError("share must be below shares")
        if self.hop >= len(self.path):
            raise ValueError("hop must name a node of path after the source")
        if len(set(self.path)) != len(self.path):
            raise ValueError("path must not visit a node twice")


class RelayResult(_Message, tag="relay.result", frozen=True):
    """The answer to relay hop ``id``, passed back along the path.

    ``ok``: the destination holds the key; ``confirm`` is its Poly1305 tag over
    ``relay_confirm_data(relay_id)`` under the key's last 32 bytes, which proves to the
    source that the destination holds exactly the key sent.  Else ``code`` and
    ``message`` say which node refused and why.
    """

    id: U63
    ok: bool
    confirm: Annotated[bytes, msgspec.Meta(max_length=RELAY_TAG_BYTES)] = b""
    code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    message: ShortText = ""


def relay_hop_auth_data(hop: RelayHop) -> bytes:
    """The bytes a hop's tag authenticates: the whole message but its request id and tag.

    The id is the sender's session counter, not part of the relay; everything else (the
    relay, the path, the position on it, the segments spent and the ciphertext) is bound.
    """
    return b"qkms-relay-hop\0" + to_wire(msgspec.structs.replace(hop, id=0, tag=b""))


def relay_confirm_data(relay_id: str) -> bytes:
    """The bytes the destination's confirmation tag authenticates."""
    return b"qkms-relay-confirm\0" + relay_id.encode("utf-8")


# --- controller election (one-way: ``protocol/_election.py`` pairs answers itself) ----

Term = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Stamp = Annotated[float, msgspec.Meta(ge=-1e18, le=1e18)]
"""A time on the sender's own monotonic clock, echoed back unchanged (finite)."""


class ElectVote(_Message, tag="elect.vote", frozen=True):
    """Vote for me, the sender, as controller in ``term``.

    ``stamp`` is when I asked, on my clock; the answer echoes it.  One-way, like the
    other election messages: the answer is an ``ElectVoteReply`` matched by term and
    stamp, not a ``PeerReply`` (a lost answer is just a lost vote).
    """

    term: Term
    stamp: Stamp


class ElectVoteReply(_Message, tag="elect.vote-reply", frozen=True):
    """My vote in ``term`` (my term, which may be newer than the one asked about)."""

    term: Term
    granted: bool
    stamp: Stamp


class ElectHeartbeat(_Message, tag="elect.heartbeat", frozen=True):
    """I am the controller of ``term``: renew the lease from ``stamp`` (my clock)."""

    term: Term
    stamp: Stamp


class ElectHeartbeatReply(_Message, tag="elect.heartbeat-reply", frozen=True):
    """Heartbeat ``stamp`` taken in ``term`` (same term: an ack; newer: step down)."""

    term: Term
    stamp: Stamp


ElectMessage: TypeAlias = ElectVote | ElectVoteReply | ElectHeartbeat | ElectHeartbeatReply
ELECT_MESSAGE_TYPES: Final = (ElectVote, ElectVoteReply, ElectHeartbeat, ElectHeartbeatReply)


# --- controller work: reports, route settings, budgets, registrations ------------------

Rate = Annotated[float, msgspec.Meta(ge=0, le=1e15)]
"""Bits per second (finite, not negative)."""
Qber = Annotated[float, msgspec.Meta(ge=0, le=1)]
MAX_REPORT_ITEMS: Final = 4096
"""Links, peers, demands or route settings in one controller message."""
MAX_ROUTE_PATHS: Final = 16
"""Ordered paths one route setting may carry."""
CtlText = Annotated[str, msgspec.Meta(max_length=128)]


class CtlLink(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One link in a node's report, as that end sees it.

    ``virtual``: an end-to-end pool filled by relay, not a QKD link; ``hops`` is then the
    path its relays take now (this node first).  ``ready_here`` is ready key this end may
    allocate (it owns), ``ready_there`` ready key the other end owns; ``rate_bps`` the
    key that came in over the last report period.
    """

    link_id: LinkId
    peer: NodeId
    up: bool
    virtual: bool = False
    device: CtlText = ""
    ready_here: U63 = 0
    ready_there: U63 = 0
    rate_bps: Rate = 0.0
    qber: Qber | None = None
    hops: Annotated[list[NodeId], msgspec.Meta(max_length=MAX_RELAY_PATH)] = []
    spent_bps: Rate = 0.0
    """Link key this end spent on relay hops over the last report period."""
    multipath: bool = False
    """``virtual``: this end's relays take node-disjoint paths (keys split over them, or
    spread across them in turn), so it wants the controller's node-disjoint set."""


class CtlDemand(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An SAE pair served here: key asked for and delivered since the node started."""

    master: SaeName
    slave: SaeName
    kme: NodeId
    """The slave's KME."""
    asked_bits: U63
    served_bits: U63


class CtlRelayLoad(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The node's relay counters since it started."""

    relays_confirmed: U63 = 0
    relays_failed: U63 = 0
    hops_forwarded: U63 = 0
    bits_relayed: U63 = 0
    link_bits_spent: U63 = 0


MAX_ALARMS_PER_REPORT: Final = 256
"""Alarm events one report carries at most (the rest go with the next reports)."""
AlarmSeverity = Literal["cleared", "indeterminate", "warning", "minor", "major", "critical"]


class CtlAlarmEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event of the sender's alarm history: an alarm raised, changed in severity,
    acknowledged or cleared, or a fault (a one-off event).  Codes, resources and measured
    values, never key material."""

    kind: Literal["raised", "changed", "acknowledged", "cleared", "fault"]
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    resource: Annotated[str, msgspec.Meta(max_length=256)]
    severity: AlarmSeverity
    previous: AlarmSeverity
    at: Annotated[float, msgspec.Meta(ge=0, le=1e11)]
    """Unix time of the event at the sender."""
    value: float | None = None
    by: CtlText = "condition"


class CtlReport(_Message, tag="ctl.report", frozen=True):
    """My state, for the controller: sent every ``report_s`` and on change.

    ``node`` must be the sender.  ``peers`` are the nodes I have a session with now.
    Answered by ``CtlAck`` (``ok``; or refused with ``code`` and ``message``, and then
    nothing of the report is kept).
    """

    id: U63
    node: NodeId
    seq: U63
    period_s: Annotated[float, msgspec.Meta(ge=0, le=86400)]
    software: CtlText
    links: Annotated[list[CtlLink], msgspec.Meta(max_length=MAX_REPORT_ITEMS)]
    peers: Annotated[list[NodeId], msgspec.Meta(max_length=MAX_REPORT_ITEMS)]
    demand: Annotated[list[CtlDemand], msgspec.Meta(max_length=MAX_REPORT_ITEMS)]
    relay: CtlRelayLoad
    location: CtlText = ""
    alarms: Annotated[list[CtlAlarmEvent], msgspec.Meta(max_length=MAX_ALARMS_PER_REPORT)] = []
    """Alarm events the controller has not acknowledged yet, oldest first: the newest of
    the sender's history when it starts reporting to a controller, then each new one."""


class CtlAck(_Message, tag="ctl.ack", frozen=True):
    """The answer to a report or a registration: done (``ok``), or refused and why.

    ``controller`` and ``term``: who the answering node believes holds the role (a node
    that is not the controller answers ``not-controller`` and names it, if it knows).
    """

    id: U63
    ok: bool
    code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    message: ShortText = ""
    controller: NodeId | None = None
    term: Term = 0


class CtlAnnounce(_Message, tag="ctl.announce", frozen=True):
    """I, the sender, hold the controller role in ``term``: report to me.  One-way."""

    term: Term


class CtlPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One path of a route: every node from the source to the destination, and its cost."""

    nodes: Annotated[list[NodeId], msgspec.Meta(min_length=2, max_length=MAX_RELAY_PATH)]
    cost: Annotated[float, msgspec.Meta(ge=0, le=1e18)]


class CtlRoute(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A route setting: the paths from ``source`` to ``destination``, best first.

    ``disjoint``: a set of paths that share no node but the two ends, least total cost
    among the largest such sets, cheapest first: what a pool whose keys are split over (or
    spread across) node-disjoint paths takes.  Empty from a controller that sends none.
    """

    source: NodeId
    destination: NodeId
    paths: Annotated[list[CtlPath], msgspec.Meta(max_length=MAX_ROUTE_PATHS)]
    disjoint: Annotated[list[CtlPath], msgspec.Meta(max_length=MAX_RELAY_SHARES)] = []

    def __post_init__(self) -> None:
        for path in [*self.paths, *self.disjoint]:
            if path.nodes[0] != self.source or path.nodes[-1] != self.destination:
                raise ValueError("every path must go from source to destination")
            if len(set(path.nodes)) != len(path.nodes):
                raise ValueError("a path must not visit a node twice")
        inner = [n for path in self.disjoint for n in path.nodes[1:-1]]
        if len(set(inner)) != len(inner):
            raise ValueError("disjoint paths must share no node but the two ends")


class CtlRoutes(_Message, tag="ctl.routes", frozen=True):
    """Every route setting of controller term ``term`` with the receiver on a path: the
    receiver's whole set, which replaces the last one it had.  One-way.

    A large set comes in parts, numbered from 0 on one session; the receiver takes the
    set once the part marked ``last`` arrived after all the others.
    """

    term: Term
    routes: Annotated[list[CtlRoute], msgspec.Meta(max_length=MAX_REPORT_ITEMS)]
    part: U32 = 0
    last: bool = True


class CtlRouteAsk(_Message, tag="ctl.route-ask", frozen=True):
    """I have no route to ``destination``: compute one.  Answered by ``CtlRouteReply``."""

    id: U63
    destination: NodeId


class CtlRouteReply(_Message, tag="ctl.route-reply", frozen=True):
    """The route settings asked for (none if the controller knows no path), or a refusal."""

    id: U63
    ok: bool
    code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    message: ShortText = ""
    routes: Annotated[list[CtlRoute], msgspec.Meta(max_length=MAX_ROUTE_PATHS)] = []


class CtlBudget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How much the receiver may relay into its pool with ``destination``."""

    destination: NodeId
    bits_per_s: Rate


class CtlBudgets(_Message, tag="ctl.budgets", frozen=True):
    """The receiver's per-pair relay budgets in controller term ``term`` (its whole set).
    One-way."""

    term: Term
    budgets: Annotated[list[CtlBudget], msgspec.Meta(max_length=MAX_REPORT_ITEMS)]


class CtlEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One registration: a node or a link added to the network, or taken out of it.

    A node is named by ``name``; a link by ``name`` (its link id) and its ends ``a`` and
    ``b``.  ``removed``: taken out (no route crosses it, whatever its reports say).
    """

    kind: Literal["node", "link"]
    name: LinkId
    a: NodeId | None = None
    b: NodeId | None = None
    location: CtlText = ""
    removed: bool = False

    def __post_init__(self) -> None:
        if self.kind == "link" and (self.a is None or self.b is None or self.a == self.b):
            raise ValueError("a link joins two different nodes a and b")
        if self.kind == "node" and (self.a is not None or self.b is not None):
            raise ValueError("a node has no ends a and b")


class CtlRegister(_Message, tag="ctl.register", frozen=True):
    """Register ``entry`` (an operator's ``qkmsctl node|link add|remove``), forwarded to
    the controller.  Answered by ``CtlAck`` once the registration is stored by a
    majority of the eligible nodes."""

    id: U63
    entry: CtlEntry


RegistryVersion = tuple[Term, U63]
"""``(controller term, number within the term)`` of a registry's last change."""


class CtlRegistry(_Message, tag="ctl.registry", frozen=True):
    """The controller's registrations, for an eligible node to store durably if newer
    than its own (``version``).  Answered by ``CtlRegistryReply`` with the receiver's
    registry after the exchange: a new controller adopts the newest a majority holds."""

    id: U63
    version: RegistryVersion
    entries: Annotated[list[CtlEntry], msgspec.Meta(max_length=MAX_REPORT_ITEMS)]


class CtlRegistryReply(_Message, tag="ctl.registry-reply", frozen=True):
    id: U63
    ok: bool
    version: RegistryVersion
    entries: Annotated[list[CtlEntry], msgspec.Meta(max_length=MAX_REPORT_ITEMS)]


ProfileName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ProfileOp = Literal["add", "set", "remove", "activate", "deactivate", "put"]
ProfileValue = None | bool | int | float | str | list[Annotated[str, msgspec.Meta(max_length=300)]]
ProfileFields = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=32)], ProfileValue], msgspec.Meta(max_length=32)
]


class CtlProfile(_Message, tag="ctl.profile", frozen=True):
    """An operator's key profile change (``qkmsctl profile ...`` on any node), for the
    controller to distribute to the nodes the profile concerns.  ``fields``: the profile
    (``add``) or the changes (``set``).  Answered by ``CtlProfileReply``."""

    id: U63
    op: ProfileOp
    name: ProfileName
    fields: ProfileFields = {}


class CtlProfileApply(_Message, tag="ctl.profile-apply", frozen=True):
    """From the controller of ``term``: apply this change if the profile concerns the
    receiver.  ``put``: store this whole profile (or drop it if it no longer concerns the
    receiver).  Answered by ``CtlProfileReply`` with the receiver's one outcome."""

    id: U63
    term: Term
    op: ProfileOp
    name: ProfileName
    fields: ProfileFields = {}


class CtlProfileOutcome(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one node did with a profile change."""

    node: NodeId
    result: Literal["applied", "removed", "skipped", "refused", "unreachable"]
    """``skipped``: the profile does not concern the node (``add``, ``put``) or the node
    does not hold it; ``removed``: a change made it no longer concern the node."""
    message: ShortText = ""


class CtlProfileReply(_Message, tag="ctl.profile-reply", frozen=True):
    """Each node's outcome of a profile change (or a refusal: ``ok`` false, ``code``),
    and the profile as changed at a node that holds it (``{}`` if none does)."""

    id: U63
    ok: bool
    code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    message: ShortText = ""
    controller: NodeId | None = None
    outcomes: Annotated[list[CtlProfileOutcome], msgspec.Meta(max_length=MAX_REPORT_ITEMS)] = []
    profile: ProfileFields = {}


CTL_MESSAGE_TYPES: Final = (
    CtlReport,
    CtlAck,
    CtlAnnounce,
    CtlRoutes,
    CtlRouteAsk,
    CtlRouteReply,
    CtlBudgets,
    CtlRegister,
    CtlRegistry,
    CtlRegistryReply,
    CtlProfile,
    CtlProfileApply,
    CtlProfileReply,
)


PeerMessage: TypeAlias = (
    Hello
    | Error
    | Ping
    | Pong
    | KeyAnnounce
    | KeyConfirm
    | KeyDiscard
    | SupplyReserve
    | SupplyResult
    | SupplyBurn
    | RelayHop
    | RelayResult
    | ElectVote
    | ElectVoteReply
    | ElectHeartbeat
    | ElectHeartbeatReply
    | CtlReport
    | CtlAck
    | CtlAnnounce
    | CtlRoutes
    | CtlRouteAsk
    | CtlRouteReply
    | CtlBudgets
    | CtlRegister
    | CtlRegistry
    | CtlRegistryReply
    | CtlProfile
    | CtlProfileApply
    | CtlProfileReply
)
PEER_MESSAGE_TYPES: Final = (
    Hello,
    Error,
    Ping,
    Pong,
    KeyAnnounce,
    KeyConfirm,
    KeyDiscard,
    SupplyReserve,
    SupplyResult,
    SupplyBurn,
    RelayHop,
    RelayResult,
    ElectVote,
    ElectVoteReply,
    ElectHeartbeat,
    ElectHeartbeatReply,
    *CTL_MESSAGE_TYPES,
)

PeerRequest: TypeAlias = (
    SupplyReserve
    | SupplyBurn
    | RelayHop
    | CtlReport
    | CtlRouteAsk
    | CtlRegister
    | CtlRegistry
    | CtlProfile
    | CtlProfileApply
)
"""Peer messages that ask for an answer: each carries an ``id`` its reply repeats."""
PeerReply: TypeAlias = (
    SupplyResult | RelayResult | CtlAck | CtlRouteReply | CtlRegistryReply | CtlProfileReply
)
"""Peer messages that answer a request, naming it by ``id``."""
REPLY_TYPES: Final[dict[type[msgspec.Struct], type[msgspec.Struct]]] = {
    SupplyReserve: SupplyResult,
    SupplyBurn: SupplyResult,
    RelayHop: RelayResult,
    CtlReport: CtlAck,
    CtlRouteAsk: CtlRouteReply,
    CtlRegister: CtlAck,
    CtlRegistry: CtlRegistryReply,
    CtlProfile: CtlProfileReply,
    CtlProfileApply: CtlProfileReply,
}
"""``{request type: the type of its reply}``."""


# --- admin protocol ------------------------------------------------------------------


class AdminRequest(_Message, tag="request", forbid_unknown_fields=False, frozen=True):
    """Envelope of an admin request: ``{"type": "request", "id": n, "method": m, "params": {}}``."""

    id: U63
    method: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    params: dict[str, Any] = {}


class AdminResponse(_Message, tag="response", frozen=True):
    """A successful answer to request ``id``."""

    id: U63
    result: dict[str, Any]


AdminMessage: TypeAlias = AdminRequest | AdminResponse | Error
ADMIN_MESSAGE_TYPES: Final = (AdminRequest, AdminResponse, Error)


# --- codec ---------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def to_wire(message: msgspec.Struct) -> bytes:
    """Encode one message as a msgpack map (a frame body).

    Raises ``LocalProtocolError`` if the message holds what msgpack cannot carry.
    """
    try:
        return _encoder.encode(message)
    except (OverflowError, TypeError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None


class MessageDecoder:
    """Decode frame bodies into one family of messages (peer or admin)."""

    def __init__(self, family: Any) -> None:
        self._decoder = msgspec.msgpack.Decoder(family)

    def from_wire(self, body: bytes) -> Any:
        """Decode one frame body.  Raises only ``RemoteProtocolError``."""
        try:
            return self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None
        except (msgspec.DecodeError, RecursionError, ValueError, OverflowError) as exc:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"not a msgpack map: {exc}") from None


PEER_DECODER: Final = MessageDecoder(PeerMessage)
ADMIN_DECODER: Final = MessageDecoder(AdminMessage)
