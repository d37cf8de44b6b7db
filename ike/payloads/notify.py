"""Notify payload (RFC 7296 3.10)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ..constants import NotifyType, PayloadType
from ._base import Payload, Reader, need

__all__ = ["NotifyPayload"]


@dataclass(frozen=True)
class NotifyPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.NOTIFY
    type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    def push(self) -> bytes:
        return struct.pack("!BBH", self.protocol, len(self.spi), self.type) + self.spi + self.data

    @classmethod
    def pull(cls, body: bytes) -> "NotifyPayload":
        r = Reader(body)
        protocol, spi_size, ntype = r.u8("notify protocol"), r.u8("notify SPI size"), r.u16("notify type")
        spi = r.take(spi_size, "notify SPI")
        return cls(ntype, r.rest(), protocol, spi)

    @property
    def is_error(self) -> bool:
        return self.type < 16384

    def verify(self) -> None:
        need(len(self.spi) in (0, 4, 8), f"notify SPI of {len(self.spi)} bytes")

    def __str__(self) -> str:
        try:
            return NotifyType(self.type).name
        except ValueError:
            return f"NOTIFY({self.type})"
