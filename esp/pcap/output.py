"""What the capture tools share: summaries, progress, output records, the chunk pipeline.

The tools (decrypt, encrypt, replay) work alike. Each chunk of a capture is classified with numpy (link layer, IP, ESP or ESP-in-UDP, SPI, selectors), grouped
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
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TextIO, TypeVar

import numpy as np

from esp._core import SA_API
from esp.batch import Verdict
from esp.pcap.sa_files import SaEntry
from esp.pcap.formats import ETHERTYPE_IPV4, ETHERTYPE_IPV6, CaptureError, Chunk, Interface, LinkType, Scratch, _native
from esp.pcap.layers import L3Info
from esp.pcap.reader import CaptureReader
from esp.pcap.writer import CaptureWriter

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


# -- per-SA counts ----------------------------------------------------------------------------------------------

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



# -- assembling output records --------------------------------------------------------------------------------------

_BODY_NONE, _BODY_ORIG, _BODY_NEW = 0, 1, 2
_NATIVE_EMIT = _native("emit_pcap")


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

    def __init__(self, writer: CaptureWriter | None, reader: CaptureReader, frames: bool,
                 compiled: bool = True) -> None:
        #: every SA is the compiled core's (an esp.pcap.soft SA has no context for the direct kernel)
        self.compiled = compiled
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
        return self.compiled and _NATIVE_ESP_CHUNK is not None and self.writer is not None and self._fast_pcap()

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


#: Records the direct path writes into one buffer before the writer thread takes it: their records (some
#: 800 KB of IMIX) are still in cache when the kernel copies them into the page cache.
GROUP_RECORDS = 2048


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


