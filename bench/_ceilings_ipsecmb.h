/* ipsec-mb access for bench/_ceilings.pyx.
 *
 * The ceilings module must build on machines without Intel's ipsec-mb (other architectures, or the header not
 * installed): setup.py defines ESPRESSO_HAVE_IPSECMB=1 only when it links libIPSec_MB. Without it every helper
 * below is a stub and CEIL_HAVE_IPSECMB is 0, so the Cython code compiles unchanged and reports the backend as
 * unavailable at run time. The helpers are static inline, so the per-packet calls cost what the library's own
 * macros cost.
 */
#ifndef ESPRESSO_BENCH_CEILINGS_IPSECMB_H
#define ESPRESSO_BENCH_CEILINGS_IPSECMB_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(ESPRESSO_HAVE_IPSECMB) && ESPRESSO_HAVE_IPSECMB
#include <intel-ipsec-mb.h>
#define CEIL_HAVE_IPSECMB 1

typedef IMB_MGR ceil_mgr;
typedef struct gcm_key_data ceil_gcm_key;
typedef struct gcm_context_data ceil_gcm_ctx;
typedef struct chacha20_poly1305_context_data ceil_chacha_ctx;

static inline ceil_mgr *ceil_mb_new(void) {
    IMB_MGR *m = alloc_mb_mgr(0);
    IMB_ARCH arch;
    if (m == NULL) return NULL;
    init_mb_mgr_auto(m, &arch);
    if (imb_get_errno(m) != 0) { free_mb_mgr(m); return NULL; }
    return m;
}
static inline void ceil_mb_free(ceil_mgr *m) { if (m) free_mb_mgr(m); }
static inline const char *ceil_mb_version(void) { return imb_get_version_str(); }
static inline const char *ceil_mb_arch(ceil_mgr *m) {
    switch (m->used_arch) {
    case IMB_ARCH_NOAESNI: return "noaesni";
    case IMB_ARCH_SSE: return "sse";
    case IMB_ARCH_AVX: return "avx";
    case IMB_ARCH_AVX2: return "avx2";
    case IMB_ARCH_AVX512: return "avx512";
    default: return "unknown";
    }
}

static inline ceil_gcm_key *ceil_mb_gcm_key_new(ceil_mgr *m, const uint8_t *key, int key_len) {
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(ceil_gcm_key)) != 0) return NULL;
    if (key_len == 16) IMB_AES128_GCM_PRE(m, key, (ceil_gcm_key *)p);
    else if (key_len == 24) IMB_AES192_GCM_PRE(m, key, (ceil_gcm_key *)p);
    else if (key_len == 32) IMB_AES256_GCM_PRE(m, key, (ceil_gcm_key *)p);
    else { free(p); return NULL; }
    return (ceil_gcm_key *)p;
}

/* One direct GCM call: the whole packet in one IMB_AESxxx_GCM_ENC/DEC. */
static inline void ceil_mb_gcm(ceil_mgr *m, int key_len, int enc, const ceil_gcm_key *k, ceil_gcm_ctx *c,
                               uint8_t *dst, const uint8_t *src, uint64_t len, const uint8_t *iv,
                               const uint8_t *aad, uint64_t aad_len, uint8_t *tag, uint64_t tag_len) {
    if (key_len == 16) {
        if (enc) IMB_AES128_GCM_ENC(m, k, c, dst, src, len, iv, aad, aad_len, tag, tag_len);
        else IMB_AES128_GCM_DEC(m, k, c, dst, src, len, iv, aad, aad_len, tag, tag_len);
    } else if (key_len == 24) {
        if (enc) IMB_AES192_GCM_ENC(m, k, c, dst, src, len, iv, aad, aad_len, tag, tag_len);
        else IMB_AES192_GCM_DEC(m, k, c, dst, src, len, iv, aad, aad_len, tag, tag_len);
    } else {
        if (enc) IMB_AES256_GCM_ENC(m, k, c, dst, src, len, iv, aad, aad_len, tag, tag_len);
        else IMB_AES256_GCM_DEC(m, k, c, dst, src, len, iv, aad, aad_len, tag, tag_len);
    }
}

static inline void ceil_mb_chacha(ceil_mgr *m, int enc, const uint8_t *key, ceil_chacha_ctx *c, uint8_t *dst,
                                  const uint8_t *src, uint64_t len, const uint8_t *iv, const uint8_t *aad,
                                  uint64_t aad_len, uint8_t *tag, uint64_t tag_len) {
    IMB_CHACHA20_POLY1305_INIT(m, key, c, iv, aad, aad_len);
    if (enc) IMB_CHACHA20_POLY1305_ENC_UPDATE(m, key, c, dst, src, len);
    else IMB_CHACHA20_POLY1305_DEC_UPDATE(m, key, c, dst, src, len);
    IMB_CHACHA20_POLY1305_ENC_FINALIZE(m, c, tag, tag_len);
}

/* AES-CBC + HMAC-SHA-256-128 through the multi-buffer job manager: the keys, expanded once per SA. */
typedef struct {
    DECLARE_ALIGNED(uint32_t enc_keys[60], 16);
    DECLARE_ALIGNED(uint32_t dec_keys[60], 16);
    DECLARE_ALIGNED(uint8_t ipad[32], 16);
    DECLARE_ALIGNED(uint8_t opad[32], 16);
    int key_len;
} ceil_cbc_key;

static inline ceil_cbc_key *ceil_mb_cbc_key_new(ceil_mgr *m, const uint8_t *key, int key_len,
                                                const uint8_t *hkey, int hkey_len) {
    ceil_cbc_key *k = NULL;
    uint8_t block[64];
    int i;
    if (hkey_len > 64) return NULL;
    if (posix_memalign((void **)&k, 64, sizeof(*k)) != 0) return NULL;
    k->key_len = key_len;
    if (key_len == 16) IMB_AES_KEYEXP_128(m, key, k->enc_keys, k->dec_keys);
    else if (key_len == 24) IMB_AES_KEYEXP_192(m, key, k->enc_keys, k->dec_keys);
    else if (key_len == 32) IMB_AES_KEYEXP_256(m, key, k->enc_keys, k->dec_keys);
    else { free(k); return NULL; }
    memset(block, 0x36, 64);
    for (i = 0; i < hkey_len; i++) block[i] ^= hkey[i];
    IMB_SHA256_ONE_BLOCK(m, block, k->ipad);
    memset(block, 0x5c, 64);
    for (i = 0; i < hkey_len; i++) block[i] ^= hkey[i];
    IMB_SHA256_ONE_BLOCK(m, block, k->opad);
    return k;
}

/* Submit one packet as a job; returns the number of completed jobs whose status was not COMPLETED
 * (always 0 for well-formed input). On encrypt the cipher runs in place over esp+16+8.. and the HMAC
 * over the resulting ciphertext; on decrypt the HMAC over the input, then the cipher into dst. */
static inline int ceil_mb_cbc_submit(ceil_mgr *m, const ceil_cbc_key *k, int enc, const uint8_t *src,
                                     uint8_t *dst, uint64_t cipher_off, uint64_t cipher_len,
                                     uint64_t hash_len, const uint8_t *iv, uint8_t *tag) {
    IMB_JOB *job = IMB_GET_NEXT_JOB(m);
    int bad = 0;
    job->cipher_mode = IMB_CIPHER_CBC;
    job->cipher_direction = enc ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
    job->chain_order = enc ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
    job->enc_keys = k->enc_keys;
    job->dec_keys = k->dec_keys;
    job->key_len_in_bytes = (uint64_t)k->key_len;
    job->src = src;
    job->dst = dst;
    job->cipher_start_src_offset_in_bytes = cipher_off;
    job->msg_len_to_cipher_in_bytes = cipher_len;
    job->iv = iv;
    job->iv_len_in_bytes = 16;
    job->hash_alg = IMB_AUTH_HMAC_SHA_256;
    job->hash_start_src_offset_in_bytes = 0;
    job->msg_len_to_hash_in_bytes = hash_len;
    job->auth_tag_output = tag;
    job->auth_tag_output_len_in_bytes = 16;
    job->u.HMAC._hashed_auth_key_xor_ipad = k->ipad;
    job->u.HMAC._hashed_auth_key_xor_opad = k->opad;
    job = IMB_SUBMIT_JOB(m);
    while (job) {
        if (job->status != IMB_STATUS_COMPLETED) bad++;
        job = IMB_GET_COMPLETED_JOB(m);
    }
    return bad;
}

static inline int ceil_mb_flush(ceil_mgr *m) {
    int bad = 0;
    IMB_JOB *job;
    while ((job = IMB_FLUSH_JOB(m)) != NULL)
        if (job->status != IMB_STATUS_COMPLETED) bad++;
    return bad;
}

#else /* no ipsec-mb: stubs with the same names, never called because ceil_mb_new() returns NULL */
#define CEIL_HAVE_IPSECMB 0
typedef struct { int unused; } ceil_mgr;
typedef struct { int unused; } ceil_gcm_key;
typedef struct { int unused; } ceil_gcm_ctx;
typedef struct { int unused; } ceil_chacha_ctx;
typedef struct { int unused; } ceil_cbc_key;
static inline ceil_mgr *ceil_mb_new(void) { return NULL; }
static inline void ceil_mb_free(ceil_mgr *m) { (void)m; }
static inline const char *ceil_mb_version(void) { return ""; }
static inline const char *ceil_mb_arch(ceil_mgr *m) { (void)m; return ""; }
static inline ceil_gcm_key *ceil_mb_gcm_key_new(ceil_mgr *m, const uint8_t *k, int l) { (void)m; (void)k; (void)l; return NULL; }
static inline void ceil_mb_gcm(ceil_mgr *m, int kl, int e, const ceil_gcm_key *k, ceil_gcm_ctx *c, uint8_t *d,
                               const uint8_t *s, uint64_t n, const uint8_t *iv, const uint8_t *a, uint64_t al,
                               uint8_t *t, uint64_t tl) {
    (void)m; (void)kl; (void)e; (void)k; (void)c; (void)d; (void)s; (void)n; (void)iv; (void)a; (void)al; (void)t; (void)tl;
}
static inline void ceil_mb_chacha(ceil_mgr *m, int e, const uint8_t *k, ceil_chacha_ctx *c, uint8_t *d,
                                  const uint8_t *s, uint64_t n, const uint8_t *iv, const uint8_t *a, uint64_t al,
                                  uint8_t *t, uint64_t tl) {
    (void)m; (void)e; (void)k; (void)c; (void)d; (void)s; (void)n; (void)iv; (void)a; (void)al; (void)t; (void)tl;
}
static inline ceil_cbc_key *ceil_mb_cbc_key_new(ceil_mgr *m, const uint8_t *k, int kl, const uint8_t *h, int hl) {
    (void)m; (void)k; (void)kl; (void)h; (void)hl; return NULL;
}
static inline int ceil_mb_cbc_submit(ceil_mgr *m, const ceil_cbc_key *k, int e, const uint8_t *s, uint8_t *d,
                                     uint64_t co, uint64_t cl, uint64_t hl, const uint8_t *iv, uint8_t *t) {
    (void)m; (void)k; (void)e; (void)s; (void)d; (void)co; (void)cl; (void)hl; (void)iv; (void)t; return 0;
}
static inline int ceil_mb_flush(ceil_mgr *m) { (void)m; return 0; }
#endif

#endif /* ESPRESSO_BENCH_CEILINGS_IPSECMB_H */
