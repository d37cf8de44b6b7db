"""Decrypt, encrypt and replay capture files through ESP SAs.

Each chunk of a capture is classified with numpy (link layer, IP, ESP or ESP-in-UDP, SPI, selectors), grouped
by SA once, and each SA's group goes to the compiled core in one ``decrypt_batch``/``encrypt_batch`` call with
a ``select`` index array. Packets that need no ESP work are copied through (or dropped, on request) without
being looked at one by one.

What counts as a drop "for a reason other than policy" (and makes :attr:`Summary.exit_code` 1): failed
authentication, replays, malformed or truncated ESP packets, fragments of ESP packets, records of an unknown
link type, a damaged capture. An ESP packet without a matching SA, or a packet no selector takes, is a
policy outcome: it is passed through (or dropped with ``drop_other``/``drop_unknown``) and only counted.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, TextIO, TypeVar

import numpy as np

from esp._core import SA_API
from esp.batch import PacketBatch, Verdict
from esp.keyfile import SaEntry, Selector
from esp.pcap.capture import (ETHERTYPE_IPV4, ETHERTYPE_IPV6, CaptureError, CaptureReader, CaptureWriter, Chunk,
                      Interface, L3Info, LinkType, Scratch, _col16, _col32, _native, _uint, gather_segments,
                      parse_l3)
from esp.sa import Direction, Sa

__all__ = ["SaStats", "Summary", "ReplaySummary", "decrypt_file", "encrypt_file", "replay_file",
           "ReplayPattern", "Progress", "ESP_OVERHEAD_MAX", "NAT_T_PORT"]

NAT_T_PORT = 4500
#: Bytes of capture per chunk (decrypt and encrypt). Few enough chunks that the Python per chunk does not count,
#: small enough that the working set (two chunks, the group buffers) stays modest (measured on 300k IMIX packets:
#: 8 MiB beat 2, 4, 16 and 32 MiB).
CHUNK_BYTES = 8 * 1024 * 1024
#: Room an encrypted packet may need over its plaintext: outer IPv6 + UDP, ESP header, IV, padding, ICV.
ESP_OVERHEAD_MAX = 160
_NV = 32

# Verdicts that are policy outcomes rather than failures.
_POLICY = {int(Verdict.NO_SA), int(Verdict.POLICY_MISMATCH), int(Verdict.BYPASSED), int(Verdict.DISCARDED),
           int(Verdict.DUMMY)}


@dataclass
class SaStats:
    """What one SA did. ``packets``/``bytes`` count packets that passed (bytes of plaintext)."""

    label: str
    spi: int | None
    direction: str
    suite: str = ""
    packets: int = 0
    bytes: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> int:
        return self.verdicts.get(name, 0)

    @property
    def failures(self) -> int:
        return sum(v for k, v in self.verdicts.items() if k != "OK" and int(Verdict[k]) not in _POLICY)


@dataclass
class Summary:
    """The outcome of one run over a capture; ``format()`` is what the command line prints."""

    command: str
    records: int = 0
    written: int = 0
    processed: int = 0           # packets handed to an SA
    passed_through: int = 0      # written unchanged
    policy_dropped: int = 0      # dropped by option (drop_other / drop_unknown)
    unknown_spi: dict[int, int] = field(default_factory=dict)
    ike: int = 0                 # UDP 4500 with the non-ESP marker
    keepalives: int = 0          # NAT-T keepalives
    fragments: int = 0           # IP fragments of ESP packets (unsupported)
    truncated: int = 0           # ESP (or plaintext to encrypt) cut by the snap length
    unknown_link: int = 0        # records of a link type this tool cannot parse
    non_ip: int = 0              # records that carry no IP packet (written in frame mode, else dropped)
    capture_problems: list[str] = field(default_factory=list)
    capture_error: str | None = None
    per_sa: list[SaStats] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        """Packets lost for a reason other than policy."""
        return (sum(s.failures for s in self.per_sa) + self.fragments + self.truncated + self.unknown_link
                + len(self.capture_problems) + (1 if self.capture_error else 0))

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: every counter, per SA and for the capture."""
        d = dataclasses.asdict(self)
        d["unknown_spi"] = {f"0x{k:08x}": v for k, v in self.unknown_spi.items()}
        d["failed"] = self.failed
        d["exit_code"] = self.exit_code
        return d

    def format(self) -> str:
        lines = [f"{self.command}: {self.records} records read, {self.written} written, "
                 f"{self.processed} through SAs, {self.passed_through} passed through"
                 + (f", {self.policy_dropped} dropped by option" if self.policy_dropped else "")]
        w = min(60, max([len(x.label) for x in self.per_sa] + [2]))
        lines.append(f"  {'SA':<{w}} {'suite':<17} {'dir':<3} {'ok':>9} {'bytes':>12} {'auth':>6} {'replay':>6} "
                     f"{'malf':>6} {'other':>6}")
        for s in self.per_sa:
            other = s.failures - s.count("AUTH_FAILED") - s.count("REPLAYED") - s.count("MALFORMED")
            lines.append(f"  {s.label[:w]:<{w}} {s.suite:<17} {s.direction:<3} {s.packets:>9} {s.bytes:>12} "
                         f"{s.count('AUTH_FAILED'):>6} {s.count('REPLAYED'):>6} {s.count('MALFORMED'):>6} {other:>6}")
        extra = []
        if self.unknown_spi:
            top = sorted(self.unknown_spi.items(), key=lambda kv: -kv[1])[:8]
            extra.append("unknown SPI: " + ", ".join(f"0x{k:08x} x{v}" for k, v in top)
                         + (" ..." if len(self.unknown_spi) > 8 else ""))
        for name, v in (("IKE (non-ESP marker)", self.ike), ("NAT-T keepalives", self.keepalives),
                        ("ESP IP fragments (unsupported)", self.fragments),
                        ("truncated by snap length", self.truncated),
                        ("unknown link type", self.unknown_link), ("not IP", self.non_ip)):
            if v:
                extra.append(f"{name}: {v}")
        lines += ["  " + e for e in extra]
        lines += ["  capture: " + p for p in self.capture_problems]
        if self.capture_error:
            lines.append("  capture error: " + self.capture_error)
        return "\n".join(lines)


# -- progress ---------------------------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal (stderr); silent elsewhere."""

    def __init__(self, total_bytes: int, label: str, stream: TextIO | None = None, enabled: bool | None = None,
                 min_interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = max(1, total_bytes)
        self.label = label
        self.start = time.monotonic()
        self.last = 0.0
        self.min_interval = min_interval
        self.shown = False

    def update(self, position: int, records: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < self.min_interval and position < self.total:
            return
        self.last = now
        frac = min(1.0, position / self.total)
        width = 30
        full = int(frac * width)
        rate = records / max(1e-6, now - self.start)
        self.stream.write(f"\r{self.label} [{'#' * full}{'.' * (width - full)}] {frac * 100:5.1f}% "
                          f"{records} pkts {rate / 1000:8.1f} kpps")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


# -- classification -----------------------------------------------------------------------------------------------

@dataclass
class _Esp:
    """ESP facts per record of a chunk."""

    esp: np.ndarray       # bool: an ESP packet we could process
    spi: np.ndarray       # int64
    udp: np.ndarray       # bool: UDP-encapsulated
    ike: np.ndarray
    keepalive: np.ndarray
    frag: np.ndarray      # fragment of an ESP packet
    cut: np.ndarray       # ESP packet cut by the snap length


def _b(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return d[idx].astype(np.int64)


def _be16(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return _uint(d, idx, 2, True)


def _be32(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return _uint(d, idx, 4, True)


#: esp.pcap._pcapio.emit_pcap if built: :meth:`_Output.emit` for pcap output in one compiled pass.
_NATIVE_EMIT = _native("emit_pcap")
#: esp.pcap._pcapio.classify_esp if built: :func:`_classify_esp_numpy` in one compiled pass.
_NATIVE_CLASSIFY = _native("classify_esp")


def _classify_esp(c: Chunk, L: L3Info, encap_ports: Sequence[int]) -> _Esp:
    if _NATIVE_CLASSIFY is None:
        return _classify_esp_numpy(c, L, encap_ports)
    n = c.count
    flags = np.empty((6, n), dtype=bool)
    spi = np.empty(n, dtype=np.int64)
    esp, udp, ike, keepalive, frag, cut = flags
    i64 = np.int64
    _NATIVE_CLASSIFY(np.ascontiguousarray(c.caplen, dtype=i64), np.ascontiguousarray(L.version, dtype=i64),
                     np.ascontiguousarray(L.l3, dtype=i64), np.ascontiguousarray(L.ip_len, dtype=i64),
                     np.ascontiguousarray(L.proto, dtype=i64), np.ascontiguousarray(L.l4, dtype=i64),
                     np.ascontiguousarray(L.frag).view(np.uint8), np.ascontiguousarray(L.frag_first).view(np.uint8),
                     np.ascontiguousarray(L.cut).view(np.uint8), np.ascontiguousarray(L.l4h),
                     np.asarray(encap_ports, dtype=i64),
                     esp.view(np.uint8), spi, udp.view(np.uint8), ike.view(np.uint8), keepalive.view(np.uint8),
                     frag.view(np.uint8), cut.view(np.uint8))
    return _Esp(esp, spi, udp, ike, keepalive, frag, cut)


def _classify_esp_numpy(c: Chunk, L: L3Info, encap_ports: Sequence[int]) -> _Esp:
    """The numpy reference of :func:`_classify_esp`."""
    cap = c.caplen
    h = L.l4h                                   # the first bytes at the upper-layer header
    ip = L.version > 0
    ip_end = L.l3 + L.ip_len                    # end of the IP packet, from the record start
    l4 = np.where(ip, L.l4, 0)
    whole_or_first = ~L.frag | L.frag_first
    plain = ip & (L.proto == 50)
    udp_hdr_ok = ip & (L.proto == 17) & (l4 + 8 <= cap) & whole_or_first
    sport = np.where(udp_hdr_ok, _col16(h, 0), -1)
    dport = np.where(udp_hdr_ok, _col16(h, 2), -1)
    natt = udp_hdr_ok & (np.isin(sport, encap_ports) | np.isin(dport, encap_ports))
    upay = l4 + 8
    ulen = ip_end - upay
    keepalive = natt & (ulen == 1) & (h[:, 8] == 0xFF)
    marker0 = natt & (ulen >= 4) & (upay + 4 <= cap) & (_col32(h, 8) == 0)
    udp_esp = natt & ~keepalive & ~marker0 & (ulen >= 8)
    esp_off = np.where(udp_esp, upay, l4)
    cand = plain | udp_esp
    frag = cand & L.frag
    cut = cand & ~frag & L.cut
    have_spi = cand & (esp_off + 8 <= cap)
    spi = np.where(have_spi, np.where(udp_esp, _col32(h, 8), _col32(h, 0)), -1)
    esp = cand & ~frag & ~cut & have_spi
    cut |= cand & ~frag & ~have_spi
    # a non-first fragment of ESP says proto 50 but carries no ESP header: it is still an ESP fragment
    frag |= ip & L.frag & ~L.frag_first & (L.proto == 50)
    return _Esp(esp, spi, udp_esp & esp, marker0, keepalive, frag, cut)


def _addr_match(L: L3Info, which: str, m: Any) -> np.ndarray:
    vhi, vlo, mhi, mlo = m.halves
    hi = getattr(L, which + "_hi")
    lo = getattr(L, which + "_lo")
    ok = ((hi & np.uint64(mhi)) == np.uint64(vhi & mhi)) & ((lo & np.uint64(mlo)) == np.uint64(vlo & mlo))
    if m.family:
        ok &= L.version == m.family
    return ok


def _selector_mask(c: Chunk, L: L3Info, sel: Selector) -> np.ndarray:
    m = (L.version > 0) & ~L.cut
    m &= _addr_match(L, "src", sel.src) & _addr_match(L, "dst", sel.dst)
    if sel.proto is not None:
        m &= L.proto == sel.proto
    if sel.sport or sel.dport:
        ok = m & (L.l4 + 4 <= c.caplen) & (~L.frag | L.frag_first)
        if sel.sport:
            sp = _col16(L.l4h, 0)
            ok &= (sp >= sel.sport.lo) & (sp <= sel.sport.hi)
        if sel.dport:
            dp = _col16(L.l4h, 2)
            ok &= (dp >= sel.dport.lo) & (dp <= sel.dport.hi)
        m = ok
    return m


# -- assembling output records --------------------------------------------------------------------------------------

_BODY_NONE, _BODY_ORIG, _BODY_NEW = 0, 1, 2


def _out_interfaces(src: list[Interface], frames: bool) -> list[Interface]:
    out = []
    for i in src:
        lt = i.linktype
        if not frames or lt in (LinkType.IPV4, LinkType.IPV6):
            # LINKTYPE_IPV4/IPV6 cannot carry the other family (an IPv6 tunnel's inner IPv4): use raw IP.
            lt = LinkType.RAW
        out.append(Interface(lt, max(i.snaplen, 262144) if i.snaplen else 0, i.tsresol, i.tsoffset, i.name))
    return out


class _Output:
    """Turns per-record decisions into records for a :class:`CaptureWriter`."""

    def __init__(self, writer: CaptureWriter | None, reader: CaptureReader, frames: bool) -> None:
        self.writer = writer
        self.reader = reader
        self.frames = frames
        self.interfaces: list[Interface] = writer.interfaces if writer else []  # type: ignore[assignment]
        self._writes: list[concurrent.futures.Future | None] = [None] * _GROUP_BUFFERS
        self._turn = 0

    def sync(self) -> None:
        src = self.reader.interfaces
        while len(self.interfaces) < len(src):
            self.interfaces.extend(_out_interfaces([src[len(self.interfaces)]], self.frames))

    def emit(self, c: Chunk, L: L3Info, body: np.ndarray, new_buf: np.ndarray | None, new_off: np.ndarray,
             new_len: np.ndarray) -> int:
        """Write the records whose body is not NONE; returns how many. ``body`` selects per record: ORIG keeps
        the packet (frame mode: the whole record; raw mode: its IP packet), NEW puts new_buf's slot in place
        of the IP packet."""
        self.reader.check_intact()  # nothing read from a part of the file that is gone goes out
        self.sync()
        if self.writer is not None and bool((body != _BODY_NONE).any()) and self._fast_pcap():
            return self._emit_pcap(c, L, body, new_buf, new_off, new_len)
        keep = np.flatnonzero(body != _BODY_NONE)
        if self.writer is None or keep.size == 0:
            return 0
        b = body[keep]
        base = c.offsets[keep]
        l3 = np.maximum(L.l3[keep], 0)
        cap = c.caplen[keep]
        orig = c.origlen[keep]
        is_new = b == _BODY_NEW
        if self.frames:
            head = np.where(is_new, l3, 0)             # link-layer bytes kept in front of a new packet
            own = np.where(is_new, 0, cap)              # original bytes kept (the whole record)
            own_off = base
        else:
            head = np.zeros_like(l3)
            ip_room = cap - l3
            iplen = np.minimum(L.ip_len[keep], ip_room)
            own = np.where(is_new, 0, iplen)
            own_off = base + l3
        nl = np.where(is_new, new_len[keep] if new_len.size else 0, 0).astype(np.int64)
        if self.frames and is_new.any():
            self._fix_protocol_fields(c, L, keep, is_new, new_buf, new_off)
        if self.frames:
            origlen = np.where(is_new, head + nl, orig)
        else:
            origlen = np.where(is_new, nl, np.where(L.cut[keep], np.maximum(L.ip_len[keep], own), own))
        parts = [(c.data, base, head), (c.data, own_off, own)]
        if new_buf is not None:
            parts.append((new_buf, new_off[keep], nl))
        self.writer.write_parts(parts, c.ts[keep], c.iface[keep], origlen,
                                src_tsresol=[i.tsresol for i in self.reader.interfaces])
        return int(keep.size)

    def direct(self) -> bool:
        """Whether a chunk can go through :func:`_direct`: the compiled pcap writer applies
        (:meth:`_fast_pcap`) and esp.pcap._pcapio has the kernel that has the core write into the records."""
        return _NATIVE_ESP_CHUNK is not None and self.writer is not None and self._fast_pcap()

    def claim_group_buffer(self) -> int:
        """The next of the _GROUP_BUFFERS small record buffers, once its last write is done (an error there, a
        failed write, raises here)."""
        self._turn = (self._turn + 1) % _GROUP_BUFFERS
        fut = self._writes[self._turn]
        if fut is not None:
            self._writes[self._turn] = None
            fut.result()
        return self._turn

    def write_group(self, records: np.ndarray) -> None:
        """Write the records in the buffer from :meth:`claim_group_buffer`: by the writer thread, or by this one
        when _WRITES_AHEAD writes already wait for the writer thread. That thread also reads and parses the
        capture; when the core runs fast (the VM's fast phase: 0.17 s for 1M IMIX packets instead of 0.25 s) it
        is the busier of the two, and what this one writes itself evens them out."""
        w = self.writer
        assert w is not None
        at = w.reserve(records.shape[0])
        if at is None:
            self._writes[self._turn] = w.run_in_order(w.write_now, records)
        elif sum(1 for f in self._writes if f is not None and not f.done()) >= _WRITES_AHEAD:
            w.write_at(records, at)
        else:
            self._writes[self._turn] = w.run_in_order(w.write_at, records, at)

    def finish(self) -> None:
        """Wait for the queued group writes; an error in one raises here."""
        for _ in range(_GROUP_BUFFERS):
            self.claim_group_buffer()

    def _ts_scale(self, c: Chunk) -> tuple[int, int]:
        """(multiplier, divisor) from the input's timestamp units to the output's (see :meth:`_fast_pcap`), once
        every time of the chunk is known to fit pcap's 32-bit seconds (a CaptureError naming the record if not):
        the compiled writers scale in 64-bit integers and would wrap."""
        w = self.writer
        assert w is not None
        w.check_pcap_times(c.ts, c.iface, [i.tsresol for i in self.reader.interfaces])
        r = self.reader.interfaces[0].tsresol
        return (w.units // r, 1) if w.units % r == 0 else (1, r // w.units)

    def _fast_pcap(self) -> bool:
        """The compiled one-pass writer applies: pcap output, one timestamp resolution in, no if_tsoffset, an
        integer scale."""
        w = self.writer
        if _NATIVE_EMIT is None or w is None or w.fmt != "pcap" or not self.reader.interfaces:
            return False
        res = {i.tsresol for i in self.reader.interfaces}
        if len(res) != 1 or any(i.tsoffset for i in self.reader.interfaces):
            return False  # if_tsoffset: CaptureWriter adds it
        if not w._header_done:
            w._sync_interfaces()
        r = res.pop()
        return r > 0 and (w.units % r == 0 or r % w.units == 0)

    def _emit_pcap(self, c: Chunk, L: L3Info, body: np.ndarray, new_buf: np.ndarray | None, new_off: np.ndarray,
                   new_len: np.ndarray) -> int:
        """:meth:`emit` for pcap output through esp.pcap._pcapio.emit_pcap: same records, byte for byte (tested)."""
        w = self.writer
        assert w is not None
        n = c.count
        mul, div = self._ts_scale(c)
        if new_buf is None or new_len.shape[0] < n:
            new_buf, new_off, new_len = np.zeros(1, np.uint8), np.zeros(n, np.int64), np.zeros(n, np.int32)
        bound = 16 * n + int(c.caplen.sum()) + int(np.asarray(new_len, dtype=np.int64)[body == _BODY_NEW].sum())
        image = w.image(bound)
        nbytes, count = _NATIVE_EMIT(image, np.ascontiguousarray(body, dtype=np.int8), c.data,
                                     np.ascontiguousarray(c.offsets, dtype=np.int64),
                                     np.ascontiguousarray(L.l3, dtype=np.int64),
                                     np.ascontiguousarray(c.caplen, dtype=np.int64),
                                     np.ascontiguousarray(c.origlen, dtype=np.int64),
                                     np.ascontiguousarray(L.ip_len, dtype=np.int64),
                                     np.ascontiguousarray(L.cut).view(np.uint8),
                                     np.ascontiguousarray(c.ts, dtype=np.int64), new_buf,
                                     np.ascontiguousarray(new_off, dtype=np.int64),
                                     np.ascontiguousarray(new_len, dtype=np.int32),
                                     np.ascontiguousarray(L.ethertype_at, dtype=np.int64),
                                     self.frames, w.order == ">", mul, div, w.units)
        if count:
            w.commit(image[:nbytes], count)
        return int(count)

    def _fix_protocol_fields(self, c: Chunk, L: L3Info, keep: np.ndarray, is_new: np.ndarray,
                             new_buf: np.ndarray | None, new_off: np.ndarray) -> None:
        """A tunnel can change the IP version (IPv6 inside IPv4): rewrite the Ethernet type / SLL protocol of the
        kept link-layer header. The chunk arena is a private copy, so it is patched in place."""
        at = L.ethertype_at[keep]
        m = is_new & (at >= 0)
        if not m.any() or new_buf is None:
            return
        rec = keep[m]
        ver = new_buf[new_off[rec]] >> 4
        et = np.where(ver == 6, ETHERTYPE_IPV6, ETHERTYPE_IPV4)
        pos = c.offsets[rec] + at[m]
        c.data[pos] = (et >> 8).astype(np.uint8)
        c.data[pos + 1] = (et & 0xFF).astype(np.uint8)


# -- SA sets --------------------------------------------------------------------------------------------------------

def _stats_for(entry: SaEntry, direction: str) -> SaStats:
    return SaStats(entry.label, entry.spi, direction, entry.suite.name)


def _account(stats: SaStats, status: np.ndarray, lengths: np.ndarray) -> None:
    ok = status == Verdict.OK
    _account_counts(stats, np.bincount(status, minlength=_NV).tolist(), int(lengths[ok].sum()))


def _account_counts(stats: SaStats, per_verdict: list[int], ok_bytes: int) -> None:
    """Add packets per verdict (index: the verdict's value) and the plaintext bytes of the packets that went
    through to ``stats``."""
    for v, k in enumerate(per_verdict):
        if k:
            name = Verdict(v).name
            stats.verdicts[name] = stats.verdicts.get(name, 0) + k
    stats.packets += per_verdict[Verdict.OK]
    stats.bytes += ok_bytes


def _make_sa(entry: SaEntry, direction: Direction, mode: str | None, backend: str | None,
             window: int | None, initial_seq: int = 0) -> Sa:
    e = entry
    if mode is not None and e.mode is None:
        e = dataclasses.replace(e, mode=mode)
    if window is not None:
        e = dataclasses.replace(e, replay_window=window)
    p = e.sa_params(direction, backend=backend)
    return Sa(p, initial_seq=initial_seq)


#: SAs one wildcard-SPI entry (Wireshark's SPI "*") may create, one per SPI seen; past this, unknown SPI.
MAX_WILDCARD_SAS = 4096


class _Inbound:
    """The inbound SA(s) of one key file entry: one per SPI, made when the SPI is first seen for SPI ``*``."""

    def __init__(self, entry: SaEntry, mode: str | None, backend: str | None, window: int | None,
                 summary: Summary) -> None:
        self.entry = entry
        self.mode, self.backend, self.window = mode, backend, window
        self.summary = summary
        self.by_spi: dict[int, tuple[Sa, Sa | None, SaStats]] = {}
        if entry.spi is not None:
            self.get(entry.spi)

    def get(self, spi: int) -> tuple[Sa, Sa | None, SaStats] | None:
        got = self.by_spi.get(spi)
        if got is not None:
            return got
        if len(self.by_spi) >= MAX_WILDCARD_SAS:
            return None
        e = self.entry if self.entry.spi is not None else dataclasses.replace(self.entry, spi=spi)
        # The receiver starts where the sender does (initial_seq): with ESN that fixes the high half it infers.
        primary = _make_sa(e, Direction.IN, self.mode or "tunnel", self.backend, self.window, e.initial_seq)
        fallback = None
        if e.mode is None and self.mode is None:
            fallback = _make_sa(e, Direction.IN, "transport", self.backend, self.window, e.initial_seq)
        st = _stats_for(e, "in")
        if self.entry.spi is None:
            st.label = f"SPI 0x{spi:08x} (*: {self.entry.origin or self.entry.label})"
        self.summary.per_sa.append(st)
        got = (primary, fallback, st)
        self.by_spi[spi] = got
        return got


# -- decrypt ----------------------------------------------------------------------------------------------------------

def _open_writer(out_path: str | os.PathLike[str] | None, reader: CaptureReader, fmt: str | None,
                 frames: bool) -> CaptureWriter | None:
    if out_path is None:
        return None
    fmt = fmt or reader.format
    ifaces: list[Interface] = _out_interfaces(list(reader.interfaces), frames)
    kw: dict[str, Any] = {}
    if fmt == reader.format == "pcap":
        kw = dict(byte_order=reader.byte_order, nanosecond=reader.nanosecond, pcap_version=reader.version,
                  thiszone=reader.thiszone, sigfigs=reader.sigfigs)
        if frames and reader.linktype not in (LinkType.IPV4, LinkType.IPV6):
            kw["snaplen"] = reader.interfaces[0].snaplen
    elif fmt == reader.format == "pcapng":
        kw = dict(byte_order=reader.byte_order)
    return CaptureWriter(out_path, ifaces, fmt=fmt, **kw)


def _entries(sas: "Sequence[SaEntry] | str | os.PathLike[str]") -> Sequence[SaEntry]:
    if isinstance(sas, (str, os.PathLike)):
        from esp.keyfile import load_keyfile
        return load_keyfile(sas).entries
    return sas


_T = TypeVar("_T")
_U = TypeVar("_U")


def _pump(reader: CaptureReader, items: Iterator[_T], summary: Summary, label: str, progress: bool | None,
                per_item: Callable[[_T], None], chunk_of: Callable[[_T], Chunk]) -> None:
    """Every item of the capture (a chunk and what was found out about it: ``chunk_of`` finds the chunk) through
    ``per_item``, with the progress bar; damage to the capture ends the walk and is recorded in the summary
    (what came before it is kept)."""
    bar = Progress(reader.size, label, enabled=progress)
    try:
        for item in items:
            per_item(item)
            reader.check_intact()
            bar.update(chunk_of(item).end_position, summary.records)
    except CaptureError as exc:
        summary.capture_error = str(exc)
    finally:
        bar.close()
    summary.capture_problems = list(reader.problems)


_END = object()
#: Chunks kept intact: the helper thread reads chunk j while this thread decrypts or encrypts j - 1 (what is
#: written is copied out of the chunk). Mapped (zero copy), the pages behind are released this many chunks late.
_CHUNK_RING = 2
#: Small record buffers in turn (:func:`_direct`), each the output records of one group of records; the
#: writer thread writes the others meanwhile. Twelve hold about a chunk of IMIX, so the decrypting thread goes on
#: while that thread reads and parses the next chunk (1M IMIX packets, alternated: 6, 12, 20 buffers 0.42, 0.39,
#: 0.43 s median).
_GROUP_BUFFERS = 12
#: Writes waiting for the writer thread from which the decrypting thread writes a group itself (1M IMIX packets,
#: alternated: 1, 2, 4, never: 0.47, 0.43, 0.41, 0.43 s median).
_WRITES_AHEAD = 4


def _one_ahead(items: Iterator[_T], work: Callable[[_T], _U],
               submit: Callable[..., concurrent.futures.Future] | None = None) -> Iterator[_U]:
    """``work(x)`` for each x of ``items``, computed on a helper thread one item ahead of the consumer, so that
    reading and parsing chunk k+1 (compiled, without the GIL) overlaps the core's work on chunk k on the second
    core. Items are produced strictly one after the other, and an exception (a damaged capture) reaches the
    consumer only after every item before it. ``submit`` runs a job on a thread the caller already has (the
    output's writer thread, in order with its writes); without it, a thread of its own does the work."""
    def step() -> Any:
        try:
            x = next(items)
        except StopIteration:
            return _END
        return work(x)

    with contextlib.ExitStack() as stack:
        if submit is None:
            submit = stack.enter_context(concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="pcap-read")).submit
        fut = submit(step)
        try:
            while True:
                got = fut.result()
                if got is _END:
                    return
                fut = submit(step)
                yield got
        finally:
            fut.cancel()
            concurrent.futures.wait([fut])


@dataclass
class _Parsed:
    """A chunk with what can be known of it before decryption: what the read-ahead (on the helper thread) hands
    over."""

    c: Chunk
    L: L3Info
    E: _Esp
    room: list[int] | None  # direct output (:meth:`_Output.direct`): bytes each group's records can need
    counts: tuple[int, int, int, int, int, int]  # IKE, keepalives, fragments, truncated, unknown link, not IP


#: Records the direct path writes into one buffer before the writer thread takes it: their records (some
#: 800 KB of IMIX) are still in cache when the kernel copies them into the page cache.
GROUP_RECORDS = 2048


def _parse(c: Chunk, reader: CaptureReader, encap_ports: Sequence[int], direct: bool, frames: bool) -> _Parsed:
    """Everything about a chunk that does not need the SAs: header fields, ESP classification, the counts that
    follow from them and (direct output) the room each group of records needs."""
    lts = np.asarray([i.linktype for i in reader.interfaces], dtype=np.int64)
    L = parse_l3(c, lts)
    E = _classify_esp(c, L, encap_ports)
    counts = (int(np.count_nonzero(E.ike)), int(np.count_nonzero(E.keepalive)), int(np.count_nonzero(E.frag)),
              int(np.count_nonzero(E.cut)), int(np.count_nonzero(L.unknown_link)),
              int(np.count_nonzero((L.version == 0) & ~L.unknown_link)))
    return _Parsed(c, L, E, _room(c, L, E.esp, frames, 0) if direct else None, counts)


#: esp.pcap._pcapio.decrypt_outcome if built: :func:`_outcome_numpy` in one compiled pass.
_NATIVE_OUTCOME = _native("decrypt_outcome")
#: esp.pcap._pcapio.EspChunk if built: the direct output of both directions (:func:`_direct`).
_NATIVE_ESP_CHUNK = _native("EspChunk")


def _read_ahead(reader: CaptureReader, out: _Output, parse: Callable[[Chunk], _T]) -> Iterator[_T]:
    """The capture's chunks, parsed one ahead on the output's writer thread, between its writes: two busy
    threads rather than three keep the core's thread on its CPU on a two-CPU machine (1M IMIX packets,
    alternated: 0.39-0.42 s against 0.47 s median with a thread for each). The pages are read in place (zero copy,
    mapped ahead) unless a kept link-layer header is patched in the chunk itself, which only the whole-chunk path
    does. pcapng may add interfaces (and sections) as it goes: it is read in this thread, in order."""
    reader.zero_copy = reader.zero_copy_possible and (not out.frames or out.direct())
    if reader.format != "pcap":
        return map(parse, reader.chunks())
    return _one_ahead(reader.chunks(), parse, out.writer.run_in_order if out.writer is not None else None)


def decrypt_file(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None,
                 sas: "Sequence[SaEntry] | str | os.PathLike[str]", *, fmt: str | None = None, frames: bool = False,
                 drop_other: bool = False, drop_unknown: bool = False, mode: str | None = None,
                 replay_window: int | None = None, backend: str | None = None,
                 chunk_records: int = 65536, progress: bool | None = None,
                 encap_ports: Sequence[int] = (NAT_T_PORT,)) -> Summary:
    """Decrypt every ESP packet of a capture that an SA in ``sas`` matches (first match wins, as in Wireshark).

    ``frames`` keeps each record's link-layer header in front of the decrypted packet; otherwise the output is
    raw IP (link type 101). ``mode`` applies to SAs whose key file does not state one (Wireshark's table): None
    tries tunnel and then transport for each packet. ``out_path`` None decrypts and counts without writing.
    ``sas`` may be a key file's path.

    Two threads share the work of a pcap capture: this one decrypts each ESP packet straight into its output
    record (a group of records at a time, into a small buffer); the output's writer thread writes the filled
    buffers and, between the writes, reads and parses the next chunk.
    """
    sas = _entries(sas)
    t0 = time.monotonic()
    # UDP-encapsulated ESP is looked for on 4500 and on whatever ports the SAs name.
    encap_ports = tuple(sorted(set(encap_ports) | {p for e in sas if e.encap for p in e.encap}))
    summary = Summary("decrypt")
    reader = CaptureReader(in_path, chunk_records=chunk_records, chunk_bytes=CHUNK_BYTES,
                           reuse_buffers=_CHUNK_RING)
    scratch = Scratch()
    writer = None
    try:
        writer = _open_writer(out_path, reader, fmt, frames)
        out = _Output(writer, reader, frames)
        plan = [_Inbound(e, mode, backend, replay_window, summary) for e in sas]
        direct = out.direct()
        items = _read_ahead(reader, out, lambda c: _parse(c, reader, encap_ports, direct, frames))
        _pump(reader, items, summary, "decrypt", progress,
                    lambda p: _decrypt_chunk(p, plan, out, summary, drop_other, drop_unknown, scratch),
                    lambda p: p.c)
        out.finish()
    finally:
        if writer is not None:
            writer.close()
        reader.close()
    summary.seconds = time.monotonic() - t0
    return summary


def _decrypt_chunk(p: _Parsed, plan: list, out: _Output, summary: Summary, drop_other: bool, drop_unknown: bool,
                   scratch: Scratch) -> None:
    c, L, E = p.c, p.L, p.E
    n = c.count
    summary.records += n
    if p.room is not None:
        _decrypt_direct(p, p.room, plan, out, summary, drop_other, drop_unknown, scratch)
        return
    ln = np.where(E.esp, L.ip_len, 0)
    src = PacketBatch(c.data, c.offsets + np.maximum(L.l3, 0), ln, ln)
    # Output arena sized for the ESP packets only: a decrypted packet is never longer than its ESP packet.
    cap_each = ln.astype(np.int64)
    dst = PacketBatch(scratch.get("dst", int(cap_each.sum()) + 1), np.cumsum(cap_each) - cap_each,
                      np.zeros(n, np.int32), cap_each)
    assigned, status = _decrypt_groups(plan, L, E, src, dst)
    body = _account_chunk(summary, p, assigned, status, drop_other, drop_unknown, out.frames)
    summary.written += out.emit(c, L, body, dst.buf, dst.offsets, dst.lengths)


def _decrypt_direct(p: _Parsed, room: list[int], plan: list, out: _Output, summary: Summary, drop_other: bool,
                    drop_unknown: bool, scratch: Scratch) -> None:
    """A chunk's ESP packets decrypted straight into its output records (:func:`_direct`)."""
    assigned, groups = _select_groups(plan, p.L, p.E)
    totals = _direct(p.c, p.L, room, groups, out, summary, scratch, outbound=False, esp=p.E.esp, frag=p.E.frag,
                     cut=p.E.cut, drop_other=drop_other, drop_unknown=drop_unknown)
    _count_outcome(summary, p, assigned, *totals)


def _direct(c: Chunk, L: L3Info, room: list[int], groups: list, out: _Output, summary: Summary, scratch: Scratch, *,
            outbound: bool, esp: np.ndarray, frag: np.ndarray, cut: np.ndarray, drop_other: bool,
            drop_unknown: bool) -> list[int]:
    """A chunk GROUP_RECORDS records at a time into small record buffers in turn, each written by the writer
    thread (or by this one, :meth:`_Output.write_group`) while this one goes on. esp.pcap._pcapio.EspChunk has the
    core decrypt or encrypt every packet straight into its output record, so the core's output is written once,
    into the buffer the kernel copies to the page cache (the whole-chunk path, :meth:`_Output.emit`, copies it
    from the core's buffer: 1M IMIX packets to decrypt, this thread's work 0.60 s against 0.43 s, see
    bench/RESULTS.md). ``groups``: [(record indices, SA, fallback SA or None, stats)]; ``esp``, ``frag``,
    ``cut``: what the outcome rules need of the other records. Returns (processed, unknown SPI, dropped by
    option, passed through)."""
    n = c.count
    sa_of = np.full(n, -1, np.int32)
    for k, g in enumerate(groups):
        sa_of[g[0]] = k
    tally = np.zeros((len(groups), _NV + 1), np.int64)  # per SA: packets per verdict, then plaintext bytes
    out.sync()
    w = out.writer
    assert w is not None
    mul, div = out._ts_scale(c)
    job = _NATIVE_ESP_CHUNK(SA_API, outbound, ESP_OVERHEAD_MAX if outbound else 0, [g[1]._ctx for g in groups],
                            [g[2]._ctx if g[2] else None for g in groups], sa_of, c.data, c.offsets, L.l3, c.caplen,
                            c.origlen, L.ip_len, cut.view(np.uint8), c.ts, L.ethertype_at, esp.view(np.uint8),
                            frag.view(np.uint8), L.version, tally, drop_other, drop_unknown, out.frames,
                            w.order == ">", mul, div, w.units)
    totals = [0, 0, 0, 0]  # processed, unknown SPI, dropped, passed through
    for k, a in enumerate(range(0, n, GROUP_RECORDS)):
        r = out.claim_group_buffer()
        records = scratch.get(f"records{r}", room[k])
        nbytes, written, *got = job.run(records, a, min(n, a + GROUP_RECORDS))
        out.reader.check_intact()  # nothing read from a part of the file that is gone goes out
        for i in range(4):
            totals[i] += got[i]
        if written:
            out.write_group(records[:nbytes])
            w.records += written
            summary.written += written
    for (_, _, _, st), t in zip(groups, tally.tolist()):
        _account_counts(st, t[:_NV], t[_NV])
    return totals


def _room(c: Chunk, L: L3Info, through: np.ndarray, frames: bool, grow: int) -> list[int]:
    """The bytes each GROUP_RECORDS records of a chunk can need as output records (:func:`_direct`): a
    header and the record's bytes, or, for a packet that may go through an SA (``through``), the kept link-layer
    header and the packet, ``grow`` bytes longer at most."""
    if not c.count:
        return []
    out = np.where(through, L.ip_len + grow + (np.maximum(L.l3, 0) if frames else 0), 0)
    return np.add.reduceat(np.maximum(c.caplen, out) + 16, np.arange(0, c.count, GROUP_RECORDS)).tolist()


def _decrypt_sel(primary: Sa, fallback: Sa | None, src: PacketBatch, dst: PacketBatch, sel: np.ndarray) -> None:
    """The selected slots through an SA; with a fallback (mode not given: tunnel, then transport), the packets
    the first found malformed are tried with the second, and keep the first verdict if that fails too."""
    primary.decrypt_batch(src, dst, sel)
    if fallback is not None:
        retry = sel[dst.status[sel] == Verdict.MALFORMED]
        if retry.size:
            saved_status = dst.status[retry].copy()
            fallback.decrypt_batch(src, dst, retry)
            bad = dst.status[retry] != Verdict.OK
            dst.status[retry[bad]] = saved_status[bad]


def _select_groups(plan: list, L: L3Info, E: _Esp) -> tuple[np.ndarray, list[tuple[np.ndarray, Sa, Sa | None,
                                                                                      SaStats]]]:
    """Which SA takes which ESP packets of a chunk (the first matching key file entry; for SPI ``*``, one SA per
    SPI seen): (records taken, [(their indices, SA, fallback SA, stats)])."""
    n = E.esp.shape[0]
    assigned = np.zeros(n, dtype=bool)
    groups = []
    for p in plan:
        e = p.entry
        m = E.esp & ~assigned
        if e.spi is not None:
            m &= E.spi == e.spi
        if not e.src.is_any or e.src.family:
            m &= _addr_match(L, "src", e.src)
        if not e.dst.is_any or e.dst.family:
            m &= _addr_match(L, "dst", e.dst)
        if e.encap is not None:
            m &= E.udp
        if not m.any():
            continue
        spis = [e.spi] if e.spi is not None else np.unique(E.spi[m]).tolist()
        for spi in spis:
            sas = p.get(spi)
            if sas is None:
                continue  # too many SPIs for one wildcard entry: these stay unknown
            mm = m if e.spi is not None else m & (E.spi == spi)
            assigned |= mm
            groups.append((np.flatnonzero(mm).astype(np.int32), *sas))
    return assigned, groups


def _decrypt_groups(plan: list, L: L3Info, E: _Esp, src: PacketBatch, dst: PacketBatch
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each SA's ESP packets of the chunk through one decrypt_batch call (first matching entry wins); returns
    which records an SA took and their verdicts (255 elsewhere)."""
    n = E.esp.shape[0]
    assigned, groups = _select_groups(plan, L, E)
    status = np.full(n, 255, dtype=np.uint8)
    for sel, primary, fallback, st in groups:
        _decrypt_sel(primary, fallback, src, dst, sel)
        status[sel] = dst.status[sel]
        _account(st, dst.status[sel], dst.lengths[sel])
    return assigned, status


def _account_chunk(summary: Summary, p: _Parsed, assigned: np.ndarray, status: np.ndarray, drop_other: bool,
                   drop_unknown: bool, frames: bool) -> np.ndarray:
    """Count the chunk's outcomes into the summary; returns what each record's output is (_BODY_*)."""
    L, E = p.L, p.E
    if _NATIVE_OUTCOME is None:
        body, counts = _outcome_numpy(L, E, assigned, status, drop_other, drop_unknown, frames)
    else:
        body = np.empty(assigned.shape[0], dtype=np.int8)
        counts = _NATIVE_OUTCOME(assigned.view(np.uint8), status, E.esp.view(np.uint8), E.frag.view(np.uint8),
                                 E.cut.view(np.uint8), L.version, drop_other, drop_unknown, frames, body)[:4]
    _count_outcome(summary, p, assigned, *counts)
    return body


def _count_outcome(summary: Summary, p: _Parsed, assigned: np.ndarray, processed: int, unknown: int, dropped: int,
                   passed: int) -> None:
    summary.processed += processed
    if unknown:
        E = p.E
        spis, counts = np.unique(E.spi[E.esp & ~assigned], return_counts=True)
        for s, k in zip(spis.tolist(), counts.tolist()):
            summary.unknown_spi[s] = summary.unknown_spi.get(s, 0) + k
    ike, keepalives, fragments, truncated, unknown_link, non_ip = p.counts
    summary.ike += ike
    summary.keepalives += keepalives
    summary.fragments += fragments
    summary.truncated += truncated
    summary.unknown_link += unknown_link
    summary.non_ip += non_ip
    summary.policy_dropped += dropped
    summary.passed_through += passed


def _outcome_numpy(L: L3Info, E: _Esp, assigned: np.ndarray, status: np.ndarray, drop_other: bool,
                   drop_unknown: bool, frames: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The numpy reference of esp.pcap._pcapio.decrypt_outcome: each record's _BODY_*, and (processed, unknown SPI,
    dropped by option, passed through)."""
    n = assigned.shape[0]
    unknown = E.esp & ~assigned
    dropped = 0
    body = np.full(n, _BODY_ORIG, dtype=np.int8)
    body[assigned] = _BODY_NONE
    body[assigned & (status == Verdict.OK)] = _BODY_NEW
    if drop_other:
        other = ~assigned & ~(E.frag | E.cut)
        dropped += int((other & ~unknown).sum())
        body[other & ~unknown] = _BODY_NONE
    if drop_unknown or drop_other:
        dropped += int(unknown.sum())
        body[unknown] = _BODY_NONE
    if not frames:
        body[(L.version == 0) & (body == _BODY_ORIG)] = _BODY_NONE  # raw IP output cannot hold non-IP records
    return body, (int(assigned.sum()), int(unknown.sum()), dropped, int((body == _BODY_ORIG).sum()))


# -- encrypt -----------------------------------------------------------------------------------------------------------

def encrypt_file(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None,
                 sas: "Sequence[SaEntry] | str | os.PathLike[str]", *, fmt: str | None = None, frames: bool = True,
                 drop_other: bool = False, mode: str | None = None, first_seq: int | None = None,
                 backend: str | None = None, chunk_records: int = 65536,
                 progress: bool | None = None) -> Summary:
    """Encapsulate the IP packets of a capture that an SA's selectors take (first match wins).

    Sequence numbers start at ``first_seq`` (default: each SA's ``initial_seq + 1``). ``frames`` (default)
    keeps each record's link-layer header; otherwise the output is raw IP. ``sas`` may be a key file's path.
    """
    sas = _entries(sas)
    t0 = time.monotonic()
    summary = Summary("encrypt")
    reader = CaptureReader(in_path, chunk_records=chunk_records, chunk_bytes=CHUNK_BYTES,
                           reuse_buffers=_CHUNK_RING)
    scratch = Scratch()
    writer = None
    try:
        plan = []
        for e in sas:
            eff_mode = e.mode or mode or "tunnel"
            if eff_mode == "tunnel" and not (e.src.is_host and e.dst.is_host):
                raise ValueError(f"{e.origin or e.label}: a tunnel needs one outer src and dst address to "
                                 f"encrypt, not {e.src} -> {e.dst}")
            if e.spi is None:
                raise ValueError(f"{e.origin or e.label}: SPI '*' cannot encrypt; give the SA's SPI")
            start = (first_seq - 1) if first_seq is not None else e.initial_seq
            if start < 0:
                raise ValueError("the first sequence number is at least 1")
            sa = _make_sa(e, Direction.OUT, eff_mode, backend, None, initial_seq=start)
            sel = e.selector if e.selector is not None else dataclasses.replace(e, mode=eff_mode).effective_selector()
            st = _stats_for(e, "out")
            summary.per_sa.append(st)
            plan.append((e, sa, sel, st))
        writer = _open_writer(out_path, reader, fmt, frames)
        out = _Output(writer, reader, frames)
        direct = out.direct()

        def parse(c: Chunk) -> tuple[Chunk, L3Info, list[int] | None]:
            L = parse_l3(c, np.asarray([i.linktype for i in reader.interfaces], dtype=np.int64))
            return c, L, _room(c, L, L.version > 0, frames, ESP_OVERHEAD_MAX) if direct else None

        _pump(reader, _read_ahead(reader, out, parse), summary, "encrypt", progress,
                    lambda p: _encrypt_chunk(*p, plan, out, summary, drop_other, scratch), lambda p: p[0])
        out.finish()
    finally:
        if writer is not None:
            writer.close()
        reader.close()
    summary.seconds = time.monotonic() - t0
    return summary


def _encrypt_groups(c: Chunk, L: L3Info, plan: list) -> tuple[np.ndarray, list]:
    n = c.count
    assigned = np.zeros(n, dtype=bool)
    groups = []
    for e, sa, sel, st in plan:
        m = _selector_mask(c, L, sel) & ~assigned
        if m.any():
            assigned |= m
            groups.append((np.flatnonzero(m).astype(np.int32), sa, st))
    return assigned, groups


def _encrypt_chunk(c: Chunk, L: L3Info, room: list[int] | None, plan: list, out: _Output, summary: Summary,
                   drop_other: bool, scratch: Scratch) -> None:
    n = c.count
    summary.records += n
    assigned, groups = _encrypt_groups(c, L, plan)
    cut_ip = (L.version > 0) & L.cut
    if room is not None:
        zero = np.zeros(n, dtype=bool)
        processed, _, dropped, passed = _direct(
            c, L, room, [(sel, sa, None, st) for sel, sa, st in groups], out, summary, scratch, outbound=True,
            esp=zero, frag=zero, cut=cut_ip, drop_other=drop_other, drop_unknown=False)
        summary.processed += processed
        summary.unknown_link += int(L.unknown_link.sum())
        summary.truncated += int(cut_ip.sum())
        summary.non_ip += int(((L.version == 0) & ~L.unknown_link).sum())
        summary.policy_dropped += dropped
        summary.passed_through += passed
        return
    cap_each = np.where(assigned, L.ip_len + ESP_OVERHEAD_MAX, 0).astype(np.int64)
    dst_off = np.cumsum(cap_each) - cap_each
    src = PacketBatch(c.data, c.offsets + np.maximum(L.l3, 0), np.where(assigned, L.ip_len, 0),
                      np.where(assigned, L.ip_len, 0))
    dst = PacketBatch(scratch.get("dst", int(cap_each.sum()) + 1), dst_off, np.zeros(n, np.int32), cap_each)
    status = np.full(n, 255, dtype=np.uint8)
    for sel, sa, st in groups:
        sa.encrypt_batch(src, dst, sel)
        status[sel] = dst.status[sel]
        _account(st, dst.status[sel], src.lengths[sel])
    summary.processed += int(assigned.sum())
    summary.unknown_link += int(L.unknown_link.sum())
    summary.truncated += int(cut_ip.sum())
    summary.non_ip += int(((L.version == 0) & ~L.unknown_link).sum())
    body = np.full(n, _BODY_ORIG, dtype=np.int8)
    body[assigned] = _BODY_NONE
    body[assigned & (status == Verdict.OK)] = _BODY_NEW
    if drop_other:
        other = ~assigned & ~cut_ip
        summary.policy_dropped += int(other.sum())
        body[other] = _BODY_NONE
    if not out.frames:
        body[(L.version == 0) & (body == _BODY_ORIG)] = _BODY_NONE
    summary.passed_through += int((body == _BODY_ORIG).sum())
    summary.written += out.emit(c, L, body, dst.buf, dst.offsets, dst.lengths)


# -- replay -------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplayPattern:
    """What the network does to the ESP packets between the two SAs.

    ``order``: an explicit delivery list of 1-based packet numbers (the n-th packet the sender sent); numbers
    may repeat (duplicates) and be left out (losses). Otherwise each packet is lost with probability ``loss``,
    duplicated with ``dup``, and with ``reorder`` held back by 1..``depth`` packets; ``seed`` fixes the draw.
    """

    order: tuple[int, ...] | None = None
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    depth: int = 3
    seed: int = 0

    @classmethod
    def parse_order(cls, text: str) -> tuple[int, ...]:
        """``1,2,4,3`` or ranges ``1-64,66,65,65`` (1-based packet numbers)."""
        out: list[int] = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            if "-" in part:
                a, _, b = part.partition("-")
                if not (a.isdigit() and b.isdigit()) or int(a) < 1 or int(b) < int(a) or int(b) - int(a) > 10**7:
                    raise ValueError(f"order: {part!r} is not a range like 1-64")
                out.extend(range(int(a), int(b) + 1))
            else:
                if not part.isdigit() or int(part) < 1:
                    raise ValueError(f"order: {part!r} is not a packet number (1, 2, ...)")
                out.append(int(part))
        if not out:
            raise ValueError("order: empty")
        return tuple(out)

    def deliveries(self, sent: int, rng_state: random.Random | None = None) -> np.ndarray:
        """0-based indices into the sent packets, in delivery order."""
        if self.order is not None:
            idx = np.asarray(self.order, dtype=np.int64) - 1
            return idx[idx < sent]
        rng = rng_state or random.Random(self.seed)
        items: list[tuple[float, int]] = []
        for i in range(sent):
            if self.loss and rng.random() < self.loss:
                continue
            pos = float(i)
            if self.reorder and rng.random() < self.reorder:
                pos += rng.randint(1, max(1, self.depth)) + 0.5
            items.append((pos, i))
            if self.dup and rng.random() < self.dup:
                items.append((pos + 0.25, i))
        items.sort()
        return np.asarray([i for _, i in items], dtype=np.int64)


@dataclass
class ReplaySummary:
    """What the receiver made of the delivered packets. ``verdicts``: (packet number, seq, verdict name)."""

    sent: int = 0
    delivered: int = 0
    accepted: int = 0
    duplicates: int = 0          # REPLAYED, and that sequence number had been accepted before
    too_old: int = 0             # REPLAYED, never accepted: left of the window
    other: dict[str, int] = field(default_factory=dict)
    not_selected: int = 0
    outbound: SaStats | None = None
    inbound: SaStats | None = None
    verdicts: list[tuple[int, int, str]] = field(default_factory=list)
    capture_problems: list[str] = field(default_factory=list)
    window: int = 0

    @property
    def exit_code(self) -> int:
        """Anti-replay drops are the experiment's result; anything else failing is an error."""
        return 1 if sum(self.other.values()) or self.capture_problems else 0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["exit_code"] = self.exit_code
        return d

    def format(self) -> str:
        lines = [f"replay: {self.sent} sent, {self.delivered} delivered, {self.accepted} accepted, "
                 f"{self.duplicates} rejected as duplicates, {self.too_old} rejected as too old "
                 f"(window {self.window})"]
        if self.not_selected:
            lines.append(f"  {self.not_selected} packets matched no selector and were not sent")
        for k, v in sorted(self.other.items()):
            lines.append(f"  {k}: {v}")
        lines += ["  capture: " + p for p in self.capture_problems]
        return "\n".join(lines)


def replay_file(in_path: str | os.PathLike[str], sa: SaEntry, *, pattern: ReplayPattern = ReplayPattern(),
                out_path: str | os.PathLike[str] | None = None, fmt: str | None = None,
                mode: str | None = None, window: int | None = None, first_seq: int | None = None,
                backend: str | None = None, record: bool = False, chunk_records: int = 65536,
                progress: bool | None = None) -> ReplaySummary:
    """Push a plaintext capture through an outbound and an inbound SA made from one key file entry, with a
    network in between that loses, duplicates and reorders as ``pattern`` says; report what the receiver took.

    An explicit ``pattern.order`` needs every sent packet at hand, so it holds the encrypted packets of the
    whole capture in memory; random patterns work chunk by chunk. ``out_path`` gets the accepted (decrypted)
    packets, in delivery order, as raw IP.
    """
    eff_mode = sa.mode or mode or "tunnel"
    if eff_mode == "tunnel" and not (sa.src.is_host and sa.dst.is_host):
        # The addresses only frame the packets between the two SAs; any pair does.
        sa = dataclasses.replace(sa, src=sa.src if sa.src.is_host else _placeholder(sa, "src"),
                                 dst=sa.dst if sa.dst.is_host else _placeholder(sa, "dst"))
    if sa.spi is None:
        raise ValueError("replay needs the SA's SPI, not '*'")
    start = (first_seq - 1) if first_seq is not None else sa.initial_seq
    out_sa = _make_sa(sa, Direction.OUT, eff_mode, backend, None, initial_seq=start)
    in_sa = _make_sa(sa, Direction.IN, eff_mode, backend, window, initial_seq=start)
    sel = sa.selector if sa.selector is not None else dataclasses.replace(sa, mode=eff_mode).effective_selector()
    res = ReplaySummary(window=in_sa.params.replay_window)
    res.outbound = SaStats(sa.label, sa.spi, "out")
    res.inbound = SaStats(sa.label, sa.spi, "in")
    reader = CaptureReader(in_path, chunk_records=chunk_records)
    writer = None
    accepted_seen = np.zeros(1024, dtype=bool)
    rng = random.Random(pattern.seed)
    held: list[tuple[PacketBatch, np.ndarray, np.ndarray]] = []  # explicit order: (ESP packets, ts, iface) per chunk
    try:
        if out_path is not None:
            writer = CaptureWriter(out_path, _out_interfaces(list(reader.interfaces), False), fmt=fmt or reader.format)
        bar = Progress(reader.size, "replay", enabled=progress)
        sent_total = 0
        for c in reader.chunks():
            if writer is not None and len(writer.interfaces) < len(reader.interfaces):  # a later pcapng section
                writer.interfaces.extend(_out_interfaces(reader.interfaces[len(writer.interfaces):], False))
            lts = np.asarray([i.linktype for i in reader.interfaces], dtype=np.int64)
            L = parse_l3(c, lts)
            m = _selector_mask(c, L, sel)
            res.not_selected += int(c.count - m.sum())
            idx = np.flatnonzero(m).astype(np.int32)
            if idx.size == 0:
                continue
            ip_len = L.ip_len[idx].astype(np.int64)
            src = PacketBatch(c.data, (c.offsets + np.maximum(L.l3, 0))[idx], ip_len, ip_len)
            cap = ip_len + ESP_OVERHEAD_MAX
            dst = PacketBatch(np.zeros(int(cap.sum()) + 1, np.uint8), np.cumsum(cap) - cap,
                              np.zeros(idx.size, np.int32), cap)
            out_sa.encrypt_batch(src, dst)
            _account(res.outbound, dst.status, src.lengths)
            ok = dst.status == Verdict.OK
            for name, k in _non_ok(dst.status):
                res.other["encrypt " + name] = res.other.get("encrypt " + name, 0) + k
            okidx = np.flatnonzero(ok)
            packed = _pack(dst, okidx)
            ts = c.ts[idx][okidx]
            ifc = c.iface[idx][okidx]
            if pattern.order is not None:
                held.append((packed, ts, ifc))
            else:
                order = pattern.deliveries(len(okidx), rng)
                accepted_seen = _deliver(in_sa, packed, order, sent_total, ts, ifc, res, accepted_seen, writer,
                                         reader, record)
            sent_total += len(okidx)
            bar.update(c.end_position, sent_total)
        bar.close()
        res.sent = sent_total
        if pattern.order is not None and held:
            allp = _concat_packed([h[0] for h in held])
            ts = np.concatenate([h[1] for h in held])
            ifc = np.concatenate([h[2] for h in held])
            order = pattern.deliveries(sent_total)
            _deliver(in_sa, allp, order, 0, ts, ifc, res, accepted_seen, writer, reader, record)
        res.capture_problems = list(reader.problems)
    finally:
        if writer is not None:
            writer.close()
        reader.close()
    return res


def _placeholder(sa: SaEntry, which: str) -> Any:
    from esp.keyfile import AddressMatch
    fam = sa.src.family or sa.dst.family or 4
    if fam == 6:
        return AddressMatch.parse("2001:db8::1" if which == "src" else "2001:db8::2")
    return AddressMatch.parse("192.0.2.1" if which == "src" else "192.0.2.2")


def _non_ok(status: np.ndarray) -> Iterable[tuple[str, int]]:
    counts = np.bincount(status, minlength=_NV)
    for v in np.flatnonzero(counts):
        if v != Verdict.OK:
            yield Verdict(int(v)).name, int(counts[v])


def _pack(b: PacketBatch, idx: np.ndarray) -> PacketBatch:
    lens = b.lengths[idx].astype(np.int64)
    off = np.cumsum(lens) - lens
    buf = np.zeros(int(lens.sum()) + 1, np.uint8)
    gather_segments(b.buf, b.offsets[idx], lens, buf, off)
    return PacketBatch(buf, off, lens, lens)


def _concat_packed(parts: list[PacketBatch]) -> PacketBatch:
    bufs, offs, lens = [], [], []
    base = 0
    for p in parts:
        bufs.append(p.buf[:-1] if p.buf.shape[0] else p.buf)
        offs.append(p.offsets + base)
        lens.append(p.lengths)
        base += bufs[-1].shape[0]
    buf = np.concatenate(bufs + [np.zeros(1, np.uint8)])
    o = np.concatenate(offs)
    ln = np.concatenate(lens)
    return PacketBatch(buf, o, ln, ln)


def _deliver(in_sa: Sa, sent: PacketBatch, order: np.ndarray, first_number: int, ts: np.ndarray,
             iface: np.ndarray, res: ReplaySummary, accepted_seen: np.ndarray, writer: CaptureWriter | None,
             reader: CaptureReader, record: bool) -> np.ndarray:
    """Deliver ``order`` (indices into ``sent``) to the inbound SA; returns the grown accepted-number map."""
    if order.size == 0:
        return accepted_seen
    # The delivered stream as its own batch (duplicates are separate slots), decrypted in one call.
    src = PacketBatch(sent.buf, sent.offsets[order], sent.lengths[order], sent.lengths[order])
    cap = src.lengths.astype(np.int64)
    dst = PacketBatch(np.zeros(int(cap.sum()) + 1, np.uint8), np.cumsum(cap) - cap, np.zeros(order.size, np.int32),
                      cap)
    in_sa.decrypt_batch(src, dst)
    _account(res.inbound, dst.status, dst.lengths)  # type: ignore[arg-type]
    res.delivered += int(order.size)
    seq = _be32(sent.buf, sent.offsets[order] + _esp_offset(sent, order) + 4)
    numbers = order + first_number + 1
    st = dst.status
    ok = st == Verdict.OK
    replayed = st == Verdict.REPLAYED
    # A rejected replay is a duplicate if its packet number was accepted before it: in an earlier delivery
    # batch, or earlier in this one.
    top = int(numbers.max()) + 1
    if accepted_seen.shape[0] < top:
        grown = np.zeros(max(top, 2 * accepted_seen.shape[0]), dtype=bool)
        grown[: accepted_seen.shape[0]] = accepted_seen
        accepted_seen = grown
    pos = np.arange(order.size)
    first_ok = np.full(top, order.size, dtype=np.int64)
    np.minimum.at(first_ok, numbers[ok], pos[ok])
    dup = replayed & (accepted_seen[numbers] | (first_ok[numbers] < pos))
    res.accepted += int(ok.sum())
    res.duplicates += int(dup.sum())
    res.too_old += int((replayed & ~dup).sum())
    accepted_seen[numbers[ok]] = True
    for name, k in _non_ok(st[~replayed]):
        res.other[name] = res.other.get(name, 0) + k
    if record:
        names = np.asarray([v.name for v in Verdict], dtype=object)
        res.verdicts.extend(zip(numbers.tolist(), seq.tolist(), names[st].tolist()))
    if writer is not None:
        okk = np.flatnonzero(st == Verdict.OK)
        if okk.size:
            writer.write(dst.buf, dst.offsets[okk], dst.lengths[okk], ts[order[okk]], iface[order[okk]],
                         src_tsresol=[i.tsresol for i in reader.interfaces])
    return accepted_seen


def _esp_offset(b: PacketBatch, order: np.ndarray) -> np.ndarray:
    """Offset of the ESP header inside each outer packet (IPv4 IHL or 40, plus 8 for UDP encapsulation)."""
    off = b.offsets[order]
    ver = b.buf[off] >> 4
    ihl = (b.buf[off] & 0x0F).astype(np.int64) * 4
    hl = np.where(ver == 4, ihl, 40)
    proto = np.where(ver == 4, b.buf[off + 9], b.buf[off + 6]).astype(np.int64)
    return hl + np.where(proto == 17, 8, 0)
