"""Delete payload (RFC 7296 3.11)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ..constants import PayloadType, ProtocolId
from ._base import Payload, Reader, need

__all__ = ["DeletePayload"]


@dataclass(frozen=True)
class DeletePayload(Payload):
    TYPE: ClassVar[int] = PayloadType.DELETE
    protocol: int
    spis: tuple[bytes, ...] = ()

    def push(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def pull(cls, body: bytes) -> "DeletePayload":
        r = Reader(body)
        protocol, size, count = r.u8("delete protocol"), r.u8("delete SPI size"), r.u16("delete count")
        spis = tuple(r.take(size, "deleted SPI") for _ in range(count))
        need(r.remaining() == 0, "trailing bytes in Delete payload")
        return cls(protocol, spis)

    def verify(self) -> None:
        if self.protocol == ProtocolId.IKE:
            need(not self.spis, "IKE Delete carries no SPIs")
        else:
            need(bool(self.spis) and all(len(s) == 4 for s in self.spis), "ESP/AH Delete needs 4-byte SPIs")
