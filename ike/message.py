"""IKE header, payload chain, and the payload rules per (exchange, request/response).

Rules are checked before any task runs (strongSwan's encoding/message.c does the same): which payloads an
exchange may carry, how many of each, and whether they must be inside SK.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, TypeVar

from .constants import HEADER_LEN, IKE_VERSION, ExchangeType, Flags, PayloadType
from .errors import InvalidSyntaxError, ParseError, TooLargeError, UnsupportedCriticalPayloadError
from .payloads import (AuthPayload, CertPayload, CertReqPayload, CpPayload, DeletePayload, IdPayload, KePayload,
                       NoncePayload, NotifyPayload, SaPayload, SkfPayload, SkPayload, TsPayload, UnknownPayload,
                       VendorPayload)
from .payloads._base import Reader

__all__ = ["Header", "Message", "pull_header", "push_header", "pull_chain", "push_chain", "check_rules",
           "RULES", "MAX_PAYLOADS", "Rule"]

#: the most payloads one message may chain (a bound a peer pushes against)
MAX_PAYLOADS = 96

T = TypeVar("T")


@dataclass(frozen=True)
class Header:
    spi_i: int
    spi_r: int
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int
    version: int = IKE_VERSION

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flags.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & Flags.INITIATOR)


def push_header(h: Header) -> bytes:
    return struct.pack("!QQBBBBII", h.spi_i, h.spi_r, h.next_payload, h.version, h.exchange, h.flags,
                       h.message_id, h.length)


def pull_header(data: bytes) -> Header:
    if len(data) < HEADER_LEN:
        raise ParseError(f"message of {len(data)} bytes is shorter than the IKE header")
    spi_i, spi_r, nxt, version, exchange, flags, mid, length = struct.unpack_from("!QQBBBBII", data)
    if version >> 4 != 2:
        raise ParseError(f"IKE major version {version >> 4}")
    if length != len(data):
        raise ParseError(f"header length {length} but datagram has {len(data)} bytes")
    return Header(spi_i, spi_r, nxt, exchange, flags, mid, length, version)


_CODECS: dict[int, Any] = {
    PayloadType.SA: SaPayload.pull, PayloadType.KE: KePayload.pull, PayloadType.NONCE: NoncePayload.pull,
    PayloadType.NOTIFY: NotifyPayload.pull, PayloadType.AUTH: AuthPayload.pull,
    PayloadType.CERT: CertPayload.pull, PayloadType.CERTREQ: CertReqPayload.pull,
    PayloadType.DELETE: DeletePayload.pull, PayloadType.VENDOR: VendorPayload.pull,
    PayloadType.CP: CpPayload.pull,
    PayloadType.IDi: lambda b: IdPayload.pull(b, True), PayloadType.IDr: lambda b: IdPayload.pull(b, False),
    PayloadType.TSi: lambda b: TsPayload.pull(b, True), PayloadType.TSr: lambda b: TsPayload.pull(b, False),
}


def pull_chain(first: int, data: bytes, offset: int = 0) -> tuple[list[Any], int]:
    """Payloads from ``data[offset:]`` starting with type ``first``. SK/SKF must be last and are returned raw
    (their body is not decoded here). Returns (payloads, offset of the SK body or -1)."""
    r = Reader(data, offset)
    out: list[Any] = []
    nxt = first
    while nxt != PayloadType.NONE:
        if len(out) >= MAX_PAYLOADS:
            raise TooLargeError(f"more than {MAX_PAYLOADS} payloads")
        start = r.pos
        this, flags, length = nxt, r.u8("payload header"), r.u8("payload header")
        nxt, critical = flags, bool(length & 0x80)
        length = r.u16("payload length")
        if length < 4:
            raise ParseError(f"payload length {length} < 4")
        if this in (PayloadType.SK, PayloadType.SKF):
            if start + length != len(data):
                raise ParseError("encrypted payload is not the last payload")
            body = r.take(length - 4, "encrypted payload")
            out.append(SkPayload.pull(body, nxt) if this == PayloadType.SK else SkfPayload.pull(body, nxt))
            return out, start
        body = r.take(length - 4, f"payload {this}")
        codec = _CODECS.get(this)
        if codec is None:
            if critical:
                raise UnsupportedCriticalPayloadError(f"unsupported critical payload {this}", payload_type=this)
            out.append(UnknownPayload(this, body, critical))
            continue
        p = codec(body)
        p.verify()
        out.append(p)
    if r.remaining():
        raise ParseError(f"{r.remaining()} trailing bytes after the last payload")
    return out, -1


def push_chain(payloads: Iterable[Any]) -> tuple[int, bytes]:
    """(type of the first payload, bytes of the chain)."""
    items = list(payloads)
    parts = []
    for i, p in enumerate(items):
        body = p.push()
        nxt = items[i + 1].payload_type if i + 1 < len(items) else 0
        parts.append(struct.pack("!BBH", nxt, 0, 4 + len(body)) + body)
    first = items[0].payload_type if items else 0
    return first, b"".join(parts)


@dataclass
class Message:
    """A decoded (or to-be-encoded) IKE message; ``payloads`` are the inner ones when ``encrypted``."""

    exchange: int
    spi_i: int
    spi_r: int
    message_id: int
    response: bool
    from_initiator: bool
    payloads: list[Any] = field(default_factory=list)
    encrypted: bool = False
    raw: bytes = b""  # the bytes received or sent (first datagram / reassembled), for AUTH signed octets

    @property
    def flags(self) -> int:
        return (Flags.RESPONSE if self.response else 0) | (Flags.INITIATOR if self.from_initiator else 0)

    def add(self, *payloads: Any) -> None:
        self.payloads.extend(payloads)

    def get(self, cls: type[T]) -> T | None:
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def all(self, cls: type[T]) -> list[T]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def get_id(self, initiator: bool) -> IdPayload | None:
        for p in self.payloads:
            if isinstance(p, IdPayload) and p.initiator == initiator:
                return p
        return None

    def get_ts(self, initiator: bool) -> TsPayload | None:
        for p in self.payloads:
            if isinstance(p, TsPayload) and p.initiator == initiator:
                return p
        return None

    def notify(self, ntype: int) -> NotifyPayload | None:
        for p in self.payloads:
            if isinstance(p, NotifyPayload) and p.type == ntype:
                return p
        return None

    def notifies(self, ntype: int) -> list[NotifyPayload]:
        return [p for p in self.payloads if isinstance(p, NotifyPayload) and p.type == ntype]

    def error_notify(self) -> NotifyPayload | None:
        for p in self.payloads:
            if isinstance(p, NotifyPayload) and p.is_error:
                return p
        return None

    def header(self, next_payload: int, length: int) -> Header:
        return Header(self.spi_i, self.spi_r, next_payload, self.exchange, self.flags, self.message_id, length)

    def encode_plain(self) -> bytes:
        first, chain = push_chain(self.payloads)
        return push_header(self.header(first, HEADER_LEN + len(chain))) + chain

    def describe(self) -> str:
        """strongSwan-style summary, e.g. ``IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) ]``."""
        names = []
        for p in self.payloads:
            if isinstance(p, NotifyPayload):
                names.append(f"N({p})")
            else:
                try:
                    names.append(PayloadType(p.payload_type).name)
                except ValueError:
                    names.append(str(p.payload_type))
        try:
            ex = ExchangeType(self.exchange).name
        except ValueError:
            ex = str(self.exchange)
        return f"{ex} {'response' if self.response else 'request'} {self.message_id} [ {' '.join(names)} ]"


# --- rules ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    max_count: int
    encrypted: bool


_MANY = 32
_U = False  # unencrypted
_E = True

_INIT: dict[int, Rule] = {PayloadType.SA: Rule(1, _U), PayloadType.KE: Rule(1, _U), PayloadType.NONCE: Rule(1, _U),
         PayloadType.NOTIFY: Rule(_MANY, _U), PayloadType.VENDOR: Rule(_MANY, _U),
         PayloadType.CERTREQ: Rule(_MANY, _U)}
_AUTH: dict[int, Rule] = {PayloadType.IDi: Rule(1, _E), PayloadType.IDr: Rule(1, _E), PayloadType.CERT: Rule(16, _E),
         PayloadType.CERTREQ: Rule(_MANY, _E), PayloadType.AUTH: Rule(1, _E), PayloadType.CP: Rule(1, _E),
         PayloadType.SA: Rule(1, _E), PayloadType.TSi: Rule(1, _E), PayloadType.TSr: Rule(1, _E),
         PayloadType.NOTIFY: Rule(_MANY, _E), PayloadType.VENDOR: Rule(_MANY, _E), PayloadType.EAP: Rule(1, _E)}
_CHILD: dict[int, Rule] = {PayloadType.SA: Rule(1, _E), PayloadType.NONCE: Rule(1, _E), PayloadType.KE: Rule(1, _E),
          PayloadType.TSi: Rule(1, _E), PayloadType.TSr: Rule(1, _E), PayloadType.NOTIFY: Rule(_MANY, _E),
          PayloadType.VENDOR: Rule(_MANY, _E), PayloadType.CP: Rule(1, _E)}
_INFO: dict[int, Rule] = {PayloadType.NOTIFY: Rule(_MANY, _E), PayloadType.DELETE: Rule(_MANY, _E),
         PayloadType.VENDOR: Rule(_MANY, _E), PayloadType.CP: Rule(1, _E)}

#: (exchange, is_response) -> allowed payload types with their max count and encryption requirement
RULES: dict[tuple[int, bool], dict[int, Rule]] = {
    (ExchangeType.IKE_SA_INIT, False): _INIT, (ExchangeType.IKE_SA_INIT, True): _INIT,
    (ExchangeType.IKE_AUTH, False): _AUTH, (ExchangeType.IKE_AUTH, True): _AUTH,
    (ExchangeType.CREATE_CHILD_SA, False): _CHILD, (ExchangeType.CREATE_CHILD_SA, True): _CHILD,
    (ExchangeType.INFORMATIONAL, False): _INFO, (ExchangeType.INFORMATIONAL, True): _INFO,
}


def check_rules(msg: Message) -> None:
    """Raise InvalidSyntaxError when ``msg`` breaks its exchange's payload rules."""
    rules = RULES.get((msg.exchange, msg.response))
    if rules is None:
        raise InvalidSyntaxError(f"unknown exchange type {msg.exchange}")
    counts: dict[int, int] = {}
    for p in msg.payloads:
        if isinstance(p, UnknownPayload):
            continue
        t = p.payload_type
        rule = rules.get(t)
        if rule is None:
            raise InvalidSyntaxError(f"payload {PayloadType(t).name} not allowed in {msg.describe()}")
        if rule.encrypted and not msg.encrypted:
            # an unprotected error notify answering IKE_AUTH is tolerated (RFC 7296 2.21.2 says to log it)
            if not (t == PayloadType.NOTIFY and msg.response):
                raise InvalidSyntaxError(f"payload {PayloadType(t).name} must be encrypted")
        counts[t] = counts.get(t, 0) + 1
        if counts[t] > rule.max_count:
            raise InvalidSyntaxError(f"too many {PayloadType(t).name} payloads")
    if msg.exchange == ExchangeType.IKE_SA_INIT and msg.encrypted:
        raise InvalidSyntaxError("IKE_SA_INIT must not be encrypted")
    if msg.exchange != ExchangeType.IKE_SA_INIT and not msg.encrypted and not msg.response:
        raise InvalidSyntaxError(f"{ExchangeType(msg.exchange).name} request must be encrypted")
