"""Driver kinds by the name used in config files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._base import Driver, DriverConfigError, LinkEnd
from ._paired import PairedDriver
from .bb84._driver import Bb84SimDriver
from .etsi014_upstream import Etsi014Driver
from .vendor import VendorSerialDriver, VendorTcpDriver

_DRIVERS: dict[str, type[Driver]] = {}


def register(cls: type[Driver]) -> type[Driver]:
    """Make a driver class available under ``cls.kind``."""
    _DRIVERS[cls.kind] = cls
    return cls


def known_drivers() -> list[str]:
    return sorted(_DRIVERS)


def driver_class(kind: str) -> type[Driver]:
    """The class for ``kind``.  Raises ``DriverConfigError`` naming the known kinds."""
    try:
        return _DRIVERS[kind]
    except KeyError:
        raise DriverConfigError(
            f"driver {kind!r} unknown (known: {', '.join(known_drivers())})"
        ) from None


def make_driver(kind: str, link: LinkEnd, raw_params: Mapping[str, Any]) -> Driver:
    """Validate parameters and build a driver.  Raises ``DriverConfigError``."""
    cls = driver_class(kind)
    return cls(link, cls.parse_params(raw_params))


register(PairedDriver)
register(VendorTcpDriver)
register(VendorSerialDriver)
register(Etsi014Driver)
register(Bb84SimDriver)
