"""SK and SKF payload bodies. Their content (IV, ciphertext, ICV) is sealed and opened by ike.protect."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ...constants import PayloadType
from .._base import Payload, Reader, need

__all__ = ["SkPayload", "SkfPayload"]


@dataclass(frozen=True)
class SkPayload(Payload):
    """``first_inner`` is the Next Payload field of the SK header: the type of the first inner payload."""

    TYPE: ClassVar[int] = PayloadType.SK
    data: bytes  # IV || ciphertext || ICV
    first_inner: int = 0

    def push(self) -> bytes:
        return self.data

    @classmethod
    def pull(cls, body: bytes, first_inner: int = 0) -> "SkPayload":
        return cls(bytes(body), first_inner)


@dataclass(frozen=True)
class SkfPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.SKF
    number: int
    total: int
    data: bytes  # IV || ciphertext || ICV
    first_inner: int = 0  # only in fragment 1

    def push(self) -> bytes:
        return struct.pack("!HH", self.number, self.total) + self.data

    @classmethod
    def pull(cls, body: bytes, first_inner: int = 0) -> "SkfPayload":
        r = Reader(body)
        number, total = r.u16("fragment number"), r.u16("total fragments")
        return cls(number, total, r.rest(), first_inner)

    def verify(self) -> None:
        need(1 <= self.number <= self.total, f"fragment {self.number} of {self.total}")
