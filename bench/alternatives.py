"""What a user would pick instead of espresso, run on the same packets.

:class:`PythonEsp` is the straightforward per-packet tunnel-mode ESP a network engineer writes in an afternoon
over ``cryptography`` (AESGCM / ChaCha20Poly1305 / AES-CBC + stdlib HMAC): correct, with an outer IPv4 header
and checksum, padding checked and an anti-replay window on receive, and no compiled core. It is written to be
fast for plain Python (precompiled structs, one AEAD object per SA), so the ratio against it is honest.
scapy's :class:`SecurityAssociation` is the other thing people reach for; it runs at hundreds of packets per
second, so it gets few packets.
"""
from __future__ import annotations

import hmac
import os
import socket
import struct
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag

from bench.workloads import Workload, key_material

__all__ = [
    "AlternativeUnavailable",
    "PythonEsp",
    "PythonRing",
    "ScapyEsp",
    "ScapyRing",
    "python_available",
    "scapy_available",
]

_IP = struct.Struct("!BBHHHBBH4s4s")
_ESP = struct.Struct("!II")
_H10 = struct.Struct("!10H")


class AlternativeUnavailable(Exception):
    """This alternative cannot run here; the message says why."""


def _ip_checksum(header: bytes) -> int:
    total = sum(_H10.unpack(header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def python_available(suite_name: str) -> str | None:
    from esp.suites import Cipher, Integ, parse_suite

    s = parse_suite(suite_name)
    if s.cipher in (Cipher.AES_GCM, Cipher.CHACHA20_POLY1305):
        return None
    if s.cipher is Cipher.AES_CBC and s.integ is not Integ.NONE:
        return None
    return f"the Python reference ESP covers AES-GCM, ChaCha20-Poly1305 and AES-CBC+HMAC, not {s.name}"


class PythonEsp:
    """Tunnel-mode ESP over IPv4, one packet per call, in plain Python over ``cryptography``."""

    def __init__(self, suite_name: str, enc_key: bytes, integ_key: bytes, spi: int,
                 src: str = "192.0.2.1", dst: str = "192.0.2.2", replay_window: int = 64):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

        from esp.suites import Cipher as C
        from esp.suites import parse_suite

        reason = python_available(suite_name)
        if reason:
            raise AlternativeUnavailable(reason)
        s = parse_suite(suite_name)
        self.suite = s
        self.spi = spi
        self.seq = 0
        self.src, self.dst = socket.inet_aton(src), socket.inet_aton(dst)
        key, self.salt = enc_key[:s.key_len], enc_key[s.key_len:]
        self.align = s.align
        self.icv_len = s.icv_len
        self.window = replay_window
        self.top = 0
        self.bitmap = 0
        if s.cipher is C.AES_GCM:
            self.aead = AESGCM(key)
        elif s.cipher is C.CHACHA20_POLY1305:
            self.aead = ChaCha20Poly1305(key)
        else:
            self.aead = None
            self._cbc = lambda iv: Cipher(algorithms.AES(key), modes.CBC(iv))
            self.integ_key = integ_key
            self.digest = {"sha1_96": "sha1", "sha256_128": "sha256", "sha384_192": "sha384",
                           "sha512_256": "sha512"}[s.integ.value]

    def encrypt(self, inner: bytes) -> bytes:
        self.seq += 1
        pad = (-(len(inner) + 2)) % self.align
        plaintext = inner + bytes(range(1, pad + 1)) + bytes((pad, 4))
        header = _ESP.pack(self.spi, self.seq)
        if self.aead is not None:
            iv = self.seq.to_bytes(8, "big")
            esp = header + iv + self.aead.encrypt(self.salt + iv, plaintext, header)
        else:
            iv = os.urandom(16)
            enc = self._cbc(iv).encryptor()
            body = header + iv + enc.update(plaintext) + enc.finalize()
            esp = body + hmac.digest(self.integ_key, body, self.digest)[:self.icv_len]
        ip = _IP.pack(0x45, 0, 20 + len(esp), 0, 0x4000, 64, 50, 0, self.src, self.dst)
        ip = ip[:10] + _ip_checksum(ip).to_bytes(2, "big") + ip[12:]
        return ip + esp

    def decrypt(self, outer: bytes) -> bytes:
        """The inner packet; ValueError for anything that must be dropped (bad ICV, replay, bad padding)."""
        ihl = (outer[0] & 0x0F) * 4
        if outer[9] != 50 or len(outer) < ihl + 8 + 16:
            raise ValueError("not ESP")
        spi, seq = _ESP.unpack_from(outer, ihl)
        if spi != self.spi:
            raise ValueError("unknown SPI")
        if seq == 0 or (seq <= self.top and (self.top - seq >= self.window or (self.bitmap >> (self.top - seq)) & 1)):
            raise ValueError("replayed")
        esp = outer[ihl:]
        if self.aead is not None:
            iv = esp[8:16]
            try:
                plaintext = self.aead.decrypt(self.salt + iv, esp[16:], esp[:8])
            except InvalidTag:
                raise ValueError("ICV mismatch") from None
        else:
            body, icv = esp[:-self.icv_len], esp[-self.icv_len:]
            if not hmac.compare_digest(hmac.digest(self.integ_key, body, self.digest)[:self.icv_len], icv):
                raise ValueError("ICV mismatch")
            dec = self._cbc(esp[8:24]).decryptor()
            plaintext = dec.update(body[24:]) + dec.finalize()
        pad = plaintext[-2]
        if plaintext[-2 - pad:-2] != bytes(range(1, pad + 1)):
            raise ValueError("bad padding")
        if seq > self.top:
            shift = seq - self.top
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.window) - 1)
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)
        return plaintext[:-2 - pad]


class PythonRing:
    """Timed samplers: PythonEsp over a workload (encrypt; decrypt with a fresh inbound SA per pass)."""

    def __init__(self, suite_name: str, workload: Workload, max_packets: int | None = None):
        km = key_material(suite_name)
        self.suite_name = suite_name
        self.km = km
        self.packets = list(workload.packets[:max_packets] if max_packets else workload.packets)
        self.out = PythonEsp(suite_name, km.enc_key, km.integ_key, 0x1000)
        self.esp = [self.out.encrypt(p) for p in self.packets]
        back = self._inbound()
        if [back.decrypt(e) for e in self.esp[:8]] != self.packets[:8]:
            raise RuntimeError("the Python reference ESP does not round-trip")

    def _inbound(self) -> PythonEsp:
        return PythonEsp(self.suite_name, self.km.enc_key, self.km.integ_key, 0x1000, replay_window=1024)

    def encrypt(self, reps: int) -> tuple[int, float, float]:
        enc = self.out.encrypt
        packets = self.packets
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(reps):
            for p in packets:
                enc(p)
        return reps * len(packets), time.perf_counter() - t0, time.thread_time() - c0

    def decrypt(self, reps: int) -> tuple[int, float, float]:
        total = cpu = 0.0
        for _ in range(reps):
            dec = self._inbound().decrypt
            esp = self.esp
            t0, c0 = time.perf_counter(), time.thread_time()
            for e in esp:
                dec(e)
            total += time.perf_counter() - t0
            cpu += time.thread_time() - c0
        return reps * len(self.esp), total, cpu


def scapy_available(suite_name: str) -> str | None:
    try:
        import scapy.layers.ipsec  # noqa: F401
    except ImportError as exc:
        return f"scapy is not installed ({exc}); pip install scapy"
    from esp.suites import Cipher, Integ, parse_suite

    s = parse_suite(suite_name)
    if s.cipher in (Cipher.AES_GCM, Cipher.CHACHA20_POLY1305) and s.icv_len == 16:
        return None
    if s.cipher is Cipher.AES_CBC and s.integ is Integ.HMAC_SHA256_128:
        return None
    return f"the scapy comparison covers AES-GCM-16, ChaCha20-Poly1305 and AES-CBC+HMAC-SHA-256, not {s.name}"


class ScapyEsp:
    """scapy's SecurityAssociation in tunnel mode for a suite, both directions."""

    def __init__(self, suite_name: str, enc_key: bytes, integ_key: bytes, spi: int,
                 src: str = "192.0.2.1", dst: str = "192.0.2.2"):
        reason = scapy_available(suite_name)
        if reason:
            raise AlternativeUnavailable(reason)
        from scapy.layers.inet import IP
        from scapy.layers.ipsec import ESP, SecurityAssociation

        from esp.suites import Cipher, parse_suite

        s = parse_suite(suite_name)
        kw: dict = {"crypt_key": enc_key}
        if s.cipher is Cipher.AES_GCM:
            kw["crypt_algo"] = "AES-GCM"
        elif s.cipher is Cipher.CHACHA20_POLY1305:
            kw["crypt_algo"] = "CHACHA20-POLY1305"
        else:
            kw.update(crypt_algo="AES-CBC", auth_algo="SHA2-256-128", auth_key=integ_key)
        self._ip = IP
        self.sa = SecurityAssociation(ESP, spi=spi, tunnel_header=IP(src=src, dst=dst), **kw)

    def encrypt(self, inner: bytes) -> bytes:
        return bytes(self.sa.encrypt(self._ip(inner)))

    def decrypt(self, outer: bytes) -> bytes:
        return bytes(self.sa.decrypt(self._ip(outer)))


class ScapyRing:
    """Timed samplers over a few packets of a workload (scapy does hundreds of packets per second)."""

    def __init__(self, suite_name: str, workload: Workload, max_packets: int = 64):
        km = key_material(suite_name)
        self.packets = list(workload.packets[:max_packets])
        self.sa = ScapyEsp(suite_name, km.enc_key, km.integ_key, 0x1000)
        self.esp = [self.sa.encrypt(p) for p in self.packets]
        if self.sa.decrypt(self.esp[0]) != self.packets[0]:
            raise RuntimeError("scapy ESP does not round-trip")

    def _run(self, fn: Callable[[bytes], bytes], items: list[bytes], count: int) -> tuple[int, float, float]:
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(count):
            fn(items[i % len(items)])
        return count, time.perf_counter() - t0, time.thread_time() - c0

    def encrypt(self, count: int) -> tuple[int, float, float]:
        return self._run(self.sa.encrypt, self.packets, count)

    def decrypt(self, count: int) -> tuple[int, float, float]:
        return self._run(self.sa.decrypt, self.esp, count)
