"""The key management agent (KMA): QKD blocks in, link key synchronisation, pools."""

from ._agent import MAX_PEER_ANNOUNCED, KeyManager, LinkStatistics, LinkStatus, owns_block

__all__ = ["MAX_PEER_ANNOUNCED", "KeyManager", "LinkStatistics", "LinkStatus", "owns_block"]
