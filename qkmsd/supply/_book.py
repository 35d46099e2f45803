"""The policy book: which supply policy holds for each SAE pair, changeable at runtime.

Two layers: the configuration's (``[supply.default]`` and ``[[supply.pairs]]``), replaced
by ``policy reload`` from the config file, and the operator's overrides (``policy set``),
kept in ``<state_dir>/policies.json`` so that a restart keeps them, and dropped by
``policy unset``.  An override changes some fields of the default or of one pair; it lies
over whatever the configuration says for that scope.  Every policy the book would give is
checked whole before a change is accepted, so a bad change leaves the book as it was.

The front and the neighbour's responder read ``policy_for`` at each request: a change
applies to the next request, and no session is touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from protocol import SAE_ID_RE

from ..config import Config, SupplyPolicy, policy_problem
from ..durable import replace_file
from ._errors import BadRequest

DEFAULT = "default"


class PolicyBook:
    """Supply policies by SAE pair: configuration, then operator overrides."""

    def __init__(self, config: Config, path: Path | None) -> None:
        self._path = path
        self._default = config.supply.default
        self._pairs = dict(config.pair_policies)
        self._overrides: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            self._overrides = _read(path)
        self._effective = self._compute(self._default, self._pairs, self._overrides)

    def policy_for(self, master: str, slave: str) -> SupplyPolicy:
        default, pairs = self._effective
        return pairs.get((master, slave), default)

    def show(self) -> dict[str, Any]:
        """The policies in force, and the overrides among them."""
        default, pairs = self._effective
        return {
            "default": msgspec.to_builtins(default),
            "pairs": {f"{m}>{s}": msgspec.to_builtins(p) for (m, s), p in sorted(pairs.items())},
            "overrides": self._overrides,
        }

    def set(self, scope: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Override ``changes`` for ``scope`` (``default`` or ``MASTER>SLAVE``)."""
        _scope_key(scope)
        unknown = sorted(set(changes) - set(SupplyPolicy.__struct_fields__))
        if unknown:
            known = ", ".join(SupplyPolicy.__struct_fields__)
            raise BadRequest(f"policy set: unknown field(s) {', '.join(unknown)} (known: {known})")
        if not changes:
            raise BadRequest("policy set: no field to change")
        overrides = {**self._overrides, scope: {**self._overrides.get(scope, {}), **changes}}
        self._adopt(self._default, self._pairs, overrides)
        return self.show()

    def unset(self, scope: str) -> dict[str, Any]:
        """Drop the overrides of ``scope``."""
        if scope not in self._overrides:
            have = ", ".join(sorted(self._overrides)) or "none"
            raise BadRequest(f"policy unset: no override for {scope!r} (overrides: {have})")
        overrides = {k: v for k, v in self._overrides.items() if k != scope}
        self._adopt(self._default, self._pairs, overrides)
        return self.show()

    def reload(self, config: Config) -> dict[str, Any]:
        """Take the configuration layer from a freshly loaded config (overrides stay)."""
        self._adopt(config.supply.default, dict(config.pair_policies), self._overrides)
        return self.show()

    def _adopt(
        self,
        default: SupplyPolicy,
        pairs: dict[tuple[str, str], SupplyPolicy],
        overrides: dict[str, dict[str, Any]],
    ) -> None:
        effective = self._compute(default, pairs, overrides)  # raises: nothing changed
        if overrides != self._overrides and self._path is not None:
            _write(self._path, overrides)
        self._default, self._pairs, self._overrides = default, pairs, overrides
        self._effective = effective

    @staticmethod
    def _compute(
        default: SupplyPolicy,
        pairs: dict[tuple[str, str], SupplyPolicy],
        overrides: Mapping[str, Mapping[str, Any]],
    ) -> tuple[SupplyPolicy, dict[tuple[str, str], SupplyPolicy]]:
        base = _apply(default, overrides.get(DEFAULT, {}), DEFAULT)
        out: dict[tuple[str, str], SupplyPolicy] = {}
        for key, policy in pairs.items():
            scope = f"{key[0]}>{key[1]}"
            out[key] = _apply(policy, overrides.get(scope, {}), scope)
        for scope, changes in overrides.items():
            if scope == DEFAULT:
                continue
            key = _scope_key(scope)
            if key not in pairs:  # a pair only the operator names: over the default
                out[key] = _apply(base, changes, scope)
        return base, out


def _apply(policy: SupplyPolicy, changes: Mapping[str, Any], scope: str) -> SupplyPolicy:
    if not changes:
        return policy
    try:
        merged = msgspec.convert(
            {**msgspec.structs.asdict(policy), **changes}, SupplyPolicy, strict=False
        )
    except msgspec.ValidationError as exc:
        raise BadRequest(f"policy {scope}: {exc}") from None
    problem = policy_problem(merged)
    if problem:
        raise BadRequest(f"policy {scope}: {problem}")
    return merged


def _scope_key(scope: str) -> tuple[str, str]:
    if scope == DEFAULT:
        return ("", "")
    master, sep, slave = scope.partition(">")
    if not sep or not SAE_ID_RE.fullmatch(master) or not SAE_ID_RE.fullmatch(slave):
        raise BadRequest(f"policy scope {scope!r}: give 'default' or MASTER>SLAVE (SAE ids)")
    return (master, slave)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadRequest(f"policy overrides {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise BadRequest(f"policy overrides {path}: not a table of tables")
    return data


def _write(path: Path, overrides: Mapping[str, Any]) -> None:
    """Atomically: a crash leaves the old file or the new one."""
    replace_file(path, json.dumps(overrides, indent=2, sort_keys=True).encode())
