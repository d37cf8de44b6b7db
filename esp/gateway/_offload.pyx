# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""TUN segmentation offloads in compiled code: TSO/USO segmentation on read, userspace GRO on write.

A TUN opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM | TSO4 | TSO6 | USO4 | USO6)`` hands the
reader a 10-byte ``virtio_net_hdr`` (Linux ``include/uapi/linux/virtio_net.h``) in front of a packet of up to
64 KB, and takes the same header on write. The kernel then no longer segments or checksums for us, so this
module does what its GSO and GRO would:

- :func:`vnet_segment` cuts one super-packet into MTU-sized packets, written straight into a batch's slots
  (slot i at ``offsets[i]``, room ``capacity[i]``: the layout of :class:`esp.PacketBatch`), with the headers
  the kernel's GSO writes: IPv4 ID +1 per segment, lengths, IPv4 header checksum, TCP sequence advanced by
  ``gso_size``, FIN/PSH only on the last segment, CWR only on the first, full TCP/UDP checksums. A packet
  without GSO is copied and, with ``NEEDS_CSUM``, its partial checksum completed.
- :func:`vnet_coalesce` merges runs of one flow's TCP segments (and, if asked, equal-size UDP datagrams) of a
  batch of decrypted inner packets into super-packets with a GSO header, as the kernel's GRO would; everything
  else goes out as it came, behind a zero header.

The ``cdef ... nogil`` functions are for the gateway's compiled loop; the ``def`` wrappers are thin and for
tests. Everything a peer or the kernel hands us is range-checked: a malformed header or packet gives a negative
code (an :class:`OffloadVerdict`, a counted drop), never an exception, and nothing is read or written outside
the buffers described by the arguments.
"""
import enum

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

cdef extern from *:
    """
    #define ESPO_LITTLE_ENDIAN (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    """
    int ESPO_LITTLE_ENDIAN

cdef enum:
    VNET_HDR_LEN = 10
    F_NEEDS_CSUM = 1
    F_DATA_VALID = 2
    GSO_NONE = 0
    GSO_TCPV4 = 1
    GSO_UDP = 3          # UFO (IP fragmentation of UDP): never offered by us, refused
    GSO_TCPV6 = 4
    GSO_UDP_L4 = 5
    GSO_ECN = 0x80
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_PSH = 0x08
    TCP_ACK = 0x10
    TCP_URG = 0x20
    TCP_ECE = 0x40
    TCP_CWR = 0x80
    MAX_IP_LEN = 65535   # an IPv4 total length or an IPv6 payload length: the bound of one super-packet
    # datagrams in one USO packet written to a TUN: the kernel refuses more than UDP_MAX_SEGMENTS with EINVAL
    # (virtio_net_hdr_to_skb; 64 on older kernels, 128 on newer ones such as 6.18): the older bound holds on
    # every kernel
    USO_MAX_SEGMENTS = 64


cdef enum:
    # Negative results: why a packet was refused. Mirrored by the Python enum OffloadVerdict below.
    R_OK = 0
    R_SHORT = -1          # fewer bytes than a vnet header and a minimal IP header
    R_FLAGS = -2          # unknown bits in the vnet header's flags
    R_GSO_TYPE = -3       # a gso_type we do not handle (UFO, unknown, ECN on UDP)
    R_GSO_SIZE = -4       # gso_size 0 on a GSO packet
    R_IP_VERSION = -5     # neither IPv4 nor IPv6, or not the version gso_type names
    R_IP_HEADER = -6      # IPv4 IHL below 5 or past the data; IPv6 header cut
    R_IP_LENGTH = -7      # IP total/payload length inconsistent with the data
    R_IP_FRAGMENT = -8    # an IPv4 fragment with GSO
    R_EXT_HEADER = -9     # IPv6 extension headers on a GSO packet (not handled)
    R_PROTOCOL = -10      # the IP protocol is not the one gso_type names
    R_TCP_HEADER = -11    # TCP header cut or data offset out of range
    R_UDP_HEADER = -12    # UDP header cut or its length field wrong
    R_HDR_LEN = -13       # hdr_len past the packet
    R_CSUM = -14          # csum_start/csum_offset outside the packet or not the L4 checksum of a GSO packet
    R_NO_SPACE = -15      # an output slot or buffer too small
    R_TOO_MANY = -16      # more segments (or packets) than output slots
    R_NO_MEMORY = -17     # scratch allocation failed
    R_BAD_SLOT = -18      # an input slot outside its buffer (a caller's mistake)


class OffloadVerdict(enum.IntEnum):
    """Why :func:`segment` or :func:`coalesce` refused its input; every value but OK is negative."""

    OK = R_OK
    SHORT = R_SHORT
    FLAGS = R_FLAGS
    GSO_TYPE = R_GSO_TYPE
    GSO_SIZE = R_GSO_SIZE
    IP_VERSION = R_IP_VERSION
    IP_HEADER = R_IP_HEADER
    IP_LENGTH = R_IP_LENGTH
    IP_FRAGMENT = R_IP_FRAGMENT
    EXT_HEADER = R_EXT_HEADER
    PROTOCOL = R_PROTOCOL
    TCP_HEADER = R_TCP_HEADER
    UDP_HEADER = R_UDP_HEADER
    HDR_LEN = R_HDR_LEN
    CSUM = R_CSUM
    NO_SPACE = R_NO_SPACE
    TOO_MANY = R_TOO_MANY
    NO_MEMORY = R_NO_MEMORY
    BAD_SLOT = R_BAD_SLOT


class GsoType(enum.IntEnum):
    """virtio_net_hdr gso_type values (``VIRTIO_NET_HDR_GSO_*``); ECN is a bit or'ed onto TCPV4/TCPV6."""

    NONE = GSO_NONE
    TCPV4 = GSO_TCPV4
    UDP = GSO_UDP
    TCPV6 = GSO_TCPV6
    UDP_L4 = GSO_UDP_L4
    ECN = GSO_ECN


VNET_HDR_SIZE = VNET_HDR_LEN
FLAG_NEEDS_CSUM = F_NEEDS_CSUM
FLAG_DATA_VALID = F_DATA_VALID


# ---------------------------------------------------------------------------------------------------------
# Byte access and checksums

cdef inline uint32_t be16(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]

cdef inline uint32_t be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline uint32_t le16(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[1] << 8) | p[0]

cdef inline void put16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xff
    p[1] = v & 0xff

cdef inline void put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff

cdef inline void putle16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xff
    p[1] = (v >> 8) & 0xff


cdef inline uint32_t fold(uint64_t s) noexcept nogil:
    """Fold a one's-complement accumulator to 16 bits (not inverted)."""
    s = (s & 0xffffffffu) + (s >> 32)
    s = (s & 0xffffffffu) + (s >> 32)
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return <uint32_t>s


cdef uint32_t csum(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """The one's-complement sum of n bytes as big-endian 16-bit words, folded (RFC 1071), not inverted.

    Sums native 64-bit words with end-around carry and swaps once at the end: the sum does not depend on byte
    order (RFC 1071 section 2B), and the payload sum is most of what segmenting costs.
    """
    cdef uint64_t s = 0, carry = 0, w
    cdef uint16_t h
    cdef uint32_t r
    while n >= 8:
        memcpy(&w, p, 8)
        s += w
        carry += s < w
        p += 8
        n -= 8
    if n >= 4:
        r = 0
        memcpy(&r, p, 4)
        s += r
        carry += s < r
        p += 4
        n -= 4
    if n >= 2:
        memcpy(&h, p, 2)
        s += h
        carry += s < h
        p += 2
        n -= 2
    if n:
        w = p[0] if ESPO_LITTLE_ENDIAN else (<uint64_t>p[0] << 8)
        s += w
        carry += s < w
    r = fold((s & 0xffffffffu) + (s >> 32) + carry)
    if ESPO_LITTLE_ENDIAN:
        r = ((r & 0xff) << 8) | (r >> 8)
    return r


cdef inline uint32_t pseudo(const uint8_t *ip, int version, int proto, uint32_t l4len) noexcept nogil:
    """The folded sum of the IPv4/IPv6 pseudo-header of an L4 segment of l4len bytes."""
    cdef uint64_t s
    if version == 4:
        s = csum(ip + 12, 8)
    else:
        s = csum(ip + 8, 32)
    return fold(s + proto + (l4len >> 16) + (l4len & 0xffff))


cdef inline void ipv4_check(uint8_t *ip, int ihl) noexcept nogil:
    ip[10] = 0
    ip[11] = 0
    put16(ip + 10, (~csum(ip, ihl)) & 0xffff)


cdef inline int slot_ok(int64_t off, int32_t cap, Py_ssize_t need, Py_ssize_t buflen) noexcept nogil:
    return off >= 0 and cap >= need and off + cap <= buflen


# ---------------------------------------------------------------------------------------------------------
# Parsing a virtio_net_hdr + packet

# Parsed (what vnet_parse finds) is declared in _offload.pxd, for the compiled data loop too.


cdef inline bint ipv6_ext(int nh) noexcept nogil:
    """The IPv6 extension header numbers (RFC 8200 4, IANA), ESP excluded (it ends the chain we parse)."""
    return nh == 0 or nh == 43 or nh == 44 or nh == 51 or nh == 60 or nh == 135 or nh == 139 \
        or nh == 140 or nh == 253 or nh == 254


cdef int vnet_parse(const uint8_t *p, Py_ssize_t n, Parsed *r) noexcept nogil:
    """Check a virtio_net_hdr and the packet behind it (n bytes in all) and describe them in r.

    Returns R_OK or a negative R_* code. The kernel's hdr_len is only a hint (it is the skb's linear length),
    so the header length used for segmenting is computed from the packet itself.
    """
    cdef const uint8_t *ip = p + VNET_HDR_LEN
    cdef Py_ssize_t plen = n - VNET_HDR_LEN
    cdef int gt, version, tot, ihl, frag = 0, want, doff, csoff, pay
    if n < VNET_HDR_LEN + 20:
        return R_SHORT
    r.flags = p[0]
    gt = p[1]
    r.hdr_len = le16(p + 2)
    r.gso_size = le16(p + 4)
    r.csum_start = le16(p + 6)
    r.csum_offset = le16(p + 8)
    if r.flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
        return R_FLAGS
    r.ecn = gt & GSO_ECN
    r.gso = gt & ~GSO_ECN
    if r.gso != GSO_NONE and r.gso != GSO_TCPV4 and r.gso != GSO_TCPV6 and r.gso != GSO_UDP_L4:
        return R_GSO_TYPE
    if r.ecn and r.gso != GSO_TCPV4 and r.gso != GSO_TCPV6:
        return R_GSO_TYPE
    version = ip[0] >> 4
    if version == 4:
        ihl = (ip[0] & 15) * 4
        if ihl < 20 or ihl > plen:
            return R_IP_HEADER
        tot = be16(ip + 2)
        if tot < ihl or tot > plen:
            return R_IP_LENGTH
        frag = be16(ip + 6) & 0x3fff
        r.proto = ip[9]
    elif version == 6:
        if plen < 40:
            return R_IP_HEADER
        ihl = 40
        tot = be16(ip + 4) + 40
        if tot > plen:
            return R_IP_LENGTH
        r.proto = ip[6]
    else:
        return R_IP_VERSION
    r.version = version
    r.ip_hlen = ihl
    r.ip_len = tot
    r.l4_off = ihl
    r.hlen = ihl
    r.segments = 1
    if r.hdr_len > plen:
        return R_HDR_LEN
    if r.gso == GSO_NONE:
        if r.flags & F_NEEDS_CSUM and (r.csum_start < ihl or r.csum_start + r.csum_offset + 2 > tot):
            return R_CSUM
        return R_OK
    if r.gso_size == 0:
        return R_GSO_SIZE
    if (r.gso == GSO_TCPV4 and version != 4) or (r.gso == GSO_TCPV6 and version != 6):
        return R_IP_VERSION
    if frag:
        return R_IP_FRAGMENT
    want = 17 if r.gso == GSO_UDP_L4 else 6
    if r.proto != want:
        return R_EXT_HEADER if version == 6 and ipv6_ext(r.proto) else R_PROTOCOL
    if want == 6:
        if ihl + 20 > tot:
            return R_TCP_HEADER
        doff = (ip[ihl + 12] >> 4) * 4
        if doff < 20 or ihl + doff > tot:
            return R_TCP_HEADER
        r.hlen = ihl + doff
        csoff = 16
    else:
        if ihl + 8 > tot or <int>be16(ip + ihl + 4) != tot - ihl:
            return R_UDP_HEADER
        r.hlen = ihl + 8
        csoff = 6
    if r.flags & F_NEEDS_CSUM and (r.csum_start != ihl or r.csum_offset != csoff):
        return R_CSUM
    pay = tot - r.hlen
    r.segments = 1 if pay == 0 else (pay + r.gso_size - 1) // r.gso_size
    return R_OK


# ---------------------------------------------------------------------------------------------------------
# Segmentation (the kernel's GSO, on a TUN read)

cdef Py_ssize_t vnet_segment(const uint8_t *p, Py_ssize_t n, uint8_t *out, Py_ssize_t outlen,
                             const int64_t *off, const int32_t *cap, int32_t *lengths,
                             Py_ssize_t nslots) noexcept nogil:
    """Segment one vnet header + packet (n bytes at p) into slots 0.. of ``out``; the output must not overlap p.

    Returns the number of packets written (lengths[i] set for each) or a negative R_* code, in which case
    the slots' contents are undefined and nothing should be sent. All slots are checked before any is written.
    """
    cdef Parsed r
    cdef int rc, i, last, pay, seg, tl, l4, hlen, gso, tcp
    cdef const uint8_t *ip = p + VNET_HDR_LEN
    cdef uint8_t *d
    cdef uint8_t *t
    cdef uint32_t ipid = 0, seq = 0, c, fl
    rc = vnet_parse(p, n, &r)
    if rc < 0:
        return rc
    if r.segments > nslots:
        return R_TOO_MANY
    if r.gso == GSO_NONE:
        if not slot_ok(off[0], cap[0], r.ip_len, outlen):
            return R_NO_SPACE
        d = out + off[0]
        memcpy(d, ip, r.ip_len)
        if r.flags & F_NEEDS_CSUM:
            # CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the sum runs to the end of the packet.
            t = d + r.csum_start + r.csum_offset
            c = (~csum(d + r.csum_start, r.ip_len - r.csum_start)) & 0xffff
            put16(t, c if c else 0xffff)
        lengths[0] = r.ip_len
        return 1
    last = r.segments - 1
    pay = r.ip_len - r.hlen
    hlen = r.hlen
    gso = r.gso_size
    l4 = r.l4_off
    tcp = r.gso != GSO_UDP_L4
    for i in range(r.segments):
        seg = gso if i < last else pay - last * gso
        if not slot_ok(off[i], cap[i], hlen + seg, outlen):
            return R_NO_SPACE
    if r.version == 4:
        ipid = be16(ip + 4)
    if tcp:
        seq = be32(ip + l4 + 4)
    for i in range(r.segments):
        seg = gso if i < last else pay - last * gso
        tl = hlen + seg
        d = out + off[i]
        memcpy(d, ip, hlen)
        memcpy(d + hlen, ip + hlen + <Py_ssize_t>i * gso, seg)
        if r.version == 4:
            put16(d + 2, tl)
            put16(d + 4, (ipid + <uint32_t>i) & 0xffff)
            ipv4_check(d, r.ip_hlen)
        else:
            put16(d + 4, tl - 40)
        t = d + l4
        if tcp:
            put32(t + 4, seq + <uint32_t>i * <uint32_t>gso)
            fl = t[13]
            if i < last:
                fl &= ~(TCP_FIN | TCP_PSH)
            if i > 0:
                fl &= ~TCP_CWR
            t[13] = fl
            t[16] = 0
            t[17] = 0
            c = (~fold(<uint64_t>pseudo(d, r.version, 6, tl - l4) + csum(t, tl - l4))) & 0xffff
            put16(t + 16, c)
        else:
            put16(t + 4, tl - l4)
            t[6] = 0
            t[7] = 0
            c = (~fold(<uint64_t>pseudo(d, r.version, 17, tl - l4) + csum(t, tl - l4))) & 0xffff
            put16(t + 6, c if c else 0xffff)
        lengths[i] = tl
    return r.segments


# ---------------------------------------------------------------------------------------------------------
# Coalescing (the kernel's GRO, before a TUN write)

cdef struct Pkt:
    const uint8_t *p
    int len, version, proto, l4, hlen, pay
    int keyed         # headers parse far enough for a flow key (TCP/UDP, not a fragment)
    int eligible      # may be part of a run
    uint32_t hash
    int run           # the run it belongs to
    int next          # the next member of its run, or -1


cdef struct Run:
    int first, last, count, total, gso_size, open


cdef inline uint32_t flow_hash(const uint8_t *ip, int version, int l4) noexcept nogil:
    cdef uint32_t h = 2166136261u
    cdef int i, a = 12 if version == 4 else 8, b = 20 if version == 4 else 40
    for i in range(a, b):
        h = (h ^ ip[i]) * 16777619u
    for i in range(4):
        h = (h ^ ip[l4 + i]) * 16777619u
    return h ^ <uint32_t>ip[9 if version == 4 else 6]


cdef inline bint same_flow(const Pkt *a, const Pkt *b) noexcept nogil:
    if a.hash != b.hash or a.version != b.version or a.proto != b.proto:
        return False
    if a.version == 4:
        if memcmp(a.p + 12, b.p + 12, 8) != 0:
            return False
    elif memcmp(a.p + 8, b.p + 8, 32) != 0:
        return False
    return memcmp(a.p + a.l4, b.p + b.l4, 4) == 0


cdef void describe(Pkt *k, const uint8_t *p, int n, bint udp) noexcept nogil:
    """Fill k for a decrypted inner packet: its flow key and whether it may join a run (GRO's checks)."""
    cdef int ihl, tot, doff, fl
    k.p = p
    k.len = n
    k.keyed = 0
    k.eligible = 0
    k.next = -1
    if n < 20:
        return
    k.version = p[0] >> 4
    if k.version == 4:
        ihl = (p[0] & 15) * 4
        if ihl < 20 or ihl > n or be16(p + 6) & 0x3fff:
            return
        tot = be16(p + 2)
        k.proto = p[9]
    elif k.version == 6 and n >= 40:
        ihl = 40
        tot = be16(p + 4) + 40
        k.proto = p[6]
    else:
        return
    if (k.proto != 6 and k.proto != 17) or ihl + 8 > n:
        return
    k.l4 = ihl
    k.keyed = 1
    k.hash = flow_hash(p, k.version, ihl)
    # From here on: may it be merged? (Not: it is passed on as it is, behind a zero header.)
    if tot != n or (k.version == 4 and (ihl != 20 or fold(csum(p, 20)) != 0xffff)):
        return
    if k.proto == 6:
        if ihl + 20 > n:
            return
        doff = (p[ihl + 12] >> 4) * 4
        fl = p[ihl + 13]
        if doff < 20 or ihl + doff > n or p[ihl + 12] & 0x0f:
            return
        if fl & (TCP_SYN | TCP_RST | TCP_URG):
            return
        k.hlen = ihl + doff
    else:
        if not udp or <int>be16(p + ihl + 4) != n - ihl or (k.version == 4 and be16(p + ihl + 6) == 0):
            return
        k.hlen = ihl + 8
    k.pay = n - k.hlen
    if k.pay <= 0:
        return
    if fold(<uint64_t>pseudo(p, k.version, k.proto, n - ihl) + csum(p + ihl, n - ihl)) != 0xffff:
        return   # a corrupt segment: the kernel must see (and drop) it alone
    k.eligible = 1


cdef bint can_join(const Pkt *first, const Pkt *last, const Pkt *b, const Run *run) noexcept nogil:
    """May b follow last in the run that starts with first? The GRO rules (net/ipv4/tcp_offload.c)."""
    cdef const uint8_t *f = first.p
    cdef const uint8_t *l = last.p
    cdef const uint8_t *q = b.p
    cdef int l4 = b.l4
    if b.hlen != first.hlen or b.pay > run.gso_size:
        return False
    if first.hlen + run.total + b.pay - (40 if b.version == 6 else 0) > MAX_IP_LEN:
        return False   # the super-packet's IPv4 total length or IPv6 payload length would not fit 16 bits
    if b.version == 4:
        if f[1] != q[1] or f[8] != q[8] or (f[6] & 0x40) != (q[6] & 0x40):
            return False
        if be16(q + 4) != ((be16(l + 4) + 1) & 0xffff):
            return False
    else:
        if memcmp(f, q, 4) != 0 or f[7] != q[7]:
            return False
    if b.proto == 17:
        return run.count < USO_MAX_SEGMENTS
    # TCP: same ack, window, options and flags (PSH/FIN may end the run, CWR only on its first segment)
    if memcmp(f + l4 + 8, q + l4 + 8, 4) != 0 or memcmp(f + l4 + 14, q + l4 + 14, 2) != 0:
        return False
    if memcmp(f + l4 + 20, q + l4 + 20, b.hlen - l4 - 20) != 0:
        return False
    if q[l4 + 13] & TCP_CWR or (q[l4 + 13] & ~(TCP_PSH | TCP_FIN)) != (f[l4 + 13] & ~TCP_CWR):
        return False
    return be32(q + l4 + 4) == ((be32(l + l4 + 4) + <uint32_t>last.pay) & 0xffffffffu)


cdef inline bint ends_run(const Pkt *b, int gso_size) noexcept nogil:
    return b.pay < gso_size or (b.proto == 6 and b.p[b.l4 + 13] & (TCP_PSH | TCP_FIN))


cdef Py_ssize_t vnet_coalesce(const uint8_t *buf, Py_ssize_t buflen, const int64_t *off, const int32_t *length,
                              const int32_t *select, Py_ssize_t n, bint udp, uint8_t *out, Py_ssize_t outlen,
                              int64_t *out_off, int32_t *out_len, Py_ssize_t out_slots) noexcept nogil:
    """Coalesce the packets (slots select[0..n-1], or 0..n-1 without select) into vnet-headed packets.

    Writes them one after the other into ``out`` (out_off/out_len describe each, ready for one write() each)
    and returns their count, or a negative R_* code before anything is written. ``out`` needs
    sum(lengths) + 10 * n bytes at most; out_off/out_len need n entries. UDP datagrams are merged only with
    ``udp`` (the kernel must have accepted USO on the TUN), and at most USO_MAX_SEGMENTS into one.
    """
    cdef Pkt *pk
    cdef Run *runs
    cdef int *open_runs
    cdef Py_ssize_t i, j, s, need = 0, pos = 0, nruns = 0, nopen = 0, count = 0
    cdef int o, ri, m, tl, l4, hlen, w
    cdef Pkt *k
    cdef Pkt *f
    cdef Run *run
    cdef uint8_t *d
    cdef uint8_t *q
    if n <= 0:
        return 0
    if out_slots < n:
        return R_TOO_MANY
    for i in range(n):
        s = select[i] if select != NULL else i
        if off[s] < 0 or length[s] < 0 or off[s] + length[s] > buflen:
            return R_BAD_SLOT
        need += VNET_HDR_LEN + length[s]
    if need > outlen:
        return R_NO_SPACE
    pk = <Pkt *>malloc(n * sizeof(Pkt))
    runs = <Run *>malloc(n * sizeof(Run))
    open_runs = <int *>malloc(n * sizeof(int))
    if pk == NULL or runs == NULL or open_runs == NULL:
        free(pk)
        free(runs)
        free(open_runs)
        return R_NO_MEMORY
    for i in range(n):
        s = select[i] if select != NULL else i
        k = &pk[i]
        describe(k, buf + off[s], length[s], udp)
        ri = -1
        if k.keyed:
            for j in range(nopen - 1, -1, -1):
                if same_flow(&pk[runs[open_runs[j]].first], k):
                    o = open_runs[j]
                    run = &runs[o]
                    if k.eligible and can_join(&pk[run.first], &pk[run.last], k, run):
                        pk[run.last].next = <int>i
                        run.last = <int>i
                        run.count += 1
                        run.total += k.pay
                        ri = o
                        if ends_run(k, run.gso_size):
                            run.open = 0
                    else:
                        run.open = 0   # order within a flow is kept: its later packets start a new run
                    if not run.open:
                        nopen -= 1
                        open_runs[j] = open_runs[nopen]
                    break
        if ri < 0:
            run = &runs[nruns]
            run.first = run.last = <int>i
            run.count = 1
            run.total = k.pay if k.eligible else 0
            run.gso_size = k.pay if k.eligible else 0
            run.open = k.eligible and not (k.proto == 6 and k.p[k.l4 + 13] & (TCP_PSH | TCP_FIN))
            if run.open:
                open_runs[nopen] = <int>nruns
                nopen += 1
            ri = <int>nruns
            nruns += 1
        k.run = ri
    for o in range(nruns):
        run = &runs[o]
        f = &pk[run.first]
        d = out + pos
        out_off[count] = pos
        if run.count == 1:
            memset(d, 0, VNET_HDR_LEN)
            memcpy(d + VNET_HDR_LEN, f.p, f.len)
            out_len[count] = VNET_HDR_LEN + f.len
        else:
            hlen = f.hlen
            l4 = f.l4
            tl = hlen + run.total
            q = d + VNET_HDR_LEN
            memcpy(q, f.p, hlen)
            w = VNET_HDR_LEN + hlen
            m = run.first
            while m >= 0:
                memcpy(d + w, pk[m].p + hlen, pk[m].pay)
                w += pk[m].pay
                m = pk[m].next
            if f.version == 4:
                put16(q + 2, tl)
                ipv4_check(q, 20)
            else:
                put16(q + 4, tl - 40)
            d[0] = F_NEEDS_CSUM
            putle16(d + 2, hlen)
            putle16(d + 4, run.gso_size)
            putle16(d + 6, l4)
            if f.proto == 6:
                q[l4 + 13] |= pk[run.last].p[l4 + 13] & (TCP_PSH | TCP_FIN)
                d[1] = (GSO_TCPV4 if f.version == 4 else GSO_TCPV6) | (GSO_ECN if q[l4 + 13] & TCP_CWR else 0)
                putle16(d + 8, 16)
                put16(q + l4 + 16, pseudo(q, f.version, 6, tl - l4))
            else:
                d[1] = GSO_UDP_L4
                putle16(d + 8, 6)
                put16(q + l4 + 4, tl - l4)
                put16(q + l4 + 6, pseudo(q, f.version, 17, tl - l4))
            out_len[count] = VNET_HDR_LEN + tl
        pos += out_len[count]
        count += 1
    free(pk)
    free(runs)
    free(open_runs)
    return count


# ---------------------------------------------------------------------------------------------------------
# Python wrappers (tests, tools): one call per batch, the GIL released inside

def parse(const uint8_t[::1] data) -> int:
    """How many packets :func:`segment` would make of ``data`` (vnet header + packet), or a negative
    :class:`OffloadVerdict`."""
    cdef Parsed r
    cdef int rc
    if data.shape[0] < VNET_HDR_LEN + 20:
        return R_SHORT
    with nogil:
        rc = vnet_parse(&data[0], data.shape[0], &r)
    return rc if rc < 0 else r.segments


def segment(const uint8_t[::1] data, uint8_t[::1] buf, const int64_t[::1] offsets, int32_t[::1] lengths,
            const int32_t[::1] capacity) -> int:
    """Segment ``data`` (vnet header + packet, as a TUN read returns it) into the slots of a batch arena.

    Returns the number of packets written to slots 0.. (``lengths`` set), or a negative :class:`OffloadVerdict`.
    """
    cdef Py_ssize_t r, nslots = offsets.shape[0]
    if lengths.shape[0] < nslots or capacity.shape[0] < nslots:
        raise ValueError("offsets, lengths and capacity must have the same length")
    if data.shape[0] < VNET_HDR_LEN + 20:
        return R_SHORT
    if nslots == 0 or buf.shape[0] == 0:
        return R_TOO_MANY if nslots == 0 else R_NO_SPACE
    with nogil:
        r = vnet_segment(&data[0], data.shape[0], &buf[0], buf.shape[0], &offsets[0], &capacity[0], &lengths[0],
                         nslots)
    return r


def coalesce(const uint8_t[::1] buf, const int64_t[::1] offsets, const int32_t[::1] lengths, uint8_t[::1] out,
             int64_t[::1] out_offsets, int32_t[::1] out_lengths, const int32_t[::1] select=None,
             bint udp=False) -> int:
    """Coalesce a batch's packets (the ``select`` slots in order, or all) into vnet-headed packets in ``out``.

    Returns how many (``out_offsets``/``out_lengths`` describe them) or a negative :class:`OffloadVerdict`.
    """
    cdef Py_ssize_t n, r, i
    cdef const int32_t *sel = NULL
    if lengths.shape[0] != offsets.shape[0]:
        raise ValueError("offsets and lengths must have the same length")
    if select is not None:
        n = select.shape[0]
        for i in range(n):
            if select[i] < 0 or select[i] >= offsets.shape[0]:
                raise IndexError(f"select index {select[i]} outside the batch")
        if n:
            sel = &select[0]
    else:
        n = offsets.shape[0]
    if n == 0:
        return 0
    if out_offsets.shape[0] < n or out_lengths.shape[0] < n:
        return R_TOO_MANY
    if out.shape[0] == 0:
        return R_NO_SPACE
    with nogil:
        r = vnet_coalesce(&buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0], &lengths[0], sel, n, udp,
                          &out[0], out.shape[0], &out_offsets[0], &out_lengths[0], out_offsets.shape[0])
    return r
