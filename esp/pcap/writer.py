"""Writing pcap and pcapng from whole chunks of records."""
from __future__ import annotations

import concurrent.futures
import math
import os
import struct
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, cast

import numpy as np

from esp.pcap.formats import (BT_EPB, BT_IDB, MAX_TS, MAX_TSRESOL_EXP2, MAX_TSRESOL_EXP10, PCAP_MAGIC_NS,
                              PCAP_MAGIC_US, PCAPNG_BOM, PCAPNG_SHB, CaptureError, Interface, Scratch, _native)
from esp.pcap.layers import _EMPTY_U8, gather_segments, scatter_rows

#: esp.pcap._pcapio.emit_pcap(...): decrypt output records (header + bytes) laid out in one pass (esp.pcap.output).
_NATIVE_EMIT_PCAP = _native("emit_pcap")
#: esp.pcap._pcapio.assemble(out, starts, hdr, b0, o0, n0, b1, o1, n1, b2, o2, n2): a file image in one pass.
_NATIVE_ASSEMBLE = _native("assemble")


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
