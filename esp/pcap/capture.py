"""Capture files in and out, a chunk of records at a time, for the batch ESP path.

A capture is memory-mapped and walked once per chunk to find where its records start; everything after that
(timestamps, lengths, link-layer and IP header fields) is read with numpy over whole chunks, so no Python
object is made per packet and a capture larger than memory streams through a fixed working set. The packet
bytes of a chunk are copied once into a writable arena that the batch core reads from (or, for a reader made
with ``zero_copy``, read in place from the mapping).

The per-record loops have compiled counterparts in esp.pcap._pcapio (record walk, header fields, link/IP/UPL
header pass, segment copies, record assembly), used when that module is built: each checks every offset
against its array before touching memory and runs without the GIL. The numpy code here stays as the reference
they are tested against (tests/esp/test_pcap_native.py); ESPRESSO_PCAP_NUMPY=1 forces it.

Formats: classic pcap in both byte orders with micro- or nanosecond timestamps, and pcapng (section header,
interface description, enhanced, simple and obsolete packet blocks; several sections, interfaces and byte
orders). Written: pcap or pcapng. Link types: Ethernet (802.1Q / QinQ tags), raw IP (101, 12, 228, 229) and
Linux cooked capture v1 and v2.

Every field read is range-checked, and what is out of range or cannot be represented is a CaptureError naming
the field, its offset and its value (after the records before it): pcap versions other than 2.0-2.4 (libpcap's
rule) and reserved link type bits; pcapng section versions other than 1.0/1.2, blocks shorter than their type
allows or whose trailing length differs from the leading one, options running past their block, if_tsresol
finer than 10^-18 / 2^-62 s (timestamps are signed 64-bit counts of units) or of a length other than 1,
timestamps of 2^63 units and more, packets of undescribed interfaces. Accepted as Wireshark and libpcap do: a
captured length above the snap length or the original length, a pcap fraction of a second past 10^6 / 10^9
(read as seconds plus that many units). Written timestamps are converted in integers, cut to the output's unit
as editcap does, with if_tsoffset added for pcap; a time pcap's unsigned 32-bit seconds cannot hold is an error.
"""
from __future__ import annotations

import collections
import concurrent.futures
import enum
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Literal, Sequence, cast

import numpy as np
from numpy.lib.stride_tricks import as_strided

try:  # the package's error base, once esp/errors.py exists
    from esp.errors import EspError as _Base
except ImportError:  # pragma: no cover - during bring-up only
    _Base = Exception  # type: ignore[misc,assignment]


class CaptureError(_Base):  # type: ignore[misc,valid-type]
    """A capture file that cannot be read or written; the message names the file and the place."""


class _Damaged(Exception):
    """A field out of range, found inside the block walk: the walk turns it into a CaptureError naming the file
    after it has delivered the records before the block."""

__all__ = [
    "CaptureError", "LinkType", "Interface", "Chunk", "CaptureReader", "CaptureWriter", "open_capture",
    "L3Info", "parse_l3", "gather_segments", "ETHERTYPE_IPV4", "ETHERTYPE_IPV6",
]

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
BT_IDB = 0x00000001
BT_OPB = 0x00000002  # obsolete packet block
BT_SPB = 0x00000003
BT_ISB = 0x00000005
BT_EPB = 0x00000006
BT_NRB = 0x00000004
BT_DSB = 0x0000000A

#: pcap versions libpcap reads (2.0 to 2.4; tcpdump refuses 2.5 and 9.9, Wireshark refuses major versions below 2).
PCAP_MAJOR = 2
PCAP_MAX_MINOR = 4
#: Bits of the pcap header's link type field that must be zero (pcap-linktype(7); bits 26-31 say FCS).
PCAP_LINKTYPE_RESERVED = 0x03FF0000
#: pcapng section versions read: 1.0, and 1.2 which some writers used (Wireshark reads both, refuses 1.1, 2.x).
PCAPNG_VERSIONS = ((1, 0), (1, 2))
#: Smallest total length of each block type (draft-ietf-opsawg-pcapng; Wireshark and libpcap refuse shorter).
MIN_BLOCK_LEN = {PCAPNG_SHB: 28, BT_IDB: 20, BT_OPB: 32, BT_SPB: 16, BT_NRB: 16, BT_ISB: 24, BT_EPB: 32,
                 BT_DSB: 20}
BLOCK_NAMES = {PCAPNG_SHB: "section header", BT_IDB: "interface description block", BT_OPB: "packet block",
               BT_SPB: "simple packet block", BT_NRB: "name resolution block",
               BT_ISB: "interface statistics block", BT_EPB: "enhanced packet block",
               BT_DSB: "decryption secrets block"}
#: Where each block type's options start (after its fixed fields; packet blocks: after the padded packet data).
OPTIONS_AT = {PCAPNG_SHB: 24, BT_IDB: 16, BT_ISB: 20}
#: Timestamps are held as signed 64-bit counts of their interface's units, so units per second are at most
#: 10**18 and 2**62: if_tsresol 10^-19 (libpcap reads it, as 1.8 s of 64-bit time) and finer are refused.
MAX_TSRESOL_EXP10 = 18
MAX_TSRESOL_EXP2 = 62
#: A timestamp (in units of its interface) must be below this: int64, the type of Chunk.ts.
MAX_TS = 2**63

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 2  # 802.1Q, and QinQ (802.1ad outer tag); L2_HEAD covers both
#: Zero bytes after each chunk arena, so fixed-size header reads past a short record stay inside the array.
READ_PAD = 256

#: madvise(MADV_POPULATE_READ), Linux 5.14 (the mmap module names it from Python 3.13 on).
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
#: Bytes populated past a zero-copy chunk's expected end, for the record that straddles it.
POPULATE_SLACK = 64 * 1024

#: A record longer than this is taken as file corruption rather than a packet (pcap has no resync marker).
MAX_RECORD_BYTES = 16 * 1024 * 1024
DEFAULT_CHUNK_RECORDS = 65536
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024


class LinkType(enum.IntEnum):
    """LINKTYPE_* values (tcpdump.org link-layer header types) this module understands."""

    ETHERNET = 1
    RAW_OPENBSD = 12  # DLT_RAW as some BSDs number it; raw IPv4/IPv6
    RAW = 101
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


RAW_LINKTYPES = (LinkType.RAW, LinkType.RAW_OPENBSD, LinkType.IPV4, LinkType.IPV6)
KNOWN_LINKTYPES = frozenset(int(x) for x in LinkType)


@dataclass
class Interface:
    """A pcapng interface (or the single implicit one of a pcap file). ``tsresol`` is timestamp units per second."""

    linktype: int
    snaplen: int = 262144
    tsresol: int = 1_000_000
    tsoffset: int = 0
    name: str | None = None


@dataclass
class Chunk:
    """A run of consecutive records. ``data`` is a private writable copy; offsets index into it.

    ``ts`` is in units of the record's interface ``tsresol`` (pcap: 10**6 or 10**9 per second).
    """

    data: np.ndarray            # uint8
    offsets: np.ndarray         # int64: start of each record's captured bytes in data
    caplen: np.ndarray          # int64
    origlen: np.ndarray         # int64
    ts: np.ndarray              # int64
    iface: np.ndarray           # int32, index into the reader's interfaces
    first_index: int            # record number (0-based) of the first record in the capture
    end_position: int           # file offset just past the chunk (for progress)

    @property
    def count(self) -> int:
        return int(self.offsets.shape[0])


def _uint(data: np.ndarray, idx: np.ndarray, width: int, big: bool) -> np.ndarray:
    """The unsigned ``width``-byte integers at byte offsets ``idx`` (one gather of whole rows), as int64
    (uint64 for width 8)."""
    idx = np.asarray(idx, dtype=np.int64)
    rows = _windows(data, width, False)[idx.ravel()]
    v = rows.view(np.dtype(f"u{width}").newbyteorder(">" if big else "<")).reshape(idx.shape)
    return v.astype(np.uint64 if width == 8 else np.int64)


def _u16(data: np.ndarray, idx: np.ndarray, big: bool) -> np.ndarray:
    return _uint(data, idx, 2, big)


def _u32(data: np.ndarray, idx: np.ndarray, big: bool) -> np.ndarray:
    return _uint(data, idx, 4, big)


# -- finding pcap records without a Python step per record --------------------------------------------------------
#
# A pcap file is a chain: each record header gives the length to the next one, so finding record boundaries looks
# inherently sequential. The scan below walks many chains at once instead. It cuts the region into segments,
# guesses a record start inside each (a header whose lengths and timestamp fraction are plausible, followed by
# another such header), walks every segment's chain in lockstep with numpy, and then *verifies* the guesses: the
# chain of segment k, which begins at a true boundary, must land exactly on the guessed start of segment k+1. The
# first segment begins at a known boundary, so by induction an accepted result is exactly what a sequential walk
# finds. A wrong guess, or anything unusual, returns None and the caller walks sequentially.

_SPEC_MIN_BYTES = 1 << 18      # below this a sequential walk is cheap enough
_SPEC_SEGMENT = 1 << 16        # bytes per segment (one chain each)
_SPEC_STEPS = 24               # records per chain the segment length aims at
_SPEC_WINDOW = 2048            # bytes searched for a plausible header at the start of each segment


def _fields(data: np.ndarray, starts: np.ndarray, count: int, order: str) -> np.ndarray:
    """``count`` consecutive u32 fields at each start, as an int64 (n, count) array (one gather per chunk)."""
    rows = _windows(data, 4 * count, False)[starts]
    dt = np.dtype(np.uint32).newbyteorder(cast(Literal["<", ">"], order))
    return rows.view(dt).reshape(-1, count).astype(np.int64)


def _segment_size(avg_record: float | None) -> int:
    """Segment length for the parallel scans: about _SPEC_STEPS records per chain, so the lockstep walk takes
    few numpy rounds, but never shorter than the search window."""
    if avg_record is None:
        return _SPEC_SEGMENT
    seg = int(avg_record * _SPEC_STEPS)
    return max(_SPEC_WINDOW * 2, min(_SPEC_SEGMENT, (seg + 3) // 4 * 4))


def _pcap_scan_parallel(arr: np.ndarray, pos0: int, region_end: int, size: int, big: bool,
                        frac_limit: int, max_caplen: int, segment: int = 0) -> np.ndarray | None:
    """Offsets of every record header that starts in [pos0, region_end), or None (then walk sequentially).

    The chain must stay inside the file: the last record may end past region_end but not past ``size``.
    """
    span = region_end - pos0
    if span < _SPEC_MIN_BYTES:
        return None
    seg_len = segment or _SPEC_SEGMENT
    k = span // seg_len
    seg_starts = pos0 + np.arange(1, k, dtype=np.int64) * seg_len
    w = _SPEC_WINDOW
    if seg_starts.size:
        if int(seg_starts[-1]) + w + 16 > size:
            return None
        win = as_strided(arr[int(seg_starts[0]):], shape=(seg_starts.size, w + 16),
                         strides=(seg_len, 1), writeable=False)
        # Byte tests first (no widening): the high bytes of caplen and origlen are 0 (records < 16 MiB) and the
        # timestamp fraction is below 10**6 or 10**9. Few positions of real packet data pass all three.
        hi = (lambda j: win[:, j: j + w]) if big else (lambda j: win[:, j + 3: j + 3 + w])
        top_frac = (frac_limit - 1) >> 24
        ok = (hi(8) == 0) & (hi(12) == 0) & (hi(4) <= top_frac)
        first = np.full(seg_starts.size, -1, dtype=np.int64)
        rows, cols = np.nonzero(ok)
        if rows.size:
            cand = seg_starts[rows] + cols
            c1 = _u32(arr, cand + 8, big)
            o1 = _u32(arr, cand + 12, big)
            f1 = _u32(arr, cand + 4, big)
            nxt = cand + 16 + c1
            inside = (c1 > 0) & (c1 <= o1) & (c1 <= max_caplen) & (f1 < frac_limit) & (nxt + 16 <= size)
            nx = np.where(inside, nxt, 0)
            c2 = _u32(arr, nx + 8, big)
            o2 = _u32(arr, nx + 12, big)
            f2 = _u32(arr, nx + 4, big)
            good = inside & (c2 <= o2) & (c2 <= max_caplen) & (f2 < frac_limit) & (o2 <= MAX_RECORD_BYTES) \
                & (nx + 16 + c2 <= size)
            rows, cand = rows[good], cand[good]
            # first good candidate per segment
            uniq, idx = np.unique(rows, return_index=True)
            first[uniq] = cand[idx]
        if (first < 0).any():
            return None
        starts = np.concatenate([[pos0], first])
    else:
        starts = np.asarray([pos0], dtype=np.int64)
    ends = np.concatenate([starts[1:], [region_end]])
    cur = starts.copy()
    found: list[np.ndarray] = []
    active = cur < ends
    steps = 0
    last_seg = starts.size - 1
    while active.any():
        idx = np.flatnonzero(active)
        c = cur[idx]
        bad_hdr = c + 16 > size
        caplen = _u32(arr, np.where(bad_hdr, 0, c) + 8, big)
        nxt = c + 16 + caplen
        bad = bad_hdr | (caplen > MAX_RECORD_BYTES) | (nxt > size)
        if bad.any():
            if (idx[bad] != last_seg).any():
                return None  # a guessed chain ran off the file: the guess was wrong
            # The true chain of the last segment meets a damaged (truncated) record: stop before it and let the
            # sequential walk report it.
            ends[last_seg] = int(c[bad][0])
            keep = ~bad
            idx, c, nxt = idx[keep], c[keep], nxt[keep]
        found.append(c)
        cur[idx] = nxt
        active = cur < ends
        steps += 1
        if steps > span // 16 + 2:  # cannot happen for a well-formed chain; never loop forever
            return None
    # verification: every chain ends exactly where the next guessed one starts
    if not np.array_equal(cur[:-1], starts[1:]):
        return None
    allpos = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    allpos.sort()
    return allpos


_PCAPNG_PLAUSIBLE = (BT_IDB, BT_OPB, BT_SPB, 4, 5, BT_EPB, 9, 10, 0x0BAD, 0x40000BAD)


def _pcapng_scan_parallel(arr: np.ndarray, pos0: int, region_end: int, size: int, big: bool, segment: int = 0
                          ) -> tuple[np.ndarray, np.ndarray] | None:
    """(block starts, block types) for the blocks that start in [pos0, region_end), or None.

    The same guess-walk-verify scheme as :func:`_pcap_scan_parallel`; pcapng blocks repeat their length at their
    end, which makes a guessed block start easy to check. Blocks are 4-byte aligned from pos0.
    """
    span = region_end - pos0
    if span < _SPEC_MIN_BYTES:
        return None
    seg_len = segment or _SPEC_SEGMENT
    k = span // seg_len
    seg_starts = pos0 + np.arange(1, k, dtype=np.int64) * seg_len  # multiples of 4 from pos0
    w = _SPEC_WINDOW
    if seg_starts.size:
        if int(seg_starts[-1]) + w + 8 > size:
            return None
        cand = (seg_starts[:, None] + np.arange(0, w, 4)).ravel()
        bt = _u32(arr, cand, big)
        bl = _u32(arr, cand + 4, big)
        ok = np.isin(bt, _PCAPNG_PLAUSIBLE) & (bl >= 12) & (bl % 4 == 0) & (bl <= MAX_RECORD_BYTES) \
            & (cand + bl <= size)
        c2 = cand[ok]
        tail = _u32(arr, c2 + bl[ok] - 4, big)
        good = tail == bl[ok]
        c2 = c2[good]
        first = np.full(seg_starts.size, -1, dtype=np.int64)
        seg = (c2 - pos0) // seg_len - 1
        uniq, idx = np.unique(seg, return_index=True)
        first[uniq] = c2[idx]
        if (first < 0).any():
            return None
        starts = np.concatenate([[pos0], first])
    else:
        starts = np.asarray([pos0], dtype=np.int64)
    ends = np.concatenate([starts[1:], [region_end]])
    cur = starts.copy()
    found: list[np.ndarray] = []
    types: list[np.ndarray] = []
    active = cur < ends
    last_seg = starts.size - 1
    steps = 0
    while active.any():
        idx = np.flatnonzero(active)
        c = cur[idx]
        bad_hdr = c + 12 > size
        cc = np.where(bad_hdr, 0, c)
        blen = _u32(arr, cc + 4, big)
        nxt = c + blen
        bad = bad_hdr | (blen < 12) | (blen % 4 != 0) | (blen > MAX_RECORD_BYTES) | (nxt > size)
        tail_ok = _u32(arr, np.where(bad, 0, nxt - 4), big) == blen
        bad |= ~tail_ok
        if bad.any():
            if (idx[bad] != last_seg).any():
                return None
            ends[last_seg] = int(c[bad][0])  # the true chain meets a damaged block: the sequential walk reports it
            keep = ~bad
            idx, c, nxt = idx[keep], c[keep], nxt[keep]
            cc = cc[keep]
        found.append(c)
        types.append(_u32(arr, cc, big))
        cur[idx] = nxt
        active = cur < ends
        steps += 1
        if steps > span // 12 + 2:
            return None
    if not np.array_equal(cur[:-1], starts[1:]):
        return None
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    allpos = np.concatenate(found)
    alltypes = np.concatenate(types)
    o = np.argsort(allpos, kind="stable")
    return allpos[o], alltypes[o]


class CaptureReader:
    """Reads a pcap or pcapng file as :class:`Chunk` s.

    Damage that can be survived is recorded in ``problems`` (and counted in ``truncated_records``) instead of
    raised: a truncated last record, a block of unknown type. A file that is not a capture at all, or whose
    record framing is broken so that nothing after it can be found, raises :class:`CaptureError` — from the
    constructor, or from :meth:`chunks` after every chunk before the damage has been delivered.
    """

    def __init__(self, path: str | os.PathLike[str], *, chunk_records: int = DEFAULT_CHUNK_RECORDS,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, parallel_scan: bool = False,
                 reuse_buffers: bool | int = False, zero_copy: bool = False) -> None:
        """``reuse_buffers``: every chunk's ``data`` is the same buffer, overwritten by the next chunk; only for
        a consumer that is done with a chunk before asking for the next (it saves a page fault per 4 KiB). An
        int n > 1 rotates n buffers: a chunk stays intact while the next n - 1 are read (a reader thread one
        chunk ahead of its consumer needs 2).
        ``parallel_scan``: find record boundaries with the guess-walk-verify numpy scan instead of a Python walk
        over the record headers. It gives the same records (tested), but on the 2-core development machine it
        was not faster than the walk, so it is off by default."""
        self.path = Path(path)
        self.parallel_scan = parallel_scan
        # zero_copy: a pcap chunk's ``data`` is the read-only mapping of the whole file (offsets absolute), so
        # nothing is copied or read() at all; only with the compiled kernels (the numpy reference pads chunks).
        self.zero_copy_possible = _NATIVE_SCAN is not None and _NATIVE_PARSE_L3 is not None
        self.zero_copy = bool(zero_copy) and self.zero_copy_possible
        self._scratch = Scratch() if reuse_buffers else None
        self._ring = max(1, int(reuse_buffers))
        self._turn = 0
        self.chunk_records = max(1, int(chunk_records))
        self.chunk_bytes = max(4096, int(chunk_bytes))
        self.problems: list[str] = []
        self.truncated_records = 0
        self.interfaces: list[Interface] = []
        self.format = ""
        self.byte_order = "<"
        self.nanosecond = False
        self.version = (2, 4)
        self.thiszone = 0
        self.sigfigs = 0
        self._seen_idb: set[int] = set()
        self._released = 0
        self._can_populate = True
        self._behind: collections.deque[int] = collections.deque()
        self._section_base: dict[int, int] = {0: 0}
        try:
            self._fh: BinaryIO = open(self.path, "rb")
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        self.size = os.fstat(self._fh.fileno()).st_size
        if self.size == 0:
            self._fh.close()
            raise CaptureError(f"{self.path}: empty file, not a capture")
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_SEQUENTIAL"):  # read-ahead, and pages dropped early: captures larger than memory
            self._mm.madvise(mmap.MADV_SEQUENTIAL)
        self._arr = np.frombuffer(self._mm, dtype=np.uint8)
        # A file cut shorter while mapped reads as zeros past its new end, and check_intact() says so, instead of
        # SIGBUS ending the process (esp.pcap._pcapio's guard).
        self._guard = _NATIVE_GUARD(self._arr) if _NATIVE_GUARD is not None else -1
        try:
            self._start = self._read_header()
        except BaseException:
            self.close()
            raise

    # -- header --------------------------------------------------------------------------------------------
    def _read_header(self) -> int:
        mm = self._mm
        if self.size < 4:
            raise CaptureError(f"{self.path}: {self.size} bytes, too short to be a capture")
        magic_le = struct.unpack_from("<I", mm, 0)[0]
        if magic_le == PCAPNG_SHB:
            self.format = "pcapng"
            self._prescan_idbs()
            return 0
        for order in ("<", ">"):
            magic = struct.unpack_from(order + "I", mm, 0)[0]
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                if self.size < 24:
                    raise CaptureError(f"{self.path}: truncated pcap file header ({self.size} of 24 bytes)")
                self.format = "pcap"
                self.byte_order = order
                self.nanosecond = magic == PCAP_MAGIC_NS
                major, minor, thiszone, sigfigs, snaplen, network = struct.unpack_from(order + "HHiIII", mm, 4)
                if major != PCAP_MAJOR or minor > PCAP_MAX_MINOR:
                    raise CaptureError(f"{self.path}: pcap version {major}.{minor} at offset 4 is not one libpcap "
                                       f"reads ({PCAP_MAJOR}.0 to {PCAP_MAJOR}.{PCAP_MAX_MINOR})")
                if network & PCAP_LINKTYPE_RESERVED:
                    raise CaptureError(f"{self.path}: link type field at offset 20: reserved bits "
                                       f"0x{network & PCAP_LINKTYPE_RESERVED:08x} set in 0x{network:08x}")
                self.version = (major, minor)
                self.thiszone, self.sigfigs = thiszone, sigfigs
                # The upper bits of 'network' may carry an FCS length (pcap-linktype(7)); the type is the low 16.
                self.interfaces.append(Interface(network & 0xFFFF, snaplen,
                                                 10**9 if self.nanosecond else 10**6))
                return 24
        raise CaptureError(f"{self.path}: not a pcap or pcapng file (magic 0x{magic_le:08x})")

    def _prescan_idbs(self) -> None:
        """Read the first section's interface blocks up to its first packet, so link types are known early."""
        mm, size = self._mm, self.size
        if size < 28:
            raise CaptureError(f"{self.path}: truncated pcapng section header ({size} bytes)")
        bom_le = struct.unpack_from("<I", mm, 8)[0]
        if bom_le not in (PCAPNG_BOM, 0x4D3C2B1A):
            raise CaptureError(f"{self.path}: section header at offset 0: bad byte-order magic 0x{bom_le:08x}")
        order = "<" if bom_le == PCAPNG_BOM else ">"
        self.byte_order = order
        pos = struct.unpack_from(order + "I", mm, 4)[0]
        if pos < 12 or pos % 4 or pos > size:
            return  # the walk reports it, in order
        try:
            err = self._block_error(0, PCAPNG_SHB, pos, order)
            if err:
                raise _Damaged(err)
            # Only blocks that are whole and sound; the walk in _pcapng_chunks reports the first that is not.
            while pos + 12 <= size:
                btype, blen = struct.unpack_from(order + "II", mm, pos)
                if (btype in (BT_EPB, BT_SPB, BT_OPB, PCAPNG_SHB) or blen < 12 or blen % 4 or pos + blen > size
                        or self._block_error(pos, btype, blen, order)):
                    break
                if btype == BT_IDB:
                    self.interfaces.append(self._parse_idb(pos, blen, order))
                    self._seen_idb.add(pos)
                pos += blen
        except _Damaged as exc:
            raise CaptureError(f"{self.path}: {exc}") from None

    @property
    def linktype(self) -> int:
        """The link type of the first interface (the only one in pcap)."""
        return self.interfaces[0].linktype if self.interfaces else 0

    def check_intact(self) -> None:
        """Raise a CaptureError if the file is shorter than when it was opened: what was read since the last
        check may come from the part that is gone (mapped, it reads as zeros), and must not be used. Called
        after reading and before writing anything made from what was read. A read of a mapped page past the new
        end would be SIGBUS, which esp.pcap._pcapio's guard turns into zeros and a note (without that build, the
        process ends, as any reader of a mapped file)."""
        if self._fh.closed:
            return
        hit = self._guard >= 0 and _NATIVE_GUARD_HIT is not None and _NATIVE_GUARD_HIT(self._guard)
        now = os.fstat(self._fh.fileno()).st_size
        if hit or now < self.size:
            raise CaptureError(f"{self.path}: the file shrank to {now} bytes while it was read (it had "
                               f"{self.size}); records from the part that is gone are not used")

    def __del__(self) -> None:
        self._unguard()

    def _unguard(self) -> None:
        if getattr(self, "_guard", -1) >= 0 and _NATIVE_GUARD_RELEASE is not None:
            _NATIVE_GUARD_RELEASE(self._guard)
            self._guard = -1

    def close(self) -> None:
        self._unguard()
        arr = getattr(self, "_arr", None)
        if arr is not None:
            del self._arr
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a chunk view still alive; the mapping goes with the last reference
                pass
            self._mm = None  # type: ignore[assignment]
        if getattr(self, "_fh", None) is not None:
            self._fh.close()

    def __enter__(self) -> "CaptureReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- chunks --------------------------------------------------------------------------------------------
    def chunks(self) -> Iterator[Chunk]:
        """The capture's records, a chunk at a time (a CaptureError where the file is damaged, after the chunks
        before the damage)."""
        for c in self._pcap_chunks() if self.format == "pcap" else self._pcapng_chunks():
            self.check_intact()
            yield c
        self.check_intact()

    def _arena_name(self) -> str:
        """The scratch buffer for the next chunk: the ring's buffers in turn."""
        self._turn = (self._turn + 1) % self._ring
        return f"arena{self._turn}"

    def _pread_u32(self, pos: int) -> int:
        """The u32 at ``pos``, read with pread rather than through the mapping: a file truncated meanwhile gives
        a short read (a damaged-capture error), not SIGBUS."""
        b = os.pread(self._fh.fileno(), 4, pos)
        if len(b) < 4:
            raise CaptureError(f"{self.path}: the file shrank while it was read (offset {pos})")
        return int(struct.unpack(self.byte_order + "I", b)[0])

    def _make_chunk(self, rec_off: list[int] | np.ndarray, hdr_len: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy the file bytes [first record header, end) into an arena and rebase offsets into it."""
        base = int(rec_off[0]) - hdr_len
        if self.zero_copy:
            self._release_behind(base)
            return self._arr, np.asarray(rec_off, dtype=np.int64)
        data = _arena(self._arr[base:end], self._scratch, self._arena_name())
        self._release(base)
        offs = np.asarray(rec_off, dtype=np.int64) - base
        return data, offs

    def _pcap_chunks(self) -> Iterator[Chunk]:
        if _NATIVE_SCAN is not None and not self.parallel_scan and not self.zero_copy:
            yield from self._pcap_chunks_read()
            return
        yield from self._pcap_chunks_mapped()

    def _pcap_chunks_read(self) -> Iterator[Chunk]:
        """Chunks read with one ``readinto`` each straight into the arena (no page faults on a mapping, no
        second copy; a file truncated meanwhile is a short read and a CaptureError, where a mapping would raise
        SIGBUS), then walked by the compiled scan. A record that does not fit the bytes read starts the next
        chunk; at the end of the file it is diagnosed as in :meth:`_pcap_chunks_mapped`."""
        size = self.size
        big = self.byte_order == ">"
        fh = self._fh
        pos = self._start
        index = 0
        avg_rec: float | None = None
        want_min = 0
        while pos < size:
            want = self.chunk_bytes if avg_rec is None else min(
                self.chunk_bytes, int(self.chunk_records * avg_rec * 1.05) + 4096)
            want = min(size - pos, max(want, want_min))
            want_min = 0
            n_alloc = want + READ_PAD
            data = (self._scratch.get(self._arena_name(), n_alloc) if self._scratch is not None
                    else np.empty(n_alloc, np.uint8))
            fh.seek(pos)
            got = 0
            view = memoryview(cast(Any, data))
            while got < want:
                k = cast(Any, fh).readinto(view[got:want])
                if not k:
                    break
                got += k
            view.release()
            if got < want:
                raise CaptureError(f"{self.path}: the file shrank while it was read ({pos + got} of {size} bytes)")
            data[got:got + READ_PAD] = 0
            out = np.empty(self.chunk_records, dtype=np.int64)
            n, end = _NATIVE_SCAN(data, 0, got, got, self.chunk_records, big, MAX_RECORD_BYTES, out)
            if n < self.chunk_records and end < got or n == 0:
                # the walk stopped at a record that does not fit the bytes read
                at = pos + end
                if at >= size:
                    if n:
                        yield self._read_chunk(data, out[:n], index, size)
                    return
                if at + 16 > size:
                    self._truncated(index + n, at, f"record header cut ({size - at} of 16 bytes)")
                    if n:
                        yield self._read_chunk(data, out[:n], index, size)
                    return
                caplen = self._pread_u32(at + 8)
                if caplen > MAX_RECORD_BYTES:
                    if n:
                        yield self._read_chunk(data, out[:n], index, at)
                    raise CaptureError(f"{self.path}: record {index + n + 1} at offset {at}: captured length "
                                       f"{caplen} is implausible; the file is corrupt from here on")
                if at + 16 + caplen > size:
                    self._truncated(index + n, at, f"record data cut ({size - at - 16} of {caplen} bytes)")
                    if n:
                        yield self._read_chunk(data, out[:n], index, size)
                    return
                if n == 0:
                    want_min = 16 + caplen  # one record longer than a chunk: read it whole
                    continue
            yield self._read_chunk(data, out[:n], index, pos + end)
            index += n
            avg_rec = end / n
            pos += end

    def _read_chunk(self, data: np.ndarray, offs: np.ndarray, index: int, end: int) -> Chunk:
        cap, orig, ts = self._record_fields(data, offs)
        return Chunk(data, offs, cap, orig, ts, np.zeros(offs.size, dtype=np.int32), index, end)

    def _pcap_chunks_mapped(self) -> Iterator[Chunk]:
        mm, size = self._mm, self.size
        big = self.byte_order == ">"
        unpack = struct.Struct(self.byte_order + "I").unpack_from
        pos = self._start
        index = 0
        avg_rec: float | None = None
        broken: str | None = None
        while pos < size and broken is None:
            chunk_start = pos
            limit_records, limit_bytes = self.chunk_records, self.chunk_bytes
            stop_bytes = chunk_start + limit_bytes
            # Scan about as many bytes as the record limit needs (from the mean record size seen so far).
            est = stop_bytes if avg_rec is None else pos + int(limit_records * avg_rec * 1.05) + 4096
            if self.zero_copy:
                self._populate(pos, min(size, stop_bytes, est) + POPULATE_SLACK)
            fast = _pcap_scan_parallel(self._arr, pos, min(size, stop_bytes, est), size, big,
                                       10**9 if self.nanosecond else 10**6,
                                       max(self.interfaces[0].snaplen, 262144),
                                       _segment_size(avg_rec)) if self.parallel_scan else None
            if fast is not None and fast.size:
                if fast.size > limit_records:
                    fast = fast[:limit_records]
                last = int(fast[-1])
                pos = last + 16 + unpack(mm, last + 8)[0]
                # a damaged record right after: report it now, as the sequential walk would
                if pos < size and (pos + 16 > size or (unpack(mm, pos + 8)[0] <= MAX_RECORD_BYTES
                                                        and pos + 16 + unpack(mm, pos + 8)[0] > size)):
                    what = (f"record header cut ({size - pos} of 16 bytes)" if pos + 16 > size else
                            f"record data cut ({size - pos - 16} of {unpack(mm, pos + 8)[0]} bytes)")
                    self._truncated(index + int(fast.size), pos, what)
                    end_after = size
                else:
                    end_after = pos
                data, offs = self._make_chunk(fast + 16, 16, pos)
                cap, orig, ts = self._record_fields(data, offs)
                yield Chunk(data, offs, cap, orig, ts, np.zeros(offs.size, dtype=np.int32), index, end_after)
                index += int(offs.size)
                avg_rec = (pos - chunk_start) / offs.size
                pos = end_after
                continue
            fields = None
            rec: list[int] | np.ndarray
            if self.zero_copy and _NATIVE_SCAN_FIELDS is not None:
                rec, pos, fields = self._walk_pcap_fields(pos, stop_bytes, limit_records)
            else:
                rec, pos = self._walk_pcap(pos, stop_bytes, limit_records, unpack)
            n = len(rec)
            if pos < size and n < limit_records and pos < stop_bytes:
                if pos + 16 > size:
                    self._truncated(index + n, pos, f"record header cut ({size - pos} of 16 bytes)")
                    pos = size
                else:
                    caplen = unpack(mm, pos + 8)[0]
                    if caplen > MAX_RECORD_BYTES:
                        broken = (f"record {index + n + 1} at offset {pos}: captured length {caplen} is "
                                  f"implausible; the file is corrupt from here on")
                    else:
                        self._truncated(index + n, pos, f"record data cut ({size - pos - 16} of {caplen} bytes)")
                        pos = size
            if len(rec):
                data, offs = self._make_chunk(rec, 16, min(pos, size))
                cap, orig, ts = fields if fields is not None else self._record_fields(data, offs)
                yield Chunk(data, offs, cap, orig, ts, np.zeros(len(rec), dtype=np.int32), index, pos)
                index += len(rec)
        if broken:
            raise CaptureError(f"{self.path}: {broken}")

    def _record_fields(self, data: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Captured length, original length and timestamp (in the file's units) of each pcap record."""
        mult = 10**9 if self.nanosecond else 10**6
        if _NATIVE_FIELDS is not None:
            n = offs.shape[0]
            cap, orig, ts = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
            _NATIVE_FIELDS(data, offs, self.byte_order == ">", mult, cap, orig, ts)
            return cap, orig, ts
        f = _fields(data, offs - 16, 4, self.byte_order)
        return f[:, 2], f[:, 3], f[:, 0] * mult + f[:, 1]

    def _walk_pcap_fields(self, pos: int, stop: int, limit: int
                          ) -> tuple[np.ndarray, int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`_walk_pcap` with each record's lengths and timestamp read in the same pass (the mapping is
        the chunk, zero_copy: its offsets are the file's)."""
        out, cap, orig, ts = (np.empty(limit, dtype=np.int64) for _ in range(4))
        n, pos = _NATIVE_SCAN_FIELDS(self._arr, pos, stop, self.size, limit, self.byte_order == ">",
                                     MAX_RECORD_BYTES, 10**9 if self.nanosecond else 10**6, out, cap, orig, ts)
        return out[:n], pos, (cap[:n], orig[:n], ts[:n])

    def _walk_pcap(self, pos: int, stop: int, limit: int, unpack: Any) -> tuple[list[int] | np.ndarray, int]:
        """Record data offsets from ``pos`` on, until ``limit`` records, ``stop`` bytes, or a record that does not
        fit the file (left at the returned position for the caller to diagnose)."""
        size = self.size
        if _NATIVE_SCAN is not None:
            out = np.empty(limit, dtype=np.int64)
            n, pos = _NATIVE_SCAN(self._arr, pos, stop, size, limit, self.byte_order == ">", MAX_RECORD_BYTES, out)
            return out[:n], pos
        mm = self._mm
        rec: list[int] = []
        append = rec.append
        n = 0
        while pos + 16 <= size:
            caplen = unpack(mm, pos + 8)[0]
            nxt = pos + 16 + caplen
            if nxt > size or caplen > MAX_RECORD_BYTES:
                break
            append(pos + 16)
            pos = nxt
            n += 1
            if n >= limit or pos >= stop:
                break
        return rec, pos

    def _populate(self, start: int, end: int) -> None:
        """Map the pages of [start, end) in one call (MADV_POPULATE_READ) before the walk and the core read them:
        a page fault per 64 KiB of capture costs several times what the populate does. It also finds a file
        truncated under the mapping: that is a CaptureError here, not SIGBUS on the first read past its end."""
        end = min(end, self.size)
        lo = (start // mmap.PAGESIZE) * mmap.PAGESIZE
        if end <= lo or not self._can_populate:
            return
        try:
            self._madvise(MADV_POPULATE_READ, lo, end - lo)
        except OSError:
            now = os.fstat(self._fh.fileno()).st_size
            if now < end:
                raise CaptureError(f"{self.path}: the file shrank to {now} bytes while it was read "
                                   f"(it had {self.size})") from None
            self._can_populate = False  # a kernel without it (EINVAL): pages fault in as they are read

    def _madvise(self, advice: int, start: int, length: int) -> None:
        """The mapping's madvise, without the GIL where esp.pcap._pcapio is built (see its ``advise``)."""
        if _NATIVE_ADVISE is None:
            self._mm.madvise(advice, start, length)
            return
        err = _NATIVE_ADVISE(self._arr, start, length, advice)
        if err:
            raise OSError(err, os.strerror(err))

    def _release_behind(self, base: int) -> None:
        """:meth:`_release` for chunks that are the mapping itself (zero_copy): the last ``reuse_buffers``
        chunks may still be in use (read ahead, decrypted, written), so pages are released behind them."""
        self._behind.append(base)
        while len(self._behind) > self._ring:
            self._behind.popleft()
        if len(self._behind) == self._ring:
            self._release(self._behind[0])

    def _release(self, upto: int) -> None:
        """Tell the kernel the mapped pages before ``upto`` are done with (the chunk was copied out), so the
        mapping's resident size stays about one chunk however large the capture is."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        end = (upto // mmap.PAGESIZE) * mmap.PAGESIZE
        if end > self._released:
            try:
                self._madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            except (OSError, ValueError):
                return
            self._released = end

    def _truncated(self, index: int, pos: int, what: str) -> None:
        self.truncated_records += 1
        self.problems.append(f"record {index + 1} at offset {pos}: {what}; the capture ends there (truncated file)")

    # pcapng ------------------------------------------------------------------------------------------------
    def _pcapng_chunks(self) -> Iterator[Chunk]:
        mm, size = self._mm, self.size
        pos = 0
        index = 0
        order = "<"
        section_base = 0  # index of this section's interface 0 in self.interfaces
        broken: str | None = None
        avg_blk: float | None = None
        u32 = struct.Struct(order + "I").unpack_from
        epb_fields = struct.Struct(order + "IIII").unpack_from
        while pos < size and broken is None:
            kinds: list[int] = []
            starts: list[int] = []
            ifs: list[int] = []
            chunk_start = pos
            if pos and self.parallel_scan:
                got = self._pcapng_fast(pos, order, section_base, avg_blk, index)
                if got is not None:
                    chunk, pos = got
                    if chunk is not None:
                        avg_blk = (pos - chunk_start) / max(1, chunk.count)
                        index += chunk.count
                        yield chunk
                        continue
            while pos < size:
                if pos + 12 > size:
                    self._truncated(index + len(kinds), pos, f"block header cut ({size - pos} bytes left)")
                    pos = size
                    break
                btype = struct.unpack_from(order + "I", mm, pos)[0] if pos else PCAPNG_SHB
                if btype == PCAPNG_SHB:
                    if kinds:  # a new section ends the chunk: its byte order and interfaces may differ
                        break
                    bom_le = struct.unpack_from("<I", mm, pos + 8)[0]
                    if bom_le == PCAPNG_BOM:
                        order = "<"
                    elif bom_le == 0x4D3C2B1A:
                        order = ">"
                    else:
                        broken = f"section header at offset {pos}: bad byte-order magic 0x{bom_le:08x}"
                        break
                    self.byte_order = order
                    section_base = self._section_base.setdefault(pos, len(self.interfaces))
                    u32 = struct.Struct(order + "I").unpack_from
                    epb_fields = struct.Struct(order + "IIII").unpack_from
                blen = u32(mm, pos + 4)[0]
                if blen < 12 or blen % 4 or blen > MAX_RECORD_BYTES:
                    broken = f"block at offset {pos}: length {blen} is invalid; the file is corrupt from here on"
                    break
                if pos + blen > size:
                    self._truncated(index + len(kinds), pos, f"block cut ({size - pos} of {blen} bytes)")
                    pos = size
                    break
                if btype == BT_EPB and blen >= 32:
                    if_id, ts_hi, ts_lo, cap = epb_fields(mm, pos + 8)
                    # the common EPB (no options, trailer right) skips the general framing check
                    if 32 + cap + (-cap % 4) != blen or u32(mm, pos + blen - 4)[0] != blen:
                        broken = self._block_error(pos, btype, blen, order)
                        if broken:
                            break
                elif btype == BT_OPB and blen >= 32:
                    if_id = struct.unpack_from(order + "H", mm, pos + 8)[0]
                    ts_hi, ts_lo, cap = struct.unpack_from(order + "III", mm, pos + 12)
                    broken = self._block_error(pos, btype, blen, order)
                    if broken:
                        break
                else:
                    broken = self._block_error(pos, btype, blen, order)
                    if broken:
                        break
                if btype == BT_IDB and pos not in self._seen_idb:
                    try:
                        iface = self._parse_idb(pos, blen, order)
                    except _Damaged as exc:
                        broken = str(exc)
                        break
                    self._seen_idb.add(pos)
                    self.interfaces.append(iface)
                elif btype == BT_EPB or btype == BT_OPB:
                    if section_base + if_id >= len(self.interfaces):
                        broken = f"packet block at offset {pos}: interface {if_id} was never described"
                        break
                    if 28 + cap > blen - 4:
                        broken = f"packet block at offset {pos}: captured length {cap} overruns the block"
                        break
                    if ts_hi >= 1 << 31:
                        broken = (f"packet block at offset {pos}: timestamp {ts_hi << 32 | ts_lo} (units of "
                                  f"1/{self.interfaces[section_base + if_id].tsresol} s) is beyond the 63 bits "
                                  f"a timestamp is held in")
                        break
                    kinds.append(btype)
                    starts.append(pos)
                    ifs.append(section_base + if_id)
                elif btype == BT_SPB:
                    if section_base >= len(self.interfaces):
                        broken = f"simple packet block at offset {pos}: no interface described"
                        break
                    kinds.append(btype)
                    starts.append(pos)
                    ifs.append(section_base)
                # other block types (NRB, ISB, DSB, custom...) carry no packets: skipped
                pos += blen
                if len(kinds) >= self.chunk_records or pos - chunk_start >= self.chunk_bytes:
                    break
            if kinds:
                yield self._pcapng_chunk(kinds, starts, ifs, order, index, chunk_start, pos)
                index += len(kinds)
            # at a new section the next round starts at its SHB with an empty chunk and reads it like the first
        if broken:
            raise CaptureError(f"{self.path}: {broken}")

    def _pcapng_fast(self, pos: int, order: str, section_base: int, avg_blk: float | None,
                     index: int) -> tuple[Chunk | None, int] | None:
        """The parallel scan over plain packet blocks; None (walk sequentially) when it cannot be used. It stops
        before the first block that changes state (a section or interface description), which the sequential
        walk then handles."""
        size = self.size
        stop = pos + self.chunk_bytes
        if avg_blk is not None:
            stop = min(stop, pos + int(self.chunk_records * avg_blk * 1.05) + 4096)
        res = _pcapng_scan_parallel(self._arr, pos, min(size, stop), size, order == ">", _segment_size(avg_blk))
        if res is None:
            return None
        starts, types = res
        state = np.flatnonzero(np.isin(types, (PCAPNG_SHB, BT_IDB)))
        if state.size:
            starts, types = starts[: state[0]], types[: state[0]]
        if starts.size == 0:
            return None
        pk = np.isin(types, (BT_EPB, BT_SPB, BT_OPB))
        if not pk.all():
            return None  # other blocks' lengths and options are checked by the sequential walk
        npk = np.cumsum(pk)
        if int(npk[-1]) > self.chunk_records:  # cut after the chunk_records-th packet block
            cut = int(np.searchsorted(npk, self.chunk_records)) + 1
            starts, types, pk = starts[:cut], types[:cut], pk[:cut]
        end = int(starts[-1]) + int(_u32(self._arr, starts[-1:] + 4, order == ">")[0])
        pstarts, ptypes = starts[pk], types[pk]
        if pstarts.size == 0:
            return None, end
        big = order == ">"
        ifs = np.full(pstarts.size, section_base, dtype=np.int64)
        epb = ptypes == BT_EPB
        opb = ptypes == BT_OPB
        if epb.any():
            ifs[epb] += _u32(self._arr, pstarts[epb] + 8, big)
        if opb.any():
            ifs[opb] += _u16(self._arr, pstarts[opb] + 8, big)
        if int(ifs.max()) >= len(self.interfaces):
            return None  # the sequential walk names the block in its error
        blen = _u32(self._arr, pstarts + 4, big)
        full = epb | opb
        if full.any():
            # The sequential walk names what is wrong: too short, a captured length past the block, options
            # (not checked here), a timestamp past 63 bits.
            bf = blen[full]
            capl = _u32(self._arr, pstarts[full] + 20, big)
            if bool(((bf < 32) | (28 + capl + (-capl % 4) + 4 != bf)
                     | (_u32(self._arr, pstarts[full] + 12, big) >= 2**31)).any()):
                return None
        if bool((blen[~full] < MIN_BLOCK_LEN[BT_SPB]).any()):
            return None
        chunk = self._pcapng_chunk(ptypes.tolist(), pstarts.tolist(), ifs.tolist(), order, index, pos, end)
        return chunk, end

    def _pcapng_chunk(self, kinds: list[int], starts: list[int], ifs: list[int], order: str,
                      index: int, chunk_start: int, end: int) -> Chunk:
        big = order == ">"
        base = starts[0]
        data = _arena(self._arr[base:end], self._scratch, self._arena_name())
        self._release(base)
        st = np.asarray(starts, dtype=np.int64) - base
        kind = np.asarray(kinds, dtype=np.int64)
        iface = np.asarray(ifs, dtype=np.int32)
        n = len(kinds)
        offs = np.empty(n, dtype=np.int64)
        cap = np.empty(n, dtype=np.int64)
        orig = np.empty(n, dtype=np.int64)
        ts = np.zeros(n, dtype=np.int64)
        pk = kind != BT_SPB
        if pk.any():
            s = st[pk]
            hi = _u32(data, s + 12, big)
            lo = _u32(data, s + 16, big)
            ts[pk] = (hi << 32) | lo
            cap[pk] = _u32(data, s + 20, big)
            orig[pk] = _u32(data, s + 24, big)
            offs[pk] = s + 28
        sp = ~pk
        if sp.any():
            s = st[sp]
            blen = _u32(data, s + 4, big)
            o = _u32(data, s + 8, big)
            snap = np.asarray([self.interfaces[i].snaplen or 0xFFFFFFFF for i in iface[sp]], dtype=np.int64)
            room = blen - 16
            c = np.minimum(o, room)
            c = np.where(snap > 0, np.minimum(c, snap), c)
            cap[sp] = c
            orig[sp] = o
            offs[sp] = s + 12
        return Chunk(data, offs, cap, orig, ts, iface, index, end)

    def _block_error(self, pos: int, btype: int, blen: int, order: str) -> str | None:
        """What is wrong with the framing of the whole block at ``pos`` (12 <= blen, a multiple of 4, inside the
        file), or None: shorter than its type allows, a trailing length other than the leading one (Wireshark
        and libpcap refuse both), a section version not read, options running past the end of the block."""
        mm = self._mm
        name = BLOCK_NAMES.get(btype, f"block of type 0x{btype:08x}")
        least = MIN_BLOCK_LEN.get(btype, 12)
        if blen < least:
            return f"{name} at offset {pos}: length {blen} is less than {least}"
        tail = struct.unpack_from(order + "I", mm, pos + blen - 4)[0]
        if tail != blen:
            return f"block at offset {pos}: trailing length {tail} differs from the leading {blen}"
        if btype == PCAPNG_SHB:
            version = struct.unpack_from(order + "HH", mm, pos + 12)
            if version not in PCAPNG_VERSIONS:
                return (f"section header at offset {pos}: version {version[0]}.{version[1]} is not one this "
                        f"reader knows (1.0, 1.2)")
        opts = OPTIONS_AT.get(btype)
        if btype in (BT_EPB, BT_OPB):
            cap = struct.unpack_from(order + "I", mm, pos + 20)[0]
            if 28 + cap > blen - 4:
                return None  # the walk names the captured length that overruns the block
            opts = 28 + cap + (-cap % 4)
        if opts is None or opts >= blen - 4:
            return None
        err = _options_error(mm, pos + opts, pos + blen - 4, order)
        return f"{name} at offset {pos}: {err}" if err else None

    def _parse_idb(self, pos: int, blen: int, order: str) -> Interface:
        """The interface of the IDB at ``pos``, whose framing :meth:`_block_error` found sound (options inside
        the block); raises _Damaged for an option value out of range."""
        mm = self._mm
        linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", mm, pos + 8)
        iface = Interface(linktype, snaplen, 10**6)
        opt = pos + 16
        end = pos + blen - 4
        where = f"interface description block at offset {pos}"
        while opt + 4 <= end:
            code, olen = struct.unpack_from(order + "HH", mm, opt)
            if code == 0:
                break
            val = bytes(mm[opt + 4: opt + 4 + olen])
            if code == 9:  # if_tsresol: units per second are 10**r, or 2**(r & 0x7F) with the top bit set
                if olen != 1:
                    raise _Damaged(f"{where}: if_tsresol at offset {opt} has length {olen}, not 1")
                r = val[0]
                exp, base, most = (r & 0x7F, 2, MAX_TSRESOL_EXP2) if r & 0x80 else (r, 10, MAX_TSRESOL_EXP10)
                if exp > most:
                    raise _Damaged(f"{where}: if_tsresol at offset {opt}: resolution {base}^-{exp} s is finer "
                                   f"than a 63-bit timestamp holds (10^-{MAX_TSRESOL_EXP10} and "
                                   f"2^-{MAX_TSRESOL_EXP2} s at most)")
                iface.tsresol = base ** exp
            elif code == 14:  # if_tsoffset (seconds)
                if olen != 8:
                    raise _Damaged(f"{where}: if_tsoffset at offset {opt} has length {olen}, not 8")
                iface.tsoffset = struct.unpack(order + "q", val)[0]
            elif code == 2:
                iface.name = val.decode("utf-8", "replace")
            opt += 4 + olen + (-olen % 4)
        return iface


def _options_error(mm: Any, opt: int, end: int, order: str) -> str | None:
    """The first option in [opt, end) whose header, value or padding runs past ``end`` (the block's trailing
    length), or None. Ends at opt_endofopt (code 0) as readers do; at most one step per 4 bytes."""
    while opt < end:
        if opt + 4 > end:
            return f"option header at offset {opt} is cut by the end of its block (offset {end})"
        code, olen = struct.unpack_from(order + "HH", mm, opt)
        if code == 0:
            return None
        if opt + 4 + olen + (-olen % 4) > end:
            return (f"option {code} at offset {opt}: length {olen} runs past the end of its block "
                    f"(offset {end})")
        opt += 4 + olen + (-olen % 4)
    return None


class Scratch:
    """Byte buffers reused from one chunk to the next, so a long capture does not fault in fresh pages (and
    zero them) for every chunk. ``get`` returns a view of at least ``size`` bytes, contents undefined; the view
    is valid until the next ``get`` of the same name."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < size:
            buf = np.empty(max(size, int(size * 1.25) if buf is not None else size), dtype=np.uint8)
            self._bufs[name] = buf
        return buf[:size]


def _arena(view: np.ndarray, scratch: Scratch | None = None, name: str = "arena") -> np.ndarray:
    """A writable copy of a chunk's bytes with READ_PAD zero bytes after it (see :func:`parse_l3`)."""
    n = view.shape[0] + READ_PAD
    data = scratch.get(name, n) if scratch is not None else np.empty(n, dtype=np.uint8)
    data[: view.shape[0]] = view
    data[view.shape[0]:] = 0
    return data


def open_capture(path: str | os.PathLike[str], **kw: Any) -> CaptureReader:
    return CaptureReader(path, **kw)


# -- link layer and IP headers, vectorised ---------------------------------------------------------------------

@dataclass
class L3Info:
    """Per-record header facts for a chunk, all arrays of the chunk's length.

    ``l3`` is the offset of the IP header from the record start (-1: no IP header found), ``ip_len`` the IP
    packet length as its header states it (bounded by what was captured: see ``cut``), ``version`` 4, 6 or 0.
    ``proto`` is the upper-layer protocol after IPv6 extension headers, ``l4`` its offset from the record start.
    ``frag`` marks IP fragments (``frag_first``: the first fragment, which holds the upper-layer header),
    ``cut`` packets whose capture is shorter than their IP length (snap length). ``src``/``dst`` are addresses
    as two uint64 halves of their IPv6 form (IPv4 v4-mapped). ``l4h`` holds the first L4_HEAD bytes at ``l4``
    (zeros past the captured end), for ports, the non-ESP marker and the SPI.
    """

    l3: np.ndarray
    version: np.ndarray
    ip_len: np.ndarray
    proto: np.ndarray
    l4: np.ndarray
    frag: np.ndarray
    cut: np.ndarray
    ethertype_at: np.ndarray  # offset of the 16-bit protocol field naming the IP version (-1: none)
    unknown_link: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    l4h: np.ndarray
    frag_first: np.ndarray


#: Bytes of link-layer header, IP header and upper-layer header parsed per record, and how many bytes from the
#: record start one gather copies (enough for Ethernet with two VLAN tags + IPv4 with options + UDP + ESP).
L2_HEAD, IP_HEAD, L4_HEAD = 24, 40, 16
HEAD_ROW = 112


def _rows(d: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes at each start as an (n, width) array: one gather per chunk, then column arithmetic."""
    return _windows(d, width, False)[starts]


def _sub_rows(head: np.ndarray, off: np.ndarray, width: int, d: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Row i = d[base[i] + off[i] : +width], taken from the per-record ``head`` rows where they reach (usually a
    plain column slice: one link type, one header length) and gathered from ``d`` for the rest."""
    n = off.shape[0]
    if n == 0:
        return np.zeros((0, width), dtype=np.uint8)
    o0 = int(off[0])
    if o0 + width <= head.shape[1] and bool((off == o0).all()):
        return head[:, o0:o0 + width]
    out = np.empty((n, width), dtype=np.uint8)
    inside = off + width <= head.shape[1]
    done = ~inside
    for v in np.unique(off[inside]).tolist():
        m = inside & (off == v)
        out[m] = head[m, v:v + width]
    if done.any():
        out[done] = _rows(d, base[done] + off[done], width)
    return out


def _col16(h: np.ndarray, j: int) -> np.ndarray:
    return (h[:, j].astype(np.int64) << 8) | h[:, j + 1]


def _col32(h: np.ndarray, j: int) -> np.ndarray:
    return (_col16(h, j) << 16) | _col16(h, j + 2)


def _col64(h: np.ndarray, j: int) -> np.ndarray:
    return np.ascontiguousarray(h[:, j:j + 8]).view(">u8").ravel().astype(np.uint64)


def _be16(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (d[idx].astype(np.int64) << 8) | d[idx + 1]


def _padded(d: np.ndarray, base: np.ndarray, cap: np.ndarray) -> bool:
    return not base.shape[0] or int((base + cap).max()) + READ_PAD <= d.shape[0]


V4_MAPPED_LO_PREFIX = np.uint64(0xFFFF) << np.uint64(32)


def parse_l3(chunk: Chunk, linktypes: Sequence[int] | np.ndarray) -> L3Info:
    """Find the IP header of every record in a chunk and read the fields ESP processing needs.

    The compiled kernel (esp.pcap._pcapio.parse_l3) when built, else :func:`parse_l3_numpy`; both give the same
    arrays (tested on generated and random records)."""
    if _NATIVE_PARSE_L3 is None:
        return parse_l3_numpy(chunk, linktypes)
    n = chunk.count
    lt = np.asarray(linktypes, dtype=np.int64)[chunk.iface] if n else np.zeros(0, dtype=np.int64)
    i64 = [np.empty(n, dtype=np.int64) for _ in range(6)]
    u64 = [np.empty(n, dtype=np.uint64) for _ in range(4)]
    flags = np.empty((4, n), dtype=bool)
    l4h = np.empty((n, L4_HEAD), dtype=np.uint8)
    l3, version, ip_len, proto, l4, et_at = i64
    frag, cut, unknown, frag_first = flags
    _NATIVE_PARSE_L3(chunk.data, np.ascontiguousarray(chunk.offsets, dtype=np.int64),
                     np.ascontiguousarray(chunk.caplen, dtype=np.int64), lt, l3, version, ip_len, proto, l4,
                     frag.view(np.uint8), cut.view(np.uint8), et_at, unknown.view(np.uint8),
                     *u64, l4h, frag_first.view(np.uint8))
    return L3Info(l3, version, ip_len, proto, l4, frag, cut, et_at, unknown, u64[0], u64[1], u64[2], u64[3],
                  l4h, frag_first)


def parse_l3_numpy(chunk: Chunk, linktypes: Sequence[int] | np.ndarray) -> L3Info:
    """The numpy reference of :func:`parse_l3`.

    Three row gathers per chunk (link-layer, IP and upper-layer headers), then column arithmetic. Everything is
    bounds-checked against the captured length: a field beyond it reads as absent.
    """
    d = chunk.data
    n = chunk.count
    base = chunk.offsets
    cap = chunk.caplen
    lt = np.asarray(linktypes, dtype=np.int64)[chunk.iface] if n else np.zeros(0, dtype=np.int64)
    # Fixed-size reads past the end of a short last record must stay inside the array; what they read is
    # masked off by the captured-length checks.
    dp = d if _padded(d, base, cap) else np.concatenate([d, np.zeros(READ_PAD, dtype=np.uint8)])

    l3 = np.full(n, -1, dtype=np.int64)
    etype = np.zeros(n, dtype=np.int64)
    et_at = np.full(n, -1, dtype=np.int64)
    unknown = ~np.isin(lt, list(KNOWN_LINKTYPES))
    head = _rows(dp, base, HEAD_ROW)
    lh = head[:, :L2_HEAD]

    # Ethernet, with up to MAX_VLAN_TAGS 802.1Q/802.1ad tags (the type field at 12, 16 or 20).
    eth = (lt == LinkType.ETHERNET) & (cap >= 14)
    if eth.any():
        pos = np.full(n, 12, dtype=np.int64)
        et = np.where(eth, _col16(lh, 12), 0)
        for k in range(MAX_VLAN_TAGS):
            tagged = eth & np.isin(et, VLAN_TPIDS) & (cap >= pos + 8)
            if not tagged.any():
                break
            pos = np.where(tagged, pos + 4, pos)
            et = np.where(tagged, _col16(lh, 16 + 4 * k), et)
        l3 = np.where(eth, pos + 2, l3)
        etype = np.where(eth, et, etype)
        et_at = np.where(eth, pos, et_at)
    sll = (lt == LinkType.LINUX_SLL) & (cap >= 16)
    if sll.any():
        l3 = np.where(sll, 16, l3)
        etype = np.where(sll, _col16(lh, 14), etype)
        et_at = np.where(sll, 14, et_at)
    sll2 = (lt == LinkType.LINUX_SLL2) & (cap >= 20)
    if sll2.any():
        l3 = np.where(sll2, 20, l3)
        etype = np.where(sll2, _col16(lh, 0), etype)
        et_at = np.where(sll2, 0, et_at)
    raw = np.isin(lt, [int(x) for x in RAW_LINKTYPES]) & (cap >= 1)
    if raw.any():
        ver0 = lh[:, 0] >> 4
        l3 = np.where(raw, 0, l3)
        etype = np.where(raw & (ver0 == 4), ETHERTYPE_IPV4, np.where(raw & (ver0 == 6), ETHERTYPE_IPV6, etype))

    have = l3 >= 0
    l3c = np.where(have, l3, 0)
    ih = _sub_rows(head, l3c, IP_HEAD, dp, base)
    room = cap - l3c
    ver = (ih[:, 0] >> 4).astype(np.int64)
    v4 = have & (etype == ETHERTYPE_IPV4) & (ver == 4) & (room >= 20)
    v6 = have & (etype == ETHERTYPE_IPV6) & (ver == 6) & (room >= 40)
    ihl = (ih[:, 0] & 0x0F).astype(np.int64) * 4
    v4 &= ihl >= 20
    version = np.where(v4, 4, np.where(v6, 6, 0))
    tot4 = _col16(ih, 2)
    ip_len = np.where(v4, tot4, np.where(v6, _col16(ih, 4) + 40, 0))
    cut = (v4 | v6) & (ip_len > room)
    # IPv4 total length 0 (TSO captures) is taken as "whatever was captured".
    tso = v4 & (tot4 == 0)
    ip_len = np.where(tso, room, ip_len)
    cut &= ~tso
    fragfield = _col16(ih, 6)
    frag = v4 & ((fragfield & 0x3FFF) != 0)
    frag_first = frag & ((fragfield & 0x1FFF) == 0)
    proto = np.where(v4, ih[:, 9].astype(np.int64), np.where(v6, ih[:, 6].astype(np.int64), -1))
    l4 = np.where(v4, l3 + ihl, np.where(v6, l3 + 40, -1))
    # IPv6 extension headers that can precede ESP: hop-by-hop, routing, destination options; fragment (rare,
    # so read per affected record).
    for _ in range(4):
        ext = v6 & np.isin(proto, (0, 43, 60)) & (l4 + 8 <= cap)
        if not ext.any():
            break
        r = np.flatnonzero(ext)
        q = base[r] + l4[r]
        proto[r] = dp[q]
        l4[r] += (dp[q + 1].astype(np.int64) + 1) * 8
    f6 = v6 & (proto == 44)
    if f6.any():
        r = np.flatnonzero(f6)
        inside = l4[r] + 8 <= cap[r]
        q = np.where(inside, base[r] + l4[r], base[r])  # a header past the captured end is not read at all
        first6 = inside & ((_be16(dp, q + 2) & 0xFFF8) == 0)
        frag_first[r] = first6
        proto[r] = np.where(inside, dp[q], proto[r])
        l4[r] += 8
    frag |= f6
    # Addresses, as IPv6 halves (IPv4 v4-mapped)
    src_hi = np.where(v6, _col64(ih, 8), np.uint64(0)).astype(np.uint64)
    src_lo = np.where(v6, _col64(ih, 16), V4_MAPPED_LO_PREFIX | _col32(ih, 12).astype(np.uint64)).astype(np.uint64)
    dst_hi = np.where(v6, _col64(ih, 24), np.uint64(0)).astype(np.uint64)
    dst_lo = np.where(v6, _col64(ih, 32), V4_MAPPED_LO_PREFIX | _col32(ih, 16).astype(np.uint64)).astype(np.uint64)
    ipv = v4 | v6
    src_lo = np.where(ipv, src_lo, np.uint64(0))
    dst_lo = np.where(ipv, dst_lo, np.uint64(0))
    l4c = np.clip(np.where(ipv, l4, cap), 0, cap)
    l4h = np.array(_sub_rows(head, l4c, L4_HEAD, dp, base), copy=True)
    # zero what lies past the captured end, so no field reads another record's bytes
    past = (l4c[:, None] + np.arange(L4_HEAD)) >= cap[:, None]
    l4h[past] = 0
    return L3Info(l3, version, ip_len, proto, l4, frag, cut, et_at, unknown, src_hi, src_lo, dst_hi, dst_lo,
                  l4h, frag_first)


# -- copying variable-length segments ----------------------------------------------------------------------------

def _windows(a: np.ndarray, width: int, writeable: bool) -> np.ndarray:
    """Every ``width``-byte window of a 1-D byte array as rows of a 2-D view (no copy)."""
    return as_strided(a, shape=(a.shape[0] - width + 1, width), strides=(a.strides[0], a.strides[0]),
                      writeable=writeable)


#: Block sizes for :func:`gather_segments`: a segment is copied in blocks of the largest size it is not shorter
#: than, so index arrays hold one entry per block, not per byte.
_GATHER_BLOCKS = (256, 32, 4, 1)
#: A length shared by at least this many segments of a call is copied as one row per segment.
_ROW_MIN_COUNT = 32
_ROW_MAX_GROUPS = 16


def _native(name: str, numpy_twin: bool = True):  # type: ignore[no-untyped-def]
    """A compiled kernel from esp.pcap._pcapio when that build provides it (a memcpy loop beats numpy indexing).
    ESPRESSO_PCAP_NUMPY=1 in the environment keeps the numpy reference paths (for comparisons), except for what
    has no numpy twin (``numpy_twin`` False)."""
    if numpy_twin and os.environ.get("ESPRESSO_PCAP_NUMPY"):
        return None
    try:
        import importlib
        io_mod = importlib.import_module("esp.pcap._pcapio")
    except ImportError:
        return None
    return getattr(io_mod, name, None)


#: esp.pcap._pcapio.gather_segments(src, src_off, lengths, dst, dst_off) if built: same contract as the numpy version.
_NATIVE_GATHER = _native("gather_segments")
#: esp.pcap._pcapio.scan_pcap(buf, pos, stop, size, limit, big_endian, max_record, out) -> (count, pos) if built: the
#: record walk of CaptureReader._walk_pcap in C (out[k] = offset of record k's data).
_NATIVE_SCAN = _native("scan_pcap")
#: esp.pcap._pcapio.advise(...): madvise on the mapping without holding the GIL.
_NATIVE_ADVISE = _native("advise")
#: esp.pcap._pcapio's SIGBUS guard for mapped captures (guard_mapping, guard_hit, guard_release): not a kernel with a
#: numpy twin, so ESPRESSO_PCAP_NUMPY leaves it on.
_NATIVE_GUARD = _native("guard_mapping", numpy_twin=False)
_NATIVE_GUARD_HIT = _native("guard_hit", numpy_twin=False)
_NATIVE_GUARD_RELEASE = _native("guard_release", numpy_twin=False)
#: esp.pcap._pcapio.scan_pcap_fields(...): the walk and the record header fields in one pass.
_NATIVE_SCAN_FIELDS = _native("scan_pcap_fields")
#: esp.pcap._pcapio.pcap_fields(data, offsets, big_endian, mult, caplen, origlen, ts): the record header fields.
_NATIVE_FIELDS = _native("pcap_fields")
#: esp.pcap._pcapio.scatter_rows(out, starts, rows): fixed-width rows (record headers) into a file image.
_NATIVE_SCATTER = _native("scatter_rows")
#: esp.pcap._pcapio.parse_l3(...): :func:`parse_l3` in one pass per record (outputs preallocated by the caller).
_NATIVE_PARSE_L3 = _native("parse_l3")
#: esp.pcap._pcapio.emit_pcap(...): decrypt output records (header + bytes) laid out in one pass (esp.pcap.tool).
_NATIVE_EMIT_PCAP = _native("emit_pcap")
#: esp.pcap._pcapio.assemble(out, starts, hdr, b0, o0, n0, b1, o1, n1, b2, o2, n2): a file image in one pass.
_NATIVE_ASSEMBLE = _native("assemble")
_EMPTY_U8 = np.zeros(1, dtype=np.uint8)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


def gather_segments(src: np.ndarray, src_off: np.ndarray, lengths: np.ndarray,
                    out: np.ndarray, out_off: np.ndarray, scratch: "Scratch | None" = None) -> None:
    """out[out_off[i] : +lengths[i]] = src[src_off[i] : +lengths[i]] for every i, without a Python loop.

    Each segment is cut into blocks of B bytes, the last block aligned to the segment's end (it overlaps the one
    before it and writes the same bytes again), and the blocks move as rows of B-byte window views, so the work
    is numpy indexing over blocks. Segments must not overlap in ``out``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    src_off = np.asarray(src_off, dtype=np.int64)
    out_off = np.asarray(out_off, dtype=np.int64)
    if lengths.shape[0] == 0:
        return
    if _NATIVE_GATHER is not None:
        _NATIVE_GATHER(np.ascontiguousarray(src), np.ascontiguousarray(src_off), np.ascontiguousarray(lengths),
                       out, np.ascontiguousarray(out_off))
        return
    # Lengths that many segments share (link-layer headers, fixed-size test traffic) move as whole rows.
    vals, counts = np.unique(lengths, return_counts=True)
    common = vals[(counts >= _ROW_MIN_COUNT) & (vals > 0)][:_ROW_MAX_GROUPS]
    rest = np.ones(lengths.shape[0], dtype=bool)
    for width in common.tolist():
        m = lengths == width
        rest &= ~m
        _move_rows(src, src_off[m], out, out_off[m], width, scratch)
    if not rest.all():
        lengths, src_off, out_off = lengths[rest], src_off[rest], out_off[rest]
    upper = None
    for width in _GATHER_BLOCKS:
        m = lengths >= width
        if upper is not None:
            m &= lengths < upper
        upper = width
        if not m.any():
            continue
        seg_len, so, do = lengths[m], src_off[m], out_off[m]
        nblocks = (seg_len + width - 1) // width
        seg = np.repeat(np.arange(seg_len.shape[0]), nblocks)
        k = np.arange(seg.shape[0], dtype=np.int64) - (np.cumsum(nblocks) - nblocks)[seg]
        rel = np.minimum(k * width, seg_len[seg] - width)
        if width == 1:
            out[do[seg] + rel] = src[so[seg] + rel]
        else:
            _move_rows(src, so[seg] + rel, out, do[seg] + rel, width, scratch)


def _move_rows(src: np.ndarray, so: np.ndarray, out: np.ndarray, do: np.ndarray, width: int,
               scratch: "Scratch | None") -> None:
    """out[do[i]:+width] = src[so[i]:+width]. (np.take into a reused buffer would materialise the window view,
    so the rows go through numpy's own temporary.)"""
    _windows(out, width, True)[do] = _windows(src, width, False)[so]


def scatter_rows(out: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> None:
    """out[starts[i] : +w] = rows[i] for fixed-width byte rows (record headers)."""
    if rows.shape[0] and _NATIVE_SCATTER is not None:
        _NATIVE_SCATTER(out, np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(rows))
        return
    if rows.shape[0]:
        _windows(out, rows.shape[1], True)[starts] = rows


# -- writing ----------------------------------------------------------------------------------------------------

class CaptureWriter:
    """Writes records a chunk at a time, as pcap or pcapng.

    Timestamps come in units of the *source* interface's ``tsresol`` and are converted to the output's
    (pcap: micro- or nanoseconds; pcapng: each interface keeps its resolution), so that a capture read and
    written in the same format keeps its timestamps exactly.
    """

    def __init__(self, path: str | os.PathLike[str], interfaces: Sequence[Interface], *, fmt: str = "pcap",
                 nanosecond: bool | None = None, byte_order: str = "<", snaplen: int | None = None,
                 pcap_version: tuple[int, int] = (2, 4), thiszone: int = 0, sigfigs: int = 0) -> None:
        """``interfaces`` may grow while writing (a pcapng reader finds interfaces as it goes): pass the
        reader's list; pcapng gets each new interface's description block before its first packet."""
        if fmt not in ("pcap", "pcapng"):
            raise ValueError(f"unknown capture format {fmt!r}: pcap or pcapng")
        if byte_order not in ("<", ">"):
            raise ValueError("byte_order is '<' or '>'")
        self.fmt = fmt
        self.order = byte_order
        self.interfaces = interfaces
        self.path = Path(path)
        self.records = 0
        self._written_ifaces = 0
        self._scratch = Scratch()
        # File writes run on one background thread (the write releases the GIL), overlapping the next chunk.
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcap-write")
        self._pending: list[concurrent.futures.Future | None] = [None, None]
        self._flip = 0
        self._nanosecond = nanosecond
        self._snaplen = snaplen
        self._pcap_args = (pcap_version, thiszone, sigfigs)
        self._header_done = False
        self._next: int | None = None        # the next offset :meth:`reserve` gives
        self._seekable: bool | None = None
        self.units = 10**6
        try:
            self._fh = open(self.path, "wb")
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        if fmt == "pcapng":
            o = self.order
            self._fh.write(struct.pack(o + "IIIHHq", PCAPNG_SHB, 28, PCAPNG_BOM, 1, 0, -1) + struct.pack(o + "I", 28))
            self._header_done = True
        if self.interfaces:
            self._sync_interfaces()

    def _sync_interfaces(self) -> None:
        if self.fmt == "pcapng":
            if self._written_ifaces < len(self.interfaces):
                self.flush()  # records already queued go before the new interface's description
            while self._written_ifaces < len(self.interfaces):
                self._fh.write(self._idb(self.interfaces[self._written_ifaces]))
                self._written_ifaces += 1
            return
        if not self.interfaces:
            raise CaptureError(f"{self.path}: no link type known for the pcap header")
        lts = {i.linktype for i in self.interfaces}
        if len(lts) != 1:
            raise CaptureError(f"pcap holds one link type, the input has {sorted(lts)}: write pcapng instead")
        if not self._header_done:
            nanosecond = self._nanosecond
            if nanosecond is None:
                nanosecond = any(i.tsresol > 10**6 for i in self.interfaces)
            self.units = 10**9 if nanosecond else 10**6
            snap = self._snaplen if self._snaplen is not None else max(i.snaplen for i in self.interfaces) or 262144
            magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
            (major, minor), thiszone, sigfigs = self._pcap_args
            self._fh.write(struct.pack(self.order + "IHHiIII", magic, major, minor, thiszone, sigfigs,
                                       snap, self.interfaces[0].linktype))
            self._header_done = True
        self._written_ifaces = len(self.interfaces)

    def _idb(self, iface: Interface) -> bytes:
        o = self.order
        opts = b""
        if iface.tsresol != 10**6:
            r = iface.tsresol
            exp10 = len(str(r)) - 1
            if 10**exp10 == r and exp10 <= MAX_TSRESOL_EXP10:
                code = exp10
            elif r > 0 and r & (r - 1) == 0 and r.bit_length() - 1 <= MAX_TSRESOL_EXP2:
                code = 0x80 | (r.bit_length() - 1)
            else:  # if_tsresol has no code for it: the timestamps would be read in other units
                raise ValueError(f"interface resolution {r} units per second is not 10^k (k <= "
                                 f"{MAX_TSRESOL_EXP10}) or 2^k (k <= {MAX_TSRESOL_EXP2})")
            opts += struct.pack(o + "HH", 9, 1) + bytes([code]) + b"\0\0\0"
        if iface.tsoffset:
            opts += struct.pack(o + "HHq", 14, 8, iface.tsoffset)
        if opts:
            opts += struct.pack(o + "HH", 0, 0)
        blen = 20 + len(opts)
        return struct.pack(o + "IIHHI", BT_IDB, blen, iface.linktype, 0, iface.snaplen) + opts + struct.pack(o + "I", blen)

    def write(self, data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, ts: np.ndarray,
              iface: np.ndarray, origlen: np.ndarray | None = None, src_tsresol: Sequence[int] | None = None) -> None:
        """Append records; record i is data[offsets[i]:+lengths[i]] captured at ts[i] on interface iface[i].

        ``src_tsresol`` maps interface index to the resolution ``ts`` is in (default: the writer's interfaces).
        """
        self.write_parts([(data, offsets, lengths)], ts, iface, origlen, src_tsresol)

    def write_parts(self, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], ts: np.ndarray,
                    iface: np.ndarray, origlen: np.ndarray | None = None,
                    src_tsresol: Sequence[int] | None = None) -> None:
        """Append records made of several pieces each: record i is the concatenation, over ``parts``, of
        buf[offsets[i]:+lengths[i]] (a length may be 0). The pieces go straight into the file image, so a
        frame rebuilt from a kept link-layer header and a new packet is copied once."""
        ts = np.asarray(ts, dtype=np.int64)
        n = int(ts.shape[0])
        if self._written_ifaces < len(self.interfaces) or not self._header_done:
            self._sync_interfaces()
        if n == 0:
            return
        plens = [np.asarray(p[2], dtype=np.int64) for p in parts]
        lengths = np.sum(plens, axis=0) if len(plens) > 1 else plens[0]
        iface = np.asarray(iface, dtype=np.int64)
        orig = lengths if origlen is None else np.maximum(np.asarray(origlen, dtype=np.int64), lengths)
        res_in = np.asarray(src_tsresol if src_tsresol is not None else [i.tsresol for i in self.interfaces],
                            dtype=np.int64)[iface]
        dt = np.dtype(np.uint32).newbyteorder(cast(Literal["<", ">"], self.order))
        if self.fmt == "pcap":
            res_out = np.full(n, self.units, dtype=np.int64)
            t = self._pcap_times(ts, iface, res_in)
            sec, frac = np.divmod(t, res_out)
            hdr = np.empty((n, 4), dtype=dt)
            hdr[:, 0] = sec
            hdr[:, 1] = frac
            hdr[:, 2] = lengths
            hdr[:, 3] = orig
            hlen, tail = 16, np.zeros(n, dtype=np.int64)
        else:
            res_out = np.asarray([i.tsresol for i in self.interfaces], dtype=np.int64)[iface]
            t, bad = _rescale(ts, res_in, res_out)
            if bad >= 0:
                raise CaptureError(f"{self.path}: record {self.records + bad + 1}: timestamp {int(ts[bad])} "
                                   f"(units of 1/{int(res_in[bad])} s) cannot be written in 1/{int(res_out[bad])} "
                                   f"s units within 63 bits")
            pad = (-lengths) % 4
            blen = 32 + lengths + pad
            hdr = np.empty((n, 7), dtype=dt)
            hdr[:, 0] = BT_EPB
            hdr[:, 1] = blen
            hdr[:, 2] = iface
            hdr[:, 3] = (t >> 32) & 0xFFFFFFFF
            hdr[:, 4] = t & 0xFFFFFFFF
            hdr[:, 5] = lengths
            hdr[:, 6] = orig
            hlen, tail = 28, pad + 4
        rec_len = hlen + lengths + tail
        starts = np.cumsum(rec_len) - rec_len
        # Two file images alternate: one is being written by the background writer while the next is built.
        self._next_image()
        out = self._scratch.get(f"out{self._flip}", int(rec_len.sum()))
        rows = hdr.view(np.uint8).reshape(n, hlen)
        if _NATIVE_ASSEMBLE is not None and len(parts) <= 3:
            args: list[np.ndarray] = []
            zero = np.zeros(n, dtype=np.int64)
            for k in range(3):
                if k < len(parts):
                    args += [np.ascontiguousarray(parts[k][0]).reshape(-1),
                             np.ascontiguousarray(parts[k][1], dtype=np.int64), plens[k]]
                else:
                    args += [_EMPTY_U8, zero, zero]
            _NATIVE_ASSEMBLE(out, starts, rows, *args)
        else:
            scatter_rows(out, starts, rows)
            pos = starts + hlen
            for (buf, offs, _), ln in zip(parts, plens):
                gather_segments(buf, offs, ln, out, pos, self._scratch)
                pos = pos + ln
        if self.fmt == "pcapng":
            tl = np.empty((n, 1), dtype=dt)
            tl[:, 0] = rec_len
            scatter_rows(out, starts + rec_len - 4, tl.view(np.uint8).reshape(n, 4))
        if self.fmt == "pcapng":  # the padding after the packet data must be zeros
            padpos = starts + hlen + lengths
            for k in (1, 2, 3):
                m = tail - 4 >= k
                out[padpos[m] + k - 1] = 0
        self._pending[self._flip] = self._io.submit(self._fh.write, out.data)
        self.records += n

    def _pcap_times(self, ts: np.ndarray, iface: np.ndarray, res_in: np.ndarray) -> np.ndarray:
        """pcap record times in the file's units (ts in units of res_in), with each interface's if_tsoffset
        added; a time pcap's unsigned 32-bit seconds cannot hold is an error naming the record, never a
        wrapped value."""
        offs = np.asarray([i.tsoffset for i in self.interfaces], dtype=np.int64)
        off = offs[iface] if offs.any() else None
        t, bad = _rescale(ts, res_in, np.full(ts.shape[0], self.units, dtype=np.int64), off,
                          limit=2**32 * self.units)
        if bad >= 0:
            res = int(res_in[bad])
            shift = f" + if_tsoffset {int(offs[iface[bad]])} s" if off is not None else ""
            raise CaptureError(f"{self.path}: record {self.records + bad + 1}: timestamp {int(ts[bad])}/{res} s"
                               f"{shift} does not fit pcap's unsigned 32-bit seconds (1970 to 2106): write "
                               f"pcapng instead")
        return t

    def check_pcap_times(self, ts: np.ndarray, iface: np.ndarray, src_tsresol: Sequence[int]) -> None:
        """Raise the CaptureError :meth:`write` would for a time pcap cannot hold, for a caller that lays out
        pcap records itself (esp.pcap._pcapio.emit_pcap scales times in 64-bit integers)."""
        iface = np.asarray(iface, dtype=np.int64)
        self._pcap_times(np.asarray(ts, dtype=np.int64), iface, np.asarray(src_tsresol, dtype=np.int64)[iface])

    def image(self, nbytes: int) -> np.ndarray:
        """A buffer of at least ``nbytes`` for the next file image, for a caller that lays out pcap records
        itself (esp.pcap._pcapio.emit_pcap); hand the used part to :meth:`commit`. Headers are written first."""
        if self._written_ifaces < len(self.interfaces) or not self._header_done:
            self._sync_interfaces()
        self._next_image()
        return self._scratch.get(f"out{self._flip}", max(1, nbytes))

    def commit(self, image: np.ndarray, records: int) -> None:
        """Queue the image from :meth:`image` (its used part) for the background write."""
        self._pending[self._flip] = self._io.submit(self._fh.write, image.data)
        self.records += records

    def run_in_order(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on the writer thread, after everything queued before it: writes of records the caller
        laid out itself (:meth:`write_now`), off the caller's thread; the future tells when its buffer is free
        again. The caller counts the records in ``records``."""
        return self._io.submit(fn, *args)

    def write_now(self, image: np.ndarray) -> None:
        """Write laid-out records at once; only from a job of :meth:`run_in_order` (the writer thread)."""
        try:
            self._fh.write(image.data)
        except OSError as exc:
            raise CaptureError(f"{self.path}: write failed: {exc.strerror or exc}") from None

    def reserve(self, nbytes: int) -> int | None:
        """The file offset for the next ``nbytes`` of records the caller laid out itself, to be written with
        :meth:`write_at` from any thread and in any order; None if the output cannot be written at offsets (a
        pipe): then :meth:`write_now`, in order. What was written before comes first in the file."""
        if self._next is None:
            if self._seekable is None:
                try:
                    self._fh.flush()
                    self._next = self._fh.tell()
                    self._seekable = True
                except OSError:
                    self._seekable = False
            if not self._seekable:
                return None
            assert self._next is not None
        at = self._next
        self._next = at + nbytes
        self._fh.seek(self._next)  # where a later plain write goes
        return at

    def write_at(self, image: np.ndarray, offset: int) -> None:
        """Write laid-out records at an offset from :meth:`reserve` (pwrite: no shared file position)."""
        view = image.data
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self._fh.fileno(), view[done:], offset + done)
        except OSError as exc:
            raise CaptureError(f"{self.path}: write failed: {exc.strerror or exc}") from None

    def _next_image(self) -> None:
        """Turn to the next file image of the ring, once its previous write is done."""
        self._flip = (self._flip + 1) % len(self._pending)
        self._wait(self._flip)

    def _wait(self, k: int) -> None:
        fut = self._pending[k]
        if fut is not None:
            self._pending[k] = None
            try:
                fut.result()
            except OSError as exc:
                raise CaptureError(f"{self.path}: write failed: {exc.strerror or exc}") from None

    def flush(self) -> None:
        """Wait for the background writes, in order; a write error (disk full ...) is a CaptureError."""
        for k in range(1, len(self._pending) + 1):
            self._wait((self._flip + k) % len(self._pending))

    def close(self) -> None:
        if self._fh and not self._fh.closed:
            try:
                self.flush()
                if not self._header_done and self.interfaces:
                    self._sync_interfaces()
            finally:
                self._io.shutdown(wait=True)
                try:
                    self._fh.close()  # flushes what is buffered (a file header)
                except OSError as exc:
                    raise CaptureError(f"{self.path}: write failed: {exc.strerror or exc}") from None

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rescale(ts: np.ndarray, res_in: np.ndarray, res_out: np.ndarray, offset: np.ndarray | None = None,
             limit: int = MAX_TS) -> tuple[np.ndarray, int]:
    """Timestamps ``ts`` (units of 1/res_in s each) in units of 1/res_out s, plus ``offset`` seconds, cut to the
    output unit (floor, as editcap and Wireshark do), in exact integer arithmetic; and the index of the first
    one outside [0, limit) in output units, or -1 (then the values are not to be used). A float would lose the
    last digits of a present-day nanosecond time (2**53 ns is 104 days)."""
    n = ts.shape[0]
    off = np.zeros(n, dtype=np.int64) if offset is None else np.asarray(offset, dtype=np.int64)
    cols = np.stack([res_in, res_out, off], axis=1) if n else np.zeros((0, 3), dtype=np.int64)
    if n == 0 or bool((cols == cols[0]).all()):
        keys, inverse = cols[:1], np.zeros(n, dtype=np.int64)
    else:
        keys, inverse = np.unique(cols, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
    out = np.empty(n, dtype=np.int64)
    first_bad = -1
    for k, (ri, ro, sec) in enumerate(keys.tolist()):
        sel = slice(None) if keys.shape[0] == 1 else np.flatnonzero(inverse == k)
        t = ts[sel]
        if ri <= 0 or ro <= 0:
            raise ValueError(f"timestamp resolution {ri} or {ro} units per second is not positive")
        add = sec * ro
        # floor(t * ro / ri) + add in [0, limit)  <=>  t in [lo, hi], in input units
        lo = -(-(0 - add) * ri // ro)
        hi = -(-(limit - add) * ri // ro) - 1
        bad = (t < max(lo, -2**63)) | (t > min(hi, 2**63 - 1))
        if bad.any():
            idx = np.flatnonzero(bad)[0]
            at = int(idx) if isinstance(sel, slice) else int(sel[idx])
            first_bad = at if first_bad < 0 else min(first_bad, at)
            continue
        g = math.gcd(ri, ro)
        a, b = ro // g, ri // g
        span = max(abs(int(t.min())), abs(int(t.max()))) if t.shape[0] else 0
        if a == b == 1 and add == 0:
            v = t
        elif b == 1 and span * a < 2**62 and abs(add) < 2**62:
            v = t * a + add
        elif a * b < 2**62 and span // b * a + a < 2**62 and abs(add) < 2**62:
            q, r = np.divmod(t, b)
            v = q * a + (r * a) // b + add
        else:  # exotic resolutions: Python integers, still exact
            v = np.asarray([x * a // b + add for x in t.tolist()], dtype=np.int64)
        out[sel] = v
    return out, first_bad
