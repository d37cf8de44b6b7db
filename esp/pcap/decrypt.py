"""Decrypting captures: each chunk's ESP packets grouped by SA, each group through the core in one call."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from esp.batch import PacketBatch, Verdict
from esp.pcap.sa_files import SaEntry
from esp.pcap.capture_suites import SoftSuite
from esp.pcap.classify import _addr_match, _Esp, classify_esp
from esp.pcap.formats import Chunk, Interface, LinkType, Scratch, _native
from esp.pcap.layers import L3Info, parse_l3
from esp.pcap.output import (_BODY_NEW, _BODY_NONE, _BODY_ORIG, _CHUNK_RING, CHUNK_BYTES, NAT_T_PORT, SaStats,
                             Summary, _account, _direct, _out_interfaces, _Output, _pump, _read_ahead, _room)
from esp.pcap.reader import CaptureReader
from esp.pcap.sas import _entries, _Inbound
from esp.pcap.writer import CaptureWriter
from esp.sa import Sa

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


@dataclass
class _Parsed:
    """A chunk with what can be known of it before decryption: what the read-ahead (on the helper thread) hands
    over."""

    c: Chunk
    L: L3Info
    E: _Esp
    room: list[int] | None  # direct output (:meth:`_Output.direct`): bytes each group's records can need
    counts: tuple[int, int, int, int, int, int]  # IKE, keepalives, fragments, truncated, unknown link, not IP


def _parse(c: Chunk, reader: CaptureReader, encap_ports: Sequence[int], direct: bool, frames: bool) -> _Parsed:
    """Everything about a chunk that does not need the SAs: header fields, ESP classification, the counts that
    follow from them and (direct output) the room each group of records needs."""
    lts = np.asarray([i.linktype for i in reader.interfaces], dtype=np.int64)
    L = parse_l3(c, lts)
    E = classify_esp(c, L, encap_ports)
    counts = (int(np.count_nonzero(E.ike)), int(np.count_nonzero(E.keepalive)), int(np.count_nonzero(E.frag)),
              int(np.count_nonzero(E.cut)), int(np.count_nonzero(L.unknown_link)),
              int(np.count_nonzero((L.version == 0) & ~L.unknown_link)))
    return _Parsed(c, L, E, _room(c, L, E.esp, frames, 0) if direct else None, counts)


#: esp.pcap._pcapio.decrypt_outcome if built: :func:`_outcome_numpy` in one compiled pass.
_NATIVE_OUTCOME = _native("decrypt_outcome")
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
        out = _Output(writer, reader, frames, compiled=not any(isinstance(e.suite, SoftSuite) for e in sas))
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


