"""SA payload (RFC 7296 3.3): proposals, transforms and transform attributes."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from ..constants import ATTR_KEY_LENGTH, PayloadType, ProtocolId, TransformType
from ..errors import ParseError
from ._base import Payload, Reader, need

__all__ = ["Transform", "Proposal", "SaPayload", "MAX_PROPOSALS", "MAX_TRANSFORMS"]

MAX_PROPOSALS = 64
MAX_TRANSFORMS = 128


@dataclass(frozen=True)
class Transform:
    type: int
    id: int
    key_length: int | None = None  # bits; the only attribute IKEv2 defines

    def push(self, last: bool) -> bytes:
        attrs = b"" if self.key_length is None else struct.pack("!HH", 0x8000 | ATTR_KEY_LENGTH, self.key_length)
        return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), self.type, 0, self.id) + attrs

    @classmethod
    def pull(cls, r: Reader) -> tuple["Transform", bool]:
        last, _, length = r.u8("transform"), r.u8(), r.u16("transform length")
        need(last in (0, 3), f"transform: bad last-substructure {last}")
        need(length >= 8, f"transform length {length} < 8")
        body = Reader(r.take(length - 4, "transform"))
        ttype, _, tid = body.u8(), body.u8(), body.u16()
        key_length = None
        while body.remaining():
            atype = body.u16("attribute")
            if atype & 0x8000:
                value = body.u16("attribute value")
                if atype & 0x7FFF == ATTR_KEY_LENGTH:
                    key_length = value
            else:
                alen = body.u16("attribute length")
                body.take(alen, "attribute value")
        return cls(ttype, tid, key_length), last == 0


@dataclass(frozen=True)
class Proposal:
    number: int
    protocol: int
    spi: bytes = b""
    transforms: tuple[Transform, ...] = ()

    def of_type(self, ttype: int) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.type == ttype)

    def first(self, ttype: int) -> Transform | None:
        for t in self.transforms:
            if t.type == ttype:
                return t
        return None

    def push(self, last: bool) -> bytes:
        body = b"".join(t.push(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms))
        head = struct.pack("!BBHBBBB", 0 if last else 2, 0, 8 + len(self.spi) + len(body), self.number,
                           self.protocol, len(self.spi), len(self.transforms))
        return head + self.spi + body

    @classmethod
    def pull(cls, r: Reader) -> tuple["Proposal", bool]:
        last, _, length = r.u8("proposal"), r.u8(), r.u16("proposal length")
        need(last in (0, 2), f"proposal: bad last-substructure {last}")
        need(length >= 8, f"proposal length {length} < 8")
        body = Reader(r.take(length - 4, "proposal"))
        number, protocol, spi_size, count = body.u8(), body.u8(), body.u8(), body.u8()
        need(count <= MAX_TRANSFORMS, f"proposal with {count} transforms")
        spi = body.take(spi_size, "proposal SPI")
        transforms = []
        for i in range(count):
            t, is_last = Transform.pull(body)
            transforms.append(t)
            need(is_last == (i == count - 1), "transform count does not match last-substructure flags")
        need(body.remaining() == 0, "trailing bytes in proposal")
        return cls(number, protocol, spi, tuple(transforms)), last == 0

    def verify(self) -> None:
        if self.protocol == ProtocolId.IKE:
            need(len(self.spi) in (0, 8), "IKE proposal SPI size must be 0 or 8")
        elif self.protocol in (ProtocolId.ESP, ProtocolId.AH):
            need(len(self.spi) == 4, "ESP/AH proposal SPI size must be 4")
        need(1 <= self.number, "proposal number 0")


@dataclass(frozen=True)
class SaPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.SA
    proposals: tuple[Proposal, ...] = field(default=())

    def push(self) -> bytes:
        return b"".join(p.push(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals))

    @classmethod
    def pull(cls, body: bytes) -> "SaPayload":
        r = Reader(body)
        proposals = []
        while True:
            p, last = Proposal.pull(r)
            proposals.append(p)
            need(len(proposals) <= MAX_PROPOSALS, "too many proposals")
            if last:
                break
        need(r.remaining() == 0, "trailing bytes after last proposal")
        return cls(tuple(proposals))

    def verify(self) -> None:
        need(len(self.proposals) >= 1, "SA payload without proposals")
        for p in self.proposals:
            p.verify()
        # RFC 7296 3.3.1: an offer numbers its proposals 1, 2, 3 ...; an answer is the one accepted proposal
        # and keeps its number, whatever it is.
        if len(self.proposals) > 1:
            prev = 0
            for p in self.proposals:
                if p.number < prev or p.number > prev + 1:
                    raise ParseError("proposal numbers must start at 1 and increase by one")
                prev = p.number
        for p in self.proposals:
            for t in p.transforms:
                if t.type not in tuple(TransformType):
                    continue  # unknown transform types make the proposal unacceptable, not the message
