"""The key management agent (KMA): QKD blocks in, link key synchronisation, pools."""

from ._agent import KeyManager, owns_block

__all__ = ["KeyManager", "owns_block"]
