"""Replaying a capture through an outbound and an inbound SA, with loss, duplication and reordering between."""
from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from esp.batch import PacketBatch, Verdict
from esp.pcap.sa_files import SaEntry
from esp.pcap.capture_suites import SoftSuite
from esp.pcap.classify import _be32, _selector_mask
from esp.pcap.layers import gather_segments, parse_l3
from esp.pcap.output import _NV, ESP_OVERHEAD_MAX, Progress, SaStats, _account, _out_interfaces
from esp.pcap.reader import CaptureReader
from esp.pcap.sas import _make_sa
from esp.pcap.writer import CaptureWriter
from esp.sa import Direction, Sa

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
    if isinstance(sa.suite, SoftSuite):
        raise ValueError(f"{sa.origin or sa.label}: replay runs the compiled core, which has no {sa.suite.name}; "
                         f"pcap decrypt and encrypt take it")
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
    from esp.pcap.sa_files import AddressMatch
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
