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

import enum
import mmap
import os
from dataclasses import dataclass

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

__all__ = ["CaptureError", "LinkType", "Interface", "Chunk", "Scratch"]

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


def _windows(a: np.ndarray, width: int, writeable: bool) -> np.ndarray:
    """Every ``width``-byte window of a 1-D byte array as rows of a 2-D view (no copy)."""
    return as_strided(a, shape=(a.shape[0] - width + 1, width), strides=(a.strides[0], a.strides[0]),
                      writeable=writeable)


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


