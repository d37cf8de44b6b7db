"""Vendor ID payload (RFC 7296 3.12)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..constants import PayloadType
from ._base import Payload

__all__ = ["VendorPayload"]


@dataclass(frozen=True)
class VendorPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.VENDOR
    data: bytes

    def push(self) -> bytes:
        return self.data

    @classmethod
    def pull(cls, body: bytes) -> "VendorPayload":
        return cls(bytes(body))
