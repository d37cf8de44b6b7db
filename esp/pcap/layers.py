"""Link-layer and IP header fields of whole chunks, and the segment copies the tools assemble records with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from esp.pcap.formats import (ETHERTYPE_IPV4, ETHERTYPE_IPV6, KNOWN_LINKTYPES, MAX_VLAN_TAGS, RAW_LINKTYPES, READ_PAD,
                              VLAN_TPIDS, Chunk, LinkType, Scratch, _native, _windows)

#: esp.pcap._pcapio.gather_segments(src, src_off, lengths, dst, dst_off) if built: same contract as the numpy version.
_NATIVE_GATHER = _native("gather_segments")
#: esp.pcap._pcapio.scatter_rows(out, starts, rows): fixed-width rows (record headers) into a file image.
_NATIVE_SCATTER = _native("scatter_rows")
#: esp.pcap._pcapio.parse_l3(...): :func:`parse_l3` in one pass per record (outputs preallocated by the caller).
_NATIVE_PARSE_L3 = _native("parse_l3")
_EMPTY_U8 = np.zeros(1, dtype=np.uint8)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


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

#: Block sizes for :func:`gather_segments`: a segment is copied in blocks of the largest size it is not shorter
#: than, so index arrays hold one entry per block, not per byte.
_GATHER_BLOCKS = (256, 32, 4, 1)
#: A length shared by at least this many segments of a call is copied as one row per segment.
_ROW_MIN_COUNT = 32
_ROW_MAX_GROUPS = 16


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


