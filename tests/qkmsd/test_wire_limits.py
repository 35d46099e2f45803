"""The key store and the configuration hold ids to the wire's rules, from ``protocol``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import LINK_ID_MAX_LENGTH, LINK_ID_RE, MAX_BLOCK_ID, NODE_ID_MAX_LENGTH, NODE_ID_RE
from qkmsd.config import ConfigError, config_from_mapping
from qkmsd.keystore import KeyStore, KeyStoreError, NewBlock

from .keystore.keystore_support import FakeClock
from .test_config import SOURCE, base

LINK_IDS = ["A~B", "L" * LINK_ID_MAX_LENGTH, "L" * (LINK_ID_MAX_LENGTH + 1), "", "A B", "A~B\n"]
NODE_IDS = ["KME_C", "N" * NODE_ID_MAX_LENGTH, "N" * (NODE_ID_MAX_LENGTH + 1), "a~b", "KME C"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    with KeyStore.open(tmp_path / "ks.db", os.urandom(32), clock=FakeClock()) as store:
        yield store


def _block(link_id: str, block_id: int = 0) -> NewBlock:
    return NewBlock(link_id, block_id, os.urandom(32), 0.02, 999_000.0, True)


@pytest.mark.parametrize("link_id", LINK_IDS)
def test_the_key_store_takes_the_link_ids_the_wire_takes(store: KeyStore, link_id: str) -> None:
    if LINK_ID_RE.fullmatch(link_id):
        assert store.add_blocks([_block(link_id)]) == [0]
    else:
        with pytest.raises(KeyStoreError, match="link id"):
            store.add_blocks([_block(link_id)])


def test_the_key_store_takes_block_ids_up_to_the_wires_limit(store: KeyStore) -> None:
    assert store.add_blocks([_block("A~B", MAX_BLOCK_ID)]) == [MAX_BLOCK_ID]
    with pytest.raises(KeyStoreError, match="block id"):
        store.add_blocks([_block("A~B", MAX_BLOCK_ID + 1)])


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_the_config_takes_the_node_ids_the_wire_takes(node_id: str) -> None:
    config = base(peers={"KME_B": {"address": "127.0.0.1:7002"}})
    config["peers"][node_id] = {"address": "127.0.0.1:7003"}
    if NODE_ID_RE.fullmatch(node_id):
        assert node_id in config_from_mapping(config, source=SOURCE).peers
    else:
        with pytest.raises(ConfigError, match="not a valid node id"):
            config_from_mapping(config, source=SOURCE)


@pytest.mark.parametrize("link_id", LINK_IDS)
def test_the_config_takes_the_link_ids_the_wire_takes(link_id: str) -> None:
    config = base()
    config["links"] = {link_id: config["links"]["A~B"]}
    if LINK_ID_RE.fullmatch(link_id):
        assert link_id in config_from_mapping(config, source=SOURCE).links
    else:
        with pytest.raises(ConfigError, match="not a valid link id"):
            config_from_mapping(config, source=SOURCE)
