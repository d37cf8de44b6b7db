# The packet step that esp/_core exports to other compiled modules (esp/_saapi.h): declared once, cimported by
# esp/_core.pyx (which fills the table) and esp/_pcapio.pyx (which calls it).
from libc.stdint cimport uint8_t

cdef extern from "_saapi.h" nogil:
    ctypedef struct espresso_sa_api:
        int version
        int (*begin)(void *ctx, int outbound) noexcept nogil
        int (*process)(void *ctx, const uint8_t *pkt, int n, uint8_t *out, int cap, int *out_len) noexcept nogil
        void (*end)(void *ctx) noexcept nogil
    int ESPRESSO_SA_API_VERSION
