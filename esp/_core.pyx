# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The ESP hot path (RFC 4303): one ``SaContext`` per SA, batches processed with the GIL released.

Python configures, this module touches bytes. A call crosses the boundary once per batch; a bad packet gets a
verdict and a counter, never an exception. Exceptions are raised only before a loop starts (bad arguments).

Layout of what a context does per packet, outbound: frame (outer IPv4/IPv6 header [+ UDP, RFC 3948] in tunnel
mode, or ESP inserted after the IP header in transport mode), ESP header with the next sequence number, explicit
IV (the 64-bit sequence number for counter-mode ciphers, bulk-generated random bytes for CBC), payload, optional
TFC padding, monotonic padding, trailer, ICV. Inbound: parse the outer header, quick replay check, verify the
ICV, update the RFC 6479 window only after authentication, decrypt, check padding, rebuild the inner packet.

Thread contract: a context is guarded by its own lock, taken once per batch without the GIL. Two threads on two
SAs run in parallel; two threads sharing one SA are serialised, so sequence numbers never repeat.
"""
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcmp, memcpy, memmove, memset
from libc.stdlib cimport malloc, calloc, free, qsort
from cpython.pycapsule cimport PyCapsule_New
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)

cdef extern from "_espcrypto.h" nogil:
    ctypedef struct espc_ctx:
        pass
    enum:
        ESPC_OPENSSL, ESPC_IPSECMB
        ESPC_GCM, ESPC_CCM, ESPC_GMAC, ESPC_CHACHA, ESPC_CBC, ESPC_CTR, ESPC_NULL, ESPC_3DES
        ESPC_I_NONE, ESPC_I_SHA1, ESPC_I_SHA256, ESPC_I_SHA384, ESPC_I_SHA512
    ctypedef struct espc_hmac:
        int digest
    int espc_global_init()
    const char *espc_ipsecmb_version()
    const char *espc_ipsecmb_arch()
    const char *espc_openssl_version()
    int espc_ipsecmb_supports(int cipher, int key_len, int integ)
    ctypedef void espc_job
    void *espc_jobs_mgr()
    espc_job *espc_jobs_submit(espc_ctx *c, void *mgr, const uint8_t *src, uint64_t cipher_off,
                               uint64_t cipher_len, uint8_t *dst, uint64_t hash_len, const uint8_t *iv,
                               uint8_t *tag, void *user)
    espc_job *espc_jobs_next(void *mgr, int flush)
    void *espc_job_user(espc_job *j)
    int espc_job_ok(espc_job *j)
    espc_ctx *espc_new(int backend, int cipher, int enc, const uint8_t *key, int key_len, int integ,
                       const uint8_t *ikey, int ikey_len, int icv_len)
    void espc_free(espc_ctx *c)
    int espc_aead(espc_ctx *c, const uint8_t *nonce, const uint8_t *aad, int aad_len,
                  const uint8_t *inp, uint8_t *out, int length, uint8_t *tag)
    int espc_cipher(espc_ctx *c, const uint8_t *iv, const uint8_t *inp, uint8_t *out, int length)
    int espc_aead_seal2(espc_ctx *c, const uint8_t *nonce, const uint8_t *aad, int aad_len, const uint8_t *in1,
                        int len1, const uint8_t *in2, int len2, uint8_t *out, uint8_t *tag)
    void espc_hmac_ctx "espc_hmac_compute"(const espc_hmac *h, const uint8_t *d1, size_t l1, const uint8_t *d2,
                                   size_t l2, uint8_t *out)
    espc_hmac *espc_get_hmac "ESPC_HMAC_OF"(espc_ctx *c)
    int RAND_bytes(unsigned char *buf, int num)

    void put16 "espc_put16"(uint8_t *p, uint32_t v)
    void put32 "espc_put32"(uint8_t *p, uint32_t v)
    uint32_t get16 "espc_get16"(const uint8_t *p)
    uint32_t get32 "espc_get32"(const uint8_t *p)
    const uint8_t *PAD_BYTES "espc_pad_bytes"
    int CRYPTO_memcmp(const void *a, const void *b, size_t n)

cdef extern from *:
    """
    #define ESPC_HMAC_OF(c) (&(c)->hmac)
    """

from esp._saapi cimport ESPRESSO_SA_API_VERSION, espresso_sa_api

# ---- verdicts: the one definition; esp.batch builds its IntEnum from VERDICTS ----
cdef enum:
    V_OK = 0
    V_AUTH_FAILED = 1
    V_REPLAYED = 2
    V_MALFORMED = 3
    V_PAD_ERROR = 4
    V_DUMMY = 5
    V_NO_SPACE = 6
    V_EXPIRED = 7
    V_SEQ_EXHAUSTED = 8
    V_NO_SA = 9
    V_POLICY_MISMATCH = 10
    V_DISCARDED = 11
    V_BYPASSED = 12
    V_UNSUPPORTED = 13
    V_UNPROCESSED = 14      # a slot no call has written: never mistaken for OK

VERDICTS = ("OK", "AUTH_FAILED", "REPLAYED", "MALFORMED", "PAD_ERROR", "DUMMY", "NO_SPACE", "EXPIRED",
            "SEQ_EXHAUSTED", "NO_SA", "POLICY_MISMATCH", "DISCARDED", "BYPASSED", "UNSUPPORTED", "UNPROCESSED")

# Framing modes
cdef enum:
    F_RAW = 0        # ESP only: payload in, SPI..ICV out (next header given per call)
    F_TUNNEL = 1
    F_TRANSPORT = 2

CIPHERS = {"aes-gcm": ESPC_GCM, "aes-ccm": ESPC_CCM, "aes-gmac": ESPC_GMAC,
           "chacha20-poly1305": ESPC_CHACHA, "aes-cbc": ESPC_CBC, "aes-ctr": ESPC_CTR, "null": ESPC_NULL,
           "3des-cbc": ESPC_3DES}
INTEGS = {"none": ESPC_I_NONE, "sha1_96": ESPC_I_SHA1, "sha256_128": ESPC_I_SHA256,
          "sha384_192": ESPC_I_SHA384, "sha512_256": ESPC_I_SHA512}

cdef bint _HAVE_IPSECMB = espc_global_init() == 1
HAVE_IPSECMB = bool(_HAVE_IPSECMB)
IPSECMB_VERSION = espc_ipsecmb_version().decode() if _HAVE_IPSECMB else None
IPSECMB_ARCH = espc_ipsecmb_arch().decode() if _HAVE_IPSECMB else None
OPENSSL_VERSION = espc_openssl_version().decode()

DEF IV_POOL = 4096          # bytes of random CBC IVs drawn per RAND_bytes call (256 packets)
DEF MAX_HDR = 40 + 8        # outer IPv6 header + UDP
DEF SPLIT_AT = 256          # payloads from this size are encrypted where they lie, not copied first
DEF MAX_IP = 65535 + 40     # the longest IP packet without jumbograms: an IPv6 header plus a 16-bit payload length
MAX_WINDOW = 1 << 20


cdef inline bint _overlap(const uint8_t *a, Py_ssize_t an, const uint8_t *b, Py_ssize_t bn) noexcept nogil:
    """Whether [a, a+an) and [b, b+bn) share a byte: a packet processed in place (or refused for overlapping)."""
    return an > 0 and bn > 0 and a < b + bn and b < a + an


def ipsecmb_supports(str cipher, int key_len, str integ="none") -> bool:
    return bool(espc_ipsecmb_supports(CIPHERS[cipher], key_len, INTEGS[integ]))


# A packet in flight in ipsec-mb's job manager, with what its completion needs.
cdef struct pending_t:
    Py_ssize_t slot
    uint64_t s            # full sequence number
    int ctlen, hl, ver, esp_off, total, hash_len
    const uint8_t *pkt    # inbound: the outer packet
    uint8_t *out          # the output slot
    uint8_t *esp_w        # outbound: the ESP header being written
    const uint8_t *ivp    # outbound: the IV (or counter block) the job reads
    uint8_t *moved        # inbound in place: the job decrypted here, the plaintext moves to the output after
    uint8_t tag[64]       # inbound: the ICV computed
    uint8_t iv[16]        # CTR: the counter block (must live until the job completes)

DEF RING = 256            # > IMB_MAX_JOBS (128): entries are reused only after their job completed


cdef inline uint32_t ip4_checksum(const uint8_t *h, int n) noexcept nogil:
    cdef uint32_t s = 0
    cdef int i
    for i in range(0, n, 2):
        s += (<uint32_t>h[i] << 8) | h[i + 1]
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

cdef inline uint32_t sum16(const uint8_t *p, int n, uint32_t s) noexcept nogil:
    cdef int i
    for i in range(0, n - 1, 2):
        s += (<uint32_t>p[i] << 8) | p[i + 1]
    if n & 1:
        s += <uint32_t>p[n - 1] << 8
    return s

cdef inline uint32_t fold(uint32_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


cdef inline int _inner_len(const uint8_t *p, int plen, int nh) noexcept nogil:
    """Tunnel mode: the length of the inner IP packet in a decrypted payload of plen bytes, or -1. The inner
    packet's own length strips TFC padding (RFC 4303 2.4)."""
    if nh == 4 and plen >= 20 and (p[0] >> 4) == 4 and 20 <= get16(p + 2) <= plen:
        return get16(p + 2)
    if nh == 41 and plen >= 40 and (p[0] >> 4) == 6 and get16(p + 4) + 40 <= plen:
        return get16(p + 4) + 40
    return -1


cdef inline int _tclass(const uint8_t *inner, int nh) noexcept nogil:
    """DSCP and ECN of an inner IPv4 (nh 4) or IPv6 packet: copied to the outer header (RFC 4301 5.1.2.1)."""
    return inner[1] if nh == 4 else (((inner[0] & 0x0f) << 4) | (inner[1] >> 4))


cdef class BatchView:
    """Raw pointers into a batch's arrays, taken once per batch instead of once per call.

    Acquiring nine typed buffers cost about 8 microseconds a call, under the GIL: a sixth of a 256-packet
    batch at 64 bytes. The view holds the buffers (so numpy cannot resize or free them) and records which are
    writable: a read-only arena (a memory-mapped capture) can be a source, never a destination.
    """

    cdef object _refs
    cdef const uint8_t *buf
    cdef uint8_t *wbuf
    cdef Py_ssize_t buflen
    cdef readonly Py_ssize_t count
    cdef const int64_t *off
    cdef const int32_t *length
    cdef int32_t *wlength
    cdef const int32_t *cap
    cdef uint8_t *status

    def __init__(self, buf, offsets, lengths, capacity, status):
        cdef const uint8_t[::1] b = buf
        cdef const int64_t[::1] o = offsets
        cdef const int32_t[::1] l = lengths
        cdef const int32_t[::1] c = capacity
        cdef uint8_t[::1] st = status
        cdef uint8_t[::1] wb
        cdef int32_t[::1] wl
        self.count = o.shape[0]
        if l.shape[0] != self.count or c.shape[0] != self.count or st.shape[0] != self.count:
            raise ValueError("offsets, lengths, capacity and status must have one length")
        self.buflen = b.shape[0]
        self.buf = &b[0] if self.buflen > 0 else NULL
        self.off = &o[0] if self.count > 0 else NULL
        self.length = &l[0] if self.count > 0 else NULL
        self.cap = &c[0] if self.count > 0 else NULL
        self.status = &st[0] if self.count > 0 else NULL
        self.wbuf = NULL
        self.wlength = NULL
        refs = [b, o, l, c, st]
        try:
            wb = buf
            self.wbuf = &wb[0] if self.buflen > 0 else NULL
            refs.append(wb)
        except (ValueError, BufferError, TypeError):
            pass
        try:
            wl = lengths
            self.wlength = &wl[0] if self.count > 0 else NULL
            refs.append(wl)
        except (ValueError, BufferError, TypeError):
            pass
        self._refs = tuple(refs)


cdef inline bint _slot_inside(int64_t off, int32_t n, Py_ssize_t size) noexcept nogil:
    """Whether n bytes at off lie inside a buffer of size bytes, for any off and n: compared by subtraction
    from known-good bounds, never as off + n (which wraps for an off near 2**63)."""
    return off >= 0 and n >= 0 and off <= size and n <= size - off


cdef struct region_t:
    Py_ssize_t start, end     # absolute addresses
    int write


cdef int _region_cmp(const void *a, const void *b) noexcept nogil:
    cdef Py_ssize_t x = (<const region_t *>a).start
    cdef Py_ssize_t y = (<const region_t *>b).start
    return (x > y) - (x < y)


cdef int _slot_regions(BatchView src, BatchView dst, Py_ssize_t i, region_t *r) noexcept:
    """The memory slot i reads and writes, as 0-2 regions in r (empty ones left out): one for a slot
    processed in place (its input and output start at one address), else its input and its output apart.
    A slot outside its buffers touches nothing (it is MALFORMED)."""
    cdef Py_ssize_t a = <Py_ssize_t>src.buf + src.off[i] if src.buf != NULL else 0
    cdef Py_ssize_t b = <Py_ssize_t>dst.wbuf + dst.off[i] if dst.wbuf != NULL else 0
    cdef int32_t sl = src.length[i], dc = dst.cap[i]
    cdef int k = 0
    if not _slot_inside(src.off[i], sl, src.buflen) or not _slot_inside(dst.off[i], dc, dst.buflen):
        return 0
    if a == b:
        if sl > 0 or dc > 0:
            r[0].start, r[0].end, r[0].write = a, a + (sl if sl > dc else dc), 1
            return 1
        return 0
    if sl > 0:
        r[k].start, r[k].end, r[k].write = a, a + sl, 0
        k += 1
    if dc > 0:
        r[k].start, r[k].end, r[k].write = b, b + dc, 1
        k += 1
    if k == 2 and r[1].start < r[0].start:
        r[0], r[1] = r[1], r[0]
    return k


cdef _check_aliasing(BatchView src, BatchView dst, const int32_t[::1] select, Py_ssize_t nsel):
    """src and dst share memory: allowed only if no slot writes a byte another slot reads or writes, or a byte
    of its own input other than in place. Once per batch: one pass when the slots lie in order (a batch
    processed in place, or input and output slots side by side in one arena), a sort otherwise."""
    cdef region_t two[2]
    cdef region_t *regs = NULL
    cdef uint8_t *seen = NULL
    cdef Py_ssize_t k, i, m = 0, j, prev_end = 0, end_any = 0, end_write = 0
    cdef int c, q
    cdef bint ordered = True
    for k in range(nsel):
        i = select[k] if select is not None else k
        c = _slot_regions(src, dst, i, two)
        for q in range(c):
            if m > 0 and two[q].start < prev_end:
                ordered = False
            if two[q].end > prev_end:
                prev_end = two[q].end
            m += 1
        if not ordered:
            break
    if ordered:
        return
    # Slots out of order (or selected twice): every region once, sorted, then one sweep.
    regs = <region_t *>malloc((2 * nsel + 1) * sizeof(region_t))
    seen = <uint8_t *>calloc(src.count + 1, 1)
    if regs == NULL or seen == NULL:
        free(regs)
        free(seen)
        raise MemoryError()
    m = 0
    for k in range(nsel):
        i = select[k] if select is not None else k
        if not seen[i]:
            seen[i] = 1
            m += _slot_regions(src, dst, i, regs + m)
    qsort(regs, m, sizeof(region_t), _region_cmp)
    for j in range(m):
        if (regs[j].start < end_any) if regs[j].write else (regs[j].start < end_write):
            free(regs)
            free(seen)
            raise ValueError("the source and destination batches overlap other than slot for slot: a slot "
                             "would write over memory another slot reads or writes (in place, a slot's input "
                             "and output must start at one offset of one arena)")
        if regs[j].end > end_any:
            end_any = regs[j].end
        if regs[j].write and regs[j].end > end_write:
            end_write = regs[j].end
    free(regs)
    free(seen)


@cython.final
cdef class SaContext:
    """The compiled state of one SA in one direction. Built by :class:`esp.sa.Sa`; not for direct use."""

    cdef espc_ctx *c
    cdef PyThread_type_lock lock
    cdef readonly int backend
    cdef int cipher, integ, outbound, framing, v6, esn, encap
    cdef bint cbc                # AES-CBC or 3DES-CBC: random explicit IVs, whole cipher blocks
    cdef int block               # the ciphertext's length is a multiple of it (1: any length)
    cdef int key_len, salt_len, iv_len, icv_len, align, tfc_pad
    cdef uint8_t salt[4]
    cdef uint32_t spi
    cdef uint8_t spi_be[4]
    # outer header template (tunnel): IPv4 (20) or IPv6 (40), then UDP (8) when encapsulated
    cdef uint8_t tmpl[MAX_HDR]
    cdef int tmpl_len, ip_len
    cdef uint32_t tmpl_sum       # IPv4: one's-complement sum of the template's constant words
    cdef uint16_t ip_id
    cdef uint16_t sport, dport
    # sequence numbers and the RFC 6479 window
    cdef readonly uint64_t seq   # outbound: last sent; inbound: highest authenticated (T)
    cdef readonly uint32_t window  # W, 0 disables the check
    cdef uint64_t *bitmap
    cdef uint32_t nblocks        # power of two
    # CBC IV pool
    cdef uint8_t *ivpool
    cdef int ivpos
    # lifetimes (0 = unlimited) and their state
    cdef uint64_t soft_bytes, hard_bytes, soft_packets, hard_packets
    cdef readonly bint soft_expired, hard_expired
    # counters
    cdef readonly uint64_t packets, bytes, auth_failed, replayed, malformed, pad_errors, dummy, no_space
    cdef readonly uint64_t expired, seq_exhausted, unsupported
    cdef uint32_t _gmac_hi       # ESN high bits for the GMAC AAD of the packet in hand
    cdef uint8_t *scratch        # GMAC with ESN only: room for the contiguous AAD
    cdef uint8_t forced_iv[16]   # known-answer tests: the explicit IV of the next packet
    cdef bint have_forced_iv
    cdef bint test_ivs           # tests only: predictable CBC IVs, so two backends can be compared byte for byte
    # ipsec-mb job manager path (CBC/CTR + HMAC): the ring of packets in flight and the batch being worked on
    cdef bint jobs
    cdef bint fast               # tunnel-mode AEAD with nothing unusual: the streamlined per-packet path
    cdef uint64_t lim_packets, lim_bytes, seq_lim  # the fast path leaves a packet that reaches one to the full path
    cdef pending_t *ring
    cdef uint64_t ring_head
    cdef void *mgr
    cdef uint8_t *b_status
    cdef int32_t *b_len

    def __cinit__(self):
        self.c = NULL
        self.lock = NULL
        self.bitmap = NULL
        self.ivpool = NULL
        self.scratch = NULL
        self.ring = NULL

    def __init__(self, *, str cipher, str integ, bint outbound, bytes key, bytes salt, bytes integ_key,
                 int iv_len, int icv_len, int align, uint32_t spi, str framing, bytes outer_src=b"",
                 bytes outer_dst=b"", int sport=0, int dport=0, bint esn=False, int window=0,
                 uint64_t initial_seq=0, int tfc_pad=0, str backend="openssl",
                 uint64_t soft_bytes=0, uint64_t hard_bytes=0, uint64_t soft_packets=0,
                 uint64_t hard_packets=0):
        if cipher not in CIPHERS or integ not in INTEGS:
            raise ValueError(f"unsupported cipher/integrity {cipher}/{integ}")
        if framing not in ("raw", "tunnel", "transport"):
            raise ValueError(f"unknown framing {framing!r}")
        if window < 0 or window > MAX_WINDOW:
            raise ValueError(f"replay window must be 0..{MAX_WINDOW}")
        self.cipher = CIPHERS[cipher]
        self.cbc = self.cipher == ESPC_CBC or self.cipher == ESPC_3DES
        self.block = 16 if self.cipher == ESPC_CBC else 8 if self.cipher == ESPC_3DES else 1
        self.integ = INTEGS[integ]
        self.outbound = outbound
        self.framing = {"raw": F_RAW, "tunnel": F_TUNNEL, "transport": F_TRANSPORT}[framing]
        self.key_len = len(key)
        self.salt_len = len(salt)
        if self.salt_len > 4:
            raise ValueError("salt longer than 4 bytes")
        memset(self.salt, 0, 4)
        if self.salt_len:
            memcpy(self.salt, <const uint8_t *>salt, self.salt_len)
        # Sizes every per-packet computation relies on: the libraries read as many key and IV bytes as the
        # cipher takes, the AEADs write tags into 16-byte buffers and HMACs into 64, and the lengths of IP
        # packets (TFC padding included) stay far from an int's range. Refused here, before any packet.
        if self.cipher == ESPC_NULL:
            key_ok, iv_ok = len(key) == 0, iv_len == 0
        elif self.cipher == ESPC_CHACHA:
            key_ok, iv_ok = len(key) == 32, iv_len == 8
        elif self.cipher == ESPC_3DES:
            key_ok, iv_ok = len(key) == 24, iv_len == 8
        else:
            key_ok, iv_ok = len(key) in (16, 24, 32), iv_len == (16 if self.cipher == ESPC_CBC else 8)
        if not key_ok or not iv_ok:
            raise ValueError(f"a {len(key)}-byte key and a {iv_len}-byte IV do not fit {cipher}")
        if self.cipher in (ESPC_GCM, ESPC_CCM, ESPC_GMAC, ESPC_CHACHA):
            icv_ok = 4 <= icv_len <= 16
        elif self.integ == ESPC_I_NONE:
            icv_ok = icv_len == 0
        else:
            icv_ok = 4 <= icv_len <= {ESPC_I_SHA1: 20, ESPC_I_SHA256: 32}.get(self.integ, 32)
        if not icv_ok:
            raise ValueError(f"a {icv_len}-byte ICV does not fit {cipher}/{integ}")
        if tfc_pad < 0 or tfc_pad > 65535:
            raise ValueError("TFC padding must be 0..65535 bytes")
        self.iv_len = iv_len
        self.icv_len = icv_len
        if align <= 0 or align > 64 or align & (align - 1):
            raise ValueError("padding alignment must be a power of two up to 64")
        if align < self.block:
            raise ValueError(f"padding alignment {align} is shorter than a {cipher} block")
        self.align = align
        self.tfc_pad = tfc_pad
        self.spi = spi
        put32(self.spi_be, spi)
        self.esn = esn
        self.encap = dport != 0
        self.sport = sport
        self.dport = dport
        self.seq = initial_seq
        self.soft_bytes, self.hard_bytes = soft_bytes, hard_bytes
        self.soft_packets, self.hard_packets = soft_packets, hard_packets
        if backend == "ipsecmb":
            if not espc_ipsecmb_supports(self.cipher, self.key_len, self.integ):
                raise ValueError("ipsec-mb backend unavailable for this suite")
            self.backend = ESPC_IPSECMB
        elif backend == "openssl":
            self.backend = ESPC_OPENSSL
        else:
            raise ValueError(f"unknown backend {backend!r}")
        self.c = espc_new(self.backend, self.cipher, 1 if outbound else 0, <const uint8_t *>key, self.key_len,
                          self.integ, <const uint8_t *>integ_key, len(integ_key), icv_len)
        if self.c == NULL:
            raise ValueError(f"the crypto library refused {cipher} with a {len(key)}-byte key")
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()
        if self.cbc and outbound:
            self.ivpool = <uint8_t *>malloc(IV_POOL)
            if self.ivpool == NULL:
                raise MemoryError()
            self.ivpos = IV_POOL
        self.jobs = self.backend == ESPC_IPSECMB and (self.cipher == ESPC_CBC or self.cipher == ESPC_CTR)
        if self.jobs:
            self.ring = <pending_t *>calloc(RING, sizeof(pending_t))
            if self.ring == NULL:
                raise MemoryError()
        if self.cipher == ESPC_GMAC and esn:
            self.scratch = <uint8_t *>malloc(65536 + 64)
            if self.scratch == NULL:
                raise MemoryError()
        if not outbound:
            self.window = window
            # RFC 6479: one spare 64-bit block so the window slides without shifting bits.
            self.nblocks = 1
            while self.nblocks < (<uint32_t>window + 63) // 64 + 1:
                self.nblocks <<= 1
            self.bitmap = <uint64_t *>calloc(self.nblocks, sizeof(uint64_t))
            if self.bitmap == NULL:
                raise MemoryError()
        self._build_template(outer_src, outer_dst)
        self.fast = (self.framing == F_TUNNEL and not self.jobs and iv_len == 8 and align == 4 and
                     (self.cipher == ESPC_GCM or self.cipher == ESPC_CHACHA) and
                     (not outbound or (tfc_pad == 0 and not (self.v6 and self.encap))))
        self._limits()

    cdef _build_template(self, bytes src, bytes dst):
        memset(self.tmpl, 0, MAX_HDR)
        self.tmpl_len = 0
        self.v6 = 0
        if self.framing != F_TUNNEL or not self.outbound:
            return
        if len(src) != len(dst) or len(src) not in (4, 16):
            raise ValueError("tunnel mode needs outer source and destination addresses of one family")
        cdef uint8_t *t = self.tmpl
        if len(src) == 4:
            t[0] = 0x45
            t[8] = 64
            t[9] = 17 if self.encap else 50
            memcpy(t + 12, <const uint8_t *>src, 4)
            memcpy(t + 16, <const uint8_t *>dst, 4)
            self.ip_len = 20
            self.tmpl_sum = sum16(t, 20, 0)
        else:
            self.v6 = 1
            t[0] = 0x60
            t[6] = 17 if self.encap else 50
            t[7] = 64
            memcpy(t + 8, <const uint8_t *>src, 16)
            memcpy(t + 24, <const uint8_t *>dst, 16)
            self.ip_len = 40
        self.tmpl_len = self.ip_len
        if self.encap:
            put16(t + self.ip_len, self.sport)
            put16(t + self.ip_len + 2, self.dport)
            self.tmpl_len += 8

    def __dealloc__(self):
        if self.c != NULL:
            espc_free(self.c)
        if self.lock != NULL:
            PyThread_free_lock(self.lock)
        if self.bitmap != NULL:
            free(self.bitmap)
        if self.ivpool != NULL:
            free(self.ivpool)
        if self.scratch != NULL:
            free(self.scratch)
        if self.ring != NULL:
            free(self.ring)

    # ---------------------------------------------------------------- properties
    @property
    def replay_state(self):
        """(highest sequence number, window) for tests and show commands."""
        return self.seq, self.window

    # ---------------------------------------------------------------- ESP core
    cdef void _limits(self) noexcept nogil:
        """The counts below which no lifetime event or sequence-number limit can happen on the next packet.

        The fast paths compare against these three numbers only; a packet that would reach one goes through the
        full path (``_lifetime_gate``, ``_account``, the exhaustion checks), which then sets the flags.
        """
        cdef uint64_t big = 0x7FFFFFFFFFFFFFFFULL
        self.lim_packets = big
        self.lim_bytes = big
        if not self.soft_expired:
            if self.soft_packets:
                self.lim_packets = self.soft_packets
            if self.soft_bytes:
                self.lim_bytes = self.soft_bytes
        if self.hard_packets and self.hard_packets < self.lim_packets:
            self.lim_packets = self.hard_packets
        if self.hard_bytes and self.hard_bytes < self.lim_bytes:
            self.lim_bytes = self.hard_bytes
        if self.hard_expired:
            self.lim_packets = 0
        self.seq_lim = 0xFFFFFFFFFFFFFFFFULL if self.esn else 0xFFFFFFFFULL

    cdef inline bint _fast_ok(self, int nbytes) noexcept nogil:
        """No lifetime or sequence limit can be reached by this packet, and no test IV is pending."""
        return (self.packets + 1 < self.lim_packets and self.bytes + <uint64_t>nbytes < self.lim_bytes and
                self.seq < self.seq_lim and not self.have_forced_iv)

    cdef inline int _lifetime_gate(self) noexcept nogil:
        """EXPIRED (and counted) once the hard lifetime is reached: the SA then processes nothing more."""
        if not self.hard_expired and ((self.hard_packets and self.packets >= self.hard_packets) or
                                      (self.hard_bytes and self.bytes >= self.hard_bytes)):
            self.hard_expired = True
        if self.hard_expired:
            self.expired += 1
            return V_EXPIRED
        return V_OK

    cdef inline void _account(self, uint64_t nbytes) noexcept nogil:
        self.packets += 1
        self.bytes += nbytes
        if not self.soft_expired:
            if (self.soft_packets and self.packets >= self.soft_packets) or \
               (self.soft_bytes and self.bytes >= self.soft_bytes):
                self.soft_expired = True

    cdef inline int _body_len(self, int plen) noexcept nogil:
        """Payload plus TFC padding (RFC 4303 2.4), before the alignment padding and the trailer."""
        return self.tfc_pad if self.tfc_pad > plen else plen

    cdef inline int _ct_len(self, int plen) noexcept nogil:
        """Encrypted length: body, padding and the 2-byte trailer, aligned to the cipher's block."""
        # align is a power of two (4, 8 for 3DES, 16 for AES-CBC): a mask, not a division, per packet.
        return (self._body_len(plen) + 2 + self.align - 1) & ~(self.align - 1)

    cdef inline int _esp_len(self, int plen) noexcept nogil:
        """Length of SPI..ICV for a payload of plen bytes."""
        return 8 + self.iv_len + self._ct_len(plen) + self.icv_len

    # ---------------------------------------------------------------- outbound ESP
    cdef int _seal(self, const uint8_t *payload, int plen, int nh, uint8_t *out, int cap,
                   int *out_len, bint defer) noexcept nogil:
        """ESP-encapsulate payload into out (SPI..ICV). payload may lie inside out (a slot encrypted in place).

        On the job-manager path the packet is framed here and its crypto queued; the job's completion
        (``_complete_out``) settles it.
        """
        cdef int body, padlen, ctlen, r, total
        cdef uint64_t seq
        cdef uint8_t *iv
        cdef uint8_t *ct
        cdef uint8_t nonce[16]
        cdef uint8_t aad[12]
        cdef uint8_t hi[4]
        cdef uint8_t mac[64]
        cdef int aad_len
        cdef pending_t *pe
        cdef bint split
        cdef int k
        cdef uint8_t trailer[257]
        body = self._body_len(plen)
        ctlen = self._ct_len(plen)
        padlen = ctlen - body - 2
        total = 8 + self.iv_len + ctlen + self.icv_len
        if total > cap:
            self.no_space += 1
            return V_NO_SPACE
        r = self._lifetime_gate()
        if r != V_OK:
            return r
        if self.esn:
            if self.seq == 0xFFFFFFFFFFFFFFFFULL:
                self.seq_exhausted += 1
                return V_SEQ_EXHAUSTED
        elif self.seq >= 0xFFFFFFFFULL:
            self.seq_exhausted += 1
            return V_SEQ_EXHAUSTED
        if self.cbc and not self.have_forced_iv and not self.test_ivs and self.ivpos + self.iv_len > IV_POOL:
            if RAND_bytes(self.ivpool, IV_POOL) != 1:
                self.unsupported += 1
                return V_UNSUPPORTED
            self.ivpos = 0
        iv = out + 8
        ct = iv + self.iv_len
        if _overlap(payload, plen, out, total):
            # In place (the payload lies in the output): moved first to where it is encrypted, so that the
            # header written next cannot overwrite it, and encrypted where it then lies. Every refusal is above,
            # so a refused packet keeps its input for another SA (a rekey's new one).
            memmove(ct, payload, plen)
            payload = ct
        self.seq += 1
        seq = self.seq
        memcpy(out, self.spi_be, 4)
        put32(out + 4, <uint32_t>seq)
        if self.have_forced_iv:
            memcpy(iv, self.forced_iv, self.iv_len)
            self.have_forced_iv = False
        elif self.cbc and self.test_ivs:
            memset(iv, 0, self.iv_len - 8)
            put32(iv + self.iv_len - 8, <uint32_t>(seq >> 32))
            put32(iv + self.iv_len - 4, <uint32_t>seq)
        elif self.cbc:
            memcpy(iv, self.ivpool + self.ivpos, self.iv_len)
            self.ivpos += self.iv_len
        elif self.iv_len == 8:
            put32(iv, <uint32_t>(seq >> 32))
            put32(iv + 4, <uint32_t>seq)
        split = (plen >= SPLIT_AT and body == plen and not defer and payload != ct and
                 (self.cipher == ESPC_GCM or self.cipher == ESPC_CHACHA))
        if split:
            # Big payloads: the trailer goes on the stack and the cipher reads the payload in place (below).
            for k in range(padlen):
                trailer[k] = k + 1
            trailer[padlen] = padlen
            trailer[padlen + 1] = nh
        else:
            if payload != ct:
                memcpy(ct, payload, plen)
            if body > plen:
                memset(ct + plen, 0, body - plen)
            if padlen <= 16:
                for k in range(padlen):
                    ct[body + k] = k + 1
            else:
                memcpy(ct + body, PAD_BYTES, padlen)
            ct[ctlen - 2] = padlen
            ct[ctlen - 1] = nh
        out_len[0] = total
        if defer:
            pe = &self.ring[self.ring_head & (RING - 1)]
            self.ring_head += 1
            pe.s = seq
            pe.ctlen = ctlen
            if self.cipher == ESPC_CTR:
                memcpy(pe.iv, self.salt, 4)
                memcpy(pe.iv + 4, iv, 8)
                put32(pe.iv + 12, 1)
                iv = pe.iv
            if self.esn:
                # RFC 4303 2.2.1: the high bits follow the packet for the ICV; the ICV then overwrites them.
                put32(ct + ctlen, <uint32_t>(seq >> 32))
            self._account(plen)
            # Queued by the caller once the packet's headers are final (see _submit_out).
            pe.esp_w = out
            pe.hash_len = 8 + self.iv_len + ctlen + (4 if self.esn else 0)
            pe.ivp = iv
            return V_OK
        # AAD for the AEADs: SPI || [seq high] || seq low (RFC 4106 5, RFC 4309 5, RFC 7634 2.1)
        memcpy(aad, self.spi_be, 4)
        if self.esn:
            put32(aad + 4, <uint32_t>(seq >> 32))
            put32(aad + 8, <uint32_t>seq)
            aad_len = 12
        else:
            put32(aad + 4, <uint32_t>seq)
            aad_len = 8
        if self.cipher == ESPC_GCM or self.cipher == ESPC_CHACHA:
            memcpy(nonce, self.salt, 4)
            memcpy(nonce + 4, iv, 8)
            if split:
                r = espc_aead_seal2(self.c, nonce, aad, aad_len, payload, plen, trailer, padlen + 2, ct, ct + ctlen)
            else:
                r = espc_aead(self.c, nonce, aad, aad_len, ct, ct, ctlen, ct + ctlen)
        elif self.cipher == ESPC_CCM:
            memcpy(nonce, self.salt, 3)
            memcpy(nonce + 3, iv, 8)
            r = espc_aead(self.c, nonce, aad, aad_len, ct, ct, ctlen, ct + ctlen)
        elif self.cipher == ESPC_GMAC:
            # RFC 4543 3.3: everything is AAD; with ESN the high bits sit between SPI and seq.
            memcpy(nonce, self.salt, 4)
            memcpy(nonce + 4, iv, 8)
            self._gmac_hi = <uint32_t>(seq >> 32)
            r = self._gmac(nonce, out, 8 + self.iv_len + ctlen, ct + ctlen)
        else:
            if self.cipher == ESPC_CTR:
                memcpy(nonce, self.salt, 4)
                memcpy(nonce + 4, iv, 8)
                put32(nonce + 12, 1)
                r = espc_cipher(self.c, nonce, ct, ct, ctlen)
            elif self.cbc:
                r = espc_cipher(self.c, iv, ct, ct, ctlen)
            else:
                r = 1
            if r == 1 and self.integ != ESPC_I_NONE:
                put32(hi, <uint32_t>(seq >> 32))
                espc_hmac_ctx(espc_get_hmac(self.c), out, 8 + self.iv_len + ctlen, hi, 4 if self.esn else 0, mac)
                memcpy(ct + ctlen, mac, self.icv_len)
        if r != 1:
            self.seq -= 1
            self.unsupported += 1
            out_len[0] = 0
            return V_UNSUPPORTED
        self._account(plen)
        return V_OK

    cdef int _gmac(self, const uint8_t *nonce, const uint8_t *esp, int n, uint8_t *tag) noexcept nogil:
        cdef uint8_t *buf
        if not self.esn:
            return espc_aead(self.c, nonce, esp, n, NULL, NULL, 0, tag)
        # AAD = SPI || seq high || seq low || IV || payload: a contiguous copy in the SA's scratch buffer.
        buf = self.scratch
        if buf == NULL or n + 4 > 65536 + 64:
            return -1
        memcpy(buf, esp, 4)
        put32(buf + 4, <uint32_t>(self._gmac_hi))
        memcpy(buf + 8, esp + 4, n - 4)
        return espc_aead(self.c, nonce, buf, n + 4, NULL, NULL, 0, tag)

    # ---------------------------------------------------------------- sequence numbers and the window
    cdef inline uint32_t _infer_hi(self, uint32_t sl) noexcept nogil:
        """RFC 4303 Appendix A2.2: the high half of the sequence number from the window position."""
        cdef uint32_t th = <uint32_t>(self.seq >> 32)
        cdef uint32_t tl = <uint32_t>self.seq
        cdef uint32_t w = self.window if self.window else 64
        if tl >= w - 1:
            if sl >= tl - w + 1:
                return th
            return th + 1
        if sl >= <uint32_t>(tl - w + 1):
            return th - 1
        return th

    cdef inline int _replay_check(self, uint64_t s) noexcept nogil:
        cdef uint64_t blk
        if s == 0:
            return 0
        if self.window == 0:
            return 1
        if s > self.seq:
            return 1
        if self.seq - s >= self.window:
            return 0
        blk = (s >> 6) & (self.nblocks - 1)
        return (self.bitmap[blk] >> (s & 63)) & 1 == 0

    cdef inline void _replay_update(self, uint64_t s) noexcept nogil:
        cdef uint64_t cur, new, diff, i
        if s > self.seq:
            if self.window:
                cur = self.seq >> 6
                new = s >> 6
                diff = new - cur
                if diff > self.nblocks:
                    diff = self.nblocks
                for i in range(1, diff + 1):
                    self.bitmap[(cur + i) & (self.nblocks - 1)] = 0
            self.seq = s
        if self.window:
            self.bitmap[(s >> 6) & (self.nblocks - 1)] |= (<uint64_t>1) << (s & 63)

    # ---------------------------------------------------------------- inbound ESP
    cdef int _open_pre(self, const uint8_t *esp, int n, int cap, uint64_t *s_out, int *ctlen_out) noexcept nogil:
        """Everything that can refuse a packet before its ICV is checked (cheap refusals first)."""
        cdef int ctlen, r
        cdef uint32_t sl, sh
        cdef uint64_t s
        ctlen = n - 8 - self.iv_len - self.icv_len
        if ctlen < 2 or ctlen & (self.block - 1):  # block: a power of two
            self.malformed += 1
            return V_MALFORMED
        if get32(esp) != self.spi:
            return V_NO_SA
        if ctlen > cap:
            self.no_space += 1
            return V_NO_SPACE
        r = self._lifetime_gate()
        if r != V_OK:
            return r
        sl = get32(esp + 4)
        sh = self._infer_hi(sl) if self.esn else 0
        s = (<uint64_t>sh << 32) | sl
        # The quick check (RFC 4303 3.4.3): refuse known replays before spending crypto on them.
        if not self._replay_check(s):
            self.replayed += 1
            return V_REPLAYED
        s_out[0] = s
        ctlen_out[0] = ctlen
        return V_OK

    cdef int _open_crypto(self, const uint8_t *esp, int ctlen, uint64_t s, uint8_t *out) noexcept nogil:
        """Verify the ICV and decrypt into out: 1 authentic, 0 not, -1 library failure.

        out may overlap the ciphertext (a slot decrypted in place, where out lies below it). The libraries
        promise exact in-place operation only (ipsec-mb's ChaCha20-Poly1305 gave wrong plaintext from about
        1000 bytes when out lay below in), so the ciphertext is decrypted where it lies and then moved down.
        """
        cdef int r
        cdef const uint8_t *ct = esp + 8 + self.iv_len
        cdef uint8_t *dst = out
        if out != ct and _overlap(out, ctlen, ct, ctlen):
            dst = <uint8_t *>ct
        r = self._open_to(esp, ctlen, s, dst)
        if r == 1 and dst != out:
            memmove(out, dst, ctlen)
        return r

    cdef int _open_to(self, const uint8_t *esp, int ctlen, uint64_t s, uint8_t *out) noexcept nogil:
        """``_open_crypto`` into an out that is the ciphertext itself or lies apart from it."""
        cdef int r, aad_len
        cdef uint32_t sh = <uint32_t>(s >> 32)
        cdef const uint8_t *iv = esp + 8
        cdef const uint8_t *ct = iv + self.iv_len
        cdef uint8_t nonce[16]
        cdef uint8_t aad[12]
        cdef uint8_t hi[4]
        cdef uint8_t mac[64]
        memcpy(aad, esp, 4)
        if self.esn:
            put32(aad + 4, sh)
            memcpy(aad + 8, esp + 4, 4)
            aad_len = 12
        else:
            memcpy(aad + 4, esp + 4, 4)
            aad_len = 8
        if self.cipher == ESPC_GCM or self.cipher == ESPC_CHACHA:
            memcpy(nonce, self.salt, 4)
            memcpy(nonce + 4, iv, 8)
            return espc_aead(self.c, nonce, aad, aad_len, ct, out, ctlen, <uint8_t *>(ct + ctlen))
        if self.cipher == ESPC_CCM:
            memcpy(nonce, self.salt, 3)
            memcpy(nonce + 3, iv, 8)
            return espc_aead(self.c, nonce, aad, aad_len, ct, out, ctlen, <uint8_t *>(ct + ctlen))
        if self.cipher == ESPC_GMAC:
            memcpy(nonce, self.salt, 4)
            memcpy(nonce + 4, iv, 8)
            self._gmac_hi = sh
            r = self._gmac(nonce, esp, 8 + self.iv_len + ctlen, <uint8_t *>(ct + ctlen))
            if r == 1 and out != ct:
                memcpy(out, ct, ctlen)
            return r
        if self.integ != ESPC_I_NONE:
            put32(hi, sh)
            espc_hmac_ctx(espc_get_hmac(self.c), esp, 8 + self.iv_len + ctlen, hi, 4 if self.esn else 0, mac)
            if CRYPTO_memcmp(mac, ct + ctlen, self.icv_len) != 0:
                return 0
        if self.cipher == ESPC_CTR:
            memcpy(nonce, self.salt, 4)
            memcpy(nonce + 4, iv, 8)
            put32(nonce + 12, 1)
            return espc_cipher(self.c, nonce, ct, out, ctlen)
        if self.cbc:
            return espc_cipher(self.c, iv, ct, out, ctlen)
        if out != ct:
            memcpy(out, ct, ctlen)
        return 1

    cdef int _open_post(self, int r, uint8_t *out, int ctlen, uint64_t s, int *plen_out,
                        int *nh_out) noexcept nogil:
        """After the crypto: count a failure, or move the window, check the padding and take the trailer."""
        cdef int padlen, plen, i
        if r == 0:
            self.auth_failed += 1
            return V_AUTH_FAILED
        if r != 1:
            self.unsupported += 1
            return V_UNSUPPORTED
        # Packets of one batch can repeat each other: check again now that earlier ones have moved the window.
        if not self._replay_check(s):
            self.replayed += 1
            return V_REPLAYED
        # Authenticated: only now may the window move (RFC 4303 3.4.3).
        self._replay_update(s)
        padlen = out[ctlen - 2]
        nh_out[0] = out[ctlen - 1]
        plen = ctlen - 2 - padlen
        if plen < 0:
            self.pad_errors += 1
            return V_PAD_ERROR
        # AEAD padding is 0-3 bytes: a loop beats a library call there.
        if padlen < 16:
            for i in range(padlen):
                if out[plen + i] != i + 1:
                    self.pad_errors += 1
                    return V_PAD_ERROR
        elif memcmp(out + plen, PAD_BYTES, padlen) != 0:
            self.pad_errors += 1
            return V_PAD_ERROR
        if nh_out[0] == 59:
            self.dummy += 1
            return V_DUMMY
        plen_out[0] = plen
        return V_OK

    cdef int _open(self, const uint8_t *esp, int n, uint8_t *out, int cap, int *plen_out,
                   int *nh_out) noexcept nogil:
        """Verify and decrypt one ESP packet (SPI..ICV) into out: the payload without its trailer."""
        cdef uint64_t s
        cdef int ctlen, r
        r = self._open_pre(esp, n, cap, &s, &ctlen)
        if r != V_OK:
            return r
        r = self._open_post(self._open_crypto(esp, ctlen, s, out), out, ctlen, s, plen_out, nh_out)
        if r == V_OK:
            self._account(plen_out[0])
        return r

    # ---------------------------------------------------------------- the job manager (ipsec-mb CBC/CTR)
    cdef inline void _submit(self, const uint8_t *src, int cipher_off, int ctlen, uint8_t *dst, int hash_len,
                             const uint8_t *iv, uint8_t *tag, pending_t *pe) noexcept nogil:
        cdef espc_job *j = espc_jobs_submit(self.c, self.mgr, src, cipher_off, ctlen, dst, hash_len, iv, tag, pe)
        while j != NULL:
            self._complete(<pending_t *>espc_job_user(j), espc_job_ok(j))
            j = espc_jobs_next(self.mgr, 0)

    cdef inline void _submit_out(self, pending_t *pe) noexcept nogil:
        cdef uint8_t *ct = pe.esp_w + 8 + self.iv_len
        self._submit(pe.esp_w, 8 + self.iv_len, pe.ctlen, ct, pe.hash_len, pe.ivp, ct + pe.ctlen, pe)

    cdef void _drain(self) noexcept nogil:
        cdef espc_job *j = espc_jobs_next(self.mgr, 1)
        while j != NULL:
            self._complete(<pending_t *>espc_job_user(j), espc_job_ok(j))
            j = espc_jobs_next(self.mgr, 1)

    cdef void _complete(self, pending_t *pe, int ok) noexcept nogil:
        cdef int r, plen = 0, nh = 0, outl = 0
        cdef uint8_t *payload
        if self.outbound:
            if not ok:
                self.unsupported += 1
                self.b_status[pe.slot] = V_UNSUPPORTED
                self.b_len[pe.slot] = 0
            elif self.framing != F_RAW:
                self._fix_udp6(pe.out, self.b_len[pe.slot], pe.hl)
            return
        payload = pe.out + (0 if self.framing == F_TUNNEL else pe.hl)
        if not ok:
            r = -1
        else:
            r = CRYPTO_memcmp(pe.tag, pe.pkt + pe.esp_off + pe.total - self.icv_len, self.icv_len) == 0
        if r == 1 and pe.moved != NULL:
            memmove(payload, pe.moved, pe.ctlen)    # in place: decrypted where the ciphertext lay
        r = self._open_post(r, payload, pe.ctlen, pe.s, &plen, &nh)
        if r == V_OK:
            r = self._deliver(pe.pkt, pe.hl, pe.ver, pe.out, plen, nh, &outl)
        self.b_status[pe.slot] = r
        self.b_len[pe.slot] = outl if r == V_OK else 0

    # ---------------------------------------------------------------- framing
    cdef inline void _fix_udp6(self, uint8_t *t, int total, int hl) noexcept nogil:
        """IPv6 forbids a zero UDP checksum (RFC 8200 8.1): compute it once the ESP bytes are final."""
        cdef uint32_t cs
        if not (self.encap and t[0] >> 4 == 6):
            return
        put16(t + hl + 6, 0)
        cs = sum16(t + 8, 32, 0) + <uint32_t>(total - 40) + 17
        cs = sum16(t + 40, total - 40, cs)
        cs = (~fold(cs)) & 0xffff
        put16(t + hl + 6, cs if cs else 0xffff)

    cdef int _encrypt_one(self, const uint8_t *pkt, int n, uint8_t *out, int cap, Py_ssize_t slot,
                          int *out_len) noexcept nogil:
        """One packet through the framing and ``_seal``; pkt may be out itself (a slot encrypted in place)."""
        cdef int r, esplen, hl, ver, nh, total, esp_off, tc = 0
        cdef uint8_t *t
        if n < 1 or n > MAX_IP:
            self.malformed += 1
            return V_MALFORMED
        ver = pkt[0] >> 4
        if self.framing == F_TUNNEL:
            if ver == 4 and n >= 20 and get16(pkt + 2) == n:
                nh = 4
            elif ver == 6 and n >= 40 and get16(pkt + 4) + 40 == n:
                nh = 41
            else:
                self.malformed += 1
                return V_MALFORMED
            hl = self.ip_len
            esp_off = self.tmpl_len
            tc = _tclass(pkt, nh)     # read before an in-place header overwrites it
        elif self.framing == F_TRANSPORT:
            if ver == 4 and n >= 20:
                hl = (pkt[0] & 0x0f) * 4
                if hl < 20 or hl > n or get16(pkt + 2) != n or (get16(pkt + 6) & 0x3fff) != 0:
                    self.malformed += 1
                    return V_MALFORMED
                nh = pkt[9]
            elif ver == 6 and n >= 40 and get16(pkt + 4) + 40 == n:
                hl = 40
                nh = pkt[6]
            else:
                self.malformed += 1
                return V_MALFORMED
            esp_off = hl + (8 if self.encap else 0)
        else:
            self.malformed += 1
            return V_MALFORMED
        # The ESP packet must fit its slot and the 16-bit length field of its IP header (IPv6: of the payload).
        # n <= MAX_IP here, so none of these ints can overflow.
        total = esp_off + self._esp_len(n if self.framing == F_TUNNEL else n - hl)
        if self.framing == F_TUNNEL:
            r = 65535 + 40 * self.v6
        else:
            r = 65535 + (40 if ver == 6 else 0)
        if esp_off > cap or total > r:
            self.no_space += 1
            return V_NO_SPACE
        if self.jobs:
            self.ring[self.ring_head & (RING - 1)].slot = slot
            self.ring[self.ring_head & (RING - 1)].out = out
            self.ring[self.ring_head & (RING - 1)].hl = hl
        if self.framing == F_TUNNEL:
            r = self._seal(pkt, n, nh, out + esp_off, cap - esp_off, &esplen, self.jobs)
        else:
            r = self._seal(pkt + hl, n - hl, nh, out + esp_off, cap - esp_off, &esplen, self.jobs)
        if r != V_OK:
            return r
        total = esp_off + esplen
        t = out
        if self.framing == F_TUNNEL:
            self._outer_header(t, tc, total)
        else:
            if t != pkt:
                memcpy(t, pkt, hl)
            if ver == 4:
                t[9] = 17 if self.encap else 50
                put16(t + 2, total)
                put16(t + 10, 0)
                put16(t + 10, ip4_checksum(t, hl))
            else:
                t[6] = 17 if self.encap else 50
                put16(t + 4, total - 40)
            if self.encap:
                put16(t + hl, self.sport)
                put16(t + hl + 2, self.dport)
                put16(t + hl + 4, total - hl)
                put16(t + hl + 6, 0)
        out_len[0] = total
        if self.jobs:
            self.b_status[slot] = V_OK
            self.b_len[slot] = total
            self._submit_out(&self.ring[(self.ring_head - 1) & (RING - 1)])
            return -1  # settled by _complete
        self._fix_udp6(t, total, hl)
        return V_OK

    cdef int _encrypt_fast(self, const uint8_t *pkt, int n, uint8_t *out, int cap, Py_ssize_t slot,
                           int *out_len) noexcept nogil:
        """Tunnel mode with GCM or ChaCha20-Poly1305 and nothing unusual: the same bytes as ``_encrypt_one``
        with a fraction of its branches (most of a 64-byte packet's cost is framing, not AES).

        Anything this path does not expect (a malformed inner packet, no room, a lifetime or sequence limit
        about to be reached, a test IV) goes to the full path, which counts and refuses it the one way.
        """
        cdef int nh, ctlen, padlen, hl, total, aad_len, r
        cdef uint64_t seq
        cdef uint8_t *esp
        cdef uint8_t *ct
        cdef uint8_t *t = out
        cdef const uint8_t *ap
        cdef uint8_t nonce[12]
        cdef uint8_t aad[12]
        cdef uint8_t trailer[8]
        if n >= 20 and pkt[0] >> 4 == 4 and get16(pkt + 2) == n:
            nh = 4
        elif n >= 40 and pkt[0] >> 4 == 6 and get16(pkt + 4) + 40 == n:
            nh = 41
        else:
            return self._encrypt_one(pkt, n, out, cap, slot, out_len)
        ctlen = (n + 5) & ~3
        padlen = ctlen - n - 2
        hl = self.tmpl_len
        total = hl + 16 + ctlen + self.icv_len
        if (total > cap or total > 65535 + 40 * self.v6 or not self._fast_ok(n) or
                _overlap(pkt, n, out, total)):
            # no room, too long for the outer length field, a limit, or in place: the full path
            r = self._encrypt_one(pkt, n, out, cap, slot, out_len)
            self._limits()
            return r
        self.seq += 1
        seq = self.seq
        esp = out + hl
        memcpy(esp, self.spi_be, 4)
        put32(esp + 4, <uint32_t>seq)
        put32(esp + 8, <uint32_t>(seq >> 32))   # the explicit IV: the 64-bit sequence number
        put32(esp + 12, <uint32_t>seq)
        ct = esp + 16
        memcpy(nonce, self.salt, 4)
        memcpy(nonce + 4, esp + 8, 8)
        if self.esn:
            memcpy(aad, esp, 4)
            memcpy(aad + 4, esp + 8, 8)
            ap = aad
            aad_len = 12
        else:
            ap = esp                             # SPI || seq lie in the packet as the AAD wants them
            aad_len = 8
        if n >= SPLIT_AT:
            memcpy(trailer, PAD_BYTES, 4)
            trailer[padlen] = padlen
            trailer[padlen + 1] = nh
            r = espc_aead_seal2(self.c, nonce, ap, aad_len, pkt, n, trailer, padlen + 2, ct, ct + ctlen)
        else:
            memcpy(ct, pkt, n)
            memcpy(ct + n, PAD_BYTES, 4)         # 0-3 padding bytes; what lies past them is overwritten
            ct[ctlen - 2] = padlen
            ct[ctlen - 1] = nh
            r = espc_aead(self.c, nonce, ap, aad_len, ct, ct, ctlen, ct + ctlen)
        if r != 1:
            self.seq -= 1
            self.unsupported += 1
            return V_UNSUPPORTED
        self._outer_header(t, _tclass(pkt, nh), total)
        self.packets += 1
        self.bytes += n
        out_len[0] = total
        return V_OK

    cdef inline void _outer_header(self, uint8_t *t, int tc, int total) noexcept nogil:
        """Tunnel mode: the outer IPv4/IPv6 header (and UDP length, RFC 3948) of a packet of ``total`` bytes,
        from the SA's template and the inner packet's traffic class ``tc`` (``_tclass``); the IPv6 UDP
        checksum is the caller's (``_fix_udp6``)."""
        # Fixed sizes let the compiler inline the copy.
        if self.tmpl_len == 20:
            memcpy(t, self.tmpl, 20)
        elif self.tmpl_len == 28:
            memcpy(t, self.tmpl, 28)
        elif self.tmpl_len == 40:
            memcpy(t, self.tmpl, 40)
        else:
            memcpy(t, self.tmpl, 48)
        if self.v6:
            t[0] = 0x60 | (tc >> 4)
            t[1] = (tc & 0x0f) << 4
            put16(t + 4, total - 40)
        else:
            t[1] = tc
            put16(t + 2, total)
            self.ip_id += 1
            put16(t + 4, self.ip_id)
            # The template's fixed words are summed once per SA; only TOS, length and ID vary.
            put16(t + 10, (~fold(self.tmpl_sum + tc + <uint32_t>total + self.ip_id)) & 0xffff)
        if self.encap:
            put16(t + self.ip_len + 4, total - self.ip_len)
            put16(t + self.ip_len + 6, 0)

    cdef int _parse_outer(self, const uint8_t *pkt, int n, int *hl_out, int *esp_off_out, int *end_out) noexcept nogil:
        """Find the ESP packet in an IPv4/IPv6 packet, plain or UDP-encapsulated (RFC 3948)."""
        cdef int hl, proto, esp_off
        if n < 20:
            self.malformed += 1
            return V_MALFORMED
        if pkt[0] >> 4 == 4:
            hl = (pkt[0] & 0x0f) * 4
            if hl < 20 or hl > n or get16(pkt + 2) > n or get16(pkt + 2) < hl:
                self.malformed += 1
                return V_MALFORMED
            if (get16(pkt + 6) & 0x3fff) != 0:
                # An IP fragment of an ESP packet: reassembly is the forwarding plane's job.
                self.unsupported += 1
                return V_UNSUPPORTED
            n = get16(pkt + 2)
            proto = pkt[9]
        elif pkt[0] >> 4 == 6:
            if n < 40 or get16(pkt + 4) + 40 > n:
                self.malformed += 1
                return V_MALFORMED
            hl = 40
            n = get16(pkt + 4) + 40
            proto = pkt[6]
        else:
            self.malformed += 1
            return V_MALFORMED
        esp_off = hl
        if proto == 17:
            if n < hl + 8 + 8:
                self.malformed += 1
                return V_MALFORMED
            esp_off = hl + 8
            if get32(pkt + esp_off) == 0:
                # Non-ESP marker (RFC 3948 2.2): an IKE message, not ours to decrypt.
                self.malformed += 1
                return V_MALFORMED
        elif proto != 50:
            self.malformed += 1
            return V_MALFORMED
        if n - esp_off < 8:
            self.malformed += 1
            return V_MALFORMED
        hl_out[0] = hl
        esp_off_out[0] = esp_off
        end_out[0] = n
        return V_OK

    cdef int _deliver(self, const uint8_t *pkt, int hl, int ver, uint8_t *out, int plen, int nh,
                      int *out_len) noexcept nogil:
        """The packet handed on: the inner packet (tunnel) or the restored original (transport)."""
        cdef int inner, total
        if self.framing == F_TUNNEL:
            inner = _inner_len(out, plen, nh)
            if inner < 0:
                self.malformed += 1
                return V_MALFORMED
            out_len[0] = inner
            self._account(plen)
            return V_OK
        if out != pkt:
            memcpy(out, pkt, hl)
        total = hl + plen
        if ver == 4:
            out[9] = nh
            put16(out + 2, total)
            put16(out + 10, 0)
            put16(out + 10, ip4_checksum(out, hl))
        else:
            out[6] = nh
            put16(out + 4, total - 40)
        out_len[0] = total
        self._account(plen)
        return V_OK

    cdef int _decrypt_one(self, const uint8_t *pkt, int n, uint8_t *out, int cap, Py_ssize_t slot,
                          int *out_len) noexcept nogil:
        cdef int hl, esp_off, end, r, plen, nh, ctlen, room, base
        cdef uint64_t s
        cdef const uint8_t *esp
        cdef const uint8_t *ivp
        cdef uint8_t *dst
        cdef uint8_t *ctp
        cdef pending_t *pe
        r = self._parse_outer(pkt, n, &hl, &esp_off, &end)
        if r != V_OK:
            return r
        base = 0 if self.framing == F_TUNNEL else hl
        if base > cap:
            self.no_space += 1
            return V_NO_SPACE
        esp = pkt + esp_off
        r = self._open_pre(esp, end - esp_off, cap - base, &s, &ctlen)
        if r != V_OK:
            return r
        if self.jobs:
            pe = &self.ring[self.ring_head & (RING - 1)]
            self.ring_head += 1
            pe.slot = slot
            pe.s = s
            pe.ctlen = ctlen
            pe.hl = hl
            pe.ver = pkt[0] >> 4
            pe.esp_off = esp_off
            pe.total = end - esp_off
            pe.pkt = pkt
            pe.out = out
            # In place: the job decrypts where the ciphertext lies; _complete moves the plaintext down.
            dst = out + base
            ctp = <uint8_t *>(esp + 8 + self.iv_len)
            pe.moved = ctp if dst != ctp and _overlap(dst, ctlen, ctp, ctlen) else NULL
            if pe.moved != NULL:
                dst = ctp
            ivp = esp + 8
            if self.cipher == ESPC_CTR:
                memcpy(pe.iv, self.salt, 4)
                memcpy(pe.iv + 4, esp + 8, 8)
                put32(pe.iv + 12, 1)
                ivp = pe.iv
            if self.esn:
                # The ICV input needs the high bits after the packet: hash here, decrypt in the job.
                put32(pe.tag, <uint32_t>(s >> 32))
                espc_hmac_ctx(espc_get_hmac(self.c), esp, 8 + self.iv_len + ctlen, pe.tag, 4, pe.tag)
                self._submit(esp, 8 + self.iv_len, ctlen, dst, 0, ivp, NULL, pe)
            else:
                self._submit(esp, 8 + self.iv_len, ctlen, dst, 8 + self.iv_len + ctlen, ivp, pe.tag, pe)
            return -1  # settled by _complete
        r = self._open_post(self._open_crypto(esp, ctlen, s, out + base), out + base, ctlen, s, &plen, &nh)
        if r != V_OK:
            return r
        return self._deliver(pkt, hl, pkt[0] >> 4, out, plen, nh, out_len)

    cdef int _decrypt_fast(self, const uint8_t *pkt, int n, uint8_t *out, int cap, Py_ssize_t slot,
                           int *out_len) noexcept nogil:
        """Tunnel mode with GCM or ChaCha20-Poly1305, the common packet: ``_decrypt_one``'s result with fewer
        branches. Whatever is unusual (options, fragments, the non-ESP marker, a wrong SPI, a replay, a limit
        about to be reached) goes to the full path, which counts and refuses it the one way."""
        cdef int hl, end, esp_off, ctlen, plen = 0, nh = 0, aad_len, r, inner, padlen, i
        cdef uint32_t sl
        cdef uint64_t s
        cdef const uint8_t *esp
        cdef const uint8_t *ap
        cdef uint8_t *dst
        cdef uint8_t nonce[12]
        cdef uint8_t aad[12]
        if n >= 20 and pkt[0] == 0x45 and (get16(pkt + 6) & 0x3fff) == 0:
            hl = 20
            end = get16(pkt + 2)
            r = pkt[9]
        elif n >= 40 and pkt[0] >> 4 == 6:
            hl = 40
            end = get16(pkt + 4) + 40
            r = pkt[6]
        else:
            return self._decrypt_one(pkt, n, out, cap, slot, out_len)
        esp_off = hl if r == 50 else hl + 8
        if (end > n or (r != 50 and r != 17) or end - esp_off < 8 + 16 + 2 + self.icv_len or
                (r == 17 and get32(pkt + esp_off) == 0)):
            return self._decrypt_one(pkt, n, out, cap, slot, out_len)
        esp = pkt + esp_off
        ctlen = end - esp_off - 16 - self.icv_len
        sl = get32(esp + 4)
        s = ((<uint64_t>self._infer_hi(sl) << 32) | sl) if self.esn else sl
        if (get32(esp) != self.spi or ctlen > cap or not self._fast_ok(ctlen) or not self._replay_check(s)):
            r = self._decrypt_one(pkt, n, out, cap, slot, out_len)
            self._limits()
            return r
        memcpy(nonce, self.salt, 4)
        memcpy(nonce + 4, esp + 8, 8)
        if self.esn:
            memcpy(aad, esp, 4)
            put32(aad + 4, <uint32_t>(s >> 32))
            memcpy(aad + 8, esp + 4, 4)
            ap = aad
            aad_len = 12
        else:
            ap = esp
            aad_len = 8
        # In place, out lies below the ciphertext: decrypted where it lies, then moved (see _open_crypto).
        dst = out
        if out != esp + 16 and _overlap(out, ctlen, esp + 16, ctlen):
            dst = <uint8_t *>(esp + 16)
        r = espc_aead(self.c, nonce, ap, aad_len, esp + 16, dst, ctlen, <uint8_t *>(esp + 16 + ctlen))
        if r == 1 and dst != out:
            memmove(out, dst, ctlen)
        if r != 1 or out[ctlen - 2] > 3 or out[ctlen - 1] == 59:
            # Failures, long padding, dummy packets: counted and judged the one way.
            r = self._open_post(r, out, ctlen, s, &plen, &nh)
            if r != V_OK:
                return r
        else:
            # Authentic, and nothing has moved the window since the check above (one packet at a time here).
            self._replay_update(s)
            padlen = out[ctlen - 2]
            nh = out[ctlen - 1]
            plen = ctlen - 2 - padlen
            for i in range(padlen):
                if plen < 0 or out[plen + i] != i + 1:
                    self.pad_errors += 1
                    return V_PAD_ERROR
        inner = _inner_len(out, plen, nh)
        if inner < 0:
            self.malformed += 1
            return V_MALFORMED
        self.packets += 1
        self.bytes += plen
        out_len[0] = inner
        return V_OK

    cdef inline int _process_slot(self, const uint8_t *pkt, int n, uint8_t *out, int cap, Py_ssize_t slot,
                                  int *out_len) noexcept nogil:
        if self.outbound:
            if self.fast:
                return self._encrypt_fast(pkt, n, out, cap, slot, out_len)
            return self._encrypt_one(pkt, n, out, cap, slot, out_len)
        if self.fast:
            return self._decrypt_fast(pkt, n, out, cap, slot, out_len)
        return self._decrypt_one(pkt, n, out, cap, slot, out_len)

    # ---------------------------------------------------------------- batch API
    def process_into(self, BatchView src, BatchView dst, const int32_t[::1] select=None):
        """Encrypt (outbound context) or decrypt (inbound) slots of a batch; returns the number OK.

        Slot i of src goes to slot i of dst. ``select`` restricts the work to those slot indices. Each slot
        gets a verdict in dst's status; slots whose offsets or lengths lie outside their buffers are MALFORMED.
        src and dst may share memory slot for slot (in place: a slot's input and output start at one address)
        or lie apart; any other overlap raises ValueError before a packet is touched (``_check_aliasing``).
        """
        cdef Py_ssize_t count = src.count
        cdef Py_ssize_t nsel, k, i
        cdef Py_ssize_t srcn = src.buflen
        cdef Py_ssize_t dstn = dst.buflen
        cdef int64_t so, do
        cdef int32_t sl, dc
        cdef int r, outl
        cdef Py_ssize_t ok = 0
        cdef bint use_sel = select is not None
        cdef const uint8_t *sp = src.buf
        cdef uint8_t *dp = dst.wbuf
        cdef const int64_t *src_off = src.off
        cdef const int32_t *src_len = src.length
        cdef const int64_t *dst_off = dst.off
        cdef const int32_t *dst_cap = dst.cap
        cdef int32_t *dst_len = dst.wlength
        cdef uint8_t *status = dst.status
        if dst.count < count:
            raise ValueError(f"output batch has {dst.count} slots for {count} packets")
        if (dp == NULL and dstn > 0) or (dst_len == NULL and count > 0):
            raise ValueError("the output batch is read-only")
        if self.framing == F_RAW:
            raise ValueError("a raw (ESP-only) context has no batch framing; use seal/open")
        nsel = select.shape[0] if use_sel else count
        if use_sel:
            for k in range(nsel):
                if select[k] < 0 or select[k] >= count:
                    raise ValueError(f"select[{k}] = {select[k]} is not a slot of a {count}-packet batch")
        if _overlap(sp, srcn, dp, dstn):
            _check_aliasing(src, dst, select, nsel)
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            if self.jobs:
                self.mgr = espc_jobs_mgr()
                self.b_status = status
                self.b_len = dst_len
            if self.jobs and self.mgr == NULL:
                for k in range(nsel):
                    i = select[k] if use_sel else k
                    if 0 <= i < count:
                        status[i] = V_UNSUPPORTED
                        dst_len[i] = 0
                        self.unsupported += 1
            else:
                for k in range(nsel):
                    i = select[k] if use_sel else k
                    if i < 0 or i >= count:
                        continue
                    so = src_off[i]
                    sl = src_len[i]
                    do = dst_off[i]
                    dc = dst_cap[i]
                    dst_len[i] = 0
                    if not _slot_inside(so, sl, srcn) or not _slot_inside(do, dc, dstn):
                        self.malformed += 1
                        status[i] = V_MALFORMED
                        continue
                    outl = 0
                    r = self._process_slot(sp + so, sl, dp + do, dc, i, &outl)
                    if r >= 0:
                        status[i] = r
                        dst_len[i] = outl
                if self.jobs:
                    self._drain()
            for k in range(nsel):
                i = select[k] if use_sel else k
                if 0 <= i < count and status[i] == V_OK:
                    ok += 1
            PyThread_release_lock(self.lock)
        return ok

    cdef bint _lock_packets(self) noexcept nogil:
        """Take the lock for packets one at a time (:meth:`_packet`); False if there is no ipsec-mb job manager
        for this thread. The lock is held either way."""
        PyThread_acquire_lock(self.lock, WAIT_LOCK)
        if self.jobs:
            self.mgr = espc_jobs_mgr()
            return self.mgr != NULL
        return True

    cdef int _packet(self, const uint8_t *ip, int n, uint8_t *op, int cap, int *outl) noexcept nogil:
        """One packet through the batch machinery (a batch of one), the lock held (:meth:`_lock_packets`): the
        job manager, if any, is drained before returning, so the verdict and length are final."""
        cdef uint8_t st = V_OK
        cdef int32_t ln = 0
        cdef int r
        if self.jobs:
            self.b_status = &st
            self.b_len = &ln
        r = self._process_slot(ip, n, op, cap, 0, outl)
        if self.jobs:
            self._drain()
            if r == -1:
                r = st
                outl[0] = ln
        return r

    cdef int _count_malformed(self) noexcept nogil:
        self.malformed += 1
        return V_MALFORMED

    cdef int _one(self, const uint8_t *ip, int n, uint8_t *op, int cap, int *outl) noexcept nogil:
        """One packet, for the single-packet API."""
        cdef int r
        if self._lock_packets():
            r = self._packet(ip, n, op, cap, outl)
        else:
            self.unsupported += 1
            r = V_UNSUPPORTED
        PyThread_release_lock(self.lock)
        return r

    # ---------------------------------------------------------------- single packets
    def process_one(self, const uint8_t[::1] pkt):
        """One IP packet through the SA's framing, encrypting or decrypting by the SA's direction; returns
        (verdict, bytes)."""
        cdef bytearray out
        cdef uint8_t *op
        cdef int n, cap, r, outl = 0
        cdef const uint8_t *ip
        if self.framing == F_RAW:
            raise ValueError("a raw (ESP-only) context: use seal()")
        if pkt.shape[0] > MAX_IP:
            # longer than any IP packet: no int below may hold its length (a verdict, as for any bad packet)
            self.malformed += 1
            return V_MALFORMED, b""
        n = <int>pkt.shape[0]
        cap = n + MAX_HDR + 8 + 16 + 255 + 64 + self.tfc_pad
        out = bytearray(cap)
        op = out
        ip = &pkt[0] if n > 0 else <const uint8_t *>op
        with nogil:
            r = self._one(ip, n, op, cap, &outl)
        return r, bytes(out[:outl])

    def seal(self, const uint8_t[::1] payload, int next_header):
        """ESP only: (verdict, SPI..ICV) for one payload."""
        cdef bytearray out
        cdef uint8_t *op
        cdef int n, cap, r, outl = 0
        cdef const uint8_t *ip
        if not self.outbound:
            raise ValueError("seal() needs an outbound SA")
        if next_header < 0 or next_header > 255:
            raise ValueError("next header must be 0..255")
        if payload.shape[0] > MAX_IP:
            self.malformed += 1
            return V_MALFORMED, b""
        n = <int>payload.shape[0]
        cap = self._esp_len(n) + 16
        out = bytearray(cap)
        op = out
        ip = &payload[0] if n > 0 else <const uint8_t *>op
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            r = self._seal(ip, n, next_header, op, cap, &outl, False)
            PyThread_release_lock(self.lock)
        return r, bytes(out[:outl])

    def open(self, const uint8_t[::1] esp):
        """ESP only: (verdict, payload, next header) for one SPI..ICV packet."""
        cdef bytearray out
        cdef uint8_t *op
        cdef int n, r, plen = 0, nh = 0
        cdef const uint8_t *ip
        if self.outbound:
            raise ValueError("open() needs an inbound SA")
        if esp.shape[0] < 8 or esp.shape[0] > MAX_IP:
            self.malformed += 1
            return V_MALFORMED, b"", 0
        n = <int>esp.shape[0]
        out = bytearray(n + 16)
        op = out
        ip = &esp[0]
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            r = self._open(ip, n, op, n + 16, &plen, &nh)
            PyThread_release_lock(self.lock)
        if r != V_OK:
            return r, b"", nh
        return r, bytes(out[:plen]), nh

    def predictable_ivs_for_tests(self):
        """CBC IVs from the sequence number from now on. Predictable CBC IVs are insecure: tests only."""
        self.test_ivs = True

    def force_iv(self, bytes iv):
        if len(iv) != self.iv_len:
            raise ValueError("wrong IV length")
        memcpy(self.forced_iv, <const uint8_t *>iv, self.iv_len)
        self.have_forced_iv = True

    def esp_overhead(self, int payload_len):
        """Bytes an outbound packet of payload_len grows by (outer header included)."""
        return self.tmpl_len + (self._esp_len(payload_len) - payload_len)


# ---- the packet step for other compiled modules (esp/_saapi.h): esp/_pcapio writes file records with it ----
cdef int _api_begin(void *ctx, int outbound) noexcept nogil:
    if (<SaContext>ctx).outbound != (outbound != 0) or (<SaContext>ctx).framing == F_RAW:
        return -1
    if not (<SaContext>ctx)._lock_packets():
        PyThread_release_lock((<SaContext>ctx).lock)
        return -1
    return 0


cdef int _api_process(void *ctx, const uint8_t *pkt, int n, uint8_t *out, int cap, int *out_len) noexcept nogil:
    out_len[0] = 0
    # The batch checks, for one packet: sizes in range, and pkt either apart from out or at out (in place).
    if n < 0 or cap < 0 or (pkt == NULL and n > 0) or (out == NULL and cap > 0) or \
            (<const uint8_t *>out != pkt and _overlap(pkt, n, out, cap)):
        return (<SaContext>ctx)._count_malformed()
    return (<SaContext>ctx)._packet(pkt, n, out, cap, out_len)


cdef void _api_end(void *ctx) noexcept nogil:
    PyThread_release_lock((<SaContext>ctx).lock)


cdef espresso_sa_api _SA_API
_SA_API.version = ESPRESSO_SA_API_VERSION
_SA_API.begin = _api_begin
_SA_API.process = _api_process
_SA_API.end = _api_end
#: The capsule behind esp/_saapi.h (name "esp._core.SA_API").
SA_API = PyCapsule_New(<void *>&_SA_API, b"esp._core.SA_API", NULL)
