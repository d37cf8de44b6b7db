"""Reading pcap and pcapng, a chunk of records at a time (see :mod:`esp.pcap.formats` for what is accepted)."""
from __future__ import annotations

import collections
import mmap
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, cast

import numpy as np
from numpy.lib.stride_tricks import as_strided

from esp.pcap.formats import (BLOCK_NAMES, BT_EPB, BT_IDB, BT_OPB, BT_SPB, DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_RECORDS,
                              MADV_POPULATE_READ, MAX_RECORD_BYTES, MAX_TSRESOL_EXP2, MAX_TSRESOL_EXP10,
                              MIN_BLOCK_LEN, OPTIONS_AT, PCAP_LINKTYPE_RESERVED, PCAP_MAGIC_NS, PCAP_MAGIC_US,
                              PCAP_MAJOR, PCAP_MAX_MINOR, PCAPNG_BOM, PCAPNG_SHB, PCAPNG_VERSIONS, POPULATE_SLACK,
                              READ_PAD, CaptureError, Chunk, Interface, Scratch, _arena, _Damaged, _native, _u16,
                              _u32, _windows)
from esp.pcap.layers import _NATIVE_PARSE_L3

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


def open_capture(path: str | os.PathLike[str], **kw: Any) -> CaptureReader:
    return CaptureReader(path, **kw)


