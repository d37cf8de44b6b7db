"""Capture files built byte by byte with struct, independent of esp.pcap, for its tests.

Each builder follows the file format documents (pcap: pcap-savefile(5); pcapng: draft-ietf-opsawg-pcapng),
not espresso's writer, so a reader test does not check the writer against itself.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass


@dataclass
class Rec:
    data: bytes
    ts_sec: int = 1_700_000_000
    ts_frac: int = 0
    origlen: int | None = None
    iface: int = 0


def pcap_file(records: list[Rec], *, linktype: int = 1, order: str = "<", nano: bool = False,
              snaplen: int = 65535) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for r in records:
        ol = len(r.data) if r.origlen is None else r.origlen
        out.append(struct.pack(order + "IIII", r.ts_sec, r.ts_frac, len(r.data), ol) + r.data)
    return b"".join(out)


def _opt(order: str, code: int, val: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def shb(order: str = "<", options: bytes = b"") -> bytes:
    body = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + options
    blen = 12 + len(body)
    return struct.pack(order + "II", 0x0A0D0D0A, blen) + body + struct.pack(order + "I", blen)


def idb(linktype: int, order: str = "<", snaplen: int = 0, tsresol: int | None = None, name: str | None = None) -> bytes:
    opts = b""
    if name:
        opts += _opt(order, 2, name.encode())
    if tsresol is not None:
        opts += _opt(order, 9, bytes([tsresol]))
    if opts:
        opts += struct.pack(order + "HH", 0, 0)
    body = struct.pack(order + "HHI", linktype, 0, snaplen) + opts
    blen = 12 + len(body)
    return struct.pack(order + "II", 1, blen) + body + struct.pack(order + "I", blen)


def epb(iface: int, ts: int, data: bytes, order: str = "<", origlen: int | None = None,
        options: bytes = b"") -> bytes:
    ol = len(data) if origlen is None else origlen
    body = struct.pack(order + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), ol) + data
    body += b"\0" * (-len(body) % 4) + options
    blen = 12 + len(body)
    return struct.pack(order + "II", 6, blen) + body + struct.pack(order + "I", blen)


def spb(data: bytes, order: str = "<", origlen: int | None = None) -> bytes:
    ol = len(data) if origlen is None else origlen
    body = struct.pack(order + "I", ol) + data
    body += b"\0" * (-len(body) % 4)
    blen = 12 + len(body)
    return struct.pack(order + "II", 3, blen) + body + struct.pack(order + "I", blen)


def opb(iface: int, ts: int, data: bytes, order: str = "<") -> bytes:
    body = struct.pack(order + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data
    body += b"\0" * (-len(body) % 4)
    blen = 12 + len(body)
    return struct.pack(order + "II", 2, blen) + body + struct.pack(order + "I", blen)


def other_block(btype: int, payload: bytes, order: str = "<") -> bytes:
    body = payload + b"\0" * (-len(payload) % 4)
    blen = 12 + len(body)
    return struct.pack(order + "II", btype, blen) + body + struct.pack(order + "I", blen)


# -- packets ---------------------------------------------------------------------------------------------------

def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 1, frag: int = 0, ttl: int = 64) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, ttl, proto, 0,
                    ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return h + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, *, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, hlim, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x18, 8192, 0, 0) + payload


def ether(payload: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = (), outer_tpid: int = 0x8100) -> bytes:
    hdr = bytes.fromhex("665544332211") + bytes.fromhex("0a0b0c0d0e0f")
    for k, vid in enumerate(vlans):
        tpid = outer_tpid if k == 0 and len(vlans) > 1 else 0x8100
        hdr += struct.pack("!HH", tpid, vid)
    return hdr + struct.pack("!H", ethertype) + payload


def sll(payload: bytes, proto: int = 0x0800) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, bytes.fromhex("0a0b0c0d0e0f0000"), proto) + payload


def sll2(payload: bytes, proto: int = 0x0800) -> bytes:
    return struct.pack("!HHIHBB8s", proto, 0, 2, 1, 0, 6, bytes.fromhex("0a0b0c0d0e0f0000")) + payload


FRAMERS = {
    1: lambda ip: ether(ip, 0x86DD if ip[0] >> 4 == 6 else 0x0800),
    101: lambda ip: ip,
    12: lambda ip: ip,
    228: lambda ip: ip,
    229: lambda ip: ip,
    113: lambda ip: sll(ip, 0x86DD if ip[0] >> 4 == 6 else 0x0800),
    276: lambda ip: sll2(ip, 0x86DD if ip[0] >> 4 == 6 else 0x0800),
}


def plaintext_packets(n: int, v6: bool = False) -> list[bytes]:
    out = []
    for i in range(n):
        payload = bytes((i + k) & 0xFF for k in range(10 + (i * 37) % 300))
        if v6:
            out.append(ipv6("2001:db8:1::1", "2001:db8:2::2", 17, udp(1000 + i, 53, payload)))
        else:
            out.append(ipv4("10.1.0.1", "10.2.0.2", 17 if i % 3 else 6,
                            udp(1000 + i, 53, payload) if i % 3 else tcp(1000 + i, 80, payload), ident=i))
    return out
