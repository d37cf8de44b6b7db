"""ISAKMP (RFC 2408) header, generic payload chain and the SA/proposal/transform codec with data attributes.

Payload bodies other than SA are kept as bytes with their type: IKEv1's KE, Nonce, HASH, SIG, VID and NAT-D
bodies are opaque data, and ID/CERT/CR/N/D carry a few fixed fields each, decoded by the exchange that uses them.
Every decoding error is a ParseError (ike.errors), never IndexError or struct.error, so a core can count drops.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from ..errors import ParseError
from ..payloads._base import Reader, need

__all__ = [
    "HEADER_LEN",
    "IKEV1_VERSION",
    "MAX_PAYLOADS",
    "Attribute",
    "Exchange",
    "Flags",
    "IsakmpHeader",
    "Payload",
    "PayloadType",
    "Proposal",
    "SaPayload",
    "Transform",
    "decode_sa",
    "encode_sa",
    "pull_chain",
    "pull_header",
    "pull_message",
    "push_chain",
    "push_header",
    "push_message",
]

HEADER_LEN = 28
#: major 1, minor 0
IKEV1_VERSION = 0x10
#: the most payloads one message may chain (a bound a peer pushes against)
MAX_PAYLOADS = 64
#: proposals/transforms one SA payload may carry
MAX_PROPOSALS = 64
MAX_TRANSFORMS = 64


class PayloadType(IntEnum):
    NONE = 0
    SA = 1
    PROPOSAL = 2
    TRANSFORM = 3
    KE = 4
    ID = 5
    CERT = 6
    CR = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    N = 11
    D = 12
    VID = 13
    NAT_D = 20  # RFC 3947
    NAT_OA = 21


class Exchange(IntEnum):
    MAIN = 2  # identity protection
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    QUICK = 32
    NEW_GROUP = 33


class Flags(IntEnum):
    ENCRYPTION = 0x01
    COMMIT = 0x02
    AUTH_ONLY = 0x04


@dataclass(frozen=True)
class IsakmpHeader:
    cookie_i: bytes
    cookie_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int
    version: int = IKEV1_VERSION

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & Flags.ENCRYPTION)


def push_header(h: IsakmpHeader) -> bytes:
    if len(h.cookie_i) != 8 or len(h.cookie_r) != 8:
        raise ValueError("ISAKMP cookies are 8 bytes")
    return h.cookie_i + h.cookie_r + struct.pack("!BBBBII", h.next_payload, h.version, h.exchange, h.flags,
                                                 h.message_id, h.length)


def pull_header(data: bytes) -> IsakmpHeader:
    """The header of ``data``; its length must match the datagram (RFC 2408 5.1 drops mismatches)."""
    if len(data) < HEADER_LEN:
        raise ParseError(f"message of {len(data)} bytes is shorter than the ISAKMP header")
    nxt, version, exchange, flags, mid, length = struct.unpack_from("!BBBBII", data, 16)
    if version >> 4 != 1:
        raise ParseError(f"ISAKMP major version {version >> 4}")
    if length != len(data):
        raise ParseError(f"header length {length} but datagram has {len(data)} bytes")
    return IsakmpHeader(bytes(data[:8]), bytes(data[8:16]), nxt, exchange, flags, mid, length, version)


@dataclass(frozen=True)
class Payload:
    """One payload of the chain: its type and body (without the 4-byte generic header)."""
    type: int
    body: bytes = field(repr=False)


def pull_chain(first: int, data: bytes, offset: int = 0) -> list[Payload]:
    """The payloads of ``data[offset:]`` starting with type ``first``. After decryption the body carries
    padding (RFC 2409 5.3 lets it be anything), so bytes after the last payload are ignored."""
    r = Reader(data, offset)
    out: list[Payload] = []
    nxt = first
    while nxt != PayloadType.NONE:
        need(len(out) < MAX_PAYLOADS, f"more than {MAX_PAYLOADS} payloads")
        following = r.u8("next payload")
        reserved = r.u8("reserved")
        need(reserved == 0, "reserved byte of a payload header is not zero")
        plen = r.u16("payload length")
        need(plen >= 4, f"payload length {plen} is below its header")
        out.append(Payload(nxt, r.take(plen - 4, f"payload {nxt}")))
        nxt = following
    return out


def push_chain(payloads: list[Payload]) -> tuple[int, bytes]:
    """(type of the first payload, encoded chain)."""
    parts = []
    for n, p in enumerate(payloads):
        following = payloads[n + 1].type if n + 1 < len(payloads) else PayloadType.NONE
        if len(p.body) + 4 > 0xFFFF:
            raise ValueError("payload too large")
        parts.append(struct.pack("!BBH", following, 0, len(p.body) + 4) + p.body)
    return (payloads[0].type if payloads else PayloadType.NONE), b"".join(parts)


def pull_message(data: bytes) -> tuple[IsakmpHeader, list[Payload]]:
    """Header and payloads of a plaintext message (an encrypted one is decrypted by keymat.Phase1Cipher first)."""
    h = pull_header(data)
    need(not h.encrypted, "message is encrypted")
    return h, pull_chain(h.next_payload, data, HEADER_LEN)


def push_message(cookie_i: bytes, cookie_r: bytes, exchange: int, flags: int, message_id: int,
                 payloads: list[Payload]) -> bytes:
    first, body = push_chain(payloads)
    h = IsakmpHeader(cookie_i, cookie_r, first, exchange, flags, message_id, HEADER_LEN + len(body))
    return push_header(h) + body


# --- SA payload (RFC 2408 3.4-3.6, RFC 2407 4.6) -----------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """A data attribute: TV form (value <= 0xFFFF as int, ``tv``) or TLV form (bytes value)."""
    type: int
    value: int | bytes

    def push(self) -> bytes:
        if isinstance(self.value, int):
            if 0 <= self.value <= 0xFFFF:
                return struct.pack("!HH", 0x8000 | self.type, self.value)
            n = max(1, (self.value.bit_length() + 7) // 8)
            raw = self.value.to_bytes(n, "big")
        else:
            raw = self.value
        return struct.pack("!HH", self.type & 0x7FFF, len(raw)) + raw

    @property
    def int_value(self) -> int:
        """The value as a number (TLV values such as long lifetimes are big-endian integers)."""
        return self.value if isinstance(self.value, int) else int.from_bytes(self.value, "big")


def _pull_attributes(r: Reader) -> tuple[Attribute, ...]:
    out = []
    while r.remaining():
        need(len(out) < 64, "more than 64 attributes")
        t = r.u16("attribute type")
        if t & 0x8000:
            out.append(Attribute(t & 0x7FFF, r.u16("attribute value")))
        else:
            out.append(Attribute(t, r.take(r.u16("attribute length"), "attribute value")))
    return tuple(out)


@dataclass(frozen=True)
class Transform:
    number: int
    transform_id: int
    attributes: tuple[Attribute, ...] = ()

    def get(self, attr_type: int) -> int | None:
        for a in self.attributes:
            if a.type == attr_type:
                return a.int_value
        return None


@dataclass(frozen=True)
class Proposal:
    number: int
    protocol: int  # 1 ISAKMP, 2 AH, 3 ESP
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True)
class SaPayload:
    doi: int
    situation: int
    proposals: tuple[Proposal, ...]


def decode_sa(body: bytes) -> SaPayload:
    r = Reader(body)
    doi = r.u32("DOI")
    situation = r.u32("situation")
    proposals = []
    more = PayloadType.PROPOSAL if r.remaining() else PayloadType.NONE
    while more == PayloadType.PROPOSAL:
        need(len(proposals) < MAX_PROPOSALS, "too many proposals")
        more = r.u8("next payload")
        need(more in (PayloadType.NONE, PayloadType.PROPOSAL), f"payload {more} after a proposal")
        r.u8("reserved")
        plen = r.u16("proposal length")
        need(plen >= 8, f"proposal length {plen}")
        pr = Reader(r.take(plen - 4, "proposal"))
        number, protocol, spi_size, count = pr.u8(), pr.u8(), pr.u8(), pr.u8()
        spi = pr.take(spi_size, "SPI")
        transforms = []
        tmore = PayloadType.TRANSFORM
        while tmore == PayloadType.TRANSFORM and len(transforms) < count:
            need(len(transforms) < MAX_TRANSFORMS, "too many transforms")
            tmore = pr.u8("next payload")
            need(tmore in (PayloadType.NONE, PayloadType.TRANSFORM), f"payload {tmore} after a transform")
            pr.u8("reserved")
            tlen = pr.u16("transform length")
            need(tlen >= 8, f"transform length {tlen}")
            tr = Reader(pr.take(tlen - 4, "transform"))
            tnum, tid = tr.u8(), tr.u8()
            tr.u16("reserved")
            transforms.append(Transform(tnum, tid, _pull_attributes(tr)))
        need(len(transforms) == count, f"proposal announces {count} transforms, has {len(transforms)}")
        proposals.append(Proposal(number, protocol, spi, tuple(transforms)))
    return SaPayload(doi, situation, tuple(proposals))


def encode_sa(sa: SaPayload) -> bytes:
    out = [struct.pack("!II", sa.doi, sa.situation)]
    for n, p in enumerate(sa.proposals):
        tparts = []
        for k, t in enumerate(p.transforms):
            attrs = b"".join(a.push() for a in t.attributes)
            tparts.append(struct.pack("!BBHBBH", PayloadType.TRANSFORM if k + 1 < len(p.transforms) else 0, 0,
                                      8 + len(attrs), t.number, t.transform_id, 0) + attrs)
        body = struct.pack("!BBBB", p.number, p.protocol, len(p.spi), len(p.transforms)) + p.spi + b"".join(tparts)
        out.append(struct.pack("!BBH", PayloadType.PROPOSAL if n + 1 < len(sa.proposals) else 0, 0,
                               4 + len(body)) + body)
    return b"".join(out)
