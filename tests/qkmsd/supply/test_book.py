"""The policy book: configuration, then operator overrides kept across restarts."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from qkmsd.config import Config, SupplyPolicy
from qkmsd.supply import BadRequest, PolicyBook

from ...conftest import ConfigFactory


def config(node_config: ConfigFactory, **pair: object) -> Config:
    pairs = [{"master": "SAE_A", "slave": "SAE_C", "key_size": 512, **pair}]
    saes = {"SAE_A": {"kme": "KME_A"}, "SAE_B": {"kme": "KME_B"}, "SAE_C": {"kme": "KME_B"}}
    return node_config("KME_A", saes=saes, supply={"default": {"key_size": 256}, "pairs": pairs})


def test_a_pair_without_its_own_policy_gets_the_default(node_config: ConfigFactory) -> None:
    book = PolicyBook(config(node_config), None)
    assert book.policy_for("SAE_A", "SAE_B").key_size == 256
    assert book.policy_for("SAE_A", "SAE_C").key_size == 512


def test_an_override_of_the_default_reaches_pairs_without_their_own_value(
    node_config: ConfigFactory,
) -> None:
    book = PolicyBook(config(node_config), None)
    book.set("default", {"max_key_per_request": 4})
    assert book.policy_for("SAE_A", "SAE_B").max_key_per_request == 4
    # A pair's policy is the default merged when the config was read: its own layer.
    assert book.policy_for("SAE_A", "SAE_C").key_size == 512


def test_a_bad_change_is_refused_and_changes_nothing(
    node_config: ConfigFactory, tmp_path: Path
) -> None:
    path = tmp_path / "policies.json"
    book = PolicyBook(config(node_config), path)
    before = book.show()
    for scope, changes, message in [
        ("default", {"key_size": 12}, "multiple of 8"),
        ("default", {"key_size": 16}, "min_key_size <= key_size"),
        ("default", {"nope": 1}, "unknown field"),
        ("default", {}, "no field"),
        ("SAE_A", {"key_size": 512}, "MASTER>SLAVE"),
        ("SAE_A>bad id!", {"key_size": 512}, "MASTER>SLAVE"),
    ]:
        with pytest.raises(BadRequest, match=message):
            book.set(scope, changes)
    assert book.show() == before and not path.exists()


def test_overrides_survive_a_restart_and_unset_drops_them(
    node_config: ConfigFactory, tmp_path: Path
) -> None:
    path = tmp_path / "policies.json"
    cfg = config(node_config)
    PolicyBook(cfg, path).set("SAE_B>SAE_A", {"key_size": 1024})
    again = PolicyBook(cfg, path)
    assert again.policy_for("SAE_B", "SAE_A").key_size == 1024
    again.unset("SAE_B>SAE_A")
    assert PolicyBook(cfg, path).policy_for("SAE_B", "SAE_A").key_size == 256
    with pytest.raises(BadRequest, match="no override"):
        again.unset("SAE_B>SAE_A")


def test_a_reload_takes_the_new_configuration_under_the_overrides(
    node_config: ConfigFactory,
) -> None:
    book = PolicyBook(config(node_config), None)
    book.set("SAE_A>SAE_C", {"max_stored_keys": 10})
    book.reload(config(node_config, key_size=1024))
    policy = book.policy_for("SAE_A", "SAE_C")
    assert (policy.key_size, policy.max_stored_keys) == (1024, 10)


def test_a_reload_that_would_make_an_override_invalid_is_refused(
    node_config: ConfigFactory,
) -> None:
    book = PolicyBook(config(node_config), None)
    book.set("SAE_A>SAE_C", {"min_key_size": 512})
    with pytest.raises(BadRequest, match="min_key_size <= key_size"):
        book.reload(config(node_config, key_size=256))
    assert book.policy_for("SAE_A", "SAE_C").key_size == 512


def test_a_damaged_overrides_file_is_a_clear_error(
    node_config: ConfigFactory, tmp_path: Path
) -> None:
    path = tmp_path / "policies.json"
    path.write_text("[1, 2]")
    with pytest.raises(BadRequest, match="not a table of tables"):
        PolicyBook(config(node_config), path)


def test_the_shown_policies_are_whole_policies(node_config: ConfigFactory) -> None:
    shown = PolicyBook(config(node_config), None).show()
    assert msgspec.convert(shown["default"], SupplyPolicy).key_size == 256
    assert set(shown["pairs"]) == {"SAE_A>SAE_C"} and shown["overrides"] == {}
