# The segmentation step of esp/gateway/_offload.pyx, for the compiled data loop (esp/gateway/_loop.pyx).
from libc.stdint cimport uint8_t, int32_t, int64_t

cdef struct Parsed:
    int flags, gso, ecn, gso_size, hdr_len, csum_start, csum_offset
    int version, ip_hlen, ip_len, proto, l4_off, hlen, segments

cdef int vnet_parse(const uint8_t *p, Py_ssize_t n, Parsed *r) noexcept nogil
cdef Py_ssize_t vnet_segment(const uint8_t *p, Py_ssize_t n, uint8_t *out, Py_ssize_t outlen,
                             const int64_t *off, const int32_t *cap, int32_t *lengths,
                             Py_ssize_t nslots) noexcept nogil
cdef Py_ssize_t vnet_coalesce(const uint8_t *buf, Py_ssize_t buflen, const int64_t *off, const int32_t *length,
                              const int32_t *select, Py_ssize_t n, bint udp, uint8_t *out, Py_ssize_t outlen,
                              int64_t *out_off, int32_t *out_len, Py_ssize_t out_slots) noexcept nogil
