"""Authentication payload (RFC 7296 3.8)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ..constants import PayloadType
from ._base import Payload, Reader, need

__all__ = ["AuthPayload"]


@dataclass(frozen=True)
class AuthPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes

    def push(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data

    @classmethod
    def pull(cls, body: bytes) -> "AuthPayload":
        r = Reader(body)
        method = r.u8("AUTH method")
        r.take(3, "AUTH reserved")
        return cls(method, r.rest())

    def verify(self) -> None:
        need(len(self.data) > 0, "empty AUTH data")
