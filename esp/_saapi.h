/*
 * espresso: one SA's packet step as C function pointers, for compiled code outside esp/_core.pyx.
 *
 * esp/_core.pyx fills this table and exports it as the capsule esp._core.SA_API; esp/_pcapio.pyx uses it to
 * decrypt or encrypt a capture's packets straight into the output file's records, so that the records are laid
 * out as the core writes them rather than copied from the core's output afterwards. A table behind a capsule, not a
 * cimport of the SaContext class, keeps the crypto headers and the class's layout private to esp/_core.
 *
 * ctx is an esp._core.SaContext object, borrowed: the caller holds a reference for the whole use. None of the
 * functions needs the GIL.
 */
#ifndef ESPRESSO_SAAPI_H
#define ESPRESSO_SAAPI_H

#include <stdint.h>

#define ESPRESSO_SA_API_VERSION 2

typedef struct {
    int version;
    /* Take the context's lock for a run of process calls. 0, or -1 (nothing taken) if the context cannot
       work here: not of the direction asked for (outbound 1: encrypt, 0: decrypt), ESP-only framing, or no
       ipsec-mb job manager for this thread. */
    int (*begin)(void *ctx, int outbound);
    /* One IP packet through the SA in its direction, as a batch slot would be: a verdict (esp._core VERDICTS),
       and on OK the output length. pkt and out lie apart, or pkt == out (in place: then the packet's n bytes
       are writable too); negative sizes or any other overlap are MALFORMED. */
    int (*process)(void *ctx, const uint8_t *pkt, int n, uint8_t *out, int cap, int *out_len);
    /* Release what begin took. */
    void (*end)(void *ctx);
} espresso_sa_api;

#endif
