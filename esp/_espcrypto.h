/*
 * espresso: the per-packet cryptographic primitives behind esp/_core.pyx.
 *
 * Two backends with identical output: OpenSSL 3 EVP (always) and Intel ipsec-mb (when built with
 * ESPRESSO_HAVE_IPSECMB). Everything expensive (cipher fetch, key schedule, GHASH tables, HMAC inner and
 * outer pads) happens once in espc_init; per packet only the nonce/IV changes. ipsec-mb's API is made of
 * macros over a manager's function table, which is why this layer is C rather than Cython.
 *
 * Return codes: 1 success, 0 authentication failure, negative = internal error.
 */
#ifndef ESPRESSO_ESPCRYPTO_H
#define ESPRESSO_ESPCRYPTO_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/opensslv.h>

#ifdef ESPRESSO_HAVE_IPSECMB
#define NO_COMPAT_IMB_API_053  /* keep ipsec-mb's old short names (SHA1, CBC, ...) out of our namespace */
#include <intel-ipsec-mb.h>
#endif

enum { ESPC_OPENSSL = 0, ESPC_IPSECMB = 1 };

/* Network byte order loads and stores at any alignment; compile to one instruction plus a byte swap. */
static inline void espc_put16(uint8_t *p, uint32_t v) { uint16_t x = __builtin_bswap16((uint16_t)v); memcpy(p, &x, 2); }
static inline void espc_put32(uint8_t *p, uint32_t v) { uint32_t x = __builtin_bswap32(v); memcpy(p, &x, 4); }
static inline uint32_t espc_get16(const uint8_t *p) { uint16_t x; memcpy(&x, p, 2); return __builtin_bswap16(x); }
static inline uint32_t espc_get32(const uint8_t *p) { uint32_t x; memcpy(&x, p, 4); return __builtin_bswap32(x); }

/* Constant-time tag comparison, inlined: 16-byte tags (every AEAD here) are two 64-bit words. */
static inline int espc_tag_eq(const uint8_t *a, const uint8_t *b, int n) {
    uint64_t x0, x1, y0, y1;
    uint8_t d = 0;
    int i;
    if (n == 16) {
        memcpy(&x0, a, 8); memcpy(&x1, a + 8, 8); memcpy(&y0, b, 8); memcpy(&y1, b + 8, 8);
        return ((x0 ^ y0) | (x1 ^ y1)) == 0;
    }
    for (i = 0; i < n; i++) d |= a[i] ^ b[i];
    return d == 0;
}

/* RFC 4303 2.4 default padding: 1, 2, 3, ... */
static const uint8_t espc_pad_bytes[256] = {
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
    30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56,
    57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83,
    84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108,
    109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130,
    131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145, 146, 147, 148, 149, 150, 151, 152,
    153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 173, 174,
    175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 195, 196,
    197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218,
    219, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240,
    241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 0};
enum { ESPC_GCM = 0, ESPC_CCM, ESPC_GMAC, ESPC_CHACHA, ESPC_CBC, ESPC_CTR, ESPC_NULL, ESPC_3DES };
enum { ESPC_I_NONE = 0, ESPC_I_SHA1, ESPC_I_SHA256, ESPC_I_SHA384, ESPC_I_SHA512 };

typedef struct {
    int kind;          /* ESPC_I_* */
    int block;         /* hash block size */
    int digest;        /* full digest size */
    union { SHA_CTX s1; SHA256_CTX s256; SHA512_CTX s512; } inner, outer;
} espc_hmac;

typedef struct {
    int backend, cipher, enc, key_len, icv_len;
    EVP_CIPHER_CTX *ctx;
    espc_hmac hmac;
    int jobs;          /* 1: CBC/CTR + HMAC through ipsec-mb's multi-buffer job manager */
#ifdef ESPRESSO_HAVE_IPSECMB
    struct gcm_key_data gkey __attribute__((aligned(64)));
    uint8_t chacha_key[32];
    uint32_t enc_keys[60] __attribute__((aligned(16)));
    uint32_t dec_keys[60] __attribute__((aligned(16)));
    uint8_t ipad[64] __attribute__((aligned(16)));
    uint8_t opad[64] __attribute__((aligned(16)));
    IMB_HASH_ALG hash_alg;
    IMB_CIPHER_MODE cipher_mode;
    aes_gcm_enc_dec_t gcm_fn;    /* AES-GCM/GMAC: the one library entry for this key size and direction */
    aes_gcm_init_t gcm_init;     /* AES-GCM encryption in pieces (espc_aead_seal2), chosen once per SA */
    aes_gcm_enc_dec_update_t gcm_update;
    aes_gcm_enc_dec_finalize_t gcm_final;
#endif
} espc_ctx;

#ifdef ESPRESSO_HAVE_IPSECMB
static IMB_MGR *espc_mb_mgr = NULL;
#endif

/* Called once at import: the ipsec-mb manager used for its direct (stateless) AEAD calls. */
static int espc_global_init(void) {
#ifdef ESPRESSO_HAVE_IPSECMB
    if (espc_mb_mgr == NULL) {
        IMB_ARCH arch;
        espc_mb_mgr = alloc_mb_mgr(0);
        if (espc_mb_mgr == NULL) return 0;
        init_mb_mgr_auto(espc_mb_mgr, &arch);
        if (imb_get_errno(espc_mb_mgr) != 0) { free_mb_mgr(espc_mb_mgr); espc_mb_mgr = NULL; return 0; }
    }
    return 1;
#else
    return 0;
#endif
}

static const char *espc_ipsecmb_version(void) {
#ifdef ESPRESSO_HAVE_IPSECMB
    return imb_get_version_str();
#else
    return "";
#endif
}

static const char *espc_ipsecmb_arch(void) {
#ifdef ESPRESSO_HAVE_IPSECMB
    if (espc_mb_mgr == NULL) return "";
    switch (espc_mb_mgr->used_arch) {
        case IMB_ARCH_SSE: return "sse";
        case IMB_ARCH_AVX: return "avx";
        case IMB_ARCH_AVX2: return "avx2";
        case IMB_ARCH_AVX512: return "avx512";
        default: return "other";
    }
#else
    return "";
#endif
}

static const char *espc_openssl_version(void) { return OpenSSL_version(OPENSSL_VERSION); }

/* ---- HMAC with precomputed pads (RFC 2104); ~40% cheaper than EVP_MAC re-init for small packets ---- */

static void espc_hash_init(int kind, void *c) {
    switch (kind) {
        case ESPC_I_SHA1: SHA1_Init((SHA_CTX *)c); break;
        case ESPC_I_SHA256: SHA256_Init((SHA256_CTX *)c); break;
        case ESPC_I_SHA384: SHA384_Init((SHA512_CTX *)c); break;
        case ESPC_I_SHA512: SHA512_Init((SHA512_CTX *)c); break;
    }
}
static void espc_hash_update(int kind, void *c, const uint8_t *d, size_t n) {
    switch (kind) {
        case ESPC_I_SHA1: SHA1_Update((SHA_CTX *)c, d, n); break;
        case ESPC_I_SHA256: SHA256_Update((SHA256_CTX *)c, d, n); break;
        case ESPC_I_SHA384: SHA384_Update((SHA512_CTX *)c, d, n); break;
        case ESPC_I_SHA512: SHA512_Update((SHA512_CTX *)c, d, n); break;
    }
}
static void espc_hash_final(int kind, void *c, uint8_t *out) {
    switch (kind) {
        case ESPC_I_SHA1: SHA1_Final(out, (SHA_CTX *)c); break;
        case ESPC_I_SHA256: SHA256_Final(out, (SHA256_CTX *)c); break;
        case ESPC_I_SHA384: SHA384_Final(out, (SHA512_CTX *)c); break;
        case ESPC_I_SHA512: SHA512_Final(out, (SHA512_CTX *)c); break;
    }
}

static int espc_hmac_init(espc_hmac *h, int kind, const uint8_t *key, int key_len) {
    uint8_t k[128], pad[128];
    int i;
    h->kind = kind;
    switch (kind) {
        case ESPC_I_SHA1: h->block = 64; h->digest = 20; break;
        case ESPC_I_SHA256: h->block = 64; h->digest = 32; break;
        case ESPC_I_SHA384: h->block = 128; h->digest = 48; break;
        case ESPC_I_SHA512: h->block = 128; h->digest = 64; break;
        default: return 1;
    }
    memset(k, 0, sizeof k);
    if (key_len > h->block) {
        union { SHA_CTX s1; SHA256_CTX s256; SHA512_CTX s512; } t;
        espc_hash_init(kind, &t);
        espc_hash_update(kind, &t, key, (size_t)key_len);
        espc_hash_final(kind, &t, k);
        OPENSSL_cleanse(&t, sizeof t);
    } else if (key_len > 0) {
        memcpy(k, key, (size_t)key_len);
    }
    for (i = 0; i < h->block; i++) pad[i] = k[i] ^ 0x36;
    espc_hash_init(kind, &h->inner);
    espc_hash_update(kind, &h->inner, pad, (size_t)h->block);
    for (i = 0; i < h->block; i++) pad[i] = k[i] ^ 0x5c;
    espc_hash_init(kind, &h->outer);
    espc_hash_update(kind, &h->outer, pad, (size_t)h->block);
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(pad, sizeof pad);
    return 1;
}

/* HMAC over d1 || d2 (d2 carries the ESN high bits, RFC 4303 2.2.1); writes the full digest. */
static void espc_hmac_compute(const espc_hmac *h, const uint8_t *d1, size_t l1, const uint8_t *d2, size_t l2,
                      uint8_t *out) {
    union { SHA_CTX s1; SHA256_CTX s256; SHA512_CTX s512; } c;
    uint8_t inner[64];
    memcpy(&c, &h->inner, sizeof c);
    espc_hash_update(h->kind, &c, d1, l1);
    if (l2) espc_hash_update(h->kind, &c, d2, l2);
    espc_hash_final(h->kind, &c, inner);
    memcpy(&c, &h->outer, sizeof c);
    espc_hash_update(h->kind, &c, inner, (size_t)h->digest);
    espc_hash_final(h->kind, &c, out);
}

/* ---- context setup ---- */

static const char *espc_evp_name(int cipher, int key_len) {
    switch (cipher) {
        case ESPC_GCM: case ESPC_GMAC:
            return key_len == 16 ? "AES-128-GCM" : key_len == 24 ? "AES-192-GCM" : "AES-256-GCM";
        case ESPC_CCM:
            return key_len == 16 ? "AES-128-CCM" : key_len == 24 ? "AES-192-CCM" : "AES-256-CCM";
        case ESPC_CHACHA: return "ChaCha20-Poly1305";
        case ESPC_CBC:
            return key_len == 16 ? "AES-128-CBC" : key_len == 24 ? "AES-192-CBC" : "AES-256-CBC";
        case ESPC_CTR:
            return key_len == 16 ? "AES-128-CTR" : key_len == 24 ? "AES-192-CTR" : "AES-256-CTR";
        case ESPC_3DES: return "DES-EDE3-CBC";  /* RFC 2451; OpenSSL 3's default provider still has it */
    }
    return NULL;
}

/* Whether ipsec-mb runs this suite: AEADs through direct calls, CBC/CTR with an HMAC through the job manager. */
static int espc_ipsecmb_supports(int cipher, int key_len, int integ) {
#ifdef ESPRESSO_HAVE_IPSECMB
    int aes = key_len == 16 || key_len == 24 || key_len == 32;
    if (espc_mb_mgr == NULL) return 0;
    if (cipher == ESPC_GCM || cipher == ESPC_GMAC) return aes;
    if (cipher == ESPC_CHACHA) return key_len == 32;
    if (cipher == ESPC_CBC || cipher == ESPC_CTR) return aes && integ != ESPC_I_NONE;
#endif
    (void)cipher; (void)key_len; (void)integ;
    return 0;
}

#ifdef ESPRESSO_HAVE_IPSECMB
/* The job manager keeps state between calls, so each thread has its own (created on first use, freed when
 * the thread exits). A batch drains it completely before it returns, so SAs never see each other's jobs. */
#include <pthread.h>
static pthread_key_t espc_tls_key;
static pthread_once_t espc_tls_once = PTHREAD_ONCE_INIT;
static void espc_tls_free(void *m) { if (m) free_mb_mgr((IMB_MGR *)m); }
static void espc_tls_init(void) { pthread_key_create(&espc_tls_key, espc_tls_free); }

static IMB_MGR *espc_tls_mgr(void) {
    IMB_MGR *m;
    IMB_ARCH arch;
    pthread_once(&espc_tls_once, espc_tls_init);
    m = (IMB_MGR *)pthread_getspecific(espc_tls_key);
    if (m == NULL) {
        m = alloc_mb_mgr(0);
        if (m == NULL) return NULL;
        init_mb_mgr_auto(m, &arch);
        if (imb_get_errno(m) != 0) { free_mb_mgr(m); return NULL; }
        pthread_setspecific(espc_tls_key, m);
    }
    return m;
}

/* One block of key^pad hashed: the inner/outer HMAC state the job manager starts from. */
static void espc_mb_pad(IMB_HASH_ALG alg, const uint8_t *key, int key_len, uint8_t pad, uint8_t *out) {
    uint8_t k[128], blk[128];
    int block = (alg == IMB_AUTH_HMAC_SHA_384 || alg == IMB_AUTH_HMAC_SHA_512) ? 128 : 64, i;
    memset(k, 0, sizeof k);
    if (key_len > block) {
        switch (alg) {
            case IMB_AUTH_HMAC_SHA_1: SHA1(key, (size_t)key_len, k); break;
            case IMB_AUTH_HMAC_SHA_256: SHA256(key, (size_t)key_len, k); break;
            case IMB_AUTH_HMAC_SHA_384: SHA384(key, (size_t)key_len, k); break;
            default: SHA512(key, (size_t)key_len, k); break;
        }
    } else {
        memcpy(k, key, (size_t)key_len);
    }
    for (i = 0; i < block; i++) blk[i] = k[i] ^ pad;
    switch (alg) {
        case IMB_AUTH_HMAC_SHA_1: IMB_SHA1_ONE_BLOCK(espc_mb_mgr, blk, out); break;
        case IMB_AUTH_HMAC_SHA_256: IMB_SHA256_ONE_BLOCK(espc_mb_mgr, blk, out); break;
        case IMB_AUTH_HMAC_SHA_384: IMB_SHA384_ONE_BLOCK(espc_mb_mgr, blk, out); break;
        default: IMB_SHA512_ONE_BLOCK(espc_mb_mgr, blk, out); break;
    }
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(blk, sizeof blk);
}
#endif

/* Job manager handles, opaque to Cython. */
typedef void espc_job;

static void *espc_jobs_mgr(void) {
#ifdef ESPRESSO_HAVE_IPSECMB
    return espc_tls_mgr();
#else
    return NULL;
#endif
}

/* Queue one packet: cipher [src+cipher_off, +cipher_len) into dst, HMAC over [src, +hash_len) into tag
 * (hash_len 0: no HMAC in this job). Encrypt hashes after ciphering, decrypt before. Returns a completed job,
 * or NULL when none completed yet. */
static espc_job *espc_jobs_submit(espc_ctx *c, void *mgr, const uint8_t *src, uint64_t cipher_off,
                                  uint64_t cipher_len, uint8_t *dst, uint64_t hash_len, const uint8_t *iv,
                                  uint8_t *tag, void *user) {
#ifdef ESPRESSO_HAVE_IPSECMB
    IMB_MGR *m = (IMB_MGR *)mgr;
    IMB_JOB *j = IMB_GET_NEXT_JOB(m);
    j->enc_keys = c->enc_keys;
    j->dec_keys = c->dec_keys;
    j->key_len_in_bytes = (uint64_t)c->key_len;
    j->src = src;
    j->dst = dst;
    j->cipher_start_src_offset_in_bytes = cipher_off;
    j->msg_len_to_cipher_in_bytes = cipher_len;
    j->iv = iv;
    j->iv_len_in_bytes = 16;
    j->cipher_mode = c->cipher_mode;
    j->cipher_direction = c->enc ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
    j->chain_order = c->enc ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
    if (hash_len) {
        j->hash_alg = c->hash_alg;
        j->hash_start_src_offset_in_bytes = 0;
        j->msg_len_to_hash_in_bytes = hash_len;
        j->auth_tag_output = tag;
        j->auth_tag_output_len_in_bytes = (uint64_t)c->icv_len;
        j->u.HMAC._hashed_auth_key_xor_ipad = c->ipad;
        j->u.HMAC._hashed_auth_key_xor_opad = c->opad;
    } else {
        j->hash_alg = IMB_AUTH_NULL;
        j->auth_tag_output = NULL;
        j->auth_tag_output_len_in_bytes = 0;
        j->msg_len_to_hash_in_bytes = 0;
    }
    j->user_data = user;
    return (espc_job *)IMB_SUBMIT_JOB(m);
#else
    (void)c; (void)mgr; (void)src; (void)cipher_off; (void)cipher_len; (void)dst; (void)hash_len; (void)iv;
    (void)tag; (void)user;
    return NULL;
#endif
}

/* Next completed job without waiting (flush=0), or forcing the oldest to completion (flush=1). */
static espc_job *espc_jobs_next(void *mgr, int flush) {
#ifdef ESPRESSO_HAVE_IPSECMB
    IMB_JOB *j = IMB_GET_COMPLETED_JOB((IMB_MGR *)mgr);
    if (j == NULL && flush) j = IMB_FLUSH_JOB((IMB_MGR *)mgr);
    return (espc_job *)j;
#else
    (void)mgr; (void)flush;
    return NULL;
#endif
}

static void *espc_job_user(espc_job *j) {
#ifdef ESPRESSO_HAVE_IPSECMB
    return ((IMB_JOB *)j)->user_data;
#else
    (void)j;
    return NULL;
#endif
}

static int espc_job_ok(espc_job *j) {
#ifdef ESPRESSO_HAVE_IPSECMB
    return ((IMB_JOB *)j)->status == IMB_STATUS_COMPLETED;
#else
    (void)j;
    return 0;
#endif
}

static void espc_free(espc_ctx *c) {
    if (c == NULL) return;
    if (c->ctx) EVP_CIPHER_CTX_free(c->ctx);
    OPENSSL_cleanse(c, sizeof *c);
    free(c);
}

/* Returns NULL on failure. `enc` is 1 for an outbound SA, 0 for inbound. */
static espc_ctx *espc_new(int backend, int cipher, int enc, const uint8_t *key, int key_len, int integ,
                          const uint8_t *ikey, int ikey_len, int icv_len) {
    espc_ctx *c = NULL;
    if (posix_memalign((void **)&c, 64, sizeof *c) != 0) return NULL;
    memset(c, 0, sizeof *c);
    c->backend = backend; c->cipher = cipher; c->enc = enc; c->key_len = key_len; c->icv_len = icv_len;
    if (integ != ESPC_I_NONE) espc_hmac_init(&c->hmac, integ, ikey, ikey_len);
    if (backend == ESPC_IPSECMB) {
#ifdef ESPRESSO_HAVE_IPSECMB
        if (!espc_ipsecmb_supports(cipher, key_len, integ)) goto fail;
        if (cipher == ESPC_CHACHA) { memcpy(c->chacha_key, key, 32); return c; }
        if (cipher == ESPC_CBC || cipher == ESPC_CTR) {
            c->jobs = 1;
            c->cipher_mode = cipher == ESPC_CBC ? IMB_CIPHER_CBC : IMB_CIPHER_CNTR;
            if (key_len == 16) IMB_AES_KEYEXP_128(espc_mb_mgr, key, c->enc_keys, c->dec_keys);
            else if (key_len == 24) IMB_AES_KEYEXP_192(espc_mb_mgr, key, c->enc_keys, c->dec_keys);
            else IMB_AES_KEYEXP_256(espc_mb_mgr, key, c->enc_keys, c->dec_keys);
            c->hash_alg = integ == ESPC_I_SHA1 ? IMB_AUTH_HMAC_SHA_1 : integ == ESPC_I_SHA256 ? IMB_AUTH_HMAC_SHA_256
                        : integ == ESPC_I_SHA384 ? IMB_AUTH_HMAC_SHA_384 : IMB_AUTH_HMAC_SHA_512;
            espc_mb_pad(c->hash_alg, ikey, ikey_len, 0x36, c->ipad);
            espc_mb_pad(c->hash_alg, ikey, ikey_len, 0x5c, c->opad);
            return c;
        }
        if (key_len == 16) IMB_AES128_GCM_PRE(espc_mb_mgr, key, &c->gkey);
        else if (key_len == 24) IMB_AES192_GCM_PRE(espc_mb_mgr, key, &c->gkey);
        else IMB_AES256_GCM_PRE(espc_mb_mgr, key, &c->gkey);
        if (key_len == 16) c->gcm_fn = enc ? espc_mb_mgr->gcm128_enc : espc_mb_mgr->gcm128_dec;
        else if (key_len == 24) c->gcm_fn = enc ? espc_mb_mgr->gcm192_enc : espc_mb_mgr->gcm192_dec;
        else c->gcm_fn = enc ? espc_mb_mgr->gcm256_enc : espc_mb_mgr->gcm256_dec;
        if (enc && cipher == ESPC_GCM) {
            if (key_len == 16) {
                c->gcm_init = espc_mb_mgr->gcm128_init;
                c->gcm_update = espc_mb_mgr->gcm128_enc_update;
                c->gcm_final = espc_mb_mgr->gcm128_enc_finalize;
            } else if (key_len == 24) {
                c->gcm_init = espc_mb_mgr->gcm192_init;
                c->gcm_update = espc_mb_mgr->gcm192_enc_update;
                c->gcm_final = espc_mb_mgr->gcm192_enc_finalize;
            } else {
                c->gcm_init = espc_mb_mgr->gcm256_init;
                c->gcm_update = espc_mb_mgr->gcm256_enc_update;
                c->gcm_final = espc_mb_mgr->gcm256_enc_finalize;
            }
        }
        return c;
#else
        goto fail;
#endif
    }
    if (cipher == ESPC_NULL) return c;
    {
        EVP_CIPHER *ciph = EVP_CIPHER_fetch(NULL, espc_evp_name(cipher, key_len), NULL);
        if (ciph == NULL) goto fail;
        c->ctx = EVP_CIPHER_CTX_new();
        if (c->ctx == NULL || !EVP_CipherInit_ex2(c->ctx, ciph, NULL, NULL, enc, NULL)) {
            EVP_CIPHER_free(ciph);
            goto fail;
        }
        EVP_CIPHER_free(ciph);
        if (cipher == ESPC_CCM) {
            /* RFC 4309: 11-byte nonce (3-byte salt || 8-byte IV), so a 4-byte length field. */
            if (!EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_AEAD_SET_IVLEN, 11, NULL)) goto fail;
            if (!EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_AEAD_SET_TAG, icv_len, NULL)) goto fail;
        }
        if (!EVP_CipherInit_ex2(c->ctx, NULL, key, NULL, enc, NULL)) goto fail;
        if (cipher == ESPC_CBC || cipher == ESPC_CTR || cipher == ESPC_3DES) EVP_CIPHER_CTX_set_padding(c->ctx, 0);
    }
    return c;
fail:
    espc_free(c);
    return NULL;
}

/* ---- per packet ---- */

/* AEAD seal/open, in place allowed. nonce: 12 bytes (GCM, ChaCha20-Poly1305) or 11 (CCM).
 * For GMAC the payload is authenticated only: pass it as part of aad with len 0. */
static int espc_aead_other(espc_ctx *c, const uint8_t *nonce, const uint8_t *aad, int aad_len,
                           const uint8_t *in, uint8_t *out, int len, uint8_t *tag);

static inline int espc_aead(espc_ctx *c, const uint8_t *nonce, const uint8_t *aad, int aad_len,
                            const uint8_t *in, uint8_t *out, int len, uint8_t *tag) {
#ifdef ESPRESSO_HAVE_IPSECMB
    if (c->gcm_fn != NULL) {
        /* The hot case, chosen once per SA and inlined into the packet loop: one call into the library. */
        struct gcm_context_data gc;
        uint8_t t[16];
        c->gcm_fn(&c->gkey, &gc, out, in, (uint64_t)len, nonce, aad, (uint64_t)aad_len, c->enc ? tag : t,
                  (uint64_t)c->icv_len);
        return c->enc ? 1 : espc_tag_eq(t, tag, c->icv_len);
    }
#endif
    return espc_aead_other(c, nonce, aad, aad_len, in, out, len, tag);
}

static int espc_aead_other(espc_ctx *c, const uint8_t *nonce, const uint8_t *aad, int aad_len,
                           const uint8_t *in, uint8_t *out, int len, uint8_t *tag) {
    int outl = 0;
#ifdef ESPRESSO_HAVE_IPSECMB
    if (c->backend == ESPC_IPSECMB) {
        if (c->cipher == ESPC_CHACHA) {
            struct chacha20_poly1305_context_data cc;
            uint8_t t[16];
            IMB_CHACHA20_POLY1305_INIT(espc_mb_mgr, c->chacha_key, &cc, nonce, aad, (uint64_t)aad_len);
            if (c->enc) {
                IMB_CHACHA20_POLY1305_ENC_UPDATE(espc_mb_mgr, c->chacha_key, &cc, out, in, (uint64_t)len);
                IMB_CHACHA20_POLY1305_ENC_FINALIZE(espc_mb_mgr, &cc, tag, (uint64_t)c->icv_len);
                return 1;
            }
            IMB_CHACHA20_POLY1305_DEC_UPDATE(espc_mb_mgr, c->chacha_key, &cc, out, in, (uint64_t)len);
            IMB_CHACHA20_POLY1305_DEC_FINALIZE(espc_mb_mgr, &cc, t, (uint64_t)c->icv_len);
            return espc_tag_eq(t, tag, c->icv_len);
        }
        return -1;
    }
#endif
    if (!EVP_CipherInit_ex2(c->ctx, NULL, NULL, nonce, c->enc, NULL)) return -1;
    if (c->cipher == ESPC_CCM) {
        if (!c->enc && !EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_AEAD_SET_TAG, c->icv_len, (void *)tag)) return -1;
        if (!EVP_CipherUpdate(c->ctx, NULL, &outl, NULL, len)) return -1;
    } else if (!c->enc) {
        if (!EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_AEAD_SET_TAG, c->icv_len, (void *)tag)) return -1;
    }
    if (aad_len > 0 && !EVP_CipherUpdate(c->ctx, NULL, &outl, aad, aad_len)) return -1;
    if (len > 0 || c->cipher == ESPC_CCM) {
        if (!EVP_CipherUpdate(c->ctx, out, &outl, in, len)) return c->cipher == ESPC_CCM && !c->enc ? 0 : -1;
    }
    if (c->cipher != ESPC_CCM || c->enc) {
        if (!EVP_CipherFinal_ex(c->ctx, out + outl, &outl)) return c->enc ? -1 : 0;
    }
    if (c->enc && !EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_AEAD_GET_TAG, c->icv_len, tag)) return -1;
    return 1;
}

/* AEAD encryption of in1 || in2 (payload, then padding and trailer) into out, out of place: a large payload is
 * read once from where it lies instead of being copied next to its trailer first. GCM and ChaCha20-Poly1305. */
static int espc_aead_seal2_other(espc_ctx *c, const uint8_t *nonce, const uint8_t *aad, int aad_len,
                                 const uint8_t *in1, int len1, const uint8_t *in2, int len2, uint8_t *out,
                                 uint8_t *tag);

static inline int espc_aead_seal2(espc_ctx *c, const uint8_t *nonce, const uint8_t *aad, int aad_len,
                                  const uint8_t *in1, int len1, const uint8_t *in2, int len2, uint8_t *out,
                                  uint8_t *tag) {
#ifdef ESPRESSO_HAVE_IPSECMB
    if (c->gcm_init != NULL) {
        /* ipsec-mb AES-GCM, the hot case for large packets: the library's entries chosen once per SA. */
        struct gcm_context_data gc;
        c->gcm_init(&c->gkey, &gc, nonce, aad, (uint64_t)aad_len);
        c->gcm_update(&c->gkey, &gc, out, in1, (uint64_t)len1);
        c->gcm_update(&c->gkey, &gc, out + len1, in2, (uint64_t)len2);
        c->gcm_final(&c->gkey, &gc, tag, (uint64_t)c->icv_len);
        return 1;
    }
#endif
    return espc_aead_seal2_other(c, nonce, aad, aad_len, in1, len1, in2, len2, out, tag);
}

static int espc_aead_seal2_other(espc_ctx *c, const uint8_t *nonce, const uint8_t *aad, int aad_len,
                                 const uint8_t *in1, int len1, const uint8_t *in2, int len2, uint8_t *out,
                                 uint8_t *tag) {
    int outl = 0;
#ifdef ESPRESSO_HAVE_IPSECMB
    if (c->backend == ESPC_IPSECMB) {
        /* AES-GCM went through the per-SA entries in espc_aead_seal2; here ChaCha20-Poly1305. */
        struct chacha20_poly1305_context_data cc;
        if (c->cipher != ESPC_CHACHA) return -1;
        IMB_CHACHA20_POLY1305_INIT(espc_mb_mgr, c->chacha_key, &cc, nonce, aad, (uint64_t)aad_len);
        IMB_CHACHA20_POLY1305_ENC_UPDATE(espc_mb_mgr, c->chacha_key, &cc, out, in1, (uint64_t)len1);
        IMB_CHACHA20_POLY1305_ENC_UPDATE(espc_mb_mgr, c->chacha_key, &cc, out + len1, in2, (uint64_t)len2);
        IMB_CHACHA20_POLY1305_ENC_FINALIZE(espc_mb_mgr, &cc, tag, (uint64_t)c->icv_len);
        return 1;
    }
#endif
    if (!EVP_CipherInit_ex2(c->ctx, NULL, NULL, nonce, 1, NULL)) return -1;
    if (!EVP_CipherUpdate(c->ctx, NULL, &outl, aad, aad_len)) return -1;
    if (!EVP_CipherUpdate(c->ctx, out, &outl, in1, len1)) return -1;
    if (!EVP_CipherUpdate(c->ctx, out + outl, &outl, in2, len2)) return -1;
    if (!EVP_CipherFinal_ex(c->ctx, out + len1 + len2, &outl)) return -1;
    if (!EVP_CIPHER_CTX_ctrl(c->ctx, EVP_CTRL_AEAD_GET_TAG, c->icv_len, tag)) return -1;
    return 1;
}

/* Unpadded CBC or CTR over len bytes with the cipher's IV (or a 16-byte counter block), in place allowed. */
static int espc_cipher(espc_ctx *c, const uint8_t *iv, const uint8_t *in, uint8_t *out, int len) {
    int outl = 0;
#ifdef ESPRESSO_HAVE_IPSECMB
    if (c->jobs) {
        /* One packet outside a batch: a job of its own, forced through. The thread's manager is empty here
         * (batches drain it before they return), so the job that comes back is this one. */
        IMB_MGR *m = espc_tls_mgr();
        IMB_JOB *j;
        if (m == NULL) return -1;
        j = (IMB_JOB *)espc_jobs_submit(c, m, in, 0, (uint64_t)len, out, 0, iv, NULL, NULL);
        if (j == NULL) j = IMB_FLUSH_JOB(m);
        return j != NULL && j->status == IMB_STATUS_COMPLETED ? 1 : -1;
    }
#endif
    if (c->cipher == ESPC_NULL) {
        if (in != out) memmove(out, in, (size_t)len);
        return 1;
    }
    if (!EVP_CipherInit_ex2(c->ctx, NULL, NULL, iv, c->enc, NULL)) return -1;
    if (!EVP_CipherUpdate(c->ctx, out, &outl, in, len)) return -1;
    return 1;
}

#endif
