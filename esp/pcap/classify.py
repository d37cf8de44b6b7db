"""Which records of a chunk are ESP, for which SPI and addresses, and which an SA's selectors take.

:func:`first_match` is the one way a plaintext packet is mapped to an outbound SA (``pcap encrypt``, ``pcap
send``): the first selector that takes it wins, as in an SPD."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from esp.pcap.sa_files import Selector
from esp.pcap.formats import Chunk, _native, _uint
from esp.pcap.layers import L3Info, _col16, _col32

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
#: esp.pcap._pcapio.classify_esp if built: :func:`_classify_esp_numpy` in one compiled pass.
_NATIVE_CLASSIFY = _native("classify_esp")


def classify_esp(c: Chunk, L: L3Info, encap_ports: Sequence[int]) -> _Esp:
    """Which records are ESP (plain or in UDP on ``encap_ports``), IKE, keepalives, ESP fragments or cut ESP:
    how every capture tool tells captured ESP from the rest."""
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
    """The numpy reference of :func:`classify_esp`."""
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




def first_match(c: Chunk, L: L3Info, selectors: Sequence[Selector], among: np.ndarray | None = None) -> np.ndarray:
    """Per record of ``c``, the index (int32) of the first of ``selectors`` that takes it, -1 for none.

    ``among`` (bool per record) limits the records considered, e.g. to those not already ESP."""
    which = np.full(c.count, -1, dtype=np.int32)
    free = np.ones(c.count, dtype=bool) if among is None else among.copy()
    for k, sel in enumerate(selectors):
        m = _selector_mask(c, L, sel) & free
        which[m] = k
        free &= ~m
    return which
