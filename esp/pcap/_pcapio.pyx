# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels for esp.pcap: the per-record loops that numpy can only do with gathers and temporaries.

Each kernel is the exact counterpart of a numpy reference in esp.pcap (the tests compare them byte for byte).
Every index a kernel will use is checked against its array before the loop that copies or reads, so a bad
offset is a ValueError, never a read or write outside an array; the loops themselves run without the GIL.
"""
from libc.stdint cimport uint8_t, int8_t, int32_t, int64_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.mem cimport PyMem_Malloc, PyMem_Free

from esp._saapi cimport ESPRESSO_SA_API_VERSION, espresso_sa_api

cdef extern from *:
    """
    #define PCAPIO_ETHERNET 1
    #define PCAPIO_RAW_OPENBSD 12
    #define PCAPIO_RAW 101
    #define PCAPIO_SLL 113
    #define PCAPIO_IPV4 228
    #define PCAPIO_IPV6 229
    #define PCAPIO_SLL2 276
    /* Hint the cache about a line we will read soon (records are walked in file order). */
    #define pcapio_prefetch(p) __builtin_prefetch((const void *)(p), 0, 0)
    """
    void pcapio_prefetch(const void *p) nogil
    int PCAPIO_ETHERNET, PCAPIO_RAW_OPENBSD, PCAPIO_RAW, PCAPIO_SLL, PCAPIO_IPV4, PCAPIO_IPV6, PCAPIO_SLL2

cdef enum:
    L4_HEAD = 16
    PREFETCH_AHEAD = 4096
    PREFETCH_RECORDS = 12


cdef inline uint32_t _rd32(const uint8_t *p, bint big) noexcept nogil:
    if big:
        return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline int64_t _be16(const uint8_t *p) noexcept nogil:
    return (<int64_t>p[0] << 8) | p[1]


cdef inline uint64_t _be64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef int64_t _walk_pcap(const uint8_t *b, int64_t *pos_io, int64_t stop, int64_t size, int64_t limit, bint big,
                        int64_t max_record, int64_t mult, int64_t *out, int64_t *caplen, int64_t *origlen,
                        int64_t *ts) noexcept nogil:
    """The record walk behind :func:`scan_pcap` and :func:`scan_pcap_fields`: out[k] = offset of record k's data
    and, when ``caplen`` is not NULL, its lengths and timestamp from the same header read. Stops after ``limit``
    records, at ``stop`` bytes, or before a record that does not fit ``size`` (left at ``pos_io``)."""
    cdef int64_t n = 0, cl, pos = pos_io[0], ahead = pos_io[0], q
    cdef const uint8_t *h
    while pos + 16 <= size and n < limit:
        # The walk is a chain of dependent loads; keep the lines PREFETCH_AHEAD bytes on already requested.
        q = pos + PREFETCH_AHEAD
        if q > size:
            q = size
        while ahead < q:
            pcapio_prefetch(b + ahead)
            ahead += 64
        h = b + pos
        cl = _rd32(h + 8, big)
        if cl > max_record or pos + 16 + cl > size:
            break
        out[n] = pos + 16
        if caplen != NULL:
            caplen[n] = cl
            origlen[n] = _rd32(h + 12, big)
            ts[n] = <int64_t>_rd32(h, big) * mult + _rd32(h + 4, big)
        n += 1
        pos += 16 + cl
        if n >= limit or pos >= stop:
            break
    pos_io[0] = pos
    return n


cdef extern from "<sys/mman.h>" nogil:
    int madvise(void *addr, size_t length, int advice)

cdef extern from *:
    """
    /* A capture file truncated while it is mapped: a read of a page past the new end raises SIGBUS, which would
       end the process. For the mappings registered here, the handler puts a page of zeros in its place and notes
       the hit; the read goes on, and the reader (esp.pcap.CaptureReader.check_intact) turns the note into a
       CaptureError before anything read from that page reaches the output. Any other SIGBUS goes to the handler
       that was there before (Python's faulthandler, or the default: the process ends as it would have). */
    #include <signal.h>
    #include <unistd.h>
    #define PCAPIO_GUARDS 64
    static volatile uintptr_t pcapio_guard_lo[PCAPIO_GUARDS], pcapio_guard_hi[PCAPIO_GUARDS];
    static volatile sig_atomic_t pcapio_guard_hits[PCAPIO_GUARDS];
    static struct sigaction pcapio_prev_bus;
    static int pcapio_bus_installed = 0;
    static uintptr_t pcapio_page = 4096;

    static void pcapio_on_sigbus(int sig, siginfo_t *si, void *uc) {
        uintptr_t a = (uintptr_t)si->si_addr;
        int k;
        if (si->si_code == BUS_ADRERR) {
            for (k = 0; k < PCAPIO_GUARDS; k++) {
                if (pcapio_guard_lo[k] <= a && a < pcapio_guard_hi[k]) {
                    void *page = (void *)(a & ~(pcapio_page - 1));
                    if (mmap(page, pcapio_page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                            != MAP_FAILED) {
                        pcapio_guard_hits[k] = 1;
                        return;
                    }
                }
            }
        }
        if (pcapio_prev_bus.sa_flags & SA_SIGINFO) {
            if (pcapio_prev_bus.sa_sigaction != NULL) {
                pcapio_prev_bus.sa_sigaction(sig, si, uc);
                return;
            }
        } else if (pcapio_prev_bus.sa_handler != SIG_DFL && pcapio_prev_bus.sa_handler != SIG_IGN) {
            pcapio_prev_bus.sa_handler(sig);
            return;
        }
        signal(SIGBUS, SIG_DFL);  /* the access runs again and ends the process, as without this handler */
    }

    static int pcapio_guard_add(uintptr_t lo, uintptr_t len) {
        int k;
        struct sigaction sa;
        if (!pcapio_bus_installed) {
            long ps = sysconf(_SC_PAGESIZE);
            if (ps > 0)
                pcapio_page = (uintptr_t)ps;
            memset(&sa, 0, sizeof sa);
            sa.sa_sigaction = pcapio_on_sigbus;
            sa.sa_flags = SA_SIGINFO;
            sigemptyset(&sa.sa_mask);
            if (sigaction(SIGBUS, &sa, &pcapio_prev_bus) != 0)
                return -1;
            pcapio_bus_installed = 1;
        }
        for (k = 0; k < PCAPIO_GUARDS; k++) {
            if (pcapio_guard_hi[k] == 0) {
                pcapio_guard_hits[k] = 0;
                pcapio_guard_lo[k] = lo;
                pcapio_guard_hi[k] = (lo + len + pcapio_page - 1) & ~(pcapio_page - 1);
                return k;
            }
        }
        return -1;
    }

    static void pcapio_guard_remove(int k) {
        if (k >= 0 && k < PCAPIO_GUARDS) {
            pcapio_guard_hi[k] = 0;
            pcapio_guard_lo[k] = 0;
        }
    }

    static int pcapio_guard_hit(int k) {
        return k >= 0 && k < PCAPIO_GUARDS && pcapio_guard_hits[k];
    }
    """
    int pcapio_guard_add(uintptr_t lo, uintptr_t length)
    void pcapio_guard_remove(int k)
    int pcapio_guard_hit(int k)


def guard_mapping(const uint8_t[::1] buf) -> int:
    """Register a mapped capture (the whole mapping, from its start) with the SIGBUS guard above; returns the
    guard's number for :func:`guard_hit` and :func:`guard_release`, or -1 if none is left (no guard)."""
    if buf.shape[0] == 0:
        return -1
    return pcapio_guard_add(<uintptr_t>&buf[0], <uintptr_t>buf.shape[0])


def guard_hit(int k) -> bool:
    """Whether a page of guarded mapping ``k`` was found past the file's end (and replaced by zeros)."""
    return bool(pcapio_guard_hit(k))


def guard_release(int k) -> None:
    """The mapping is going away: stop guarding it (its address range may be reused by anything)."""
    pcapio_guard_remove(k)

cdef extern from "<errno.h>" nogil:
    int errno


def advise(const uint8_t[::1] buf, int64_t start, int64_t length, int advice):
    """madvise() on [start, start + length) of a mapped capture, without the GIL: populating or dropping a
    chunk's pages takes milliseconds, which mmap.madvise spends holding the GIL while the other threads of a
    decrypt wait for it. ``start`` must be page-aligned in a buffer that starts a mapping. Returns 0 or errno."""
    cdef int r, err = 0
    if start < 0 or length < 0 or start + length > buf.shape[0]:
        raise ValueError("advise: range outside the buffer")
    if length == 0:
        return 0
    with nogil:
        r = madvise(<void *>(&buf[0] + start), <size_t>length, advice)
        if r != 0:
            err = errno
    return err


def scan_pcap(const uint8_t[::1] buf, int64_t pos, int64_t stop, int64_t size, int64_t limit, bint big,
              int64_t max_record, int64_t[::1] out):
    """Walk pcap record headers from ``pos``: out[k] = offset of record k's data. Stops after ``limit``
    records, at ``stop`` bytes, or before a record that does not fit ``size`` (left at the returned position)."""
    if size > buf.shape[0] or size < 0:
        raise ValueError("scan_pcap: size beyond the buffer")
    if limit > out.shape[0]:
        raise ValueError("scan_pcap: out is shorter than limit")
    if pos < 0:
        raise ValueError("scan_pcap: negative position")
    cdef int64_t n = 0
    cdef const uint8_t *b = &buf[0] if buf.shape[0] else NULL
    cdef int64_t *o = &out[0] if out.shape[0] else NULL
    with nogil:
        n = _walk_pcap(b, &pos, stop, size, limit, big, max_record, 1, o, NULL, NULL, NULL)
    return n, pos


def scan_pcap_fields(const uint8_t[::1] buf, int64_t pos, int64_t stop, int64_t size, int64_t limit, bint big,
                     int64_t max_record, int64_t mult, int64_t[::1] out, int64_t[::1] caplen, int64_t[::1] origlen,
                     int64_t[::1] ts):
    """:func:`scan_pcap` and :func:`pcap_fields` in one pass: each record header is read once, while its line
    is in cache, for the walk and for the record's lengths and timestamp."""
    if size > buf.shape[0] or size < 0:
        raise ValueError("scan_pcap_fields: size beyond the buffer")
    if limit > out.shape[0] or limit > caplen.shape[0] or limit > origlen.shape[0] or limit > ts.shape[0]:
        raise ValueError("scan_pcap_fields: outputs shorter than limit")
    if pos < 0:
        raise ValueError("scan_pcap_fields: negative position")
    cdef int64_t n = 0
    cdef const uint8_t *b = &buf[0] if buf.shape[0] else NULL
    if limit <= 0:
        return 0, pos
    with nogil:
        n = _walk_pcap(b, &pos, stop, size, limit, big, max_record, mult, &out[0], &caplen[0], &origlen[0], &ts[0])
    return n, pos


def pcap_fields(const uint8_t[::1] data, const int64_t[::1] offsets, bint big, int64_t mult,
                int64_t[::1] caplen, int64_t[::1] origlen, int64_t[::1] ts):
    """The 16-byte record header in front of each offset: captured and original length, and the timestamp as
    seconds * mult + fraction."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef int64_t o
    if caplen.shape[0] < n or origlen.shape[0] < n or ts.shape[0] < n:
        raise ValueError("pcap_fields: output arrays too short")
    for i in range(n):
        o = offsets[i]
        if o < 16 or o > data.shape[0]:
            raise ValueError(f"pcap_fields: record {i} header outside the data")
    cdef const uint8_t *p
    with nogil:
        for i in range(n):
            if i + PREFETCH_RECORDS < n:
                pcapio_prefetch(&data[0] + offsets[i + PREFETCH_RECORDS] - 16)
            p = &data[0] + offsets[i] - 16
            ts[i] = <int64_t>_rd32(p, big) * mult + _rd32(p + 4, big)
            caplen[i] = _rd32(p + 8, big)
            origlen[i] = _rd32(p + 12, big)


def gather_segments(const uint8_t[::1] src, const int64_t[::1] src_off, const int64_t[::1] lengths,
                    uint8_t[::1] dst, const int64_t[::1] dst_off):
    """dst[dst_off[i] : +lengths[i]] = src[src_off[i] : +lengths[i]] for every i (a length <= 0 copies nothing)."""
    cdef Py_ssize_t n = lengths.shape[0], i
    cdef int64_t ln, so, do
    if src_off.shape[0] < n or dst_off.shape[0] < n:
        raise ValueError("gather_segments: offset arrays shorter than lengths")
    for i in range(n):
        ln = lengths[i]
        if ln <= 0:
            continue
        so = src_off[i]
        do = dst_off[i]
        if so < 0 or do < 0 or so + ln > src.shape[0] or do + ln > dst.shape[0]:
            raise ValueError(f"gather_segments: segment {i} ({ln} bytes from {so} to {do}) outside the arrays")
    with nogil:
        for i in range(n):
            ln = lengths[i]
            if ln > 0:
                memcpy(&dst[dst_off[i]], &src[src_off[i]], <size_t>ln)


def scatter_rows(uint8_t[::1] out, const int64_t[::1] starts, const uint8_t[:, ::1] rows):
    """out[starts[i] : +w] = rows[i] for the rows of a C-contiguous (n, w) byte array."""
    cdef Py_ssize_t n = rows.shape[0], w = rows.shape[1], i
    if starts.shape[0] < n:
        raise ValueError("scatter_rows: fewer starts than rows")
    for i in range(n):
        if starts[i] < 0 or starts[i] + w > out.shape[0]:
            raise ValueError(f"scatter_rows: row {i} at {starts[i]} outside the output")
    if w == 0:
        return
    with nogil:
        for i in range(n):
            memcpy(&out[starts[i]], &rows[i, 0], <size_t>w)


cdef inline bint _known(int64_t lt) noexcept nogil:
    return (lt == PCAPIO_ETHERNET or lt == PCAPIO_RAW_OPENBSD or lt == PCAPIO_RAW or lt == PCAPIO_SLL
            or lt == PCAPIO_IPV4 or lt == PCAPIO_IPV6 or lt == PCAPIO_SLL2)


cdef inline bint _vlan(int64_t et) noexcept nogil:
    return et == 0x8100 or et == 0x88A8 or et == 0x9100


def parse_l3(const uint8_t[::1] data, const int64_t[::1] base, const int64_t[::1] cap, const int64_t[::1] lt,
             int64_t[::1] l3, int64_t[::1] version, int64_t[::1] ip_len, int64_t[::1] proto, int64_t[::1] l4,
             uint8_t[::1] frag, uint8_t[::1] cut, int64_t[::1] et_at, uint8_t[::1] unknown,
             uint64_t[::1] src_hi, uint64_t[::1] src_lo, uint64_t[::1] dst_hi, uint64_t[::1] dst_lo,
             uint8_t[:, ::1] l4h, uint8_t[::1] frag_first):
    """One pass per record of esp.pcap.parse_l3's numpy reference: link layer, IP header, IPv6 extension
    headers, addresses and the first L4_HEAD bytes of the upper layer. Only bytes inside each record's captured
    length are read; the outputs are exactly the reference's."""
    cdef Py_ssize_t n = base.shape[0], i
    cdef int64_t datalen = data.shape[0]
    if (cap.shape[0] < n or lt.shape[0] < n or l3.shape[0] < n or version.shape[0] < n or ip_len.shape[0] < n
            or proto.shape[0] < n or l4.shape[0] < n or frag.shape[0] < n or cut.shape[0] < n
            or et_at.shape[0] < n or unknown.shape[0] < n or src_hi.shape[0] < n or src_lo.shape[0] < n
            or dst_hi.shape[0] < n or dst_lo.shape[0] < n or l4h.shape[0] < n or frag_first.shape[0] < n
            or l4h.shape[1] != L4_HEAD):
        raise ValueError("parse_l3: output arrays do not match the record count")
    for i in range(n):
        if base[i] < 0 or cap[i] < 0 or base[i] > datalen or cap[i] > datalen - base[i]:  # no overflow
            raise ValueError(f"parse_l3: record {i} outside the data")
    cdef const uint8_t *d = &data[0] if datalen else NULL
    cdef const uint8_t *p
    cdef const uint8_t *ih
    cdef int64_t c, t, pos, et, etype, L3, room, ver, ihl, tot4, ff, pr, L4, l4c, j, k
    cdef bint v4, v6, fr, ffirst, ct, ext
    with nogil:
        for i in range(n):
            if i + PREFETCH_RECORDS < n:
                pcapio_prefetch(d + base[i + PREFETCH_RECORDS])
                pcapio_prefetch(d + base[i + PREFETCH_RECORDS] + 63)
            p = d + base[i]
            c = cap[i]
            t = lt[i]
            L3 = -1
            etype = 0
            et_at[i] = -1
            unknown[i] = not _known(t)
            if t == PCAPIO_ETHERNET and c >= 14:
                pos = 12
                et = _be16(p + 12)
                for k in range(2):
                    if _vlan(et) and c >= pos + 8:
                        pos += 4
                        et = _be16(p + 16 + 4 * k)
                    else:
                        break
                L3 = pos + 2
                etype = et
                et_at[i] = pos
            elif t == PCAPIO_SLL and c >= 16:
                L3 = 16
                etype = _be16(p + 14)
                et_at[i] = 14
            elif t == PCAPIO_SLL2 and c >= 20:
                L3 = 20
                etype = _be16(p)
                et_at[i] = 0
            elif (t == PCAPIO_RAW or t == PCAPIO_RAW_OPENBSD or t == PCAPIO_IPV4 or t == PCAPIO_IPV6) and c >= 1:
                L3 = 0
                ver = p[0] >> 4
                if ver == 4:
                    etype = 0x0800
                elif ver == 6:
                    etype = 0x86DD
            l3[i] = L3
            v4 = False
            v6 = False
            if L3 >= 0:
                room = c - L3
                ih = p + L3
                if room >= 1:
                    ver = ih[0] >> 4
                    ihl = (ih[0] & 0x0F) * 4
                    v4 = etype == 0x0800 and ver == 4 and room >= 20 and ihl >= 20
                    v6 = etype == 0x86DD and ver == 6 and room >= 40
            fr = False
            ffirst = False
            ct = False
            src_hi[i] = 0
            src_lo[i] = 0
            dst_hi[i] = 0
            dst_lo[i] = 0
            if v4:
                version[i] = 4
                tot4 = _be16(ih + 2)
                if tot4 == 0:
                    ip_len[i] = room
                else:
                    ip_len[i] = tot4
                    ct = tot4 > room
                ff = _be16(ih + 6)
                fr = (ff & 0x3FFF) != 0
                ffirst = fr and (ff & 0x1FFF) == 0
                pr = ih[9]
                L4 = L3 + ihl
                src_lo[i] = (<uint64_t>0xFFFF << 32) | ((<uint64_t>ih[12] << 24) | (<uint64_t>ih[13] << 16)
                                                        | (<uint64_t>ih[14] << 8) | ih[15])
                dst_lo[i] = (<uint64_t>0xFFFF << 32) | ((<uint64_t>ih[16] << 24) | (<uint64_t>ih[17] << 16)
                                                        | (<uint64_t>ih[18] << 8) | ih[19])
            elif v6:
                version[i] = 6
                ip_len[i] = _be16(ih + 4) + 40
                ct = ip_len[i] > room
                pr = ih[6]
                L4 = L3 + 40
                src_hi[i] = _be64(ih + 8)
                src_lo[i] = _be64(ih + 16)
                dst_hi[i] = _be64(ih + 24)
                dst_lo[i] = _be64(ih + 32)
                for k in range(4):
                    if (pr == 0 or pr == 43 or pr == 60) and L4 + 8 <= c:
                        j = L4
                        pr = p[j]
                        L4 += (<int64_t>p[j + 1] + 1) * 8
                    else:
                        break
                if pr == 44:
                    if L4 + 8 <= c:
                        ffirst = (_be16(p + L4 + 2) & 0xFFF8) == 0
                        pr = p[L4]
                    L4 += 8
                    fr = True
            else:
                version[i] = 0
                ip_len[i] = 0
                pr = -1
                L4 = -1
            proto[i] = pr
            l4[i] = L4
            frag[i] = fr
            frag_first[i] = ffirst
            cut[i] = ct
            # the upper-layer head, zero past the captured end
            if v4 or v6:
                l4c = L4
            else:
                l4c = c
            if l4c < 0:
                l4c = 0
            if l4c > c:
                l4c = c
            for j in range(L4_HEAD):
                if l4c + j < c:
                    l4h[i, j] = p[l4c + j]
                else:
                    l4h[i, j] = 0


def classify_esp(const int64_t[::1] cap, const int64_t[::1] version, const int64_t[::1] l3,
                 const int64_t[::1] ip_len, const int64_t[::1] proto, const int64_t[::1] l4,
                 const uint8_t[::1] frag, const uint8_t[::1] frag_first, const uint8_t[::1] cut,
                 const uint8_t[:, ::1] l4h, const int64_t[::1] ports,
                 uint8_t[::1] esp, int64_t[::1] spi, uint8_t[::1] udp, uint8_t[::1] ike, uint8_t[::1] keepalive,
                 uint8_t[::1] efrag, uint8_t[::1] ecut):
    """esp.pcap's tools' ESP classification (plain ESP, ESP in UDP on ``ports`` with the non-ESP marker and
    keepalives told apart, SPI) from parse_l3's arrays, in one pass."""
    cdef Py_ssize_t n = cap.shape[0], i, k, nports = ports.shape[0]
    if (version.shape[0] < n or l3.shape[0] < n or ip_len.shape[0] < n or proto.shape[0] < n or l4.shape[0] < n
            or frag.shape[0] < n or frag_first.shape[0] < n or cut.shape[0] < n or l4h.shape[0] < n
            or l4h.shape[1] < 12 or esp.shape[0] < n or spi.shape[0] < n or udp.shape[0] < n
            or ike.shape[0] < n or keepalive.shape[0] < n or efrag.shape[0] < n or ecut.shape[0] < n):
        raise ValueError("classify_esp: arrays do not match the record count")
    cdef bint ip, plain, uok, natt, ka, m0, uesp, cand, fr, ct, hs
    cdef int64_t c, L4, sport, dport, upay, ulen, eoff
    cdef const uint8_t *h
    with nogil:
        for i in range(n):
            c = cap[i]
            h = &l4h[i, 0]
            ip = version[i] > 0
            L4 = l4[i] if ip else 0
            plain = ip and proto[i] == 50
            uok = ip and proto[i] == 17 and L4 + 8 <= c and (not frag[i] or frag_first[i])
            natt = False
            ka = False
            m0 = False
            uesp = False
            upay = L4 + 8
            if uok:
                sport = _be16(h)
                dport = _be16(h + 2)
                for k in range(nports):
                    if sport == ports[k] or dport == ports[k]:
                        natt = True
                        break
            if natt:
                ulen = l3[i] + ip_len[i] - upay
                ka = ulen == 1 and h[8] == 0xFF
                m0 = ulen >= 4 and upay + 4 <= c and h[8] == 0 and h[9] == 0 and h[10] == 0 and h[11] == 0
                uesp = not ka and not m0 and ulen >= 8
            eoff = upay if uesp else L4
            cand = plain or uesp
            fr = cand and frag[i]
            ct = cand and not fr and cut[i]
            hs = cand and eoff + 8 <= c
            if hs:
                if uesp:
                    spi[i] = _rd32(h + 8, True)
                else:
                    spi[i] = _rd32(h, True)
            else:
                spi[i] = -1
            esp[i] = cand and not fr and not ct and hs
            ct = ct or (cand and not fr and not hs)
            fr = fr or (ip and frag[i] and not frag_first[i] and proto[i] == 50)
            udp[i] = uesp and esp[i]
            ike[i] = m0
            keepalive[i] = ka
            efrag[i] = fr
            ecut[i] = ct


def assemble(uint8_t[::1] out, const int64_t[::1] starts, const uint8_t[:, ::1] hdr,
             const uint8_t[::1] b0, const int64_t[::1] o0, const int64_t[::1] n0,
             const uint8_t[::1] b1, const int64_t[::1] o1, const int64_t[::1] n1,
             const uint8_t[::1] b2, const int64_t[::1] o2, const int64_t[::1] n2):
    """Build a file image in one pass: record i is hdr[i], then b0[o0[i]:+n0[i]], b1[...], b2[...] at starts[i]
    (an empty part has length 0). Everything is bounds-checked before the first byte moves."""
    cdef Py_ssize_t n = hdr.shape[0], w = hdr.shape[1], i
    cdef int64_t p, end
    if (starts.shape[0] < n or o0.shape[0] < n or n0.shape[0] < n or o1.shape[0] < n or n1.shape[0] < n
            or o2.shape[0] < n or n2.shape[0] < n):
        raise ValueError("assemble: arrays do not match the record count")
    for i in range(n):
        p = starts[i]
        if p < 0 or n0[i] < 0 or n1[i] < 0 or n2[i] < 0:
            raise ValueError(f"assemble: record {i}: negative offset or length")
        end = p + w + n0[i] + n1[i] + n2[i]
        if end > out.shape[0]:
            raise ValueError(f"assemble: record {i} runs past the output")
        if (n0[i] and (o0[i] < 0 or o0[i] + n0[i] > b0.shape[0])) or \
           (n1[i] and (o1[i] < 0 or o1[i] + n1[i] > b1.shape[0])) or \
           (n2[i] and (o2[i] < 0 or o2[i] + n2[i] > b2.shape[0])):
            raise ValueError(f"assemble: record {i}: a part lies outside its buffer")
    with nogil:
        for i in range(n):
            p = starts[i]
            if w:
                memcpy(&out[p], &hdr[i, 0], <size_t>w)
            p += w
            if n0[i]:
                memcpy(&out[p], &b0[o0[i]], <size_t>n0[i])
                p += n0[i]
            if n1[i]:
                memcpy(&out[p], &b1[o1[i]], <size_t>n1[i])
                p += n1[i]
            if n2[i]:
                memcpy(&out[p], &b2[o2[i]], <size_t>n2[i])


cdef inline void _wr32(uint8_t *p, uint32_t v, bint big) noexcept nogil:
    if big:
        p[0] = v >> 24
        p[1] = (v >> 16) & 0xFF
        p[2] = (v >> 8) & 0xFF
        p[3] = v & 0xFF
    else:
        p[0] = v & 0xFF
        p[1] = (v >> 8) & 0xFF
        p[2] = (v >> 16) & 0xFF
        p[3] = v >> 24


cdef inline int64_t _floordiv(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef struct _rec_t:
    int64_t head       # link-layer bytes kept in front of a new packet (frames mode)
    int64_t own        # original bytes kept (frames: the whole record; raw: its IP packet)
    int64_t own_off    # where those bytes start in the capture data
    int64_t nl         # bytes of the new packet
    int64_t ln         # captured length written
    int64_t org        # original length written


cdef inline void _layout(_rec_t *r, int8_t body, int64_t base, int64_t l3, int64_t cp, int64_t origlen,
                         int64_t ip_len, bint cut, int64_t new_len, bint frames) noexcept nogil:
    """What one output record is made of (esp.pcap.output._Output.emit's rules); l3 < 0 counts as 0."""
    cdef int64_t l3c = l3 if l3 > 0 else 0, iplen
    r.head = 0
    r.own = 0
    r.own_off = base
    r.nl = 0
    if body == 2:
        r.nl = new_len
        if frames:
            r.head = l3c
    elif frames:
        r.own = cp
    else:
        iplen = ip_len if ip_len < cp - l3c else cp - l3c
        r.own = iplen if iplen > 0 else 0
        r.own_off = base + l3c
    r.ln = r.head + r.own + r.nl
    if frames:
        r.org = r.head + r.nl if body == 2 else origlen
    elif body == 2:
        r.org = r.nl
    elif cut:
        r.org = ip_len if ip_len > r.own else r.own
    else:
        r.org = r.own
    if r.org < r.ln:
        r.org = r.ln


cdef inline void _put_header(uint8_t *o, int64_t ts, int64_t ln, int64_t org, bint big, int64_t ts_mul,
                             int64_t ts_div, int64_t units) noexcept nogil:
    """A 16-byte pcap record header; the timestamp is ts * ts_mul // ts_div, split at ``units``."""
    cdef int64_t t = ts * ts_mul, sec
    if ts_div != 1:
        t = _floordiv(t, ts_div)
    if t >= 0 and units == 1000000:
        sec = t // 1000000  # a constant divisor: a multiply, not a division
    elif t >= 0 and units == 1000000000:
        sec = t // 1000000000
    else:
        sec = _floordiv(t, units)
    _wr32(o, <uint32_t>sec, big)
    _wr32(o + 4, <uint32_t>(t - sec * units), big)
    _wr32(o + 8, <uint32_t>ln, big)
    _wr32(o + 12, <uint32_t>org, big)


cdef inline void _put_ethertype(uint8_t *at, int version) noexcept nogil:
    """The 16-bit protocol field (Ethernet type, SLL protocol) naming an IPv6 or else IPv4 packet."""
    if version == 6:
        at[0] = 0x86
        at[1] = 0xDD
    else:
        at[0] = 0x08
        at[1] = 0x00


def emit_pcap(uint8_t[::1] out, const int8_t[::1] body, const uint8_t[::1] data, const int64_t[::1] base,
              const int64_t[::1] l3, const int64_t[::1] cap, const int64_t[::1] origlen,
              const int64_t[::1] ip_len, const uint8_t[::1] cut, const int64_t[::1] ts,
              const uint8_t[::1] new_buf, const int64_t[::1] new_off, const int32_t[::1] new_len,
              const int64_t[::1] et_at, bint frames, bint big, int64_t ts_mul, int64_t ts_div, int64_t units):
    """esp.pcap's tools' record output for a pcap file, in one pass: for each record whose ``body`` is not 0
    (1: the original packet, 2: new_buf's slot in place of the IP packet), a 16-byte record header with the
    record's timestamp (ts * ts_mul // ts_div, split at ``units``) and then the bytes. In front of a new packet
    (frames), the kept link-layer header's protocol field at ``et_at`` (>= 0) is set to the new packet's IP
    version, as a tunnel may change it; the capture's own bytes are never written to. Returns (bytes, records).
    Every slice is checked against its buffer first."""
    cdef Py_ssize_t n = body.shape[0], i
    cdef int64_t l3c, cp, pos = 0, count = 0
    cdef _rec_t r
    if (base.shape[0] < n or l3.shape[0] < n or cap.shape[0] < n or origlen.shape[0] < n or ip_len.shape[0] < n
            or cut.shape[0] < n or ts.shape[0] < n or new_off.shape[0] < n or new_len.shape[0] < n
            or et_at.shape[0] < n):
        raise ValueError("emit_pcap: arrays do not match the record count")
    if ts_mul <= 0 or ts_div <= 0 or units <= 0:
        raise ValueError("emit_pcap: bad timestamp scale")
    # pass 1: bounds and the total size
    for i in range(n):
        if body[i] == 0:
            continue
        l3c = l3[i] if l3[i] > 0 else 0
        cp = cap[i]
        if base[i] < 0 or cp < 0 or base[i] > data.shape[0] or cp > data.shape[0] - base[i] or l3c > cp:
            raise ValueError(f"emit_pcap: record {i} outside the capture data")
        if body[i] == 2 and (new_len[i] < 0 or new_off[i] < 0 or new_off[i] > new_buf.shape[0]
                             or new_len[i] > new_buf.shape[0] - new_off[i]):
            raise ValueError(f"emit_pcap: record {i}: new packet outside its arena")
        _layout(&r, body[i], base[i], l3[i], cp, origlen[i], ip_len[i], cut[i], new_len[i], frames)
        pos += 16 + r.ln
    if pos > out.shape[0]:
        raise ValueError(f"emit_pcap: the output needs {pos} bytes, {out.shape[0]} given")
    cdef uint8_t *o = &out[0] if out.shape[0] else NULL
    pos = 0
    with nogil:
        for i in range(n):
            if body[i] == 0:
                continue
            if i + PREFETCH_RECORDS < n and body[i + PREFETCH_RECORDS] == 2:
                pcapio_prefetch(&new_buf[0] + new_off[i + PREFETCH_RECORDS])
            elif i + PREFETCH_RECORDS < n:
                pcapio_prefetch(&data[0] + base[i + PREFETCH_RECORDS])
            _layout(&r, body[i], base[i], l3[i], cap[i], origlen[i], ip_len[i], cut[i], new_len[i], frames)
            _put_header(o + pos, ts[i], r.ln, r.org, big, ts_mul, ts_div, units)
            pos += 16
            if r.head:
                memcpy(o + pos, &data[base[i]], <size_t>r.head)
                if r.nl and 0 <= et_at[i] <= r.head - 2:
                    _put_ethertype(o + pos + et_at[i], new_buf[new_off[i]] >> 4)
                pos += r.head
            if r.own:
                memcpy(o + pos, &data[r.own_off], <size_t>r.own)
                pos += r.own
            if r.nl:
                memcpy(o + pos, &new_buf[new_off[i]], <size_t>r.nl)
                pos += r.nl
            count += 1
    return pos, count


cdef inline int8_t _other_body(bint esp, bint frag, bint cut, bint ip, bint drop_other, bint drop_unknown,
                               bint frames, int64_t *unknown, int64_t *dropped) noexcept nogil:
    """What a record no SA took becomes (0 dropped, 1 original), by esp.pcap's tools' rules; counts an ESP packet of
    an unknown SPI and a record dropped by option."""
    if esp:
        unknown[0] += 1
        if drop_unknown or drop_other:
            dropped[0] += 1
            return 0
    elif drop_other and not (frag or cut):
        dropped[0] += 1
        return 0
    if not frames and not ip:
        return 0  # raw IP output cannot hold a record without an IP packet
    return 1


def decrypt_outcome(const uint8_t[::1] assigned, const uint8_t[::1] status, const uint8_t[::1] esp,
                    const uint8_t[::1] frag, const uint8_t[::1] cut, const int64_t[::1] version, bint drop_other,
                    bint drop_unknown, bint frames, int8_t[::1] body):
    """What each record of a decrypted chunk becomes (body: 0 dropped, 1 original, 2 decrypted), by
    esp.pcap's tools' rules, and the counts for its summary: (processed, unknown SPI, dropped by option, passed
    through, written)."""
    cdef Py_ssize_t n = assigned.shape[0], i
    cdef int64_t processed = 0, unknown = 0, dropped = 0, passed = 0, written = 0
    cdef int8_t b
    if (status.shape[0] < n or esp.shape[0] < n or frag.shape[0] < n or cut.shape[0] < n
            or version.shape[0] < n or body.shape[0] < n):
        raise ValueError("decrypt_outcome: arrays do not match the record count")
    with nogil:
        for i in range(n):
            if assigned[i]:
                processed += 1
                b = 2 if status[i] == 0 else 0
            else:
                b = _other_body(esp[i], frag[i], cut[i], version[i] != 0, drop_other, drop_unknown, frames,
                                &unknown, &dropped)
            body[i] = b
            passed += b == 1
            written += b != 0
    return processed, unknown, dropped, passed, written


cdef enum:
    V_OK = 0              # esp._core's verdicts used here
    V_MALFORMED = 3
    V_UNSUPPORTED = 13
    SA_IDLE = 0           # EspChunk.state: not begun in this run
    SA_BEGUN = 1
    SA_REFUSED = 2        # begin() refused: its packets are UNSUPPORTED
    TALLY_BYTES = 32      # EspChunk's tally: verdicts are columns 0..31, plaintext bytes this one


cdef class EspChunk:
    """A chunk of a pcap capture decrypted (or, ``outbound``, encrypted) straight into output records: :meth:`run`
    takes records a..b, and for each packet an SA was chosen for, the core (through esp/_saapi.h) writes its
    output right where its output record will hold it, after the 16-byte header and (frames) the kept
    link-layer bytes; the header follows once the length is known. The core's output is thus written once, into
    the buffer that goes to the file, not into a buffer of the core's and then copied. Other records follow
    esp.pcap's tools' rules (the numpy reference: ``_outcome_numpy`` and ``_Output.emit``), byte for byte (tested):
    an encrypt passes ``esp`` and ``frag`` all zero and ``cut`` for cut IP packets.

    ``sa_of[i]`` is the index into ``primaries`` of record i's SA, or -1; record i's packet is its IP packet
    (``ip_len`` bytes at ``l3``), and its output may be ``grow`` bytes longer (an encrypt's overhead; 0 to
    decrypt). ``fallbacks[k]`` (or None) is tried on a packet ``primaries[k]`` found MALFORMED (mode not known:
    tunnel, then transport); its verdict counts only if OK. ``tally[k]`` adds up SA k's verdicts (column v:
    packets with verdict v) and, in column TALLY_BYTES, the plaintext bytes of the packets that went through.
    Every index is checked before a run touches memory; the SA contexts must be distinct."""

    cdef const espresso_sa_api *api
    cdef list _keep
    cdef void **prim
    cdef void **fb
    cdef uint8_t *state
    cdef Py_ssize_t nsa, n
    cdef const int32_t[::1] sa_of
    cdef const uint8_t[::1] data
    cdef const int64_t[::1] base, l3, cap, origlen, ip_len, ts, et_at, version
    cdef const uint8_t[::1] cut, esp, frag
    cdef int64_t[:, ::1] tally
    cdef bint drop_other, drop_unknown, frames, big, outbound
    cdef int64_t ts_mul, ts_div, units, grow

    def __cinit__(self):
        self.prim = NULL
        self.fb = NULL
        self.state = NULL

    def __init__(self, api, bint outbound, int64_t grow, list primaries, list fallbacks, const int32_t[::1] sa_of,
                 const uint8_t[::1] data,
                 const int64_t[::1] base, const int64_t[::1] l3, const int64_t[::1] cap,
                 const int64_t[::1] origlen, const int64_t[::1] ip_len, const uint8_t[::1] cut,
                 const int64_t[::1] ts, const int64_t[::1] et_at, const uint8_t[::1] esp, const uint8_t[::1] frag,
                 const int64_t[::1] version, int64_t[:, ::1] tally, bint drop_other,
                 bint drop_unknown, bint frames, bint big, int64_t ts_mul, int64_t ts_div, int64_t units):
        cdef Py_ssize_t n = sa_of.shape[0], k, i
        self.api = <const espresso_sa_api *>PyCapsule_GetPointer(api, b"esp._core.SA_API")
        if self.api.version != ESPRESSO_SA_API_VERSION:
            raise ValueError(f"esp._core's SA_API is version {self.api.version}, esp.pcap._pcapio needs "
                             f"{ESPRESSO_SA_API_VERSION}: rebuild both")
        if len(fallbacks) != len(primaries):
            raise ValueError("EspChunk: one fallback (or None) per primary SA")
        if (base.shape[0] < n or l3.shape[0] < n or cap.shape[0] < n or origlen.shape[0] < n
                or ip_len.shape[0] < n or ts.shape[0] < n or et_at.shape[0] < n or version.shape[0] < n
                or cut.shape[0] < n or esp.shape[0] < n or frag.shape[0] < n):
            raise ValueError("EspChunk: arrays do not match the record count")
        if ts_mul <= 0 or ts_div <= 0 or units <= 0:
            raise ValueError("EspChunk: bad timestamp scale")
        if grow < 0 or grow > 4096:
            raise ValueError("EspChunk: grow is 0..4096 bytes")
        self.nsa = len(primaries)
        if tally.shape[0] < self.nsa or tally.shape[1] != TALLY_BYTES + 1:
            raise ValueError(f"EspChunk: tally must be ({self.nsa}, {TALLY_BYTES + 1})")
        for i in range(n):
            if sa_of[i] < -1 or sa_of[i] >= self.nsa:
                raise ValueError(f"EspChunk: record {i} names SA {sa_of[i]} of {self.nsa}")
        # what the contexts are borrowed from: kept alive by this object
        self._keep = list(primaries) + [f for f in fallbacks if f is not None]
        if len({id(x) for x in self._keep}) != len(self._keep):
            raise ValueError("EspChunk: an SA context is named twice")
        self.prim = <void **>PyMem_Malloc(max(1, self.nsa) * sizeof(void *))
        self.fb = <void **>PyMem_Malloc(max(1, self.nsa) * sizeof(void *))
        self.state = <uint8_t *>PyMem_Malloc(max(1, 2 * self.nsa))
        if self.prim == NULL or self.fb == NULL or self.state == NULL:
            raise MemoryError()
        for k in range(self.nsa):
            self.prim[k] = <void *>primaries[k]
            self.fb[k] = <void *>fallbacks[k] if fallbacks[k] is not None else NULL
        self.n = n
        self.sa_of, self.data, self.base, self.l3, self.cap = sa_of, data, base, l3, cap
        self.origlen, self.ip_len, self.cut, self.ts, self.et_at = origlen, ip_len, cut, ts, et_at
        self.esp, self.frag, self.version, self.tally = esp, frag, version, tally
        self.drop_other, self.drop_unknown, self.frames, self.big = drop_other, drop_unknown, frames, big
        self.ts_mul, self.ts_div, self.units = ts_mul, ts_div, units
        self.outbound, self.grow = outbound, grow

    def __dealloc__(self):
        PyMem_Free(self.prim)
        PyMem_Free(self.fb)
        PyMem_Free(self.state)

    cdef int _through(self, Py_ssize_t k, const uint8_t *pkt, int n, uint8_t *out, int cap,
                      int *outl) noexcept nogil:
        """Record's packet through SA k (and its fallback), beginning each context on first use in a run."""
        cdef int r, r2
        if self.state[k] == SA_IDLE:
            self.state[k] = SA_BEGUN if self.api.begin(self.prim[k], self.outbound) == 0 else SA_REFUSED
        if self.state[k] == SA_REFUSED:
            outl[0] = 0
            return V_UNSUPPORTED
        r = self.api.process(self.prim[k], pkt, n, out, cap, outl)
        if r == V_MALFORMED and self.fb[k] != NULL:
            if self.state[self.nsa + k] == SA_IDLE:
                self.state[self.nsa + k] = SA_BEGUN if self.api.begin(self.fb[k], self.outbound) == 0 else SA_REFUSED
            if self.state[self.nsa + k] == SA_BEGUN:
                r2 = self.api.process(self.fb[k], pkt, n, out, cap, outl)
                if r2 == V_OK:
                    return r2
            outl[0] = 0
        return r

    def run(self, uint8_t[::1] out, Py_ssize_t a, Py_ssize_t b):
        """Records a..b into ``out`` from its start; returns (bytes, records written, processed by an SA,
        unknown SPI, dropped by option, passed through)."""
        cdef Py_ssize_t i, k
        cdef int64_t need = 0, l3c, el, own, head, pos = 0, written = 0, processed = 0, unknown = 0
        cdef int64_t dropped = 0, passed = 0, dn = self.data.shape[0]
        cdef int r, outl
        cdef _rec_t rec
        cdef uint8_t *o
        cdef uint8_t *p
        cdef const uint8_t *d = &self.data[0] if dn else NULL
        if a < 0 or b > self.n or a > b:
            raise ValueError(f"EspChunk.run: records {a}..{b} of {self.n}")
        # bounds, and the room the records can need at most (an output is at most ``grow`` longer than its input)
        for i in range(a, b):
            l3c = self.l3[i] if self.l3[i] > 0 else 0
            if (self.base[i] < 0 or self.cap[i] < 0 or self.base[i] > dn or self.cap[i] > dn - self.base[i]
                    or l3c > self.cap[i]):  # written so that no sum can overflow
                raise ValueError(f"EspChunk: record {i} outside the capture data")
            own = self.cap[i]
            if self.sa_of[i] >= 0:
                el = self.ip_len[i]
                if el < 0 or el > 0x7FFFFFFF - self.grow or el > dn - self.base[i] - l3c:
                    raise ValueError(f"EspChunk: record {i}: IP packet outside the capture data")
                if (l3c if self.frames else 0) + el + self.grow > own:
                    own = (l3c if self.frames else 0) + el + self.grow
            need += 16 + own
        if need > out.shape[0]:
            raise ValueError(f"EspChunk.run: the records need up to {need} bytes, {out.shape[0]} given")
        if b == a:
            return 0, 0, 0, 0, 0, 0
        o = &out[0]
        memset(self.state, SA_IDLE, max(1, 2 * self.nsa))
        with nogil:
            for i in range(a, b):
                if i + PREFETCH_RECORDS < b:
                    pcapio_prefetch(d + self.base[i + PREFETCH_RECORDS])
                k = self.sa_of[i]
                if k >= 0:
                    processed += 1
                    l3c = self.l3[i] if self.l3[i] > 0 else 0
                    head = l3c if self.frames else 0
                    p = o + pos + 16 + head
                    outl = 0
                    r = self._through(k, d + self.base[i] + l3c, <int>self.ip_len[i], p,
                                      <int>(self.ip_len[i] + self.grow),
                                      &outl)
                    self.tally[k, r] += 1
                    if r != V_OK:
                        continue
                    self.tally[k, TALLY_BYTES] += self.ip_len[i] if self.outbound else outl
                    _put_header(o + pos, self.ts[i], head + outl, head + outl, self.big, self.ts_mul,
                                self.ts_div, self.units)
                    if head:
                        memcpy(o + pos + 16, d + self.base[i], <size_t>head)
                        if 0 <= self.et_at[i] <= head - 2 and outl > 0:
                            _put_ethertype(o + pos + 16 + self.et_at[i], p[0] >> 4)
                    pos += 16 + head + outl
                    written += 1
                    continue
                if not _other_body(self.esp[i], self.frag[i], self.cut[i], self.version[i] != 0, self.drop_other,
                                   self.drop_unknown, self.frames, &unknown, &dropped):
                    continue
                passed += 1
                _layout(&rec, 1, self.base[i], self.l3[i], self.cap[i], self.origlen[i], self.ip_len[i],
                        self.cut[i], 0, self.frames)
                _put_header(o + pos, self.ts[i], rec.ln, rec.org, self.big, self.ts_mul, self.ts_div, self.units)
                pos += 16
                if rec.own:
                    memcpy(o + pos, d + rec.own_off, <size_t>rec.own)
                    pos += rec.own
                written += 1
            for k in range(2 * self.nsa):
                if self.state[k] == SA_BEGUN:
                    self.api.end(self.prim[k] if k < self.nsa else self.fb[k - self.nsa])
        return pos, written, processed, unknown, dropped, passed
