"""The ceiling for each backend: bench._ceilings' raw loops, fed the same packets as the core.

:class:`CeilingRing` lays a workload out the way the raw loops want it (ESP plaintexts with padding and trailer,
output slots), checks once that the loop really round-trips, and exposes ``encrypt(k)`` / ``decrypt(k)`` timed
samplers. Suites without a raw loop (CCM, GMAC, CTR, NULL, HMACs other than SHA-256) have no ceiling and are
reported as such.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from bench.workloads import Workload, esp_trailer_plaintext, key_material

__all__ = ["CeilingRing", "CeilingUnavailable", "ceiling_available", "ceilings_module", "ipsecmb_info"]

HDR = 8  # SPI + 32-bit sequence number


class CeilingUnavailable(Exception):
    """No raw loop for this backend/suite here; the message says why."""


def ceilings_module():
    """bench._ceilings, or raise CeilingUnavailable with the reason (usually: not built)."""
    try:
        from bench import _ceilings
    except ImportError as exc:
        raise CeilingUnavailable(f"bench._ceilings is not built ({exc}); run python setup.py build_ext --inplace")
    return _ceilings


def ipsecmb_info() -> tuple[str, str] | None:
    """(ipsec-mb version, architecture it picks on this CPU), or None."""
    try:
        return ceilings_module().ipsecmb_info()
    except CeilingUnavailable:
        return None


def _kind(suite_name: str) -> str:
    from esp.suites import Cipher, Integ, parse_suite

    s = parse_suite(suite_name)
    if s.cipher is Cipher.AES_GCM and s.icv_len == 16:
        return "aead"
    if s.cipher is Cipher.CHACHA20_POLY1305:
        return "aead"
    if s.cipher is Cipher.AES_CBC and s.integ is Integ.HMAC_SHA256_128:
        return "cbc"
    raise CeilingUnavailable(f"no raw loop for {s.name} (ceilings exist for AES-GCM-16, ChaCha20-Poly1305 and "
                             "AES-CBC with HMAC-SHA-256-128)")


def ceiling_available(backend: str, suite_name: str) -> str | None:
    """None when a ceiling can run, else the reason it cannot."""
    try:
        mod = ceilings_module()
        _kind(suite_name)
        if backend == "ipsecmb" and mod.ipsecmb_info() is None:
            return "ipsec-mb not built into bench._ceilings (no libipsec-mb-dev, or not x86-64)"
        if backend not in ("openssl", "ipsecmb"):
            return f"unknown backend {backend!r}"
    except CeilingUnavailable as exc:
        return str(exc)
    return None


@dataclass
class _Arena:
    buf: np.ndarray
    off: np.ndarray
    length: np.ndarray


def _arena(chunks: list[bytes], slot: int | None = None) -> _Arena:
    """Packed back to back (``slot`` None: as PacketBatch.from_packets lays out the core's input), or in
    fixed slots of ``slot`` bytes (as PacketBatch.empty lays out the core's output)."""
    lengths = np.array([len(c) for c in chunks], dtype=np.int32)
    sizes = np.full(len(chunks), slot, dtype=np.int64) if slot else lengths.astype(np.int64)
    off = np.zeros(len(chunks), dtype=np.int64)
    off[1:] = np.cumsum(sizes)[:-1]
    buf = np.zeros(int(sizes.sum()) + 64, dtype=np.uint8)
    for o, c in zip(off, chunks):
        buf[o:o + len(c)] = np.frombuffer(c, dtype=np.uint8)
    return _Arena(buf, off, lengths)


class CeilingRing:
    """One backend's raw loop over one workload for one suite, ready to time."""

    def __init__(self, backend: str, suite_name: str, workload: Workload, sa_index: int = 0):
        reason = ceiling_available(backend, suite_name)
        if reason:
            raise CeilingUnavailable(reason)
        from esp.suites import parse_suite

        mod = ceilings_module()
        suite = parse_suite(suite_name)
        km = key_material(suite.name, sa_index)
        self.backend, self.suite, self.workload = backend, suite.name, workload
        kind = _kind(suite.name)
        spi = 0x1000 + sa_index
        if kind == "aead":
            cls = mod.EvpAead if backend == "openssl" else mod.MbAead
            self.loop = cls(suite.name, km.key, km.salt, spi)
        else:
            ivs = os.urandom(16 * 1024)
            cls = mod.EvpCbcHmac if backend == "openssl" else mod.MbCbcHmac
            self.loop = cls(suite.name, km.key, km.integ_key, ivs, spi)
        iv, icv = self.loop.iv_len, self.loop.icv_len
        plaintexts = [esp_trailer_plaintext(p, suite.align) for p in workload.packets]
        # The same memory layout as bench.esp.CoreRing gives the core: inputs packed, outputs in equal slots.
        self.pt = _arena(plaintexts)
        slot = (max(len(p) for p in workload.packets) + 128 + 63) // 64 * 64
        self.out = _arena([b""] * len(plaintexts), slot=slot)
        if kind == "cbc" and backend == "ipsecmb":
            # The job runs in place in the output slots: put each plaintext where its ciphertext goes.
            for i, p in enumerate(plaintexts):
                o = int(self.out.off[i]) + HDR + iv
                self.out.buf[o:o + len(p)] = np.frombuffer(p, dtype=np.uint8)
        n = self.loop.encrypt(self.pt.buf, self.pt.off, self.pt.length, self.out.buf, self.out.off, 1)
        if n != workload.count:
            raise RuntimeError(f"ceiling {backend}/{suite.name}: encrypt made {n} of {workload.count} packets")
        esp_len = self.pt.length + (HDR + iv + icv)
        self.esp = _arena([bytes(self.out.buf[o:o + ln]) for o, ln in zip(self.out.off, esp_len)])
        self.plain_out = _arena([b""] * len(plaintexts), slot=slot)
        n = self.loop.decrypt(self.esp.buf, self.esp.off, self.esp.length, self.plain_out.buf, self.plain_out.off, 1)
        if n != workload.count:
            raise RuntimeError(f"ceiling {backend}/{suite.name}: decrypt verified {n} of {workload.count} packets")
        for i in (0, len(plaintexts) - 1):
            o, ln = int(self.plain_out.off[i]), len(plaintexts[i])
            if bytes(self.plain_out.buf[o:o + ln]) != plaintexts[i]:
                raise RuntimeError(f"ceiling {backend}/{suite.name}: round trip changed packet {i}")
        self.plaintexts = plaintexts

    def esp_packet(self, i: int) -> bytes:
        """ESP packet i (SPI|seq|IV|ciphertext|ICV) as the raw loop made it, for checks against other code."""
        o, ln = int(self.esp.off[i]), int(self.esp.length[i])
        return bytes(self.esp.buf[o:o + ln])

    def encrypt(self, reps: int) -> tuple[int, float, float]:
        """``reps`` passes over the ring; (packets, seconds, thread CPU seconds)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        n = self.loop.encrypt(self.pt.buf, self.pt.off, self.pt.length, self.out.buf, self.out.off, reps)
        return n, time.perf_counter() - t0, time.thread_time() - c0

    def decrypt(self, reps: int) -> tuple[int, float, float]:
        t0, c0 = time.perf_counter(), time.thread_time()
        n = self.loop.decrypt(self.esp.buf, self.esp.off, self.esp.length, self.plain_out.buf,
                              self.plain_out.off, reps)
        dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
        if n != reps * self.workload.count:
            raise RuntimeError(f"ceiling decrypt verified {n} of {reps * self.workload.count}")
        return n, dt, cpu
