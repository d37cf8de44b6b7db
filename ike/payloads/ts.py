"""Traffic Selector payloads TSi/TSr (RFC 7296 3.13)."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar

from ..constants import PayloadType, TsType
from ..core_config import TrafficSelector
from ..errors import ConfigError, ParseError
from ._base import Payload, Reader, need

__all__ = ["TsPayload", "MAX_TS"]

MAX_TS = 64


def _push_ts(ts: TrafficSelector) -> bytes:
    a, b = ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)
    ttype = TsType.TS_IPV4_ADDR_RANGE if a.version == 4 else TsType.TS_IPV6_ADDR_RANGE
    body = a.packed + b.packed
    return struct.pack("!BBHHH", ttype, ts.protocol, 8 + len(body), ts.start_port, ts.end_port) + body


def _pull_ts(r: Reader) -> TrafficSelector:
    ttype, proto, length = r.u8("TS type"), r.u8("TS protocol"), r.u16("TS length")
    sp, ep = r.u16("TS port"), r.u16("TS port")
    if ttype == TsType.TS_IPV4_ADDR_RANGE:
        need(length == 16, "IPv4 traffic selector length must be 16")
        size = 4
    elif ttype == TsType.TS_IPV6_ADDR_RANGE:
        need(length == 40, "IPv6 traffic selector length must be 40")
        size = 16
    else:
        raise ParseError(f"unsupported traffic selector type {ttype}")
    a = ipaddress.ip_address(r.take(size, "TS address"))
    b = ipaddress.ip_address(r.take(size, "TS address"))
    try:
        return TrafficSelector(str(a), str(b), proto, sp, ep)
    except ConfigError as exc:
        raise ParseError(str(exc)) from None


@dataclass(frozen=True)
class TsPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.TSi
    selectors: tuple[TrafficSelector, ...]
    initiator: bool = True

    @property
    def payload_type(self) -> int:
        return PayloadType.TSi if self.initiator else PayloadType.TSr

    def push(self) -> bytes:
        return struct.pack("!B3x", len(self.selectors)) + b"".join(_push_ts(t) for t in self.selectors)

    @classmethod
    def pull(cls, body: bytes, initiator: bool = True) -> "TsPayload":
        r = Reader(body)
        count = r.u8("TS count")
        r.take(3, "TS reserved")
        need(1 <= count <= MAX_TS, f"{count} traffic selectors")
        out = tuple(_pull_ts(r) for _ in range(count))
        need(r.remaining() == 0, "trailing bytes in TS payload")
        return cls(out, initiator)
