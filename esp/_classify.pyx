# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled header parser of the data plane: SPD selector matching and the inbound ESP/IKE demux.

Both run once per batch with the GIL released. They are the compiled twins of the numpy references in
:mod:`esp.spd` and :mod:`esp.dataplane` (same fields, same rules; tests/esp/test_spd.py checks them against
each other), kept apart from the gateway's socket/TUN I/O so the core does not depend on the router side.
"""
from libc.stdint cimport uint8_t, int32_t, int64_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>

    /* ---- header parsing and selector matching for the data plane (the compiled twin of esp.spd's numpy
       reference: same fields, same rules, checked against it by tests/esp/test_spd.py) ---- */
    typedef struct { int ok, ver, proto, sport, dport; uint64_t sh, sl, dh, dl; } espio_hdr;

    #define ESPIO_SEL_COLS 15
    static inline uint32_t espio_be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
    static inline uint64_t espio_be32(const uint8_t *p) {
        return ((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 8) | p[3];
    }
    static inline uint64_t espio_be64(const uint8_t *p) { return (espio_be32(p) << 32) | espio_be32(p + 4); }

    static void espio_parse(const uint8_t *buf, int64_t buflen, int64_t off, int32_t len, espio_hdr *h) {
        const uint8_t *p;
        int n = len, nonfirst = 0, l4, nh, i, kind;
        h->ok = h->ver = h->proto = 0; h->sport = h->dport = -1; h->sh = h->sl = h->dh = h->dl = 0;
        if (off < 0 || len <= 0 || off + (int64_t)len > buflen) return;
        p = buf + off;
        if ((p[0] >> 4) == 4) {
            int ihl = (p[0] & 15) * 4;
            if (ihl < 20 || ihl > n) return;
            h->ver = 4; h->proto = p[9]; h->sl = espio_be32(p + 12); h->dl = espio_be32(p + 16);
            nonfirst = (p[6] & 0x1f) != 0 || p[7] != 0;
            l4 = ihl;
        } else if ((p[0] >> 4) == 6) {
            if (n < 40) return;
            h->ver = 6;
            h->sh = espio_be64(p + 8); h->sl = espio_be64(p + 16); h->dh = espio_be64(p + 24); h->dl = espio_be64(p + 32);
            nh = p[6]; l4 = 40;
            for (i = 0; i < 4; i++) {   /* MAX_IPV6_EXTENSION_HEADERS */
                int size;
                if (!(nh == 0 || nh == 43 || nh == 60 || nh == 44 || nh == 51) || l4 + 8 > n) break;
                if (nh == 44) { nonfirst |= (espio_be16(p + l4 + 2) >> 3) != 0; size = 8; }
                else if (nh == 51) size = (p[l4 + 1] + 2) * 4;
                else size = (p[l4 + 1] + 1) * 8;
                nh = p[l4];
                l4 += size;
            }
            h->proto = nh;
        } else return;
        h->ok = 1;
        if (nonfirst || l4 + 4 > n) return;
        kind = (h->proto == 6 || h->proto == 17 || h->proto == 132 || h->proto == 136) ? 1
             : (h->proto == 1 || h->proto == 58) ? 2 : 0;
        if (kind == 1) { h->sport = (int)espio_be16(p + l4); h->dport = (int)espio_be16(p + l4 + 2); }
        else if (kind == 2) { h->sport = p[l4]; h->dport = p[l4 + 1]; }
    }

    /* Columns: ver, sh, sl, smh, sml, dh, dl, dmh, dml, proto, splo, sphi, dplo, dphi, owner. */
    static int espio_first(const espio_hdr *h, const uint64_t *t, int k) {
        int j;
        for (j = 0; j < k; j++) {
            const uint64_t *r = t + (size_t)j * ESPIO_SEL_COLS;
            if (r[0] && (int)r[0] != h->ver) continue;
            if ((h->sh & r[3]) != r[1] || (h->sl & r[4]) != r[2]) continue;
            if ((h->dh & r[7]) != r[5] || (h->dl & r[8]) != r[6]) continue;
            if (r[9] && (int)r[9] != h->proto) continue;
            if (!(r[10] == 0 && r[11] == 65535) && (h->sport < (int64_t)r[10] || h->sport > (int64_t)r[11])) continue;
            if (!(r[12] == 0 && r[13] == 65535) && (h->dport < (int64_t)r[12] || h->dport > (int64_t)r[13])) continue;
            return (int)r[14];
        }
        return -1;
    }

    static void espio_classify(const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len,
                               const int32_t *rows, int n, const uint64_t *t, int k, int32_t *out) {
        int i;
        espio_hdr h;
        for (i = 0; i < n; i++) {
            int slot = rows ? rows[i] : i;
            espio_parse(buf, buflen, off[slot], len[slot], &h);
            out[i] = h.ok ? espio_first(&h, t, k) : -2;
        }
    }

    /* Inbound demux: kind 0 = ESP (spi set), 1 = IKE (non-ESP marker on UDP), 2 = NAT keepalive, 3 = other. */
    static void espio_demux(const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len, int n,
                            uint32_t *spi, uint8_t *kind) {
        int i;
        for (i = 0; i < n; i++) {
            const uint8_t *p;
            int m = len[i], hl, esp;
            spi[i] = 0; kind[i] = 3;
            if (off[i] < 0 || m <= 0 || off[i] + (int64_t)m > buflen) continue;
            p = buf + off[i];
            if ((p[0] >> 4) == 4 && m >= 20) {
                hl = (p[0] & 15) * 4;
                if (hl < 20 || hl > m) continue;
                esp = p[9];
            } else if ((p[0] >> 4) == 6 && m >= 40) {
                hl = 40; esp = p[6];
            } else continue;
            if (esp == 17) {
                if (m == hl + 9 && p[hl + 8] == 0xff) { kind[i] = 2; continue; }
                if (m >= hl + 12 && espio_be32(p + hl + 8) == 0) { kind[i] = 1; continue; }
                hl += 8;
            } else if (esp != 50) continue;
            if (m < hl + 8) continue;
            spi[i] = (uint32_t)espio_be32(p + hl);
            if (spi[i] == 0) continue;
            kind[i] = 0;
        }
    }
    """
    void espio_classify(const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len,
                        const int32_t *rows, int n, const uint64_t *t, int k, int32_t *out) nogil
    void espio_demux(const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len, int n,
                     uint32_t *spi, uint8_t *kind) nogil


SELECTOR_COLUMNS = 15


def classify(const uint8_t[::1] buf, const int64_t[::1] offsets, const int32_t[::1] lengths,
             const uint64_t[:, ::1] table, int32_t[::1] out, const int32_t[::1] rows=None):
    """First matching selector's owner for each packet (slots 0..len(out)-1, or ``rows``) into ``out``:
    -2 when the IP header cannot be parsed, -1 when no selector matches. ``table`` rows are selectors
    (columns as esp.spd.CompiledSelectors.table). The same rules as esp.spd.parse_headers + first_match."""
    cdef int n = out.shape[0], i
    cdef const int32_t *rp = NULL
    if table.shape[0] and table.shape[1] != SELECTOR_COLUMNS:
        raise ValueError(f"selector table needs {SELECTOR_COLUMNS} columns")
    if rows is not None:
        if rows.shape[0] < n:
            raise ValueError("rows shorter than out")
        for i in range(n):
            if rows[i] < 0 or rows[i] >= offsets.shape[0] or rows[i] >= lengths.shape[0]:
                raise IndexError(f"row {rows[i]} outside the batch")
        rp = &rows[0] if n else NULL
    elif n > offsets.shape[0] or n > lengths.shape[0]:
        raise ValueError("out is longer than the batch")
    if n == 0:
        return
    with nogil:
        espio_classify(&buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], &lengths[0], rp, n,
                       &table[0, 0] if table.shape[0] else NULL, table.shape[0], &out[0])


def esp_demux(const uint8_t[::1] buf, const int64_t[::1] offsets, const int32_t[::1] lengths,
              uint32_t[::1] spi, uint8_t[::1] kind):
    """SPI and kind of each received packet (0 ESP, 1 IKE with non-ESP marker, 2 NAT keepalive, 3 other)."""
    cdef int n = spi.shape[0]
    if n > offsets.shape[0] or n > lengths.shape[0] or kind.shape[0] < n:
        raise ValueError("spi/kind arrays do not fit the batch")
    if n == 0:
        return
    with nogil:
        espio_demux(&buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], &lengths[0], n, &spi[0],
                    &kind[0])


__all__ = ["classify", "esp_demux", "SELECTOR_COLUMNS"]


cdef void classify_rows(const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len,
                        const int32_t *rows, int n, const uint64_t *t, int k, int32_t *out) noexcept nogil:
    """:func:`classify` for compiled callers that hold the arena and the table themselves (no checks here)."""
    espio_classify(buf, buflen, off, len, rows, n, t, k, out)


cdef void demux_rows(const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len, int n,
                     uint32_t *spi, uint8_t *kind) noexcept nogil:
    """:func:`esp_demux` for compiled callers (no checks here)."""
    espio_demux(buf, buflen, off, len, n, spi, kind)
