"""Builders shared by the esp tests: SA pairs with random keys, and IPv4/IPv6 packets."""
from __future__ import annotations

import os
import struct

from esp import Sa, SaParams, parse_suite
from esp.sa import Lifetime, Mode, UdpEncap


def keys_for(suite: str, seed: int = 0) -> tuple[bytes, bytes]:
    s = parse_suite(suite)
    rnd = os.urandom if seed == 0 else (lambda n: bytes((seed + i) & 0xFF for i in range(n)))
    return rnd(s.enc_keymat_len), rnd(s.integ_key_len)


def sa_pair(suite: str = "aes128gcm16", *, mode: str = "tunnel", v6: bool = False, spi: int = 0x1001,
            esn: bool = False, window: int = 64, encap: UdpEncap | None = None, backend: str | None = None,
            backend_in: str | None = None, lifetime: Lifetime = Lifetime(), initial_seq: int = 0,
            tfc_pad: int = 0) -> tuple[Sa, Sa]:
    """An outbound SA and the inbound SA that accepts what it sends."""
    enc, integ = keys_for(suite)
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "192.0.2.2")
    common = dict(spi=spi, suite=suite, enc_key=enc, integ_key=integ, mode=Mode(mode), esn=esn, encap=encap,
                  lifetime=lifetime)
    out = Sa(SaParams(direction="out", src=src, dst=dst, backend=backend, tfc_pad=tfc_pad, **common),
             initial_seq=initial_seq)
    inb = Sa(SaParams(direction="in", replay_window=window, backend=backend_in or backend, **common),
             initial_seq=initial_seq)
    return out, inb


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(payload: bytes, proto: int = 17, src: bytes = bytes([10, 0, 0, 1]), dst: bytes = bytes([10, 0, 0, 2]),
         tos: int = 0, ident: int = 1) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident, 0, 64, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(payload: bytes, nh: int = 17, src: bytes = bytes(15) + b"\x01", dst: bytes = bytes(15) + b"\x02",
         tc: int = 0) -> bytes:
    first = (6 << 28) | (tc << 20)
    return struct.pack("!IHBB16s16s", first, len(payload), nh, 64, src, dst) + payload


def udp(payload: bytes, sport: int = 1234, dport: int = 5678) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
