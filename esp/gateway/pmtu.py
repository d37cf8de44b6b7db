"""Path MTU for the gateway (RFC 4301 section 8): how big an inner packet may be, and what to do when one is not.

Tunnel mode adds an outer IP header, a UDP header when ESP is encapsulated (RFC 3948), the ESP header, the IV,
padding to the cipher's alignment, the 2-byte trailer and the ICV. :func:`max_inner` is the largest inner packet
whose ESP packet still fits the outer MTU, exact for every length at or below it (the padding is counted for the
worst length, not a guess). The gateway sets its TUN MTU to that, so the kernel already answers or fragments
most packets that would not fit; a packet that reaches the gateway too big anyway (a TUN MTU configured larger
than the path, a smaller outer MTU, a rekey to a suite with more overhead) is handled here:

* IPv4 with DF, and every IPv6 packet: answered with ICMP "fragmentation needed" (type 3 code 4, RFC 1191) /
  ICMPv6 "packet too big" (RFC 8201) carrying the inner MTU, written back into the TUN device so the sender's
  kernel learns the path MTU (``ip route get`` shows it);
* IPv4 without DF: the sender asked the network to fragment, so the inner packet is fragmented *before*
  encryption (RFC 4301 section 8.1 leaves the choice; fragments of the inner packet travel as ordinary ESP
  packets and are reassembled by the far host, so the outer path never carries fragments).

The ICMP error's source is the original packet's destination: the gateway has no address on the far inner
network, and a source the kernel owns would be dropped on the way in from the TUN as a martian; the sender's
kernel keys its PMTU cache on the quoted header, not on who sent the error. No error answers an ICMP error,
a non-first fragment, or a multicast/broadcast/unspecified source (RFC 1122 3.2.2, RFC 4443 2.4).

Pure functions of bytes: no I/O (the runtime writes the results).
"""
from __future__ import annotations

import ipaddress
import struct

from esp.suites import SUITES, Suite

__all__ = ["DEFAULT_OUTER_MTU", "DEFAULT_SUITE", "IPV6_MIN_MTU", "fragment_ipv4", "max_inner", "too_big_reply"]

#: Outer MTU assumed when neither the configuration nor the local address's interface says.
DEFAULT_OUTER_MTU = 1500
#: RFC 8200: every IPv6 link carries 1280 bytes; a packet-too-big never asks for less.
IPV6_MIN_MTU = 1280
#: Smallest IPv4 MTU a gateway will report or fragment to (RFC 791: every host takes 68, routers 576).
IPV4_MIN_MTU = 576
#: An ICMP error quotes as much of the offending packet as fits in these (RFC 1812 4.3.2.3, RFC 4443 2.4).
_ICMP4_MAX, _ICMP6_MAX = 576, IPV6_MIN_MTU
_ESP_HEADER, _TRAILER, _UDP = 8, 2, 8
#: The suite assumed before any SA is installed (an AEAD in UDP, what the default proposals negotiate); the
#: gateway recomputes when the real SAs arrive.
DEFAULT_SUITE = SUITES["aes128gcm16"]


def max_inner(outer_mtu: int, suite: Suite, outer_family: int = 4, udp: bool = True) -> int:
    """Largest inner packet whose tunnel-mode ESP packet fits ``outer_mtu``."""
    room = outer_mtu - (20 if outer_family == 4 else 40) - (_UDP if udp else 0) - _ESP_HEADER - suite.iv_len \
        - suite.icv_len
    align = max(suite.align, 4)  # RFC 4303 2.4: the ICV starts on a 4-byte boundary
    return max(0, room - room % align - _TRAILER)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _bad_source4(src: bytes) -> bool:
    a = ipaddress.IPv4Address(src)
    return a.is_multicast or a.is_unspecified or src == b"\xff\xff\xff\xff"


def too_big_reply(packet: bytes, mtu: int) -> bytes | None:
    """The ICMP/ICMPv6 error telling ``packet``'s sender that only ``mtu`` bytes fit, or None when RFC 1122 /
    RFC 4443 forbid an error for it (an ICMP error itself, a non-first fragment, an unusable source) or it is
    not a well-formed IP packet."""
    if len(packet) < 20:
        return None
    v = packet[0] >> 4
    if v == 4:
        ihl = (packet[0] & 15) * 4
        if ihl < 20 or len(packet) < ihl or _bad_source4(packet[12:16]):
            return None
        if struct.unpack("!H", packet[6:8])[0] & 0x1FFF:  # not the first fragment
            return None
        if packet[9] == 1 and (len(packet) < ihl + 1 or packet[ihl] not in (0, 8, 13, 15, 17)):
            return None  # an ICMP error (or unknown type): never answered with an error
        mtu = max(mtu, IPV4_MIN_MTU)
        quote = packet[:_ICMP4_MAX - 20 - 8]
        icmp = struct.pack("!BBHHH", 3, 4, 0, 0, min(mtu, 0xFFFF)) + quote
        icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(icmp), 0, 0x4000, 64, 1, 0, packet[16:20],
                          packet[12:16])
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        return hdr + icmp
    if v == 6:
        if len(packet) < 40:
            return None
        src = ipaddress.IPv6Address(packet[8:24])
        if src.is_multicast or src.is_unspecified:
            return None
        if packet[6] == 58 and len(packet) > 40 and packet[40] < 128:
            return None  # an ICMPv6 error (types below 128)
        mtu = max(mtu, IPV6_MIN_MTU)
        quote = packet[:_ICMP6_MAX - 40 - 8]
        body = struct.pack("!BBHI", 2, 0, 0, mtu) + quote
        src6, dst6 = packet[24:40], packet[8:24]
        pseudo = src6 + dst6 + struct.pack("!I3xB", len(body), 58)
        body = body[:2] + struct.pack("!H", _csum(pseudo + body)) + body[4:]
        return struct.pack("!IHBB16s16s", 0x60000000, len(body), 58, 64, src6, dst6) + body
    return None


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes]:
    """RFC 791 fragments of an IPv4 packet, none longer than ``mtu``; options other than those marked
    "copied" stay in the first fragment only. Empty when the packet cannot be fragmented (DF set, malformed,
    or an MTU below what RFC 791 lets a fragment be)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return []
    ihl = (packet[0] & 15) * 4
    total = struct.unpack("!H", packet[2:4])[0]
    flags_off = struct.unpack("!H", packet[6:8])[0]
    if ihl < 20 or total < ihl or total > len(packet) or flags_off & 0x4000 or mtu < max(ihl + 8, 68):
        return []
    if total <= mtu:
        return [packet[:total]]
    header, payload = packet[:ihl], packet[ihl:total]
    later_header = header[:20] + _copied_options(header[20:])
    base_off, more = flags_off & 0x1FFF, flags_off & 0x2000
    out, pos = [], 0
    while pos < len(payload):
        h = header if pos == 0 else later_header
        step = (mtu - len(h)) & ~7
        if step <= 0:
            return []
        chunk = payload[pos:pos + step]
        last = pos + len(chunk) >= len(payload)
        fo = base_off + pos // 8 | (more if last else 0x2000)
        fh = bytearray(h)
        fh[0] = 0x40 | len(h) // 4
        fh[2:4] = struct.pack("!H", len(h) + len(chunk))
        fh[6:8] = struct.pack("!H", fo)
        fh[10:12] = b"\0\0"
        fh[10:12] = struct.pack("!H", _csum(bytes(fh)))
        out.append(bytes(fh) + chunk)
        pos += len(chunk)
    return out


def _copied_options(opts: bytes) -> bytes:
    """The IPv4 options with the "copied" flag (they go into every fragment), padded to 4 bytes."""
    out, i = bytearray(), 0
    while i < len(opts):
        t = opts[i]
        if t == 0:
            break
        if t == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            break
        n = opts[i + 1]
        if t & 0x80:
            out += opts[i:i + n]
        i += n
    out += b"\0" * (-len(out) % 4)
    return bytes(out)
