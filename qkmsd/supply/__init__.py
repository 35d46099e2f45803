"""The key supply agent (KSA): ETSI GS QKD 014 key delivery to SAEs."""

from ._agent import EXT_PQC_WRAP, INLINE_FETCH_MAX_KEYS, INLINE_RECORD_MAX_KEYS, KeySupply
from ._errors import BadRequest, SupplyError, Unauthorised, Unavailable

__all__ = [
    "EXT_PQC_WRAP",
    "INLINE_FETCH_MAX_KEYS",
    "INLINE_RECORD_MAX_KEYS",
    "BadRequest",
    "KeySupply",
    "SupplyError",
    "Unauthorised",
    "Unavailable",
]
