# The SPD matcher of esp/_classify.pyx, for compiled callers (esp/gateway/_loop.pyx).
from libc.stdint cimport uint8_t, int32_t, int64_t, uint32_t, uint64_t

cdef void classify_rows(const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len,
                        const int32_t *rows, int n, const uint64_t *t, int k, int32_t *out) noexcept nogil
cdef void demux_rows(const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len, int n,
                     uint32_t *spi, uint8_t *kind) noexcept nogil
