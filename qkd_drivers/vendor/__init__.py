"""Vendor QKD devices: the framed device protocol over TCP or a serial line, and an emulator."""

from ._driver import (
    StreamFactory,
    VendorDeviceDriver,
    VendorParams,
    VendorSerialDriver,
    VendorSerialParams,
    VendorTcpDriver,
    VendorTcpParams,
    open_tty,
)
from ._emulator import BlockSource, DeviceEmulator, bb84_source, is_loopback, seeded_source

__all__ = [
    "BlockSource",
    "DeviceEmulator",
    "StreamFactory",
    "VendorDeviceDriver",
    "VendorParams",
    "VendorSerialDriver",
    "VendorSerialParams",
    "VendorTcpDriver",
    "VendorTcpParams",
    "bb84_source",
    "is_loopback",
    "open_tty",
    "seeded_source",
]
