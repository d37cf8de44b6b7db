# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Raw crypto loops: the ceiling each ESP backend can reach on this machine.

Each loop makes only the library's own crypto calls for a ring of ESP packets, set up the way the notes in
shared/notes/crypto-backends.md found fastest: for OpenSSL 3 the cipher is fetched once and one EVP_CIPHER_CTX per
direction holds the key, so a packet costs one IV set plus the AAD/payload/tag calls; for ipsec-mb the key is
expanded once and a packet is one direct GCM (or ChaCha20-Poly1305 init/update/finalize) call, or one job for
CBC+HMAC. Per packet the loop also writes what any ESP implementation must (SPI, sequence number, IV), nothing
else: no framing, no bounds checks, no anti-replay. Whatever the espresso core adds on top is its overhead.

Packets are described by the caller (bench/ceilings.py): plaintexts already padded with the ESP trailer, and
output slots sized for SPI|seq|IV|ciphertext|ICV. The loops release the GIL, so threads scale them too.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, int32_t
from libc.string cimport memcpy, memcmp
from libc.stdlib cimport free

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct ENGINE:
        pass
    EVP_CIPHER *EVP_CIPHER_fetch(void *libctx, const char *algorithm, const char *properties)
    void EVP_CIPHER_free(EVP_CIPHER *cipher)
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl, const unsigned char *key,
                          const unsigned char *iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad)
    int EVP_CTRL_AEAD_SET_IVLEN
    int EVP_CTRL_AEAD_GET_TAG
    int EVP_CTRL_AEAD_SET_TAG

cdef extern from "openssl/sha.h" nogil:
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t n)
    int SHA256_Final(unsigned char *md, SHA256_CTX *c)

cdef extern from "openssl/crypto.h" nogil:
    const char *OpenSSL_version(int t)
    int OPENSSL_VERSION
    int CRYPTO_memcmp(const void *a, const void *b, size_t n)

cdef extern from "_ceilings_ipsecmb.h" nogil:
    int CEIL_HAVE_IPSECMB
    ctypedef struct ceil_mgr:
        pass
    ctypedef struct ceil_gcm_key:
        pass
    ctypedef struct ceil_gcm_ctx:
        pass
    ctypedef struct ceil_chacha_ctx:
        pass
    ctypedef struct ceil_cbc_key:
        pass
    ceil_mgr *ceil_mb_new()
    void ceil_mb_free(ceil_mgr *m)
    const char *ceil_mb_version()
    const char *ceil_mb_arch(ceil_mgr *m)
    ceil_gcm_key *ceil_mb_gcm_key_new(ceil_mgr *m, const uint8_t *key, int key_len)
    void ceil_mb_gcm(ceil_mgr *m, int key_len, int enc, const ceil_gcm_key *k, ceil_gcm_ctx *c, uint8_t *dst,
                     const uint8_t *src, uint64_t length, const uint8_t *iv, const uint8_t *aad, uint64_t aad_len,
                     uint8_t *tag, uint64_t tag_len)
    void ceil_mb_chacha(ceil_mgr *m, int enc, const uint8_t *key, ceil_chacha_ctx *c, uint8_t *dst,
                        const uint8_t *src, uint64_t length, const uint8_t *iv, const uint8_t *aad,
                        uint64_t aad_len, uint8_t *tag, uint64_t tag_len)
    ceil_cbc_key *ceil_mb_cbc_key_new(ceil_mgr *m, const uint8_t *key, int key_len, const uint8_t *hkey,
                                      int hkey_len)
    int ceil_mb_cbc_submit(ceil_mgr *m, const ceil_cbc_key *k, int enc, const uint8_t *src, uint8_t *dst,
                           uint64_t cipher_off, uint64_t cipher_len, uint64_t hash_len, const uint8_t *iv,
                           uint8_t *tag)
    int ceil_mb_flush(ceil_mgr *m)

HAVE_IPSECMB = bool(CEIL_HAVE_IPSECMB)

# ESP header: SPI (4) | sequence number (4) | IV. These loops use 32-bit sequence numbers (no ESN), so the
# AAD of the AEADs is the 8-byte header (RFC 4106 section 5).
DEF HDR = 8


def openssl_version() -> str:
    """The libcrypto these loops (and the espresso core) are linked against."""
    return OpenSSL_version(OPENSSL_VERSION).decode()


def ipsecmb_info() -> tuple[str, str] | None:
    """(version, architecture the manager picked on this CPU), or None when built without ipsec-mb."""
    if not CEIL_HAVE_IPSECMB:
        return None
    cdef ceil_mgr *m = ceil_mb_new()
    if m == NULL:
        return None
    try:
        return ceil_mb_version().decode(), ceil_mb_arch(m).decode()
    finally:
        ceil_mb_free(m)


cdef inline void put_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline void put_be64(uint8_t *p, uint64_t v) noexcept nogil:
    put_be32(p, <uint32_t>(v >> 32))
    put_be32(p + 4, <uint32_t>v)


cdef class Ceiling:
    """One SA's worth of key material and library state for one backend and suite.

    ``encrypt(...)`` turns plaintext slots (payload + padding + trailer) into ESP slots
    (SPI|seq|IV|ciphertext|ICV); ``decrypt(...)`` verifies and decrypts ESP slots back. Both run ``reps`` passes
    over the ring and return how many packets succeeded, so a caller can check the work was real.
    """

    cdef readonly str backend
    cdef readonly str suite
    cdef readonly int icv_len
    cdef readonly int iv_len
    cdef uint32_t spi
    cdef uint32_t seq
    cdef uint8_t salt[4]
    cdef uint8_t key[32]
    cdef int key_len

    def __init__(self, str backend, str suite, bytes key, bytes salt, uint32_t spi=0x1000):
        self.backend = backend
        self.suite = suite
        self.spi = spi
        self.seq = 0
        if len(key) > 32 or len(salt) > 4:
            raise ValueError("key longer than 32 bytes or salt longer than 4")
        self.key_len = len(key)
        memcpy(self.key, <const char *>key, len(key))
        memcpy(self.salt, <const char *>salt, len(salt))
        self.iv_len = 8
        self.icv_len = 16

    def reset(self, uint32_t seq=0):
        self.seq = seq

    def encrypt(self, const uint8_t[::1] pt, const int64_t[::1] pt_off, const int32_t[::1] pt_len,
                uint8_t[::1] out, const int64_t[::1] out_off, int reps=1) -> int:
        cdef Py_ssize_t n = pt_off.shape[0]
        if pt_len.shape[0] != n or out_off.shape[0] != n:
            raise ValueError("ring arrays differ in length")
        return self._run(1, &pt[0], &pt_off[0], &pt_len[0], &out[0], &out_off[0], n, reps)

    def decrypt(self, const uint8_t[::1] esp, const int64_t[::1] esp_off, const int32_t[::1] esp_len,
                uint8_t[::1] out, const int64_t[::1] out_off, int reps=1) -> int:
        cdef Py_ssize_t n = esp_off.shape[0]
        if esp_len.shape[0] != n or out_off.shape[0] != n:
            raise ValueError("ring arrays differ in length")
        return self._run(0, &esp[0], &esp_off[0], &esp_len[0], &out[0], &out_off[0], n, reps)

    cdef Py_ssize_t _run(self, int enc, const uint8_t *src, const int64_t *src_off, const int32_t *src_len,
                         uint8_t *out, const int64_t *out_off, Py_ssize_t n, int reps) except -1:
        raise NotImplementedError


cdef class EvpAead(Ceiling):
    """OpenSSL 3 EVP AEAD (AES-GCM, ChaCha20-Poly1305): fetched once, one context per direction, IV per packet."""

    cdef EVP_CIPHER *cipher
    cdef EVP_CIPHER_CTX *ectx
    cdef EVP_CIPHER_CTX *dctx

    def __init__(self, str suite, bytes key, bytes salt, uint32_t spi=0x1000):
        super().__init__("openssl", suite, key, salt, spi)
        if suite.startswith("chacha20"):
            name = b"ChaCha20-Poly1305"
        else:
            name = b"AES-%d-GCM" % (len(key) * 8)
        self.cipher = EVP_CIPHER_fetch(NULL, name, NULL)
        if self.cipher == NULL:
            raise RuntimeError(f"EVP_CIPHER_fetch({name!r}) failed")
        self.ectx = EVP_CIPHER_CTX_new()
        self.dctx = EVP_CIPHER_CTX_new()
        cdef uint8_t zero_iv[12]
        zero_iv[:] = [0] * 12
        if (EVP_CipherInit_ex(self.ectx, self.cipher, NULL, self.key, zero_iv, 1) != 1
                or EVP_CipherInit_ex(self.dctx, self.cipher, NULL, self.key, zero_iv, 0) != 1):
            raise RuntimeError("EVP_CipherInit_ex failed")

    def __dealloc__(self):
        EVP_CIPHER_CTX_free(self.ectx)
        EVP_CIPHER_CTX_free(self.dctx)
        EVP_CIPHER_free(self.cipher)

    cdef Py_ssize_t _run(self, int enc, const uint8_t *src, const int64_t *src_off, const int32_t *src_len,
                         uint8_t *out, const int64_t *out_off, Py_ssize_t n, int reps) except -1:
        cdef Py_ssize_t i, ok = 0
        cdef int r, outl, length
        cdef uint8_t nonce[12]
        cdef uint8_t *esp
        cdef const uint8_t *inp
        cdef EVP_CIPHER_CTX *ctx = self.ectx if enc else self.dctx
        memcpy(nonce, self.salt, 4)
        with nogil:
            for r in range(reps):
                for i in range(n):
                    if enc:
                        esp = out + out_off[i]
                        self.seq += 1
                        put_be32(esp, self.spi)
                        put_be32(esp + 4, self.seq)
                        put_be64(esp + HDR, self.seq)
                        memcpy(nonce + 4, esp + HDR, 8)
                        length = src_len[i]
                        EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1)
                        EVP_CipherUpdate(ctx, NULL, &outl, esp, HDR)
                        EVP_CipherUpdate(ctx, esp + HDR + 8, &outl, src + src_off[i], length)
                        EVP_CipherFinal_ex(ctx, esp + HDR + 8 + length, &outl)
                        if EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, esp + HDR + 8 + length) == 1:
                            ok += 1
                    else:
                        inp = src + src_off[i]
                        length = src_len[i] - HDR - 8 - 16
                        memcpy(nonce + 4, inp + HDR, 8)
                        EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0)
                        EVP_CipherUpdate(ctx, NULL, &outl, inp, HDR)
                        EVP_CipherUpdate(ctx, out + out_off[i], &outl, inp + HDR + 8, length)
                        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, <void *>(inp + HDR + 8 + length))
                        if EVP_CipherFinal_ex(ctx, out + out_off[i] + length, &outl) > 0:
                            ok += 1
        return ok


cdef class EvpCbcHmac(Ceiling):
    """OpenSSL 3 AES-CBC (EVP, padding off, IV per packet) + HMAC-SHA-256-128 from precomputed inner and outer
    SHA-256 states (the fastest way the notes found to use libcrypto for HMAC; copied per packet)."""

    cdef EVP_CIPHER *cipher
    cdef EVP_CIPHER_CTX *ectx
    cdef EVP_CIPHER_CTX *dctx
    cdef SHA256_CTX inner
    cdef SHA256_CTX outer
    cdef const uint8_t *ivs
    cdef bytes _ivs
    cdef Py_ssize_t n_ivs

    def __init__(self, str suite, bytes key, bytes hmac_key, bytes ivs, uint32_t spi=0x1000):
        super().__init__("openssl", suite, key, b"", spi)
        self.iv_len = 16
        self.icv_len = 16
        if len(ivs) < 16 or len(ivs) % 16:
            raise ValueError("ivs: a whole number of 16-byte IVs")
        self._ivs = ivs  # pregenerated in bulk, as the core does: no RNG call per packet
        self.ivs = <const uint8_t *>self._ivs
        self.n_ivs = len(ivs) // 16
        self.cipher = EVP_CIPHER_fetch(NULL, b"AES-%d-CBC" % (len(key) * 8), NULL)
        if self.cipher == NULL:
            raise RuntimeError("EVP_CIPHER_fetch(AES-CBC) failed")
        self.ectx = EVP_CIPHER_CTX_new()
        self.dctx = EVP_CIPHER_CTX_new()
        cdef uint8_t zero_iv[16]
        zero_iv[:] = [0] * 16
        if (EVP_CipherInit_ex(self.ectx, self.cipher, NULL, self.key, zero_iv, 1) != 1
                or EVP_CipherInit_ex(self.dctx, self.cipher, NULL, self.key, zero_iv, 0) != 1):
            raise RuntimeError("EVP_CipherInit_ex failed")
        EVP_CIPHER_CTX_set_padding(self.ectx, 0)
        EVP_CIPHER_CTX_set_padding(self.dctx, 0)
        if len(hmac_key) > 64:
            raise ValueError("HMAC key longer than a SHA-256 block")
        cdef uint8_t block[64]
        cdef int j
        for j in range(64):
            block[j] = 0x36 ^ (hmac_key[j] if j < len(hmac_key) else 0)
        SHA256_Init(&self.inner)
        SHA256_Update(&self.inner, block, 64)
        for j in range(64):
            block[j] = 0x5c ^ (hmac_key[j] if j < len(hmac_key) else 0)
        SHA256_Init(&self.outer)
        SHA256_Update(&self.outer, block, 64)

    def __dealloc__(self):
        EVP_CIPHER_CTX_free(self.ectx)
        EVP_CIPHER_CTX_free(self.dctx)
        EVP_CIPHER_free(self.cipher)

    cdef inline void hmac(self, const uint8_t *data, size_t length, uint8_t *md) noexcept nogil:
        cdef SHA256_CTX c
        cdef uint8_t ih[32]
        memcpy(&c, &self.inner, sizeof(SHA256_CTX))
        SHA256_Update(&c, data, length)
        SHA256_Final(ih, &c)
        memcpy(&c, &self.outer, sizeof(SHA256_CTX))
        SHA256_Update(&c, ih, 32)
        SHA256_Final(md, &c)

    cdef Py_ssize_t _run(self, int enc, const uint8_t *src, const int64_t *src_off, const int32_t *src_len,
                         uint8_t *out, const int64_t *out_off, Py_ssize_t n, int reps) except -1:
        cdef Py_ssize_t i, ok = 0
        cdef int r, outl, length
        cdef uint8_t md[32]
        cdef uint8_t *esp
        cdef const uint8_t *inp
        with nogil:
            for r in range(reps):
                for i in range(n):
                    if enc:
                        esp = out + out_off[i]
                        self.seq += 1
                        put_be32(esp, self.spi)
                        put_be32(esp + 4, self.seq)
                        memcpy(esp + HDR, self.ivs + 16 * (self.seq % self.n_ivs), 16)
                        length = src_len[i]
                        EVP_CipherInit_ex(self.ectx, NULL, NULL, NULL, esp + HDR, 1)
                        EVP_CipherUpdate(self.ectx, esp + HDR + 16, &outl, src + src_off[i], length)
                        self.hmac(esp, HDR + 16 + length, md)
                        memcpy(esp + HDR + 16 + length, md, 16)
                        ok += 1
                    else:
                        inp = src + src_off[i]
                        length = src_len[i] - HDR - 16 - 16
                        self.hmac(inp, HDR + 16 + length, md)
                        if CRYPTO_memcmp(md, inp + HDR + 16 + length, 16) != 0:
                            continue
                        EVP_CipherInit_ex(self.dctx, NULL, NULL, NULL, inp + HDR, 0)
                        EVP_CipherUpdate(self.dctx, out + out_off[i], &outl, inp + HDR + 16, length)
                        ok += 1
        return ok


cdef class MbManager:
    """An ipsec-mb manager (one per thread, as the library requires)."""

    cdef ceil_mgr *mgr

    def __cinit__(self):
        self.mgr = ceil_mb_new()
        if self.mgr == NULL:
            raise RuntimeError("ipsec-mb not built in" if not CEIL_HAVE_IPSECMB else "ipsec-mb manager init failed")

    def __dealloc__(self):
        ceil_mb_free(self.mgr)

    @property
    def arch(self) -> str:
        return ceil_mb_arch(self.mgr).decode()


cdef class MbAead(Ceiling):
    """ipsec-mb direct AEAD calls: AES-GCM with the key expanded once (IMB_AESxxx_GCM_PRE), one
    IMB_AESxxx_GCM_ENC/DEC per packet; ChaCha20-Poly1305 init/update/finalize per packet."""

    cdef MbManager mb
    cdef ceil_gcm_key *gkey
    cdef bint chacha

    def __init__(self, str suite, bytes key, bytes salt, uint32_t spi=0x1000):
        super().__init__("ipsecmb", suite, key, salt, spi)
        self.mb = MbManager()
        self.chacha = suite.startswith("chacha20")
        if not self.chacha:
            self.gkey = ceil_mb_gcm_key_new(self.mb.mgr, self.key, self.key_len)
            if self.gkey == NULL:
                raise RuntimeError("ipsec-mb GCM key expansion failed")

    def __dealloc__(self):
        free(self.gkey)

    cdef Py_ssize_t _run(self, int enc, const uint8_t *src, const int64_t *src_off, const int32_t *src_len,
                         uint8_t *out, const int64_t *out_off, Py_ssize_t n, int reps) except -1:
        cdef Py_ssize_t i, ok = 0
        cdef int r, length
        cdef uint8_t nonce[12]
        cdef uint8_t tag[16]
        cdef uint8_t *esp
        cdef const uint8_t *inp
        cdef ceil_gcm_ctx gctx
        cdef ceil_chacha_ctx cctx
        cdef ceil_mgr *m = self.mb.mgr
        memcpy(nonce, self.salt, 4)
        with nogil:
            for r in range(reps):
                for i in range(n):
                    if enc:
                        esp = out + out_off[i]
                        self.seq += 1
                        put_be32(esp, self.spi)
                        put_be32(esp + 4, self.seq)
                        put_be64(esp + HDR, self.seq)
                        memcpy(nonce + 4, esp + HDR, 8)
                        length = src_len[i]
                        if self.chacha:
                            ceil_mb_chacha(m, 1, self.key, &cctx, esp + HDR + 8, src + src_off[i], length,
                                           nonce, esp, HDR, esp + HDR + 8 + length, 16)
                        else:
                            ceil_mb_gcm(m, self.key_len, 1, self.gkey, &gctx, esp + HDR + 8, src + src_off[i],
                                        length, nonce, esp, HDR, esp + HDR + 8 + length, 16)
                        ok += 1
                    else:
                        inp = src + src_off[i]
                        length = src_len[i] - HDR - 8 - 16
                        memcpy(nonce + 4, inp + HDR, 8)
                        if self.chacha:
                            ceil_mb_chacha(m, 0, self.key, &cctx, out + out_off[i], inp + HDR + 8, length,
                                           nonce, inp, HDR, tag, 16)
                        else:
                            ceil_mb_gcm(m, self.key_len, 0, self.gkey, &gctx, out + out_off[i], inp + HDR + 8,
                                        length, nonce, inp, HDR, tag, 16)
                        if CRYPTO_memcmp(tag, inp + HDR + 8 + length, 16) == 0:
                            ok += 1
        return ok


cdef class MbCbcHmac(Ceiling):
    """ipsec-mb AES-CBC + HMAC-SHA-256-128 through the multi-buffer job manager: several packets in flight in
    parallel lanes, which is what CBC (serial within a packet) needs. Encrypt runs in place in the output slots
    (the caller fills them with the plaintext first); decrypt hashes the ESP input, then decrypts it out of place,
    and the tags are compared once the jobs have completed."""

    cdef MbManager mb
    cdef ceil_cbc_key *ckey
    cdef const uint8_t *ivs
    cdef bytes _ivs
    cdef Py_ssize_t n_ivs
    cdef uint8_t[:, ::1] tags

    def __init__(self, str suite, bytes key, bytes hmac_key, bytes ivs, uint32_t spi=0x1000):
        super().__init__("ipsecmb", suite, key, b"", spi)
        self.iv_len = 16
        self.mb = MbManager()
        if len(ivs) < 16 or len(ivs) % 16:
            raise ValueError("ivs: a whole number of 16-byte IVs")
        self._ivs = ivs
        self.ivs = <const uint8_t *>self._ivs
        self.n_ivs = len(ivs) // 16
        self.ckey = ceil_mb_cbc_key_new(self.mb.mgr, self.key, self.key_len, hmac_key, len(hmac_key))
        if self.ckey == NULL:
            raise RuntimeError("ipsec-mb CBC/HMAC key setup failed")

    def __dealloc__(self):
        free(self.ckey)

    cdef Py_ssize_t _run(self, int enc, const uint8_t *src, const int64_t *src_off, const int32_t *src_len,
                         uint8_t *out, const int64_t *out_off, Py_ssize_t n, int reps) except -1:
        import numpy
        if self.tags is None or self.tags.shape[0] < n:
            self.tags = numpy.zeros((n, 16), dtype=numpy.uint8)
        cdef uint8_t *tags = &self.tags[0, 0]
        cdef Py_ssize_t i, ok = 0, bad = 0
        cdef int r, length
        cdef uint8_t *esp
        cdef const uint8_t *inp
        cdef ceil_mgr *m = self.mb.mgr
        with nogil:
            for r in range(reps):
                for i in range(n):
                    if enc:
                        esp = out + out_off[i]
                        self.seq += 1
                        put_be32(esp, self.spi)
                        put_be32(esp + 4, self.seq)
                        memcpy(esp + HDR, self.ivs + 16 * (self.seq % self.n_ivs), 16)
                        length = src_len[i]
                        bad += ceil_mb_cbc_submit(m, self.ckey, 1, esp, esp + HDR + 16, HDR + 16, length,
                                                  HDR + 16 + length, esp + HDR, esp + HDR + 16 + length)
                    else:
                        inp = src + src_off[i]
                        length = src_len[i] - HDR - 16 - 16
                        bad += ceil_mb_cbc_submit(m, self.ckey, 0, inp, out + out_off[i], HDR + 16, length,
                                                  HDR + 16 + length, inp + HDR, tags + 16 * i)
                bad += ceil_mb_flush(m)
                if enc:
                    ok += n
                else:
                    for i in range(n):
                        inp = src + src_off[i]
                        if CRYPTO_memcmp(tags + 16 * i, inp + src_len[i] - 16, 16) == 0:
                            ok += 1
        return ok - bad
