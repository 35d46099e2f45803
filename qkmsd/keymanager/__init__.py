"""The key management agent (KMA): QKD blocks in, link key synchronisation, pools."""

from ._agent import KeyManager, LinkStatistics, LinkStatus, owns_block

__all__ = ["KeyManager", "LinkStatistics", "LinkStatus", "owns_block"]
