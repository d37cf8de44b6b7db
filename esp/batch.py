"""Packet batches: the unit of work of the compiled core.

A batch is one contiguous uint8 arena plus per-slot offsets, lengths, capacities and verdicts. The core reads
slot i of one batch and writes slot i of another, so nothing is allocated per packet and a caller can reuse
both batches forever (a ring of arenas, as a router would).
"""
from __future__ import annotations

import enum
from typing import Iterable, Iterator, Sequence

import numpy as np

from esp import _core

__all__ = ["Verdict", "PacketBatch", "DEFAULT_SLOT"]

class Verdict(enum.IntEnum):
    """Per-packet outcome of batch processing; OK is 0. The values are the core's (checked at import)."""

    OK = 0
    AUTH_FAILED = 1
    REPLAYED = 2
    MALFORMED = 3
    PAD_ERROR = 4
    DUMMY = 5
    NO_SPACE = 6
    EXPIRED = 7
    SEQ_EXHAUSTED = 8
    NO_SA = 9
    POLICY_MISMATCH = 10
    DISCARDED = 11
    BYPASSED = 12
    UNSUPPORTED = 13
    UNPROCESSED = 14  # the slot has not been through any call yet


if tuple(v.name for v in Verdict) != tuple(_core.VERDICTS):  # pragma: no cover - a build out of step
    raise ImportError("esp._core was built with other verdict codes than esp.batch expects; rebuild espresso")

def _slot_array(name: str, values: object, dtype: type) -> np.ndarray:
    """A contiguous 1-D array of ``dtype`` holding exactly ``values``: integers, none negative, all in range."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array")
    if a.size == 0:
        return np.zeros(0, dtype=dtype)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array, not {a.dtype}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > np.iinfo(dtype).max:
        raise ValueError(f"{name} must lie in 0..{np.iinfo(dtype).max}; got {lo}..{hi}")
    return np.ascontiguousarray(a, dtype=dtype)


#: Room per slot by default: a 1500-byte packet plus outer headers, ESP overhead, TFC padding and some slack.
DEFAULT_SLOT = 2048


class PacketBatch:
    """Packets in one arena. ``lengths[i]`` bytes at ``offsets[i]``, with ``capacity[i]`` bytes of room."""

    __slots__ = ("_buf", "_offsets", "_lengths", "_capacity", "_status", "_view")

    def __init__(self, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, capacity: np.ndarray) -> None:
        """The arena is used as given (the core writes into it, so it must be contiguous); the slot arrays are
        converted to the core's types, and refused (ValueError) where a value would not survive the conversion:
        an unsigned 2**64 - 1 must not become offset -1, nor a capacity of 2**32 + 64 become 64."""
        if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1:
            raise TypeError("buf must be a 1-D uint8 array")
        if not buf.flags.c_contiguous:
            raise ValueError("buf must be contiguous: the core writes into it, and would write into a copy")
        self._buf = buf
        self._offsets = _slot_array("offsets", offsets, np.int64)
        self._lengths = _slot_array("lengths", lengths, np.int32)
        self._capacity = _slot_array("capacity", capacity, np.int32)
        n = len(self._offsets)
        if len(self._lengths) != n or len(self._capacity) != n:
            raise ValueError("offsets, lengths and capacity must have the same length")
        self._status = np.full(n, Verdict.UNPROCESSED, dtype=np.uint8)
        self._view: _core.BatchView | None = None

    # The arrays are fixed for the batch's life (their contents are not): the core keeps pointers into them.
    buf = property(lambda self: self._buf, doc="the uint8 arena")
    offsets = property(lambda self: self._offsets, doc="int64 start of each slot in the arena")
    lengths = property(lambda self: self._lengths, doc="int32 bytes used in each slot")
    capacity = property(lambda self: self._capacity, doc="int32 room in each slot (for outputs)")
    status = property(lambda self: self._status, doc="uint8 Verdict of each slot after processing")

    @property
    def view(self) -> "_core.BatchView":
        """The compiled core's view of this batch, made on first use."""
        if self._view is None:
            self._view = _core.BatchView(self._buf, self._offsets, self._lengths, self._capacity, self._status)
        return self._view

    @classmethod
    def empty(cls, count: int, slot_size: int = DEFAULT_SLOT) -> "PacketBatch":
        """``count`` empty slots of ``slot_size`` bytes each: an output batch."""
        if count < 0 or slot_size <= 0:
            raise ValueError("count must be >= 0 and slot_size > 0")
        offsets = np.arange(count, dtype=np.int64) * slot_size
        return cls(np.zeros(count * slot_size, dtype=np.uint8), offsets, np.zeros(count, dtype=np.int32),
                   np.full(count, slot_size, dtype=np.int32))

    @classmethod
    def from_packets(cls, packets: Iterable[bytes], slot_size: int | None = None) -> "PacketBatch":
        """Packets copied into an arena, packed (slot_size None) or in fixed slots."""
        pkts = [bytes(p) for p in packets]
        lengths = np.fromiter((len(p) for p in pkts), dtype=np.int32, count=len(pkts))
        if slot_size is None:
            offsets = np.zeros(len(pkts), dtype=np.int64)
            if len(pkts) > 1:
                np.cumsum(lengths[:-1], out=offsets[1:])
            capacity = lengths.copy()
            buf = np.frombuffer(b"".join(pkts), dtype=np.uint8).copy()
        else:
            if len(pkts) and int(lengths.max()) > slot_size:
                raise ValueError(f"a packet of {int(lengths.max())} bytes does not fit a {slot_size}-byte slot")
            batch = cls.empty(len(pkts), slot_size)
            batch.set_packets(pkts)
            return batch
        return cls(buf, offsets, lengths, capacity)

    @property
    def count(self) -> int:
        return len(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)

    def packet(self, i: int) -> bytes:
        off, n = int(self.offsets[i]), int(self.lengths[i])
        if off < 0 or n < 0 or off + n > len(self.buf):
            raise ValueError(f"slot {i} ({n} bytes at {off}) lies outside the {len(self.buf)}-byte arena")
        return self.buf[off:off + n].tobytes()

    def packets(self) -> list[bytes]:
        return [self.packet(i) for i in range(self.count)]

    def ok(self) -> Iterator[bytes]:
        """The packets whose verdict is OK, in order (slots never processed are UNPROCESSED, not OK)."""
        for i in np.flatnonzero(self.status == Verdict.OK):
            yield self.packet(int(i))

    def set_packets(self, packets: Sequence[bytes]) -> None:
        """Copy packets into slots 0..len-1 (each must fit its slot's capacity)."""
        if len(packets) > self.count:
            raise ValueError("more packets than slots")
        for i, p in enumerate(packets):
            if len(p) > int(self.capacity[i]):
                raise ValueError(f"packet {i} ({len(p)} bytes) exceeds its slot ({int(self.capacity[i])} bytes)")
            off = int(self.offsets[i])
            if off < 0 or off + len(p) > len(self.buf):
                raise ValueError(f"slot {i} (at {off}) lies outside the {len(self.buf)}-byte arena")
            self.buf[off:off + len(p)] = np.frombuffer(p, dtype=np.uint8)
            self.lengths[i] = len(p)
