"""Key supply: ETSI GS QKD 014 key delivery to SAEs.

``Etsi014Front`` answers the SAEs; the key sources behind it (``KeySource``) make the
keys: ``LocalSource`` for pairs on this node, ``DirectLinkSource`` across a QKD link;
``ReservationResponder`` is the neighbour's side of a direct-link reservation;
``RecordedKeys`` fetches and expires what was recorded here for local slaves.
"""

from ._book import PolicyBook
from ._direct import DirectLinkSource, StockStatistics
from ._errors import BadRequest, RateLimited, SupplyError, Unauthorised, Unavailable
from ._front import EXT_PQC_WRAP, Etsi014Front, FrontStatistics
from ._local import LocalSource
from ._recorded import INLINE_FETCH_MAX_KEYS, RecordedKeys
from ._relayed import RelayedPoolSource
from ._responder import INLINE_RECORD_MAX_KEYS, ReservationResponder
from ._source import KeyOrder, KeySource

__all__ = [
    "EXT_PQC_WRAP",
    "INLINE_FETCH_MAX_KEYS",
    "INLINE_RECORD_MAX_KEYS",
    "BadRequest",
    "DirectLinkSource",
    "Etsi014Front",
    "FrontStatistics",
    "KeyOrder",
    "KeySource",
    "LocalSource",
    "PolicyBook",
    "RateLimited",
    "RecordedKeys",
    "RelayedPoolSource",
    "ReservationResponder",
    "StockStatistics",
    "SupplyError",
    "Unauthorised",
    "Unavailable",
]
