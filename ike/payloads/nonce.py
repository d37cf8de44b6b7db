"""Nonce payload (RFC 7296 3.9): 16 to 256 bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..constants import PayloadType
from ._base import Payload, need

__all__ = ["NoncePayload", "MIN_NONCE", "MAX_NONCE"]

MIN_NONCE = 16
MAX_NONCE = 256


@dataclass(frozen=True)
class NoncePayload(Payload):
    TYPE: ClassVar[int] = PayloadType.NONCE
    data: bytes

    def push(self) -> bytes:
        return self.data

    @classmethod
    def pull(cls, body: bytes) -> "NoncePayload":
        return cls(bytes(body))

    def verify(self) -> None:
        need(MIN_NONCE <= len(self.data) <= MAX_NONCE, f"nonce of {len(self.data)} bytes (16..256)")
