# cython: language_level=3, boundscheck=False, wraparound=False
"""MODP Diffie-Hellman (RFC 3526 groups) through libcrypto's EVP API.

Why compiled: cryptography deprecates finite-field DH and will remove it, while many IKE peers still offer
MODP groups. ``ike`` may not use the data plane's bindings (layering), so it has this small module of its own,
linked with libcrypto. It uses only OpenSSL 3's non-deprecated calls: the named groups (``modp_2048``...) give
p, g and q; the public value is g^x mod p with the constant-time Montgomery ladder; the shared secret comes from
EVP_PKEY_derive, which validates the peer's value first (range and, with q known, y^q = 1 mod p, RFC 6989 2.2)
and pads the secret to the length of p (RFC 7296 2.14). The modular exponentiations run with the GIL released.
Private values and secrets live in OpenSSL memory that is cleared when freed.
"""
from libc.stdlib cimport malloc, free

cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_cleanse(void *ptr, size_t len)

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()

cdef extern from "openssl/bn.h" nogil:
    ctypedef struct BIGNUM:
        pass
    ctypedef struct BN_CTX:
        pass
    ctypedef struct BN_MONT_CTX:
        pass
    int BN_FLG_CONSTTIME
    BIGNUM *BN_new()
    BIGNUM *BN_secure_new()
    void BN_free(BIGNUM *a)
    void BN_clear_free(BIGNUM *a)
    void BN_set_flags(BIGNUM *b, int n)
    BIGNUM *BN_bin2bn(const unsigned char *s, int len, BIGNUM *ret)
    int BN_bn2binpad(const BIGNUM *a, unsigned char *to, int tolen)
    int BN_num_bytes(const BIGNUM *a)
    int BN_cmp(const BIGNUM *a, const BIGNUM *b)
    BN_CTX *BN_CTX_secure_new()
    void BN_CTX_free(BN_CTX *c)
    int BN_mod_exp_mont_consttime(BIGNUM *rr, const BIGNUM *a, const BIGNUM *p, const BIGNUM *m, BN_CTX *ctx,
                                  BN_MONT_CTX *in_mont)

cdef extern from "openssl/params.h" nogil:
    ctypedef struct OSSL_PARAM:
        pass
    void OSSL_PARAM_free(OSSL_PARAM *p)

cdef extern from "openssl/param_build.h" nogil:
    ctypedef struct OSSL_PARAM_BLD:
        pass
    OSSL_PARAM_BLD *OSSL_PARAM_BLD_new()
    void OSSL_PARAM_BLD_free(OSSL_PARAM_BLD *bld)
    int OSSL_PARAM_BLD_push_BN(OSSL_PARAM_BLD *bld, const char *key, const BIGNUM *bn)
    int OSSL_PARAM_BLD_push_utf8_string(OSSL_PARAM_BLD *bld, const char *key, const char *buf, size_t bsize)
    OSSL_PARAM *OSSL_PARAM_BLD_to_param(OSSL_PARAM_BLD *bld)

cdef extern from "openssl/core_names.h" nogil:
    const char *OSSL_PKEY_PARAM_GROUP_NAME
    const char *OSSL_PKEY_PARAM_PUB_KEY
    const char *OSSL_PKEY_PARAM_PRIV_KEY
    const char *OSSL_PKEY_PARAM_FFC_P
    const char *OSSL_PKEY_PARAM_FFC_G

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_PKEY:
        pass
    ctypedef struct EVP_PKEY_CTX:
        pass
    ctypedef struct OSSL_LIB_CTX:
        pass
    int EVP_PKEY_KEYPAIR
    int EVP_PKEY_PUBLIC_KEY
    int EVP_PKEY_KEY_PARAMETERS
    EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_name(OSSL_LIB_CTX *libctx, const char *name, const char *propquery)
    EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_pkey(OSSL_LIB_CTX *libctx, EVP_PKEY *pkey, const char *propquery)
    void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx)
    int EVP_PKEY_fromdata_init(EVP_PKEY_CTX *ctx)
    int EVP_PKEY_fromdata(EVP_PKEY_CTX *ctx, EVP_PKEY **ppkey, int selection, OSSL_PARAM *params)
    void EVP_PKEY_free(EVP_PKEY *pkey)
    int EVP_PKEY_get_bn_param(const EVP_PKEY *pkey, const char *key_name, BIGNUM **bn)
    int EVP_PKEY_derive_init(EVP_PKEY_CTX *ctx)
    int EVP_PKEY_derive_set_peer_ex(EVP_PKEY_CTX *ctx, EVP_PKEY *peer, int validate_peer)
    int EVP_PKEY_derive(EVP_PKEY_CTX *ctx, unsigned char *key, size_t *keylen)

cdef extern from "openssl/dh.h" nogil:
    int EVP_PKEY_CTX_set_dh_pad(EVP_PKEY_CTX *ctx, int pad)


cdef EVP_PKEY *_fromdata(const char *group, const BIGNUM *pub, const BIGNUM *priv, int selection) noexcept nogil:
    """A DH key of a named group from its parts (NULL on any failure)."""
    cdef OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new()
    cdef OSSL_PARAM *params = NULL
    cdef EVP_PKEY_CTX *ctx = NULL
    cdef EVP_PKEY *pkey = NULL
    if bld == NULL:
        return NULL
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) == 1
            and (pub == NULL or OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PUB_KEY, pub) == 1)
            and (priv == NULL or OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv) == 1)):
        params = OSSL_PARAM_BLD_to_param(bld)
    if params != NULL:
        ctx = EVP_PKEY_CTX_new_from_name(NULL, b"DH", NULL)
        if ctx != NULL and EVP_PKEY_fromdata_init(ctx) == 1:
            if EVP_PKEY_fromdata(ctx, &pkey, selection, params) != 1:
                pkey = NULL
    EVP_PKEY_CTX_free(ctx)
    OSSL_PARAM_free(params)  # the private value sat in the secure part, which is cleared when freed
    OSSL_PARAM_BLD_free(bld)
    return pkey


def group_prime(str group) -> bytes:
    """The prime OpenSSL holds for a named group, so that callers can check it against the RFC's."""
    cdef bytes name = group.encode()
    cdef EVP_PKEY *dom = _fromdata(name, NULL, NULL, EVP_PKEY_KEY_PARAMETERS)
    cdef BIGNUM *p = NULL
    if dom == NULL:
        ERR_clear_error()
        raise ValueError(f"libcrypto has no DH group {group!r}")
    try:
        if EVP_PKEY_get_bn_param(dom, OSSL_PKEY_PARAM_FFC_P, &p) != 1:
            ERR_clear_error()
            raise ValueError(f"libcrypto gave no prime for {group!r}")
        out = bytearray(BN_num_bytes(p))
        BN_bn2binpad(p, out, len(out))
        return bytes(out)
    finally:
        BN_free(p)
        EVP_PKEY_free(dom)


cdef class ModpKey:
    """One MODP key pair: the private value x given by the caller (so tests can fix it), public g^x mod p.

    ``derive`` raises ValueError for a peer value libcrypto refuses; the caller maps that to its protocol error.
    """
    cdef EVP_PKEY *pkey
    cdef bytes _group
    cdef readonly int size
    cdef readonly bytes public

    def __cinit__(self, str group, const unsigned char[:] private):
        cdef bytes name = group.encode()
        cdef const char *cname = name
        cdef EVP_PKEY *dom = NULL
        cdef BIGNUM *p = NULL
        cdef BIGNUM *g = NULL
        cdef BIGNUM *x = NULL
        cdef BIGNUM *y = NULL
        cdef BN_CTX *bnctx = NULL
        cdef int ok = 0
        cdef int n = 0
        self.pkey = NULL
        if private.shape[0] == 0:
            raise ValueError("empty MODP private value")
        self._group = name
        dom = _fromdata(cname, NULL, NULL, EVP_PKEY_KEY_PARAMETERS)
        if dom == NULL:
            ERR_clear_error()
            raise ValueError(f"libcrypto has no DH group {group!r}")
        try:
            if (EVP_PKEY_get_bn_param(dom, OSSL_PKEY_PARAM_FFC_P, &p) != 1
                    or EVP_PKEY_get_bn_param(dom, OSSL_PKEY_PARAM_FFC_G, &g) != 1):
                raise ValueError(f"libcrypto gave no parameters for {group!r}")
            n = BN_num_bytes(p)
            x = BN_secure_new()
            y = BN_new()
            bnctx = BN_CTX_secure_new()
            if x == NULL or y == NULL or bnctx == NULL:
                raise MemoryError()
            BN_set_flags(x, BN_FLG_CONSTTIME)
            if BN_bin2bn(&private[0], <int>private.shape[0], x) == NULL:
                raise MemoryError()
            if BN_cmp(x, p) >= 0:
                raise ValueError("MODP private value not below the prime")
            with nogil:
                ok = BN_mod_exp_mont_consttime(y, g, x, p, bnctx, NULL)
                if ok == 1:
                    self.pkey = _fromdata(cname, y, x, EVP_PKEY_KEYPAIR)
            if ok != 1 or self.pkey == NULL:
                raise ValueError(f"libcrypto could not build a {group} key")
            out = bytearray(n)
            BN_bn2binpad(y, out, n)
            self.public = bytes(out)
            self.size = n
        finally:
            ERR_clear_error()
            BN_CTX_free(bnctx)
            BN_clear_free(x)
            BN_free(y)
            BN_free(p)
            BN_free(g)
            EVP_PKEY_free(dom)

    def __dealloc__(self):
        EVP_PKEY_free(self.pkey)  # clears the private value

    def derive(self, const unsigned char[:] peer) -> bytes:
        """g^(xy) mod p, left-padded to the length of p; ValueError unless 1 < y < p-1 and y^q = 1 mod p."""
        cdef const char *cname = self._group
        cdef BIGNUM *y = NULL
        cdef EVP_PKEY *peer_key = NULL
        cdef EVP_PKEY_CTX *ctx = NULL
        cdef unsigned char *buf = NULL
        cdef size_t length = self.size
        cdef int ok = 0
        if peer.shape[0] != self.size:
            raise ValueError(f"MODP public value of {peer.shape[0]} bytes, expected {self.size}")
        y = BN_bin2bn(&peer[0], <int>peer.shape[0], NULL)
        buf = <unsigned char *>malloc(length)
        if y == NULL or buf == NULL:
            BN_free(y)
            free(buf)
            raise MemoryError()
        with nogil:
            peer_key = _fromdata(cname, y, NULL, EVP_PKEY_PUBLIC_KEY)
            if peer_key != NULL:
                ctx = EVP_PKEY_CTX_new_from_pkey(NULL, self.pkey, NULL)
            ok = (ctx != NULL and EVP_PKEY_derive_init(ctx) == 1 and EVP_PKEY_CTX_set_dh_pad(ctx, 1) == 1
                  # validate_peer=1: EVP_PKEY_public_check on the peer's key (range and subgroup)
                  and EVP_PKEY_derive_set_peer_ex(ctx, peer_key, 1) == 1
                  and EVP_PKEY_derive(ctx, buf, &length) == 1 and length == <size_t>self.size)
            EVP_PKEY_CTX_free(ctx)
            EVP_PKEY_free(peer_key)
            BN_free(y)
            ERR_clear_error()
        try:
            if not ok:
                raise ValueError("MODP public value refused by libcrypto")
            return buf[:length]
        finally:
            OPENSSL_cleanse(buf, self.size)
            free(buf)
