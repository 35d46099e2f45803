"""The disruption code table: every disruption a node detects, its meaning, kind, default
severity and default action.  ``docs/operations.md`` shows the same table (a test keeps the
two equal).

A leaf module (stdlib only) rather than a part of ``qkmsd/state/``: the configuration
validates ``[alarms.actions]`` against it, and the agents import the configuration, so the
table must not sit inside an agent package (that would make every agent depend on the
state agent).

Severities are ITU-T X.733's six perceived severities, ordered from ``CLEARED`` to
``CRITICAL`` so that an alarm's severity can go "up" and "down".  An *alarm* has a life
cycle keyed by (code, resource); a *fault* is a one-off event.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final


class Severity(enum.IntEnum):
    """X.733 perceived severity; larger is worse."""

    CLEARED = 0
    INDETERMINATE = 1
    WARNING = 2
    MINOR = 3
    MAJOR = 4
    CRITICAL = 5

    def __str__(self) -> str:
        return self.name.lower()


class Action(enum.StrEnum):
    """What the node does while an alarm of a code is active."""

    NOTIFY = "notify"
    """Log the raise and the clear once each, keep them in the history, export them."""
    STOP_LINK = "stop-link"
    """Notify, and keep the link's new blocks out of its pool while the alarm is active."""
    STOP_DRIVER = "stop-driver"
    """Notify, and stop the link's device driver while the alarm is active."""
    ROUTE_DOWN = "route-down"
    """Notify, and route relays around the link while the alarm is active."""
    NONE = "none"
    """Do not detect the code at all."""


AVAILABLE_ACTIONS: Final = frozenset(
    {Action.NOTIFY, Action.STOP_LINK, Action.STOP_DRIVER, Action.ROUTE_DOWN, Action.NONE}
)
"""The actions this version can take."""


STOPPABLE_BY_DRIVER: Final = frozenset({"qber-high"})
"""Codes whose alarm may stop the link's driver.  Not the others: a stopped driver keeps
a link down, its rate low and its pool short, so their alarms could never clear."""


class Kind(enum.StrEnum):
    ALARM = "alarm"
    FAULT = "fault"


@dataclasses.dataclass(frozen=True, slots=True)
class Disruption:
    code: str
    kind: Kind
    resource: str
    """What the resource of an alarm of this code names: ``link``, ``peer``, ..."""
    meaning: str
    severity: Severity
    action: Action
    detected: bool = True
    """False for codes reserved for what this version cannot observe yet."""

    @property
    def actions(self) -> frozenset[Action]:
        """The actions ``[alarms.actions]`` may give this code."""
        if self.resource == "link" and self.kind is Kind.ALARM:
            if self.code in STOPPABLE_BY_DRIVER:
                return AVAILABLE_ACTIONS
            return AVAILABLE_ACTIONS - {Action.STOP_DRIVER}
        return AVAILABLE_ACTIONS - {Action.STOP_LINK, Action.STOP_DRIVER, Action.ROUTE_DOWN}


def _table(*rows: Disruption) -> dict[str, Disruption]:
    return {row.code: row for row in rows}


CODES: Final = _table(
    Disruption(
        "peer-down",
        Kind.ALARM,
        "peer",
        "no session with a configured peer (unreachable, refused or silent)",
        Severity.MAJOR,
        Action.NOTIFY,
    ),
    Disruption(
        "link-down",
        Kind.ALARM,
        "link",
        "the QKD link's driver reports it down or stopped: the device is unreachable or"
        " reports an error (the log line carries the driver's detail)",
        Severity.MAJOR,
        Action.NOTIFY,
    ),
    Disruption(
        "qber-high",
        Kind.ALARM,
        "link",
        "the QBER of the link's last block is above `qber_max`",
        Severity.MAJOR,
        Action.STOP_LINK,
    ),
    Disruption(
        "pool-low",
        Kind.ALARM,
        "link",
        "the link's ready key is below `pool_low_bits`",
        Severity.MINOR,
        Action.NOTIFY,
    ),
    Disruption(
        "pool-empty",
        Kind.ALARM,
        "link",
        "the link holds no ready key this end may hand out, and ETSI 014 requests were"
        " refused meanwhile",
        Severity.MAJOR,
        Action.NOTIFY,
    ),
    Disruption(
        "store-error",
        Kind.ALARM,
        "keystore",
        "a read of the key store failed",
        Severity.CRITICAL,
        Action.NOTIFY,
    ),
    Disruption(
        "disk-low",
        Kind.ALARM,
        "state_dir",
        "free space in the state directory's file system is below `disk_free_min_mib`",
        Severity.MAJOR,
        Action.NOTIFY,
    ),
    Disruption(
        "cert-expiring",
        Kind.ALARM,
        "cert",
        "the node's or the CA's certificate expires within `cert_warn_days`"
        " (critical once it has expired)",
        Severity.WARNING,
        Action.NOTIFY,
    ),
    Disruption(
        "relay-failures",
        Kind.ALARM,
        "relay",
        "relays this node started failed faster than `relay_failures_per_min` over the last minute",
        Severity.MINOR,
        Action.NOTIFY,
    ),
    Disruption(
        "peer-refused",
        Kind.FAULT,
        "peer",
        "connections with a peer were refused (TLS or identity) since the last look",
        Severity.WARNING,
        Action.NOTIFY,
    ),
    Disruption(
        "blocks-discarded",
        Kind.FAULT,
        "link",
        "blocks of the link were discarded (unconfirmed, or by the peer) since the last look",
        Severity.WARNING,
        Action.NOTIFY,
    ),
    Disruption(
        "key-rate-low",
        Kind.ALARM,
        "link",
        "the QKD link's key rate, averaged over `key_rate_period_s`, is below"
        " `key_rate_min_bps` (off while that is 0)",
        Severity.MINOR,
        Action.NOTIFY,
    ),
    Disruption(
        "clock-skew",
        Kind.ALARM,
        "peer",
        "this node's wall clock and a connected peer's differ by more than"
        " `clock_skew_max_s` (measured from heartbeat round trips); key validity and"
        " expiry times compare across nodes",
        Severity.MINOR,
        Action.NOTIFY,
    ),
    Disruption(
        "controller-lost",
        Kind.ALARM,
        "controller",
        "this node has known no controller for `controller_lost_s` (nodes that take part"
        " in the election only)",
        Severity.MAJOR,
        Action.NOTIFY,
    ),
)
