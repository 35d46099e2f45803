"""The profile book: key generation profiles, their persistence and their service state.

Theory of operation
-------------------
A profile names the node pairs (``A~B``, unordered) and SAE pairs (``MASTER>SLAVE``) it
serves, and says what they get: a key size and a service key validity, a target (a rate in
bits/s, or a share of the key its links produce), and a priority used when key is short.
The book keeps the definitions in ``<state_dir>/profiles.json`` (written atomically, read
at start), so profiles and whether each is active survive a restart; the counters of the
current period do not.

Three things read the book:

- Supply (``layer``): for an SAE pair served by an active profile that sets ``key_size``
  or ``key_validity_s``, those two fields come from the profile; every other field comes
  from the policy book.  The profile that names the SAE pair itself wins over one that
  names its nodes' pair; among equals, the higher priority, then the first name.  A key
  size outside the pair's policy range (``min_key_size..max_key_size``) is not applied and
  is shown as the profile's ``conflict``.
- Relay (``priority_of``): the priority of a node pair is the highest priority of the
  active profiles serving it (naming it, or naming an SAE pair between its nodes); 0.0
  when none does.
- Service state (``served`` and ``sample``): keys served by ``enc_keys`` to the profile's
  SAE pairs (named, or between its node pairs' SAEs), and key bits into the pools of its
  links, counted per period of ``period_s`` from activation.  The shortfall is what the
  period's target asked for so far minus the bits served, never below zero.

Sans-IO: the clock is passed in; the caller feeds link counters to ``sample``.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from protocol import NODE_ID_RE, SAE_ID_RE, ErrorCode

from ..config import SupplyPolicy
from ..durable import replace_file
from ..errors import QkmsError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
MAX_PROFILES = 256
MAX_PAIRS = 64


class ProfileError(QkmsError):
    """A profile change or the profile file is refused; the message says why and how."""

    wire_code = ErrorCode.BAD_MESSAGE


Priority = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One key generation profile, as registered (``qkmsctl profile add``)."""

    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    node_pairs: list[str] = []
    """Node pairs ``A~B`` (order does not matter)."""
    sae_pairs: list[str] = []
    """SAE pairs ``MASTER>SLAVE``."""
    key_size: Annotated[int, msgspec.Meta(ge=8, le=1 << 16, multiple_of=8)] | None = None
    key_validity_s: Annotated[float, msgspec.Meta(gt=0, le=86400 * 365)] | None = None
    rate_bps: Annotated[float, msgspec.Meta(gt=0, le=1e12)] | None = None
    """Target: key bits per second served to the profile's pairs."""
    share: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    """Target: this fraction of the key bits into its links' pools."""
    priority: Priority = 1.0
    period_s: Annotated[float, msgspec.Meta(ge=1, le=86400 * 31)] = 60.0
    active: bool = False


FIELDS = tuple(f for f in Profile.__struct_fields__ if f not in ("name", "active"))


class ProfileStatus(msgspec.Struct, frozen=True):
    """A profile and its service state in the current period."""

    profile: Profile
    active: bool
    period_started_at: float | None
    """When the current period began (``None``: inactive)."""
    keys_served: int
    bits_served: int
    bits_generated: int
    target_bits: int
    """What the target asks for from the period's start until now (0: no target)."""
    shortfall_bits: int
    keys_served_total: int
    """Keys served while active since the node started."""
    conflict: str = ""
    """Why the profile's key size does not apply to some pair, if it does not."""


@dataclasses.dataclass
class _State:
    started_at: float | None = None
    keys: int = 0
    bits: int = 0
    generated: int = 0
    link_bits: int = 0
    """The target's base for a share: bits into the profile's links this period."""
    keys_total: int = 0
    conflict: str = ""


def node_pair(a: str, b: str) -> str:
    """The canonical name of the node pair of ``a`` and ``b``."""
    return "~".join(sorted((a, b)))


class ProfileBook:
    """Key generation profiles of one node.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        sae_kme: Mapping[str, str],
        path: Path | None,
        clock: Callable[[], float],
    ) -> None:
        """Raises ``ProfileError`` if ``path`` exists but cannot be read as profiles."""
        self._node_id = node_id
        self._sae_kme = dict(sae_kme)
        self._path = path
        self._clock = clock
        self._profiles: dict[str, Profile] = {}
        self._state: dict[str, _State] = {}
        self._links: dict[str, int] = {}
        if path is not None and path.exists():
            for profile in _read(path):
                self._profiles[profile.name] = profile
                self._state[profile.name] = _State()
                if profile.active:
                    self._state[profile.name].started_at = clock()

    # --- administration ----------------------------------------------------------------

    def add(self, fields: Mapping[str, Any]) -> ProfileStatus:
        """Register a new, inactive profile (``active: true`` in ``fields`` activates it)."""
        profile = self._check(dict(fields))
        if profile.name in self._profiles:
            raise ProfileError(
                f"profile {profile.name!r} exists (change it with profile set, or remove it)"
            )
        if len(self._profiles) >= MAX_PROFILES:
            raise ProfileError(f"too many profiles (at most {MAX_PROFILES})")
        self._adopt(profile)
        return self.status(profile.name)

    def set(self, name: str, changes: Mapping[str, Any]) -> ProfileStatus:
        """Change fields of profile ``name``; a field set to ``None`` is dropped."""
        self._adopt(self.changed(name, changes))
        return self.status(name)

    def changed(self, name: str, changes: Mapping[str, Any]) -> Profile:
        """Profile ``name`` with ``changes`` (as ``set`` would make it), not adopted."""
        old = self._get(name)
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ProfileError(
                f"profile set: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})"
            )
        if not changes:
            raise ProfileError("profile set: no field to change")
        merged = {**msgspec.to_builtins(old), **changes}
        merged = {k: v for k, v in merged.items() if v is not None}
        return self._check(merged)

    def check(self, fields: Mapping[str, Any]) -> Profile:
        """``fields`` as a profile.  Raises ``ProfileError`` naming the problem."""
        return self._check(dict(fields))

    def put(self, profile: Profile) -> ProfileStatus:
        """Store ``profile`` whole, new or replacing the one of its name (a controller's
        distribution)."""
        if profile.name not in self._profiles and len(self._profiles) >= MAX_PROFILES:
            raise ProfileError(f"too many profiles (at most {MAX_PROFILES})")
        self._adopt(profile)
        return self.status(profile.name)

    def holds(self, name: str) -> bool:
        return name in self._profiles

    def profile(self, name: str) -> Profile:
        return self._get(name)

    def concerns(self, profile: Profile) -> bool:
        """Whether ``profile`` concerns this node: one of its node pairs names it, or one
        of its SAE pairs has an SAE whose KME it is."""
        for pair in profile.node_pairs:
            if self._node_id in pair.split("~"):
                return True
        for pair in profile.sae_pairs:
            master, _, slave = pair.partition(">")
            if self._node_id in (self._sae_kme.get(master), self._sae_kme.get(slave)):
                return True
        return False

    def remove(self, name: str) -> None:
        self._get(name)
        profiles = {k: v for k, v in self._profiles.items() if k != name}
        self._save(profiles)
        self._profiles = profiles
        del self._state[name]

    def activate(self, name: str) -> ProfileStatus:
        profile = self._get(name)
        if not profile.active:
            self._adopt(msgspec.structs.replace(profile, active=True))
        return self.status(name)

    def deactivate(self, name: str) -> ProfileStatus:
        profile = self._get(name)
        if profile.active:
            self._adopt(msgspec.structs.replace(profile, active=False))
        return self.status(name)

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def status(self, name: str) -> ProfileStatus:
        profile = self._get(name)
        state = self._state[name]
        self._roll(profile, state)
        target = self._target_bits(profile, state)
        return ProfileStatus(
            profile=profile,
            active=profile.active,
            period_started_at=state.started_at,
            keys_served=state.keys,
            bits_served=state.bits,
            bits_generated=state.generated,
            target_bits=target,
            shortfall_bits=max(0, target - state.bits),
            keys_served_total=state.keys_total,
            conflict=state.conflict,
        )

    def statuses(self) -> list[ProfileStatus]:
        return [self.status(name) for name in self.names()]

    # --- what the rest of the node reads -------------------------------------------------

    def layer(
        self, policy_for: Callable[[str, str], SupplyPolicy]
    ) -> Callable[[str, str], SupplyPolicy]:
        """``policy_for`` with the active profiles' key size and validity laid over it."""

        def layered(master: str, slave: str) -> SupplyPolicy:
            policy = policy_for(master, slave)
            profile = self._profile_for(master, slave)
            if profile is None:
                return policy
            changes: dict[str, Any] = {}
            state = self._state[profile.name]
            if profile.key_size is not None:
                if policy.min_key_size <= profile.key_size <= policy.max_key_size:
                    changes["key_size"] = profile.key_size
                    if state.conflict.startswith(f"{master}>{slave}:"):
                        state.conflict = ""
                else:
                    state.conflict = (
                        f"{master}>{slave}: key_size {profile.key_size} is outside the pair's "
                        f"policy range {policy.min_key_size}..{policy.max_key_size}; the "
                        f"policy's key_size {policy.key_size} applies"
                    )
            if profile.key_validity_s is not None:
                changes["key_validity_s"] = profile.key_validity_s
            return msgspec.structs.replace(policy, **changes) if changes else policy

        return layered

    def priority_of(self, pair: tuple[str, str]) -> float:
        """The priority of node pair ``pair`` (order does not matter): the highest of the
        active profiles that serve it, 0.0 if none does."""
        wanted = node_pair(*pair)
        best = 0.0
        for profile in self._profiles.values():
            if profile.active and wanted in self._node_pairs_of(profile):
                best = max(best, profile.priority)
        return best

    def served(self, master: str, slave: str, keys: int, bits: int) -> None:
        """Count ``keys`` (``bits`` in all) served by ``enc_keys`` to ``master`` for ``slave``."""
        pair = f"{master}>{slave}"
        nodes = self._nodes_of_saes(master, slave)
        for profile in self._profiles.values():
            if not profile.active:
                continue
            if pair in profile.sae_pairs or (nodes is not None and nodes in profile.node_pairs):
                state = self._state[profile.name]
                self._roll(profile, state)
                state.keys += keys
                state.bits += bits
                state.keys_total += keys

    def sample(self, link_bits: Mapping[str, int]) -> None:
        """Key bits into each pool since the node started, by peer node: what the pools of
        the profiles' pairs gained since the last sample counts as generated."""
        gained = {p: max(0, n - self._links.get(p, n)) for p, n in link_bits.items()}
        self._links = dict(link_bits)
        for profile in self._profiles.values():
            if not profile.active:
                continue
            state = self._state[profile.name]
            self._roll(profile, state)
            bits = sum(gained.get(peer, 0) for peer in self._peers_of(profile))
            state.generated += bits
            state.link_bits += bits

    # --- helpers ----------------------------------------------------------------------------

    def _profile_for(self, master: str, slave: str) -> Profile | None:
        pair = f"{master}>{slave}"
        nodes = self._nodes_of_saes(master, slave)
        candidates: list[tuple[int, float, str, Profile]] = []
        for profile in self._profiles.values():
            if not profile.active or (profile.key_size is None and profile.key_validity_s is None):
                continue
            if pair in profile.sae_pairs:
                rank = 2
            elif nodes is not None and nodes in profile.node_pairs:
                rank = 1
            else:
                continue
            candidates.append((-rank, -profile.priority, profile.name, profile))
        return min(candidates, key=lambda c: c[:3])[3] if candidates else None

    def _nodes_of_saes(self, master: str, slave: str) -> str | None:
        a, b = self._sae_kme.get(master), self._sae_kme.get(slave)
        return node_pair(a, b) if a is not None and b is not None and a != b else None

    def _node_pairs_of(self, profile: Profile) -> builtins.set[str]:
        pairs = builtins.set(profile.node_pairs)
        for sae_pair in profile.sae_pairs:
            master, _, slave = sae_pair.partition(">")
            nodes = self._nodes_of_saes(master, slave)
            if nodes is not None:
                pairs.add(nodes)
        return pairs

    def _peers_of(self, profile: Profile) -> builtins.set[str]:
        """The nodes this node shares the profile's pools with."""
        peers: builtins.set[str] = builtins.set()
        for pair in self._node_pairs_of(profile):
            a, _, b = pair.partition("~")
            if self._node_id in (a, b):
                peers.add(b if a == self._node_id else a)
        return peers

    def _roll(self, profile: Profile, state: _State) -> None:
        if not profile.active:
            state.started_at = None
            state.keys = state.bits = state.generated = state.link_bits = 0
            return
        now = self._clock()
        if state.started_at is None:
            state.started_at = now
            return
        periods = math.floor((now - state.started_at) / profile.period_s)
        if periods >= 1:
            state.started_at += periods * profile.period_s
            state.keys = state.bits = state.generated = state.link_bits = 0

    def _target_bits(self, profile: Profile, state: _State) -> int:
        if not profile.active or state.started_at is None:
            return 0
        if profile.rate_bps is not None:
            return int(profile.rate_bps * max(0.0, self._clock() - state.started_at))
        if profile.share is not None:
            return int(profile.share * state.link_bits)
        return 0

    def _get(self, name: str) -> Profile:
        profile = self._profiles.get(name)
        if profile is None:
            have = ", ".join(sorted(self._profiles)) or "none"
            raise ProfileError(f"no profile {name!r} (profiles: {have}; add one with profile add)")
        return profile

    def _check(self, fields: dict[str, Any]) -> Profile:
        try:
            profile = msgspec.convert(fields, Profile, strict=False)
        except msgspec.ValidationError as exc:
            raise ProfileError(f"profile {fields.get('name', '?')!r}: {exc}") from None
        problem = _problem(profile)
        if problem:
            raise ProfileError(f"profile {profile.name!r}: {problem}")
        pairs = sorted({node_pair(*p.split("~")) for p in profile.node_pairs})
        return msgspec.structs.replace(
            profile, node_pairs=pairs, sae_pairs=sorted(set(profile.sae_pairs))
        )

    def _adopt(self, profile: Profile) -> None:
        profiles = {**self._profiles, profile.name: profile}
        self._save(profiles)  # raises: nothing changed
        old = self._profiles.get(profile.name)
        self._profiles = profiles
        state = self._state.setdefault(profile.name, _State())
        if old is None or old.active != profile.active or old.period_s != profile.period_s:
            state.started_at = None
            state.keys = state.bits = state.generated = state.link_bits = 0
        state.conflict = ""
        self._roll(profile, state)

    def _save(self, profiles: Mapping[str, Profile]) -> None:
        if self._path is None:
            return
        try:
            _write(self._path, [profiles[n] for n in sorted(profiles)])
        except OSError as exc:
            raise ProfileError(
                f"profiles {self._path}: cannot write ({exc.strerror or exc}); nothing changed"
            ) from None


def _problem(profile: Profile) -> str:
    if not profile.node_pairs and not profile.sae_pairs:
        return "name at least one node pair (A~B) or SAE pair (MASTER>SLAVE) it serves"
    if len(profile.node_pairs) + len(profile.sae_pairs) > MAX_PAIRS:
        return f"at most {MAX_PAIRS} pairs"
    if profile.rate_bps is not None and profile.share is not None:
        return "give a target rate (rate_bps) or a share of the link key (share), not both"
    for pair in profile.node_pairs:
        a, sep, b = pair.partition("~")
        if not sep or not NODE_ID_RE.fullmatch(a) or not NODE_ID_RE.fullmatch(b) or a == b:
            return f"node pair {pair!r}: give two different node ids as A~B"
    for pair in profile.sae_pairs:
        master, sep, slave = pair.partition(">")
        if not sep or not SAE_ID_RE.fullmatch(master) or not SAE_ID_RE.fullmatch(slave):
            return f"SAE pair {pair!r}: give two SAE ids as MASTER>SLAVE"
        if master == slave:
            return f"SAE pair {pair!r}: master and slave must differ"
    return ""


def _read(path: Path) -> list[Profile]:
    try:
        data = json.loads(path.read_text())
        profiles = msgspec.convert(data, list[Profile])
    except (OSError, ValueError, msgspec.ValidationError) as exc:
        raise ProfileError(
            f"profiles {path}: {exc} (fix or move the file away; it holds the profiles "
            "added with qkmsctl profile add)"
        ) from None
    for profile in profiles:
        problem = _problem(profile)
        if problem:
            raise ProfileError(f"profiles {path}: profile {profile.name!r}: {problem}")
    return profiles


def _write(path: Path, profiles: Iterable[Profile]) -> None:
    """Atomically: a crash leaves the old file or the new one."""
    data = json.dumps(msgspec.to_builtins(list(profiles)), indent=2, sort_keys=True)
    replace_file(path, data.encode())
