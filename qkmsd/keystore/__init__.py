"""The node key store: per-link pools of key blocks, their life cycle, the master key.

Synchronous and single-writer; the daemon calls it from one worker thread.
"""

from ._burns import BURNS_KEPT
from ._errors import (
    CorruptStoreError,
    IllegalTransition,
    InsufficientKey,
    KeyStoreError,
    MasterKeyError,
    MasterKeyMismatch,
    NotAuthorised,
    SegmentRefused,
    ServiceKeyNotFound,
    StoreUnavailable,
)
from ._lifecycle import (
    HOLDS_MATERIAL,
    TERMINAL,
    TRANSITIONS,
    USABLE,
    KeyState,
    check_transition,
    is_legal,
)
from ._masterkey import CREDENTIAL_NAME, MASTER_KEY_SIZE, generate_master_key, load_master_key
from ._pool import Allocation, Segment
from ._rotate import Rotation, open_store, pending_key_file, rotate_master_key
from ._service import (
    RETAIN_ENDED_S,
    CutKey,
    KeySpec,
)
from ._store import (
    MAX_BLOCK_BYTES,
    SCHEMA_VERSION,
    KeyStore,
    NewBlock,
    PoolLevel,
)

__all__ = [
    "Allocation",
    "BURNS_KEPT",
    "RETAIN_ENDED_S",
    "CutKey",
    "InsufficientKey",
    "KeySpec",
    "NotAuthorised",
    "Segment",
    "SegmentRefused",
    "ServiceKeyNotFound",
    "CREDENTIAL_NAME",
    "HOLDS_MATERIAL",
    "MASTER_KEY_SIZE",
    "MAX_BLOCK_BYTES",
    "SCHEMA_VERSION",
    "TERMINAL",
    "TRANSITIONS",
    "USABLE",
    "CorruptStoreError",
    "IllegalTransition",
    "KeyState",
    "KeyStore",
    "KeyStoreError",
    "StoreUnavailable",
    "MasterKeyError",
    "MasterKeyMismatch",
    "NewBlock",
    "PoolLevel",
    "Rotation",
    "check_transition",
    "generate_master_key",
    "is_legal",
    "load_master_key",
    "open_store",
    "pending_key_file",
    "rotate_master_key",
]
