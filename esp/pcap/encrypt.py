"""Encrypting captures: the IP packets an SA's selectors take, each SA's group through the core in one call."""
from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from esp.batch import PacketBatch, Verdict
from esp.pcap.sa_files import SaEntry
from esp.pcap.capture_suites import SoftSuite
from esp.pcap.classify import first_match
from esp.pcap.decrypt import _open_writer
from esp.pcap.formats import Chunk, Scratch
from esp.pcap.layers import L3Info, parse_l3
from esp.pcap.output import (_BODY_NEW, _BODY_NONE, _BODY_ORIG, _CHUNK_RING, CHUNK_BYTES, ESP_OVERHEAD_MAX, Summary,
                             _account, _direct, _Output, _pump, _read_ahead, _room)
from esp.pcap.reader import CaptureReader
from esp.pcap.sas import OutboundSa, _entries, outbound_sas

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
        plan = outbound_sas(sas, mode=mode, first_seq=first_seq, backend=backend)
        summary.per_sa.extend(o.stats for o in plan)
        writer = _open_writer(out_path, reader, fmt, frames)
        out = _Output(writer, reader, frames, compiled=not any(isinstance(e.suite, SoftSuite) for e in sas))
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


def _encrypt_groups(c: Chunk, L: L3Info, plan: list[OutboundSa]) -> tuple[np.ndarray, list]:
    which = first_match(c, L, [o.selector for o in plan])
    groups = []
    for k, o in enumerate(plan):
        sel = np.flatnonzero(which == k).astype(np.int32)
        if len(sel):
            groups.append((sel, o.sa, o.stats))
    return which >= 0, groups


def _encrypt_chunk(c: Chunk, L: L3Info, room: list[int] | None, plan: list[OutboundSa], out: _Output, summary: Summary,
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


