"""Client library for SAEs: ETSI GS QKD 014 over mutual TLS, blocking or trio.

    from qkms_client import Etsi014Client

    with Etsi014Client("https://kme-a:8443", ca="ca.pem", cert="sae-a.pem",
                       key="sae-a.key") as kme:
        keys = kme.get_key("SAE_B", number=2, size=256)      # master side
        ids = [k.key_id for k in keys]
    # ... send ids to SAE_B, which calls get_key_with_ids("SAE_A", ids)

``TrioEtsi014Client`` has the same methods as coroutines.  Given the SAE's
``pqc_private_key`` (``qkms_pqc``), keys the KME wrapped for it are unwrapped on arrival.
Errors: ``Etsi014Error`` and its subclasses, one per kind of failure.
"""

from ._errors import (
    BadRequest,
    Etsi014Error,
    KeyUnwrapError,
    RateLimited,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
)
from ._results import DeliveredKey, KeyDelivery, KeyStatus
from ._sync import Etsi014Client
from ._trio import TrioEtsi014Client

__all__ = [
    "BadRequest",
    "DeliveredKey",
    "Etsi014Client",
    "Etsi014Error",
    "KeyDelivery",
    "KeyStatus",
    "KeyUnwrapError",
    "RateLimited",
    "ServiceUnavailable",
    "TransportError",
    "TrioEtsi014Client",
    "Unauthorized",
    "UnexpectedResponse",
]
