"""Configuration payload (RFC 7296 3.15); parsed and ignored by the core, but kept round-trippable."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ..constants import PayloadType
from ._base import Payload, Reader

__all__ = ["CpPayload"]


@dataclass(frozen=True)
class CpPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.CP
    cfg_type: int
    attributes: tuple[tuple[int, bytes], ...] = ()

    def push(self) -> bytes:
        return struct.pack("!B3x", self.cfg_type) + b"".join(
            struct.pack("!HH", t & 0x7FFF, len(v)) + v for t, v in self.attributes)

    @classmethod
    def pull(cls, body: bytes) -> "CpPayload":
        r = Reader(body)
        cfg_type = r.u8("CFG type")
        r.take(3, "CP reserved")
        attrs = []
        while r.remaining():
            t, n = r.u16("attribute type") & 0x7FFF, r.u16("attribute length")
            attrs.append((t, r.take(n, "attribute value")))
        return cls(cfg_type, tuple(attrs))
