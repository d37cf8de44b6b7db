# The batched system calls of esp/gateway/_io.pyx, for the compiled data loop (esp/gateway/_loop.pyx).
from libc.stdint cimport uint8_t, int32_t, int64_t

cdef long io_read(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                  int max) noexcept nogil
cdef long io_send(int fd, int fam, int udp, const uint8_t *buf, int64_t buflen, const int64_t *off,
                  const int32_t *len, const int32_t *sel, int nsel, int gso, long *drops,
                  int64_t *ctr) noexcept nogil
cdef int io_poll(const int *fds, int nfds, int timeout_ms) noexcept nogil
cdef long io_recv(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                  int max, int synth, const uint8_t *laddr, int lfam, int lport) noexcept nogil
cdef long io_recv_gro(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                      int max, int synth, const uint8_t *laddr, int lfam, int lport, uint8_t *scratch,
                      int64_t scratch_len, int64_t *ctr) noexcept nogil
cdef long io_write(int fd, const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len,
                   const int32_t *sel, int nsel, long *drops) noexcept nogil
