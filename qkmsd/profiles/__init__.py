"""Key generation profiles: what each node pair or SAE pair gets, and how it is served."""

from ._agent import SAMPLE_S, ProfileAgent, status_view
from ._book import FIELDS, Profile, ProfileBook, ProfileError, ProfileStatus, node_pair

__all__ = [
    "FIELDS",
    "SAMPLE_S",
    "Profile",
    "ProfileAgent",
    "ProfileBook",
    "ProfileError",
    "ProfileStatus",
    "node_pair",
    "status_view",
]
