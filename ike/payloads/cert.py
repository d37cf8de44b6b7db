"""Certificate payload (RFC 7296 3.6)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..constants import PayloadType
from ._base import Payload, Reader, need

__all__ = ["CertPayload"]


@dataclass(frozen=True)
class CertPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes = field(repr=False)

    def push(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def pull(cls, body: bytes) -> "CertPayload":
        r = Reader(body)
        return cls(r.u8("certificate encoding"), r.rest())

    def verify(self) -> None:
        need(len(self.data) > 0, "empty certificate data")
