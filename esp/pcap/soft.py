"""ESP one packet at a time, for the Wireshark rows the compiled core has no suite for (:class:`SoftSuite`).

The capture tools hand a :class:`SoftSa` the same batches and ``select`` arrays as an :class:`esp.Sa`
(``decrypt_batch``/``encrypt_batch``, a verdict per slot), so grouping, counting and output are shared; only
the cryptography differs: the ``cryptography`` library's ciphers (Blowfish and CAST5 from OpenSSL 3's legacy
provider, which that library loads where its OpenSSL has one; DES as TripleDES with its one key thrice, the
same permutation) and the standard library's HMACs. Framing follows the core's: IPv4 or IPv6 without
extension headers outside, ESP plain or in UDP (RFC 3948), tunnel or transport mode, an anti-replay window
(RFC 4303 3.4.3), ESN (RFC 4303 2.2.1, the high half inferred as appendix A2 says), padding checked.
This is a few microseconds a packet, not the core's batch speed: for captures of old or odd SAs, not for
line rate.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from typing import Any

import numpy as np

from esp.batch import PacketBatch, Verdict
from esp.pcap.soft_suite import RowUnavailable, SoftSuite

__all__ = ["SoftSa", "check_available"]

_HASHES = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512", "md5": "md5",
           "ripemd160": "ripemd160"}
_NAMES = {"3des-cbc": "TripleDES-CBC", "des-cbc": "DES-CBC", "blowfish-cbc": "Blowfish-CBC", "cast5-cbc": "CAST5-CBC",
          "twofish-cbc": "Twofish-CBC", "aes-cbc": "AES-CBC", "aes-ctr": "AES-CTR"}
_LEGACY = {"blowfish-cbc", "cast5-cbc"}


def _algorithm(enc: str, key: bytes) -> Any:
    from cryptography.hazmat.decrepit.ciphers import algorithms as decrepit
    from cryptography.hazmat.primitives.ciphers import algorithms

    if enc in ("aes-cbc", "aes-ctr"):
        return algorithms.AES(key)
    if enc == "3des-cbc":
        return decrepit.TripleDES(key)
    if enc == "des-cbc":
        return decrepit.TripleDES(key * 3)  # EDE with K1 = K2 = K3 is single DES
    if enc == "blowfish-cbc":
        return decrepit.Blowfish(key)
    if enc == "cast5-cbc":
        return decrepit.CAST5(key)
    raise RowUnavailable(f"{_NAMES.get(enc, enc)}: neither OpenSSL nor the cryptography library implements it, "
                         f"so espresso cannot decrypt this row")


def check_available(suite: SoftSuite) -> None:
    """RowUnavailable naming what is missing: Twofish anywhere, Blowfish and CAST5 without OpenSSL 3's legacy
    provider in the cryptography library, RIPEMD-160 without it in Python's hashlib."""
    if suite.enc != "null":
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.ciphers import Cipher, modes

        alg = _algorithm(suite.enc, bytes(suite.key_len))
        mode = modes.CTR(bytes(16)) if suite.enc == "aes-ctr" else modes.CBC(bytes(alg.block_size // 8))
        try:
            Cipher(alg, mode).encryptor()
        except UnsupportedAlgorithm:
            where = (" (it lives in OpenSSL 3's legacy provider, which the cryptography library has not loaded: "
                     "CRYPTOGRAPHY_OPENSSL_NO_LEGACY is set, or its OpenSSL was built without it)"
                     if suite.enc in _LEGACY else "")
            raise RowUnavailable(f"{_NAMES[suite.enc]} is not available here{where}; this row cannot be "
                                 f"decrypted") from None
    if suite.auth in _HASHES:
        try:
            hashlib.new(_HASHES[suite.auth])
        except ValueError:
            raise RowUnavailable(f"HMAC-{suite.auth.upper()} is not available in this Python's OpenSSL (RIPEMD-160 "
                                 f"needs OpenSSL 3's legacy provider); this row cannot be checked") from None


def _sum16(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ip4_checksum(hdr: bytearray) -> None:
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", ~_sum16(bytes(hdr)) & 0xFFFF)


def _inner_len(p: bytes, nh: int) -> int:
    """The inner packet's own length (tunnel mode: what follows is padding), or -1 if it is not one."""
    if nh == 4 and len(p) >= 20 and p[0] >> 4 == 4:
        n = int.from_bytes(p[2:4], "big")
        return n if 20 <= n <= len(p) else -1
    if nh == 41 and len(p) >= 40 and p[0] >> 4 == 6:
        n = int.from_bytes(p[4:6], "big") + 40
        return n if n <= len(p) else -1
    return -1


class SoftSa:
    """One SA in one direction over a :class:`SoftSuite`, with the batch interface of :class:`esp.Sa`."""

    def __init__(self, entry: Any, *, outbound: bool, mode: str, window: int, initial_seq: int = 0) -> None:
        s: SoftSuite = entry.suite
        check_available(s)
        if outbound and s.auth == "any":
            raise ValueError(f"{entry.origin or entry.label}: {s.name} names no integrity algorithm (Wireshark's "
                             f"'ANY n bit authentication [no checking]'), so there is no ICV to compute: "
                             f"decrypt only")
        if entry.spi is None:
            raise ValueError(f"{entry.origin or entry.label}: SPI '*' matches any SA; an SA needs its SPI")
        self.suite = s
        self.spi = entry.spi
        self.outbound = outbound
        self.mode = mode
        self.esn = entry.esn
        self.encap = entry.encap
        self.window = window
        self.ikey = entry.integ_key
        self.key = entry.enc_key[:s.key_len]
        self.salt = entry.enc_key[s.key_len:]
        self.seq = initial_seq          # outbound: the last number sent; inbound: the highest received
        self.bitmap = 0                 # inbound: bit k = (seq - k) received
        self._alg = _algorithm(s.enc, self.key) if s.enc != "null" else None
        self._hash = _HASHES.get(s.auth)
        self._ip_id = 0
        self._outer: tuple[bytes, bytes] | None = None
        if outbound and mode == "tunnel":
            src, dst = ipaddress.ip_address(entry.src.address), ipaddress.ip_address(entry.dst.address)
            self._outer = (src.packed, dst.packed)

    # -- the Sa interface the tools use ----------------------------------------------------------------------

    def decrypt_batch(self, src: PacketBatch, dst: PacketBatch, select: np.ndarray | None = None) -> None:
        self._batch(src, dst, select, self._open)

    def encrypt_batch(self, src: PacketBatch, dst: PacketBatch, select: np.ndarray | None = None) -> None:
        self._batch(src, dst, select, self._seal)

    def _batch(self, src: PacketBatch, dst: PacketBatch, select: np.ndarray | None, one: Any) -> None:
        idx = range(len(src.offsets)) if select is None else np.asarray(select).tolist()
        buf, out = src.buf, dst.buf
        for i in idx:
            o, n = int(src.offsets[i]), int(src.lengths[i])
            verdict, data = one(bytes(buf[o:o + n]))
            if verdict == Verdict.OK and len(data) > int(dst.capacity[i]):
                verdict = Verdict.NO_SPACE
            if verdict == Verdict.OK:
                d = int(dst.offsets[i])
                out[d:d + len(data)] = np.frombuffer(data, dtype=np.uint8)
                dst.lengths[i] = len(data)
            else:
                dst.lengths[i] = 0
            dst.status[i] = int(verdict)

    # -- crypto ------------------------------------------------------------------------------------------------

    def _icv(self, data: bytes, seq_hi: int) -> bytes:
        if self.esn:
            data += struct.pack("!I", seq_hi)
        return hmac.new(self.ikey, data, self._hash).digest()[:self.suite.icv_len]

    def _cipher(self, iv: bytes) -> Any:
        from cryptography.hazmat.primitives.ciphers import Cipher, modes
        if self.suite.enc == "aes-ctr":
            return Cipher(self._alg, modes.CTR(self.salt + iv + b"\0\0\0\1"))
        return Cipher(self._alg, modes.CBC(iv))

    # -- inbound -----------------------------------------------------------------------------------------------

    def _full_seq(self, lo: int) -> int:
        """RFC 4303 appendix A2: the 64-bit number a received low half stands for, from the window's top."""
        if not self.esn:
            return lo
        top = self.seq
        t_lo, t_hi = top & 0xFFFFFFFF, top >> 32
        w = max(self.window, 1)
        if t_lo >= w - 1:
            hi = t_hi + 1 if lo < t_lo - w + 1 else t_hi
        else:
            hi = t_hi - 1 if lo >= t_lo - w + 1 + (1 << 32) and t_hi else t_hi
        return (hi << 32) | lo

    def _replayed(self, seq: int) -> bool:
        if not self.window:
            return False
        if seq > self.seq:
            return False
        diff = self.seq - seq
        return diff >= self.window or bool(self.bitmap >> diff & 1)

    def _accept(self, seq: int) -> None:
        if not self.window:
            self.seq = max(self.seq, seq)
            return
        if seq > self.seq:
            shift = seq - self.seq
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            self.seq = seq
        else:
            self.bitmap |= 1 << (self.seq - seq)

    def _open(self, pkt: bytes) -> tuple[Verdict, bytes]:
        s = self.suite
        n = len(pkt)
        if n < 20:
            return Verdict.MALFORMED, b""
        ver = pkt[0] >> 4
        if ver == 4:
            hl = (pkt[0] & 0x0F) * 4
            total = int.from_bytes(pkt[2:4], "big")
            if hl < 20 or hl > n or total > n or total < hl:
                return Verdict.MALFORMED, b""
            if int.from_bytes(pkt[6:8], "big") & 0x3FFF:
                return Verdict.UNSUPPORTED, b""
            proto = pkt[9]
        elif ver == 6:
            if n < 40 or int.from_bytes(pkt[4:6], "big") + 40 > n:
                return Verdict.MALFORMED, b""
            hl, total, proto = 40, int.from_bytes(pkt[4:6], "big") + 40, pkt[6]
        else:
            return Verdict.MALFORMED, b""
        esp_off = hl
        if proto == 17:
            esp_off += 8
            if total < esp_off + 8 or pkt[esp_off:esp_off + 4] == b"\0\0\0\0":
                return Verdict.MALFORMED, b""
        elif proto != 50:
            return Verdict.MALFORMED, b""
        esp = pkt[esp_off:total]
        ct_end = len(esp) - s.icv_len
        ct = esp[8 + s.iv_len:ct_end]
        if ct_end < 8 + s.iv_len or len(ct) < 2 or (s.enc != "aes-ctr" and len(ct) % s.align):
            return Verdict.MALFORMED, b""
        seq = self._full_seq(int.from_bytes(esp[4:8], "big"))
        if self._replayed(seq):
            return Verdict.REPLAYED, b""
        if self._hash is not None and not hmac.compare_digest(self._icv(esp[:ct_end], seq >> 32), esp[ct_end:]):
            return Verdict.AUTH_FAILED, b""
        if self._alg is not None:
            dec = self._cipher(esp[8:8 + s.iv_len]).decryptor()
            pt = dec.update(ct) + dec.finalize()
        else:
            pt = ct
        pad, nh = pt[-2], pt[-1]
        if pad + 2 > len(pt):
            return Verdict.MALFORMED, b""
        if pt[len(pt) - 2 - pad:len(pt) - 2] != bytes(range(1, pad + 1)):
            return Verdict.PAD_ERROR, b""
        payload = pt[:len(pt) - 2 - pad]
        if nh == 59:
            self._accept(seq)
            return Verdict.DUMMY, b""
        if self.mode == "tunnel":
            inner = _inner_len(payload, nh)
            if inner < 0:
                return Verdict.MALFORMED, b""
            self._accept(seq)
            return Verdict.OK, payload[:inner]
        hdr = bytearray(pkt[:hl])
        if ver == 4:
            hdr[9] = nh
            hdr[2:4] = struct.pack("!H", hl + len(payload))
            _ip4_checksum(hdr)
        else:
            hdr[6] = nh
            hdr[4:6] = struct.pack("!H", len(payload))
        self._accept(seq)
        return Verdict.OK, bytes(hdr) + payload

    # -- outbound ----------------------------------------------------------------------------------------------

    def _seal(self, pkt: bytes) -> tuple[Verdict, bytes]:
        s = self.suite
        if len(pkt) < 20 or pkt[0] >> 4 not in (4, 6):
            return Verdict.MALFORMED, b""
        ver = pkt[0] >> 4
        if ver == 4:
            hl, total, tc = (pkt[0] & 0x0F) * 4, int.from_bytes(pkt[2:4], "big"), pkt[1]
        else:
            hl, total = 40, int.from_bytes(pkt[4:6], "big") + 40
            tc = ((pkt[0] & 0x0F) << 4) | (pkt[1] >> 4)
        if hl < 20 or total < hl or total > len(pkt):
            return Verdict.MALFORMED, b""
        pkt = pkt[:total]
        if self.mode == "tunnel":
            payload, nh = pkt, 4 if ver == 4 else 41
        else:
            payload, nh = pkt[hl:], pkt[9] if ver == 4 else pkt[6]
        if self.seq + 1 >= (1 << 64 if self.esn else 1 << 32):
            return Verdict.SEQ_EXHAUSTED, b""
        self.seq += 1
        seq = self.seq
        block = max(s.align, 4)
        pad = (-(len(payload) + 2)) % block
        pt = payload + bytes(range(1, pad + 1)) + bytes((pad, nh))
        iv = os.urandom(s.iv_len)
        if self._alg is not None:
            enc = self._cipher(iv).encryptor()
            ct = enc.update(pt) + enc.finalize()
        else:
            ct = pt
        esp = struct.pack("!II", self.spi, seq & 0xFFFFFFFF) + iv + ct
        if self._hash is not None:
            esp += self._icv(esp, seq >> 32)
        if self.encap is not None:
            body = struct.pack("!HHHH", self.encap[0], self.encap[1], 8 + len(esp), 0) + esp
            proto = 17
        else:
            body, proto = esp, 50
        if self.mode == "tunnel":
            assert self._outer is not None
            osrc, odst = self._outer
            if len(osrc) == 4:
                self._ip_id = (self._ip_id + 1) & 0xFFFF
                hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tc, 20 + len(body), self._ip_id, 0, 64, proto, 0,
                                            osrc, odst))
                _ip4_checksum(hdr)
            else:
                hdr = bytearray(struct.pack("!IHBB16s16s", (6 << 28) | (tc << 20), len(body), proto, 64, osrc, odst))
        else:
            hdr = bytearray(pkt[:hl])
            if ver == 4:
                hdr[9] = proto
                hdr[2:4] = struct.pack("!H", hl + len(body))
                _ip4_checksum(hdr)
            else:
                hdr[6] = proto
                hdr[4:6] = struct.pack("!H", len(body))
        if proto == 17 and hdr[0] >> 4 == 6:  # IPv6 forbids a zero UDP checksum
            pseudo = bytes(hdr[8:40]) + struct.pack("!IxxxB", len(body), 17)
            csum = ~_sum16(pseudo + body) & 0xFFFF or 0xFFFF
            body = body[:6] + struct.pack("!H", csum) + body[8:]
        return Verdict.OK, bytes(hdr) + body
