"""QKD drivers: where key blocks come from."""

from ._base import (
    Driver,
    DriverConfigError,
    DriverError,
    DriverHealth,
    KeyBlock,
    LinkEnd,
    LinkState,
)
from ._paired import PairedDriver, PairedParams, paired_block
from ._registry import driver_class, known_drivers, make_driver, register
from .bb84._driver import Bb84SimDriver, Bb84SimParams
from .etsi014_upstream import Etsi014Driver, Etsi014Params
from .vendor import VendorSerialDriver, VendorSerialParams, VendorTcpDriver, VendorTcpParams

__all__ = [
    "Bb84SimDriver",
    "Bb84SimParams",
    "Driver",
    "DriverConfigError",
    "DriverError",
    "DriverHealth",
    "Etsi014Driver",
    "Etsi014Params",
    "KeyBlock",
    "LinkEnd",
    "LinkState",
    "PairedDriver",
    "PairedParams",
    "VendorSerialDriver",
    "VendorSerialParams",
    "VendorTcpDriver",
    "VendorTcpParams",
    "driver_class",
    "known_drivers",
    "make_driver",
    "paired_block",
    "register",
]
