"""Key Exchange payload (RFC 7296 3.4)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from ..constants import PayloadType
from ._base import Payload, Reader

__all__ = ["KePayload"]


@dataclass(frozen=True)
class KePayload(Payload):
    TYPE: ClassVar[int] = PayloadType.KE
    group: int
    data: bytes = field(default=b"", repr=False)

    def push(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data

    @classmethod
    def pull(cls, body: bytes) -> "KePayload":
        r = Reader(body)
        group, _ = r.u16("KE group"), r.u16("KE reserved")
        return cls(group, r.rest())
