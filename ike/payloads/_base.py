"""Shared helpers of the payload codecs: a bounds-checked reader and the payload protocol."""
from __future__ import annotations

import struct
from typing import ClassVar

from ..errors import ParseError

__all__ = ["Reader", "Payload", "need"]


def need(cond: bool, what: str) -> None:
    if not cond:
        raise ParseError(what)


class Reader:
    """A byte cursor that raises ParseError (never IndexError/struct.error) on truncation."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str = "field") -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ParseError(f"truncated {what}: need {n} bytes, have {self.remaining()}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str = "u8") -> int:
        return self.take(1, what)[0]

    def u16(self, what: str = "u16") -> int:
        return struct.unpack("!H", self.take(2, what))[0]

    def u32(self, what: str = "u32") -> int:
        return struct.unpack("!I", self.take(4, what))[0]

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


class Payload:
    """Protocol of every payload dataclass: ``TYPE``, ``pull(body)``, ``push()`` (body without the generic
    header, which message.py writes) and ``verify()`` (semantic checks, raising ParseError/InvalidSyntaxError)."""

    TYPE: ClassVar[int] = 0

    @property
    def payload_type(self) -> int:
        return self.TYPE

    def push(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def verify(self) -> None:
        return None
