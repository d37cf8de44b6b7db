"""The packets every benchmark runs on.

A workload is a ring of distinct inner IPv4/UDP packets (different addresses, ports and payload bytes, as a
tunnel carries them), not one packet repeated: repeating one packet keeps everything in L1 and flatters the
number. Sizes are whole inner IP packets, the unit a tunnel user counts; Gbit/s are computed on those bytes.

``64``, ``512``, ``1400`` are fixed sizes; ``imix`` is the 7:4:1 mix of 64, 576 and 1500 bytes, shuffled so that
sizes interleave the way they do on a link.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

__all__ = [
    "BATCH_SIZES",
    "DEFAULT_BATCH",
    "IMIX",
    "SIZES",
    "KeyMaterial",
    "Workload",
    "esp_trailer_plaintext",
    "ipv4_udp_packet",
    "key_material",
    "make_workload",
]

#: Workload names, in report order.
SIZES: tuple[str, ...] = ("64", "512", "1400", "imix")
#: IMIX: (inner packet size, weight).
IMIX: tuple[tuple[int, int], ...] = ((64, 7), (576, 4), (1500, 1))
#: Packets handed to the core per call, VPP's frame size.
DEFAULT_BATCH = 256
#: Batch sizes swept to show the per-call overhead.
BATCH_SIZES: tuple[int, ...] = (16, 64, 256, 1024)

INNER_SRC = "10.1.0.0"
INNER_DST = "10.2.0.0"


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp_packet(size: int, index: int, rng: random.Random) -> bytes:
    """A valid IPv4/UDP packet of exactly ``size`` bytes (>= 28), distinct per ``index``."""
    if size < 28:
        raise ValueError("an IPv4/UDP packet is at least 28 bytes")
    src = 0x0A010000 | (index & 0xFFFF)
    dst = 0x0A020000 | ((index * 7) & 0xFFFF)
    udp_len = size - 20
    header = struct.pack("!BBHHHBBHII", 0x45, 0, size, index & 0xFFFF, 0x4000, 64, 17, 0, src, dst)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    payload = rng.randbytes(udp_len - 8)
    udp = struct.pack("!HHHH", 1024 + (index % 50000), 5001, udp_len, 0)  # UDP checksum 0: allowed over IPv4
    return header + udp + payload


def esp_trailer_plaintext(inner: bytes, align: int, next_header: int = 4) -> bytes:
    """What an ESP cipher encrypts for ``inner``: payload, padding 1, 2, 3, ..., pad length, next header
    (RFC 4303 2.4-2.6). The ceilings encrypt exactly these bytes, so they do the same crypto work as the core."""
    pad = (-(len(inner) + 2)) % max(align, 4)
    return inner + bytes(range(1, pad + 1)) + bytes((pad, next_header))


def _sizes(name: str, count: int, rng: random.Random) -> list[int]:
    if name == "imix":
        unit = [s for s, w in IMIX for _ in range(w)]
        sizes = (unit * (count // len(unit) + 1))[:count]
        rng.shuffle(sizes)
        return sizes
    try:
        return [int(name)] * count
    except ValueError:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(SIZES)} or a size in bytes") from None


@dataclass(frozen=True)
class Workload:
    """A ring of inner packets plus the numbers a report needs."""

    name: str
    packets: tuple[bytes, ...] = field(repr=False)

    @property
    def count(self) -> int:
        return len(self.packets)

    @property
    def total_bytes(self) -> int:
        return sum(len(p) for p in self.packets)

    @property
    def mean_size(self) -> float:
        return self.total_bytes / self.count

    def batches(self, batch: int) -> list[list[bytes]]:
        """The ring cut into batches of ``batch`` packets (the last may be shorter)."""
        return [list(self.packets[i:i + batch]) for i in range(0, self.count, batch)]


def ring_size(name: str, quick: bool = False) -> int:
    """Packets in a ring: a few MB of distinct packets (more than L2, as traffic is), fewer in quick mode."""
    if quick:
        return 1024
    return 4096


def make_workload(name: str, count: int | None = None, seed: int = 1, quick: bool = False) -> Workload:
    """The ring for ``name`` (``64``, ``512``, ``1400``, ``imix`` or any size >= 28), reproducible from ``seed``."""
    rng = random.Random(f"espresso-bench-{name}-{seed}")
    n = count if count is not None else ring_size(name, quick)
    return Workload(name, tuple(ipv4_udp_packet(s, i, rng) for i, s in enumerate(_sizes(name, n, rng))))


@dataclass(frozen=True)
class KeyMaterial:
    """Keys for one SA of a suite: ``enc_key`` is key || salt (KEYMAT order), ``integ_key`` the HMAC key."""

    suite: str
    key: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    integ_key: bytes = field(repr=False)

    @property
    def enc_key(self) -> bytes:
        return self.key + self.salt


def key_material(suite_name: str, index: int = 0) -> KeyMaterial:
    """Deterministic keys for SA number ``index`` of a suite (benchmarks need no secrecy, only distinct keys)."""
    from esp.suites import parse_suite

    suite = parse_suite(suite_name)
    rng = random.Random(f"espresso-bench-key-{suite.name}-{index}")
    return KeyMaterial(suite.name, rng.randbytes(suite.key_len), rng.randbytes(suite.salt_len),
                       rng.randbytes(suite.integ_key_len))
