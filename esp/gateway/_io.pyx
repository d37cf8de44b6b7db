# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Batched packet I/O for the gateway: UDP (recvmmsg/sendmmsg), raw ESP and TUN, all with the GIL released.

Every call moves a whole batch between a kernel file descriptor and a :class:`esp.PacketBatch` arena (slot i
at ``offsets[i]``, room ``capacity[i]``), so the gateway's threads run Python once per batch, never per packet.

The compiled core wants whole IP packets (outer header, optional UDP header, ESP). UDP and IPv6 raw sockets
hand us only the payload, so the receive calls can *synthesize* the outer header in front of it (``synth``:
17 writes IP + UDP, 50 writes an IP header with protocol ESP) from the sender's address and the local one.
The send calls do the reverse: they read the destination address and port from each packet's outer header
and send only what follows it, so one socket can serve every peer.

Return values are counts; a negative value is ``-errno`` of a failure before anything moved. Nothing here
raises per packet: a packet that cannot be sent (bad header, family mismatch, refused) is counted in ``drops``.
"""
from libc.stdint cimport uint8_t, int32_t, int64_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <netinet/in.h>
    #include <poll.h>
    #include <unistd.h>
    #include <errno.h>
    #include <string.h>
    #include <stdint.h>

    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    #define ESPIO_CHUNK 64
    #define ESPIO_IOV 1024          /* datagrams per sendmmsg when trains are coalesced */
    #define ESPIO_GSO_SEGMENTS 64   /* UDP_MAX_SEGMENTS of older kernels */
    #define ESPIO_GSO_BYTES 65000   /* a train is one UDP datagram to the kernel: under 64 KB */
    #define ESPIO_GRO_BUF 65536     /* a GRO train (at most 64 datagrams, one UDP length) fits */
    #define ESPIO_GRO_SEGMENTS 64   /* UDP_GRO_CNT_MAX: what the kernel coalesces into one train */
    #define ESPIO_RETRIES 200   /* EAGAIN / EINTR retries of one call, each after a poll of <= 5 ms */

    static int espio_poll(const int *fds, int nfds, int timeout_ms) {
        struct pollfd p[8];
        int i, r, mask = 0;
        if (nfds > 8) nfds = 8;
        for (i = 0; i < nfds; i++) { p[i].fd = fds[i]; p[i].events = POLLIN; p[i].revents = 0; }
        r = poll(p, (nfds_t)nfds, timeout_ms);
        if (r < 0) return errno == EINTR ? 0 : -errno;
        for (i = 0; i < nfds; i++) if (p[i].revents) mask |= 1 << i;
        return mask;
    }

    static int espio_wait_out(int fd) {
        struct pollfd p; p.fd = fd; p.events = POLLOUT; p.revents = 0;
        return poll(&p, 1, 5);
    }

    static int espio_slot_ok(int64_t buflen, int64_t off, int32_t cap, int need) {
        return off >= 0 && cap >= need && off + (int64_t)cap <= buflen;
    }

    static uint16_t espio_csum(const uint8_t *h, int n) {
        uint32_t s = 0; int i;
        for (i = 0; i + 1 < n; i += 2) s += ((uint32_t)h[i] << 8) | h[i + 1];
        while (s >> 16) s = (s & 0xffff) + (s >> 16);
        return (uint16_t)(~s & 0xffff);
    }

    /* Write the outer header of a packet received on a socket: sender -> local, proto 17 (+UDP) or 50. */
    static int espio_synth(uint8_t *p, int plen, const struct sockaddr_storage *from, const uint8_t *laddr,
                           int lfam, int lport, int proto) {
        int hl = lfam == 6 ? 40 : 20, udp = proto == 17 ? 8 : 0, i;
        memset(p, 0, hl + udp);
        if (lfam == 4) {
            const struct sockaddr_in *s = (const struct sockaddr_in *)from;
            int tot = hl + udp + plen;
            if (from->ss_family != AF_INET) return -1;
            p[0] = 0x45; p[2] = tot >> 8; p[3] = tot & 0xff; p[6] = 0x40; p[8] = 64; p[9] = (uint8_t)proto;
            memcpy(p + 12, &s->sin_addr, 4); memcpy(p + 16, laddr, 4);
            i = espio_csum(p, 20); p[10] = i >> 8; p[11] = i & 0xff;
            if (udp) { memcpy(p + 20, &s->sin_port, 2); }
        } else {
            const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)from;
            int pl = udp + plen;
            if (from->ss_family != AF_INET6) return -1;
            p[0] = 0x60; p[4] = pl >> 8; p[5] = pl & 0xff; p[6] = (uint8_t)proto; p[7] = 64;
            memcpy(p + 8, &s->sin6_addr, 16); memcpy(p + 24, laddr, 16);
            if (udp) { memcpy(p + 40, &s->sin6_port, 2); }
        }
        if (udp) {
            uint8_t *u = p + hl; int ul = 8 + plen;
            u[2] = lport >> 8; u[3] = lport & 0xff; u[4] = ul >> 8; u[5] = ul & 0xff;
        }
        return hl + udp;
    }

    /* recvmmsg into slots [0, max): returns packets received (lengths set; 0 for a truncated datagram). */
    static long espio_recv(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len,
                           const int32_t *cap, int max, int synth, const uint8_t *laddr, int lfam, int lport) {
        struct mmsghdr msgs[ESPIO_CHUNK];
        struct iovec iov[ESPIO_CHUNK];
        struct sockaddr_storage names[ESPIO_CHUNK];
        int got = 0, k, n, r, retries = 0;
        int hl = synth == 0 ? 0 : (lfam == 6 ? 40 : 20) + (synth == 17 ? 8 : 0);
        while (got < max) {
            n = max - got; if (n > ESPIO_CHUNK) n = ESPIO_CHUNK;
            for (k = 0; k < n; k++) {
                int i = got + k;
                if (!espio_slot_ok(buflen, off[i], cap[i], hl + 1)) return got ? got : -EINVAL;
                iov[k].iov_base = buf + off[i] + hl;
                iov[k].iov_len = (size_t)(cap[i] - hl);
                memset(&msgs[k], 0, sizeof(msgs[k]));
                msgs[k].msg_hdr.msg_name = &names[k];
                msgs[k].msg_hdr.msg_namelen = sizeof(names[k]);
                msgs[k].msg_hdr.msg_iov = &iov[k];
                msgs[k].msg_hdr.msg_iovlen = 1;
            }
            r = recvmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT, NULL);
            if (r < 0) {
                if (errno == EINTR && ++retries < ESPIO_RETRIES) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK || got) break;
                return -errno;
            }
            for (k = 0; k < r; k++) {
                int i = got + k, plen = (int)msgs[k].msg_len;
                if (msgs[k].msg_hdr.msg_flags & MSG_TRUNC) { len[i] = 0; continue; }
                if (synth) {
                    if (espio_synth(buf + off[i], plen, &names[k], laddr, lfam, lport, synth) < 0) { len[i] = 0; continue; }
                }
                len[i] = plen + hl;
            }
            got += r;
            if (r < n) break;
        }
        return got;
    }

    /* recvmmsg with UDP_GRO on the socket: each message lands in a 64 KB region of scratch and may be a train
       of datagrams (cmsg UDP_GRO gives their size; the last may be shorter), split here into slots [got, max).
       A train holds at most ESPIO_GRO_SEGMENTS datagrams, so only as many messages are asked for as the free
       slots can take whole (at least one). ctr (may be NULL): [0] trains, [1] datagrams in them, [2] datagrams
       lost because the batch was full (only when max < ESPIO_GRO_SEGMENTS). */
    static long espio_recv_gro(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len,
                               const int32_t *cap, int max, int synth, const uint8_t *laddr, int lfam, int lport,
                               uint8_t *scratch, int64_t scratch_len, int64_t *ctr) {
        struct mmsghdr msgs[ESPIO_CHUNK];
        struct iovec iov[ESPIO_CHUNK];
        struct sockaddr_storage names[ESPIO_CHUNK];
        union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl[ESPIO_CHUNK];
        int got = 0, k, n, r, retries = 0, nbuf = (int)(scratch_len / ESPIO_GRO_BUF);
        int hl = synth == 0 ? 0 : (lfam == 6 ? 40 : 20) + (synth == 17 ? 8 : 0);
        if (nbuf < 1) return -EINVAL;
        while (got < max) {
            n = (max - got) / ESPIO_GRO_SEGMENTS;
            if (n == 0) { if (got) break; n = 1; }
            if (n > nbuf) n = nbuf;
            if (n > ESPIO_CHUNK) n = ESPIO_CHUNK;
            for (k = 0; k < n; k++) {
                iov[k].iov_base = scratch + (int64_t)k * ESPIO_GRO_BUF;
                iov[k].iov_len = ESPIO_GRO_BUF;
                memset(&msgs[k], 0, sizeof(msgs[k]));
                msgs[k].msg_hdr.msg_name = &names[k];
                msgs[k].msg_hdr.msg_namelen = sizeof(names[k]);
                msgs[k].msg_hdr.msg_iov = &iov[k];
                msgs[k].msg_hdr.msg_iovlen = 1;
                msgs[k].msg_hdr.msg_control = ctl[k].b;
                msgs[k].msg_hdr.msg_controllen = sizeof(ctl[k].b);
            }
            r = recvmmsg(fd, msgs, (unsigned)n, MSG_DONTWAIT, NULL);
            if (r < 0) {
                if (errno == EINTR && ++retries < ESPIO_RETRIES) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK || got) break;
                return -errno;
            }
            for (k = 0; k < r; k++) {
                int plen = (int)msgs[k].msg_len, seg = plen, at, segs = 0;
                const uint8_t *data = scratch + (int64_t)k * ESPIO_GRO_BUF;
                struct cmsghdr *c;
                for (c = CMSG_FIRSTHDR(&msgs[k].msg_hdr); c; c = CMSG_NXTHDR(&msgs[k].msg_hdr, c)) {
                    if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                        int g; memcpy(&g, CMSG_DATA(c), sizeof(g));
                        if (g > 0 && g < seg) seg = g;
                    }
                }
                if ((msgs[k].msg_hdr.msg_flags & MSG_TRUNC) || plen <= 0) {
                    if (got < max) len[got++] = 0;
                    continue;
                }
                for (at = 0; at < plen; at += seg) {
                    int i = got, sl = plen - at < seg ? plen - at : seg;
                    segs++;
                    if (got >= max) { if (ctr) ctr[2]++; continue; }
                    got++;
                    if (!espio_slot_ok(buflen, off[i], cap[i], hl + sl)) { len[i] = 0; continue; }
                    memcpy(buf + off[i] + hl, data + at, (size_t)sl);
                    if (synth && espio_synth(buf + off[i], sl, &names[k], laddr, lfam, lport, synth) < 0) {
                        len[i] = 0; continue;
                    }
                    len[i] = sl + hl;
                }
                if (ctr && segs > 1) { ctr[0]++; ctr[1] += segs; }
            }
            if (r < n) break;
        }
        return got;
    }

    /* Where a whole IP packet goes and what follows its outer headers: fills name, returns payload offset. */
    static int espio_dest(const uint8_t *p, int n, int fam, int udp, struct sockaddr_storage *name, socklen_t *nl) {
        int hl;
        memset(name, 0, sizeof(*name));
        if (n < 20) return -1;
        if ((p[0] >> 4) == 4) {
            struct sockaddr_in *s = (struct sockaddr_in *)name;
            if (fam != 4) return -1;
            hl = (p[0] & 15) * 4;
            if (hl < 20 || p[9] != (udp ? 17 : 50)) return -1;
            s->sin_family = AF_INET; memcpy(&s->sin_addr, p + 16, 4);
            *nl = sizeof(*s);
            if (udp) { if (n < hl + 8) return -1; memcpy(&s->sin_port, p + hl + 2, 2); hl += 8; }
        } else if ((p[0] >> 4) == 6) {
            struct sockaddr_in6 *s = (struct sockaddr_in6 *)name;
            if (fam != 6 || n < 40 || p[6] != (udp ? 17 : 50)) return -1;
            hl = 40;
            s->sin6_family = AF_INET6; memcpy(&s->sin6_addr, p + 24, 16);
            *nl = sizeof(*s);
            if (udp) { if (n < hl + 8) return -1; memcpy(&s->sin6_port, p + hl + 2, 2); hl += 8; }
        } else return -1;
        return hl <= n ? hl : -1;
    }

    static int espio_same_dest(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
        if (a->ss_family != b->ss_family) return 0;
        if (a->ss_family == AF_INET) {
            const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
            return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
        }
        {
            const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
            return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, 16)
                && x->sin6_scope_id == y->sin6_scope_id;
        }
    }

    /* One sendmsg per datagram of a train whose UDP_SEGMENT send was refused (GSO not possible on this path). */
    static long espio_send_each(int fd, struct msghdr *m, long *drops) {
        struct msghdr one;
        size_t j;
        long sent = 0;
        int retries = 0;
        for (j = 0; j < m->msg_iovlen; ) {
            memset(&one, 0, sizeof(one));
            one.msg_name = m->msg_name; one.msg_namelen = m->msg_namelen;
            one.msg_iov = &m->msg_iov[j]; one.msg_iovlen = 1;
            if (sendmsg(fd, &one, 0) < 0) {
                if ((errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EINTR)
                        && ++retries < ESPIO_RETRIES) { espio_wait_out(fd); continue; }
                (*drops)++;
            } else sent++;
            j++;
        }
        return sent;
    }

    /* sendmmsg of the selected slots, stripped of their outer headers; returns packets sent, *drops the rest.
       With gso, a run of consecutive datagrams to one destination, all of one size but the last (which may be
       shorter), becomes one message with a UDP_SEGMENT cmsg that the kernel splits (UDP GSO); the others go
       as one message each, in the same sendmmsg. ctr (may be NULL): [0] trains sent, [1] datagrams in them,
       [2] set to 1 when the kernel refused GSO (the train was sent datagram by datagram instead). */
    static long espio_send(int fd, int fam, int udp, const uint8_t *buf, int64_t buflen, const int64_t *off,
                           const int32_t *len, const int32_t *sel, int nsel, int gso, long *drops, int64_t *ctr) {
        struct mmsghdr msgs[ESPIO_CHUNK];
        struct iovec iov[ESPIO_IOV];
        struct sockaddr_storage names[ESPIO_CHUNK];
        union { char b[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } ctl[ESPIO_CHUNK];
        int segsize[ESPIO_CHUNK], closed[ESPIO_CHUNK];
        long total[ESPIO_CHUNK];
        int pos = 0, m, v, k, r, start, retries = 0;
        long sent = 0;
        *drops = 0;
        while (pos < nsel) {
            m = 0; v = 0;
            while (pos < nsel && m < ESPIO_CHUNK && v < ESPIO_IOV) {
                int i = sel[pos++], h, plen;
                socklen_t nl = 0;
                struct sockaddr_storage nm;
                if (off[i] < 0 || len[i] <= 0 || off[i] + len[i] > buflen) { (*drops)++; continue; }
                h = espio_dest(buf + off[i], len[i], fam, udp, &nm, &nl);
                if (h < 0) { (*drops)++; continue; }
                plen = len[i] - h;
                iov[v].iov_base = (void *)(buf + off[i] + h);
                iov[v].iov_len = (size_t)plen;
                if (gso && m > 0 && !closed[m - 1] && plen > 0 && plen <= segsize[m - 1]
                        && msgs[m - 1].msg_hdr.msg_iovlen < ESPIO_GSO_SEGMENTS
                        && total[m - 1] + plen <= ESPIO_GSO_BYTES && espio_same_dest(&names[m - 1], &nm)) {
                    msgs[m - 1].msg_hdr.msg_iovlen++;
                    total[m - 1] += plen;
                    if (plen < segsize[m - 1]) closed[m - 1] = 1;   /* only the last may be shorter */
                } else {
                    memcpy(&names[m], &nm, sizeof(nm));
                    memset(&msgs[m], 0, sizeof(msgs[m]));
                    msgs[m].msg_hdr.msg_name = &names[m];
                    msgs[m].msg_hdr.msg_namelen = nl;
                    msgs[m].msg_hdr.msg_iov = &iov[v];
                    msgs[m].msg_hdr.msg_iovlen = 1;
                    segsize[m] = plen; total[m] = plen; closed[m] = 0;
                    m++;
                }
                v++;
            }
            for (k = 0; k < m; k++) {
                if (msgs[k].msg_hdr.msg_iovlen > 1) {
                    struct cmsghdr *c;
                    uint16_t g = (uint16_t)segsize[k];
                    memset(&ctl[k], 0, sizeof(ctl[k]));
                    msgs[k].msg_hdr.msg_control = ctl[k].b;
                    msgs[k].msg_hdr.msg_controllen = sizeof(ctl[k].b);
                    c = CMSG_FIRSTHDR(&msgs[k].msg_hdr);
                    c->cmsg_level = IPPROTO_UDP; c->cmsg_type = UDP_SEGMENT; c->cmsg_len = CMSG_LEN(sizeof(g));
                    memcpy(CMSG_DATA(c), &g, sizeof(g));
                }
            }
            start = 0;
            while (start < m) {
                r = sendmmsg(fd, msgs + start, (unsigned)(m - start), 0);
                if (r < 0) {
                    if ((errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EINTR)
                            && ++retries < ESPIO_RETRIES) {
                        espio_wait_out(fd);
                        continue;
                    }
                    if (msgs[start].msg_hdr.msg_iovlen > 1) {
                        /* refused as a train (EIO: no checksum offload on the way out, EINVAL ...): datagram
                           by datagram, and tell the caller so it stops asking */
                        if (ctr) ctr[2] = 1;
                        sent += espio_send_each(fd, &msgs[start].msg_hdr, drops);
                    } else
                        (*drops)++;      /* this message is refused (EMSGSIZE, unreachable ...): skip it */
                    start++;
                    continue;
                }
                for (k = start; k < start + r; k++) {
                    sent += (long)msgs[k].msg_hdr.msg_iovlen;
                    if (ctr && msgs[k].msg_hdr.msg_iovlen > 1) { ctr[0]++; ctr[1] += (int64_t)msgs[k].msg_hdr.msg_iovlen; }
                }
                start += r;
            }
        }
        return sent;
    }

    /* read() one packet per slot until the fd would block or max slots are filled (TUN, IFF_NO_PI). */
    static long espio_read(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len,
                           const int32_t *cap, int max) {
        int i = 0, retries = 0;
        while (i < max) {
            ssize_t r;
            if (!espio_slot_ok(buflen, off[i], cap[i], 1)) return i ? i : -EINVAL;
            r = read(fd, buf + off[i], (size_t)cap[i]);
            if (r < 0) {
                if (errno == EINTR && ++retries < ESPIO_RETRIES) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK || i) break;
                return -errno;
            }
            if (r == 0) break;
            len[i++] = (int32_t)r;
        }
        return i;
    }

    /* write() each selected slot (TUN: one packet per write); returns packets written, *drops the rest. */
    static long espio_write(int fd, const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len,
                            const int32_t *sel, int nsel, long *drops) {
        int k = 0, retries = 0;
        long done = 0;
        *drops = 0;
        while (k < nsel) {
            int i = sel[k];
            ssize_t r;
            if (off[i] < 0 || len[i] <= 0 || off[i] + len[i] > buflen) { (*drops)++; k++; continue; }
            r = write(fd, buf + off[i], (size_t)len[i]);
            if (r < 0) {
                if ((errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ENOBUFS)
                        && ++retries < ESPIO_RETRIES) {
                    espio_wait_out(fd);
                    continue;
                }
                (*drops)++;   /* EINVAL (not an IP packet), EIO (device down) ... */
                k++;
                continue;
            }
            done++;
            k++;
        }
        return done;
    }
    """
    long espio_recv(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                    int max, int synth, const uint8_t *laddr, int lfam, int lport) nogil
    long espio_recv_gro(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                        int max, int synth, const uint8_t *laddr, int lfam, int lport, uint8_t *scratch,
                        int64_t scratch_len, int64_t *ctr) nogil
    long espio_send(int fd, int fam, int udp, const uint8_t *buf, int64_t buflen, const int64_t *off,
                    const int32_t *len, const int32_t *sel, int nsel, int gso, long *drops, int64_t *ctr) nogil
    long espio_read(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                    int max) nogil
    long espio_write(int fd, const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len,
                     const int32_t *sel, int nsel, long *drops) nogil
    int espio_poll(const int *fds, int nfds, int timeout_ms) nogil

import ipaddress

__all__ = ["poll", "recv", "send", "tun_read", "tun_write", "SYNTH_NONE", "SYNTH_UDP", "SYNTH_ESP", "COUNTERS",
           "GRO_BUFFER", "UDP_SEGMENT", "UDP_GRO"]

#: Length of the ``counters`` arrays of recv/send.
COUNTERS = 3
#: Bytes of gro_scratch per message read at once (a GRO train is one UDP datagram to the kernel).
GRO_BUFFER = 65536
#: Socket options (level IPPROTO_UDP) of UDP GSO and GRO, Linux 4.18 and 5.0.
UDP_SEGMENT = 103
UDP_GRO = 104
SYNTH_NONE = 0
SYNTH_UDP = 17
SYNTH_ESP = 50


def _check(uint8_t[::1] buf, const int64_t[::1] off, const int32_t[::1] ln, int need):
    if off.shape[0] < need or ln.shape[0] < need:
        raise ValueError(f"batch has {off.shape[0]} slots, {need} needed")


def poll(fds, int timeout_ms) -> int:
    """Wait (GIL released) until one of up to 8 fds is readable; a bit mask of the readable ones (0: timeout)."""
    cdef int cfds[8]
    cdef int n = 0, r
    for fd in fds:
        if n == 8:
            raise ValueError("at most 8 descriptors")
        cfds[n] = fd
        n += 1
    with nogil:
        r = espio_poll(cfds, n, timeout_ms)
    if r < 0:
        raise OSError(-r, "poll failed")
    return r


def recv(int fd, uint8_t[::1] buf, const int64_t[::1] offsets, int32_t[::1] lengths,
         const int32_t[::1] capacity, int max_count, int synth=0, local_addr=None, int local_port=0,
         uint8_t[::1] gro_scratch=None, int64_t[::1] counters=None) -> int:
    """recvmmsg up to ``max_count`` datagrams into slots 0.. without blocking; returns how many arrived.

    With ``synth`` SYNTH_UDP or SYNTH_ESP an outer IP (+UDP) header from the sender to ``local_addr``
    (``local_port``) is written in front of each payload, so the slot holds a whole packet for the core.
    A truncated datagram gets length 0.

    ``gro_scratch`` (a multiple of GRO_BUFFER bytes) is for a socket with UDP_GRO on: trains of datagrams
    are read into it and split at the size the kernel reports, one datagram per slot. ``counters`` (int64,
    COUNTERS long) is incremented: [0] trains, [1] datagrams in trains, [2] datagrams lost to a full batch.
    """
    cdef bytes la = b"\0" * 16
    cdef int fam = 4
    cdef long r
    cdef const uint8_t *lap
    cdef int64_t *ctr = NULL
    if max_count > offsets.shape[0] or max_count > lengths.shape[0] or max_count > capacity.shape[0]:
        raise ValueError("max_count exceeds the batch")
    if max_count <= 0:
        return 0
    if synth not in (0, 17, 50):
        raise ValueError("synth must be SYNTH_NONE, SYNTH_UDP or SYNTH_ESP")
    if counters is not None:
        if counters.shape[0] < COUNTERS:
            raise ValueError(f"counters needs {COUNTERS} int64 entries")
        ctr = &counters[0]
    if gro_scratch is not None and gro_scratch.shape[0] < GRO_BUFFER:
        raise ValueError(f"gro_scratch needs at least {GRO_BUFFER} bytes")
    if synth:
        packed = local_addr if isinstance(local_addr, bytes) else ipaddress.ip_address(local_addr).packed
        if len(packed) not in (4, 16):
            raise ValueError("local_addr must be an IPv4/IPv6 address (text, or 4/16 packed bytes)")
        la = packed + b"\0" * (16 - len(packed))
        fam = 4 if len(packed) == 4 else 6
    lap = la
    if gro_scratch is not None:
        with nogil:
            r = espio_recv_gro(fd, &buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], &lengths[0],
                               &capacity[0], max_count, synth, lap, fam, local_port, &gro_scratch[0],
                               gro_scratch.shape[0], ctr)
    else:
        with nogil:
            r = espio_recv(fd, &buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], &lengths[0],
                           &capacity[0], max_count, synth, lap, fam, local_port)
    if r < 0:
        raise OSError(-r, "recvmmsg failed")
    return r


def send(int fd, int family, bint udp, const uint8_t[::1] buf, const int64_t[::1] offsets,
         const int32_t[::1] lengths, const int32_t[::1] select, bint gso=False,
         int64_t[::1] counters=None) -> tuple:
    """sendmmsg the ``select`` slots (whole IP packets) to the address (and UDP port, ``udp``) in their outer
    header, sending only what follows it. ``family`` (4 or 6) is the socket's. Returns (sent, dropped).

    With ``gso`` (UDP only), runs of consecutive datagrams to one destination of one size (the last may be
    shorter) go as one message with a UDP_SEGMENT cmsg: the kernel segments them (UDP GSO). The datagrams on
    the wire are the same either way. ``counters`` (int64, COUNTERS long) is incremented: [0] trains sent,
    [1] datagrams in them; [2] is set to 1 when the kernel refused a train (stop asking for GSO)."""
    cdef long drops = 0, r
    cdef int64_t *ctr = NULL
    if family not in (4, 6):
        raise ValueError("family must be 4 or 6")
    if counters is not None:
        if counters.shape[0] < COUNTERS:
            raise ValueError(f"counters needs {COUNTERS} int64 entries")
        ctr = &counters[0]
    if select.shape[0] == 0:
        return 0, 0
    for i in range(select.shape[0]):
        if select[i] < 0 or select[i] >= offsets.shape[0] or select[i] >= lengths.shape[0]:
            raise IndexError(f"select index {select[i]} outside the batch")
    with nogil:
        r = espio_send(fd, family, udp, &buf[0], buf.shape[0], &offsets[0], &lengths[0], &select[0],
                       select.shape[0], gso and udp, &drops, ctr)
    return r, drops


def tun_read(int fd, uint8_t[::1] buf, const int64_t[::1] offsets, int32_t[::1] lengths,
             const int32_t[::1] capacity, int max_count) -> int:
    """read() packets from a non-blocking TUN fd into slots 0.. until it would block or the batch is full."""
    cdef long r
    if max_count > offsets.shape[0] or max_count > lengths.shape[0] or max_count > capacity.shape[0]:
        raise ValueError("max_count exceeds the batch")
    if max_count <= 0:
        return 0
    with nogil:
        r = espio_read(fd, &buf[0], buf.shape[0], &offsets[0], &lengths[0], &capacity[0], max_count)
    if r < 0:
        raise OSError(-r, "read from TUN failed")
    return r


def tun_write(int fd, const uint8_t[::1] buf, const int64_t[::1] offsets, const int32_t[::1] lengths,
              const int32_t[::1] select) -> tuple:
    """write() the ``select`` slots to a TUN fd, one packet each. Returns (written, dropped)."""
    cdef long drops = 0, r
    if select.shape[0] == 0:
        return 0, 0
    for i in range(select.shape[0]):
        if select[i] < 0 or select[i] >= offsets.shape[0] or select[i] >= lengths.shape[0]:
            raise IndexError(f"select index {select[i]} outside the batch")
    with nogil:
        r = espio_write(fd, &buf[0], buf.shape[0], &offsets[0], &lengths[0], &select[0], select.shape[0], &drops)
    return r, drops


# ---------------------------------------------------------------------------------------------------------
# The same calls for compiled callers (esp/gateway/_loop.pyx), declared in _io.pxd: no checks, no GIL.

cdef long io_read(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                  int max) noexcept nogil:
    return espio_read(fd, buf, buflen, off, len, cap, max)


cdef long io_send(int fd, int fam, int udp, const uint8_t *buf, int64_t buflen, const int64_t *off,
                  const int32_t *len, const int32_t *sel, int nsel, int gso, long *drops,
                  int64_t *ctr) noexcept nogil:
    return espio_send(fd, fam, udp, buf, buflen, off, len, sel, nsel, gso, drops, ctr)


cdef int io_poll(const int *fds, int nfds, int timeout_ms) noexcept nogil:
    return espio_poll(fds, nfds, timeout_ms)


cdef long io_recv(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                  int max, int synth, const uint8_t *laddr, int lfam, int lport) noexcept nogil:
    return espio_recv(fd, buf, buflen, off, len, cap, max, synth, laddr, lfam, lport)


cdef long io_recv_gro(int fd, uint8_t *buf, int64_t buflen, const int64_t *off, int32_t *len, const int32_t *cap,
                      int max, int synth, const uint8_t *laddr, int lfam, int lport, uint8_t *scratch,
                      int64_t scratch_len, int64_t *ctr) noexcept nogil:
    return espio_recv_gro(fd, buf, buflen, off, len, cap, max, synth, laddr, lfam, lport, scratch, scratch_len, ctr)


cdef long io_write(int fd, const uint8_t *buf, int64_t buflen, const int64_t *off, const int32_t *len,
                   const int32_t *sel, int nsel, long *drops) noexcept nogil:
    return espio_write(fd, buf, buflen, off, len, sel, nsel, drops)
