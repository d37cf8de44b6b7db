# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The gateway's compiled transmit loop: TUN read -> segment -> classify -> encrypt -> send, GIL released.

:class:`TxLoop` runs whole cycles (poll, read a batch or super-packets, cut them into MTU-sized packets, find
each packet's policy in the SPD table, encrypt it with its policy's SA through esp/_saapi.h, send the batch
with sendmmsg / UDP GSO) without returning to Python. Python publishes a snapshot of what the fast path may
do (:meth:`TxLoop.publish`: the SPD's selector table, each policy's action and outbound SA context, the inner
MTU) and gets control back when

* the wake fd is readable (stop), the resync fd is readable (the SPD or SAD changed: Python publishes the new
  snapshot before another packet is encrypted), or a poll times out,
* ``cycles`` cycles have run or ``budget_ms`` has passed (counters published, SA expiry events raised: a soft
  lifetime that runs out is seen by the key manager within about that time),
* a packet needs Python: no PROTECT policy with an SA (bypass, discard, acquire), longer than the inner MTU
  (ICMP too big / fragmenting), or an SA context this thread cannot drive: it is copied into the *leftover*
  batch, which Python sends through today's path (esp.gateway.runtime ``_tx_batch``), so nothing is lost,
* the kernel refused a UDP GSO train (Python turns GSO off).

Sequence numbers stay in the SA contexts: each packet is encrypted under the context's own lock (begin/end of
esp/_saapi.h), held for a run of one SA's packets until they are sent, so any number of loops (one per queue)
can share an SA: each number is used once and an SA's packets leave in sequence-number order.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport uint8_t, int8_t, int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from esp._saapi cimport ESPRESSO_SA_API_VERSION, espresso_sa_api
from esp._classify cimport classify_rows, demux_rows
from esp.gateway._io cimport io_read, io_send, io_poll, io_recv, io_recv_gro, io_write
from esp.gateway._offload cimport Parsed, vnet_parse, vnet_segment, vnet_coalesce

__all__ = ["TxLoop", "RxLoop", "C_ESP_RECEIVED", "C_GRO_TRAINS", "C_GRO_DATAGRAMS", "C_TUN_WRITTEN",
           "C_TUN_WRITE_DROPPED", "C_TUN_GRO_PACKETS", "C_NOT_DELIVERED", "COUNTERS", "C_TUN_READ", "C_TSO_SUPER", "C_TSO_SEGMENTS", "C_TUN_BAD", "C_ESP_SENT",
           "C_SEND_DROPPED", "C_NOT_SENT", "C_BATCHES", "C_GSO_TRAINS", "C_GSO_DATAGRAMS", "C_LEFT_DROPPED",
           "C_VERDICTS", "C_GSO_REFUSED", "C_BYTES_IN", "STOP", "IDLE", "CYCLES_DONE", "LEFTOVER", "GSO_REFUSED", "RESYNC"]

# Counter slots (int64 array of COUNTERS): running totals the loop adds to; Python reads the deltas.
cdef enum:
    K_TUN_READ = 0
    K_TSO_SUPER = 1
    K_TSO_SEGMENTS = 2
    K_TUN_BAD = 3
    K_ESP_SENT = 4
    K_SEND_DROPPED = 5
    K_NOT_SENT = 6
    K_BATCHES = 7
    K_GSO_TRAINS = 8
    K_GSO_DATAGRAMS = 9
    K_GSO_REFUSED = 10
    K_LEFT_DROPPED = 11
    # the receive loop's (its own counter array; K_TUN_BAD, K_BATCHES, K_LEFT_DROPPED, K_VERDICTS shared)
    K_ESP_RECEIVED = 12
    K_GRO_TRAINS = 13
    K_GRO_DATAGRAMS = 14
    K_TUN_WRITTEN = 15
    K_TUN_WRITE_DROPPED = 16
    K_TUN_GRO_PACKETS = 17
    K_NOT_DELIVERED = 18
    K_BYTES_IN = 19     # tx: inner bytes taken in for encryption; rx: outer (ESP) bytes received
    K_VERDICTS = 32     # .. +31: outbound verdicts of the packets the loop encrypted (esp.Verdict codes)
    K_COUNTERS = 64
    # why run() returned
    K_STOP = 1
    K_IDLE = 2
    K_CYCLES_DONE = 3
    K_LEFTOVER = 4
    K_GSO_REFUSED_RC = 5
    K_RESYNC = 6

C_TUN_READ, C_TSO_SUPER, C_TSO_SEGMENTS, C_TUN_BAD = K_TUN_READ, K_TSO_SUPER, K_TSO_SEGMENTS, K_TUN_BAD
C_ESP_SENT, C_SEND_DROPPED, C_NOT_SENT, C_BATCHES = K_ESP_SENT, K_SEND_DROPPED, K_NOT_SENT, K_BATCHES
C_GSO_TRAINS, C_GSO_DATAGRAMS, C_GSO_REFUSED, C_LEFT_DROPPED = (K_GSO_TRAINS, K_GSO_DATAGRAMS, K_GSO_REFUSED,
                                                                K_LEFT_DROPPED)
C_VERDICTS, COUNTERS = K_VERDICTS, K_COUNTERS
C_ESP_RECEIVED, C_GRO_TRAINS, C_GRO_DATAGRAMS, C_TUN_WRITTEN = K_ESP_RECEIVED, K_GRO_TRAINS, K_GRO_DATAGRAMS, K_TUN_WRITTEN
C_TUN_WRITE_DROPPED, C_TUN_GRO_PACKETS, C_NOT_DELIVERED = K_TUN_WRITE_DROPPED, K_TUN_GRO_PACKETS, K_NOT_DELIVERED
C_BYTES_IN = K_BYTES_IN
STOP, IDLE, CYCLES_DONE, LEFTOVER, GSO_REFUSED, RESYNC = (K_STOP, K_IDLE, K_CYCLES_DONE, K_LEFTOVER,
                                                           K_GSO_REFUSED_RC, K_RESYNC)

cdef enum:
    V_OK = 0
    V_MALFORMED = 3
    V_NO_SA = 9
    V_POLICY_MISMATCH = 10
    V_DISCARDED = 11
    V_BYPASSED = 12
    VNET_HDR = 10    # virtio_net_hdr size


cdef inline long _ms_since(const timespec *t0) noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) // 1000000


cdef class TxLoop:
    """One transmit worker's state. The arrays it is built on are kept alive by it; all are reused forever."""

    cdef const espresso_sa_api *api
    cdef int tun_fd, wake_fd, resync_fd, udp_fd, raw_fd, family, vnet, count
    cdef public bint gso
    cdef public int inner_mtu
    cdef uint8_t[::1] buf, obuf, sbuf, lbuf
    cdef int64_t[::1] off, ooff, soff, loff
    cdef int32_t[::1] ln, oln, sln, lln, cap, ocap, scap, lcap
    cdef int32_t[::1] cls, sel
    cdef int64_t[::1] ctr
    cdef int nsup
    # the published snapshot
    cdef object _table_ref
    cdef const uint64_t *table
    cdef int nsel_rows, npol
    cdef void **ctx
    cdef list _contexts
    cdef public int nleft

    def __cinit__(self):
        self.ctx = NULL
        self.table = NULL

    def __dealloc__(self):
        free(self.ctx)

    def __init__(self, api, int tun_fd, int wake_fd, int resync_fd, int udp_fd, int family, bint vnet, bint gso,
                 src, out, sup, left, int64_t[::1] counters, int raw_fd=-1):
        """``src``/``out``/``left`` are esp.PacketBatch arenas of equal slot count (inner packets, ESP packets,
        packets for Python); ``sup`` the super-packet read slots (vnet only, else None). ``raw_fd``: the raw
        ESP socket (IP protocol 50) that SAs without UDP encapsulation send on, or -1 (their packets are
        counted as send drops: the gateway opens one whenever such SAs may exist)."""
        self.api = <const espresso_sa_api *>PyCapsule_GetPointer(api, b"esp._core.SA_API")
        if self.api.version != ESPRESSO_SA_API_VERSION:
            raise ValueError(f"esp._core's SA_API is version {self.api.version}, this loop needs "
                             f"{ESPRESSO_SA_API_VERSION}: rebuild both")
        if counters.shape[0] < K_COUNTERS:
            raise ValueError(f"counters needs {COUNTERS} entries")
        if family not in (4, 6):
            raise ValueError("family must be 4 or 6")
        self.tun_fd, self.wake_fd, self.resync_fd, self.udp_fd, self.family = tun_fd, wake_fd, resync_fd, udp_fd, family
        self.raw_fd = raw_fd
        self.vnet, self.gso = vnet, gso
        self.count = int(src.count)
        if int(out.count) < self.count or int(left.count) < self.count:
            raise ValueError("out and left need as many slots as src")
        self.buf, self.off, self.ln, self.cap = src.buf, src.offsets, src.lengths, src.capacity
        self.obuf, self.ooff, self.oln, self.ocap = out.buf, out.offsets, out.lengths, out.capacity
        self.lbuf, self.loff, self.lln, self.lcap = left.buf, left.offsets, left.lengths, left.capacity
        if vnet:
            self.sbuf, self.soff, self.sln, self.scap = sup.buf, sup.offsets, sup.lengths, sup.capacity
            self.nsup = int(sup.count)
        else:
            self.nsup = 0
        import numpy as np
        self.cls = np.zeros(self.count, np.int32)
        self.sel = np.zeros(self.count, np.int32)
        self.ctr = counters
        self.inner_mtu = 65535
        self.npol = 0
        self.nleft = 0
        self._contexts = []

    def publish(self, const uint64_t[:, ::1] table, list contexts, int inner_mtu):
        """Take a new SPD/SAD snapshot: the selector table (esp.spd CompiledSelectors.table: each row's owner
        is a policy index) and per policy the outbound ``esp._core.SaContext`` to encrypt its packets with,
        or None (not PROTECT, no SA yet, an SA this loop cannot drive): its packets go to Python.
        Called by the thread that runs the loop, between runs."""
        cdef int n = len(contexts), i
        if table.shape[0] and table.shape[1] != 15:
            raise ValueError("selector table needs 15 columns")
        cdef void **ctx = <void **>malloc(max(n, 1) * sizeof(void *))
        if ctx == NULL:
            raise MemoryError()
        for i in range(n):
            ctx[i] = <void *>contexts[i] if contexts[i] is not None else NULL
        free(self.ctx)
        self.ctx, self.npol = ctx, n
        self._contexts = list(contexts)  # the references that keep ctx[] valid
        self._table_ref = table
        self.table = &table[0, 0] if table.shape[0] else NULL
        self.nsel_rows = table.shape[0]
        self.inner_mtu = inner_mtu

    def run(self, int cycles, int poll_ms, int budget_ms=10) -> int:
        """Run up to ``cycles`` cycles with the GIL released; returns why it stopped (STOP, IDLE, CYCLES_DONE,
        LEFTOVER: ``nleft`` packets wait in the leftover batch, GSO_REFUSED, RESYNC) or -errno of a failed
        read/poll."""
        cdef int r
        self.nleft = 0
        with nogil:
            r = self._run(cycles, poll_ms, budget_ms)
        return r

    cdef int _run(self, int cycles, int poll_ms, int budget_ms) noexcept nogil:
        cdef int fds[3]
        cdef int c, r, j, n, segs
        cdef long m
        cdef Parsed p
        cdef Py_ssize_t k
        cdef timespec t0
        clock_gettime(CLOCK_MONOTONIC, &t0)
        fds[0] = self.tun_fd
        fds[1] = self.wake_fd
        fds[2] = self.resync_fd
        for c in range(cycles):
            # only the first poll waits: once work is done and nothing is ready, return, so that Python folds
            # the counters now (a ping's last packet is counted when the ping ends, not a poll period later)
            r = io_poll(fds, 3, poll_ms if c == 0 else 0)
            if r < 0:
                return r
            if r & 2:
                return K_STOP
            if r & 4:
                return K_RESYNC
            if not r & 1:
                return K_IDLE
            if not self.vnet:
                m = io_read(self.tun_fd, &self.buf[0], self.buf.shape[0], &self.off[0], &self.ln[0],
                            &self.cap[0], self.count)
                if m < 0:
                    return <int>m
                self.ctr[K_TUN_READ] += m
                if m > 0:
                    self._batch(<int>m)
            else:
                m = io_read(self.tun_fd, &self.sbuf[0], self.sbuf.shape[0], &self.soff[0], &self.sln[0],
                            &self.scap[0], self.nsup)
                if m < 0:
                    return <int>m
                self.ctr[K_TUN_READ] += m
                n = 0
                for j in range(m):
                    if self.sln[j] < VNET_HDR + 20 or vnet_parse(&self.sbuf[self.soff[j]], self.sln[j], &p) < 0:
                        self.ctr[K_TUN_BAD] += 1
                        continue
                    segs = p.segments
                    if segs > self.count - n and n:
                        self._batch(n)
                        n = 0
                    k = vnet_segment(&self.sbuf[self.soff[j]], self.sln[j], &self.buf[0], self.buf.shape[0],
                                     &self.off[n], &self.cap[n], &self.ln[n], self.count - n)
                    if k <= 0:
                        self.ctr[K_TUN_BAD] += 1
                        continue
                    if k > 1:
                        self.ctr[K_TSO_SUPER] += 1
                        self.ctr[K_TSO_SEGMENTS] += k
                    n += <int>k
                if n:
                    self._batch(n)
            if self.ctr[K_GSO_REFUSED]:
                return K_GSO_REFUSED_RC
            if self.nleft:
                return K_LEFTOVER
            if _ms_since(&t0) >= budget_ms:
                break
        return K_CYCLES_DONE

    cdef void _batch(self, int n) noexcept nogil:
        """Slots 0..n-1 hold inner packets: classify, encrypt each with its policy's SA, send; what the fast
        path does not cover goes to the leftover batch (or is counted dropped when that is full).

        Each run of consecutive packets of one SA is encrypted and sent under that SA's lock, and only one
        lock is held at a time: with several workers (queues) sharing an SA, its sequence numbers leave in
        order (one writer at a time), and no two workers can wait for each other."""
        cdef int i, pol, ns = 0, begun = 0, v, olen, L
        cdef void *cur = NULL
        cdef void *cx
        self.ctr[K_BATCHES] += 1
        for i in range(n):
            self.ctr[K_BYTES_IN] += self.ln[i]
        classify_rows(&self.buf[0], self.buf.shape[0], &self.off[0], &self.ln[0], NULL, n, self.table,
                      self.nsel_rows, &self.cls[0])
        for i in range(n):
            L = self.ln[i]
            pol = self.cls[i]
            cx = NULL
            if 0 <= pol < self.npol and L <= self.inner_mtu:
                cx = self.ctx[pol]
            if cx != cur:
                if cur != NULL and begun:
                    self._send(ns)
                    ns = 0
                    self.api.end(cur)
                cur = cx
                begun = cx != NULL and self.api.begin(cx, 1) == 0
            if cx == NULL or not begun:
                self._leave(i)
                continue
            olen = 0
            v = self.api.process(cx, &self.buf[self.off[i]], L, &self.obuf[self.ooff[i]], self.ocap[i], &olen)
            self.ctr[K_VERDICTS + (v & 31)] += 1
            if v == V_OK:
                self.oln[i] = olen
                self.sel[ns] = i
                ns += 1
            else:
                self.ctr[K_NOT_SENT] += 1
        if cur != NULL and begun:
            self._send(ns)
            self.api.end(cur)

    cdef void _send(self, int ns) noexcept nogil:
        """Send the encrypted slots sel[0..ns-1], all of one SA (sendmmsg, or UDP GSO trains; raw ESP, RFC
        4303 without RFC 3948, on the raw socket, one datagram per message)."""
        cdef long drops = 0, sent
        cdef int64_t gctr[3]
        cdef const uint8_t *h
        cdef int udp = 1
        if not ns:
            return
        gctr[0] = gctr[1] = gctr[2] = 0
        h = &self.obuf[self.ooff[self.sel[0]]]  # one SA: one encapsulation for the whole run
        if (h[9] if h[0] >> 4 == 4 else h[6]) == 50:
            if self.raw_fd < 0:
                self.ctr[K_SEND_DROPPED] += ns
                return
            sent = io_send(self.raw_fd, self.family, 0, &self.obuf[0], self.obuf.shape[0], &self.ooff[0],
                           &self.oln[0], &self.sel[0], ns, 0, &drops, gctr)
        else:
            sent = io_send(self.udp_fd, self.family, 1, &self.obuf[0], self.obuf.shape[0], &self.ooff[0],
                           &self.oln[0], &self.sel[0], ns, self.gso, &drops, gctr)
        if sent > 0:
            self.ctr[K_ESP_SENT] += sent
        self.ctr[K_SEND_DROPPED] += drops
        self.ctr[K_GSO_TRAINS] += gctr[0]
        self.ctr[K_GSO_DATAGRAMS] += gctr[1]
        if gctr[2]:
            self.ctr[K_GSO_REFUSED] = 1

    cdef void _leave(self, int i) noexcept nogil:
        cdef int L = self.ln[i]
        cdef int k = self.nleft
        if k >= self.count or L > self.lcap[k]:
            self.ctr[K_LEFT_DROPPED] += 1
            return
        memcpy(&self.lbuf[self.loff[k]], &self.buf[self.off[i]], L)
        self.lln[k] = L
        self.nleft = k + 1


cdef struct InSa:
    uint32_t spi
    void *ctx
    const uint64_t *check   # the SA's selector table (inbound policy check), or NULL with rows -1: none
    int rows


cdef class RxLoop:
    """One receive worker's state: UDP recv (GRO trains split) -> demux -> decrypt by SPI -> inbound policy
    check -> userspace GRO -> TUN write. IKE messages (non-ESP marker) are left for Python."""

    cdef const espresso_sa_api *api
    cdef int udp_fd, wake_fd, resync_fd, tun_fd, raw_fd, raw_synth, vnet, uso, gro, count, lfam, lport
    cdef uint8_t laddr[16]
    cdef uint8_t[::1] buf, obuf, cbuf, lbuf, scratch, kind
    cdef int64_t[::1] off, ooff, coff, loff
    cdef int32_t[::1] ln, oln, cln, lln, cap, ocap, lcap, sel, ident
    cdef uint32_t[::1] spi
    cdef int64_t[::1] ctr
    cdef InSa *sas
    cdef int nsas
    cdef list _refs
    cdef public int nleft

    def __cinit__(self):
        self.sas = NULL

    def __dealloc__(self):
        free(self.sas)

    def __init__(self, api, int udp_fd, int wake_fd, int resync_fd, int tun_fd, bint vnet, bint uso,
                 bytes local_addr, int local_port, src, out, coal, left, scratch, int64_t[::1] counters,
                 int raw_fd=-1):
        """``src``/``out``/``left`` batches of equal slot count; ``coal`` the userspace GRO output (vnet only,
        else None); ``scratch`` a uint8 array of GRO trains (UDP GRO on) or None; ``raw_fd`` a raw ESP socket
        to read too (IPv4 ones deliver the IP header, IPv6 ones only ESP: it is synthesized), or -1."""
        import numpy as np
        self.api = <const espresso_sa_api *>PyCapsule_GetPointer(api, b"esp._core.SA_API")
        if self.api.version != ESPRESSO_SA_API_VERSION:
            raise ValueError(f"esp._core's SA_API is version {self.api.version}, this loop needs "
                             f"{ESPRESSO_SA_API_VERSION}: rebuild both")
        if counters.shape[0] < K_COUNTERS:
            raise ValueError(f"counters needs {K_COUNTERS} entries")
        if len(local_addr) not in (4, 16):
            raise ValueError("local_addr: 4 or 16 packed bytes")
        self.udp_fd, self.wake_fd, self.resync_fd, self.tun_fd = udp_fd, wake_fd, resync_fd, tun_fd
        self.vnet, self.uso = vnet, uso
        self.lfam = 4 if len(local_addr) == 4 else 6
        self.raw_fd = raw_fd
        self.raw_synth = 0 if self.lfam == 4 else 50
        self.lport = local_port
        for i in range(16):
            self.laddr[i] = local_addr[i] if i < len(local_addr) else 0
        self.count = int(src.count)
        if int(out.count) < self.count or int(left.count) < self.count:
            raise ValueError("out and left need as many slots as src")
        self.buf, self.off, self.ln, self.cap = src.buf, src.offsets, src.lengths, src.capacity
        self.obuf, self.ooff, self.oln, self.ocap = out.buf, out.offsets, out.lengths, out.capacity
        self.lbuf, self.loff, self.lln, self.lcap = left.buf, left.offsets, left.lengths, left.capacity
        if vnet:
            if int(coal.count) < self.count:
                raise ValueError("coal needs as many slots as src")
            self.cbuf, self.coff, self.cln = coal.buf, coal.offsets, coal.lengths
        self.gro = scratch is not None
        self.scratch = scratch if scratch is not None else np.zeros(1, np.uint8)
        self.spi = np.zeros(self.count, np.uint32)
        self.kind = np.zeros(self.count, np.uint8)
        self.sel = np.zeros(self.count, np.int32)
        self.ident = np.arange(self.count, dtype=np.int32)
        self.ctr = counters
        self.nsas = 0
        self.nleft = 0
        self._refs = []

    def publish(self, list sas):
        """The inbound SAs: (spi, esp._core.SaContext, selector table (k, 15) uint64 or None) each."""
        cdef int n = len(sas), i
        cdef InSa *t = <InSa *>malloc(max(n, 1) * sizeof(InSa))
        cdef const uint64_t[:, ::1] tab
        if t == NULL:
            raise MemoryError()
        refs = []
        for i in range(n):
            spi, ctx, table = sas[i]
            t[i].spi = <uint32_t>spi
            t[i].ctx = <void *>ctx
            if table is None:
                t[i].check, t[i].rows = NULL, -1
            else:
                tab = table
                if tab.shape[0] and tab.shape[1] != 15:
                    free(t)
                    raise ValueError("selector table needs 15 columns")
                t[i].check = &tab[0, 0] if tab.shape[0] else NULL
                t[i].rows = tab.shape[0]
            refs.append((ctx, table))
        free(self.sas)
        self.sas, self.nsas, self._refs = t, n, refs

    def run(self, int cycles, int poll_ms, int budget_ms=10) -> int:
        """As TxLoop.run; LEFTOVER: ``nleft`` IKE messages (whole packets, outer headers synthesized) wait
        in the leftover batch."""
        cdef int r
        self.nleft = 0
        with nogil:
            r = self._run(cycles, poll_ms, budget_ms)
        return r

    cdef int _run(self, int cycles, int poll_ms, int budget_ms) noexcept nogil:
        cdef int fds[4]
        cdef int c, r
        cdef long m
        cdef timespec t0
        clock_gettime(CLOCK_MONOTONIC, &t0)
        fds[0] = self.udp_fd
        fds[1] = self.wake_fd
        fds[2] = self.resync_fd
        fds[3] = self.raw_fd
        for c in range(cycles):
            # only the first poll waits: once work is done and nothing is ready, return, so that Python folds
            # the counters now (a ping's last packet is counted when the ping ends, not a poll period later)
            r = io_poll(fds, 4 if self.raw_fd >= 0 else 3, poll_ms if c == 0 else 0)
            if r < 0:
                return r
            if r & 2:
                return K_STOP
            if r & 4:
                return K_RESYNC
            if not r & 9:
                return K_IDLE
            if r & 8:  # raw ESP: no UDP GRO, one datagram per message
                m = io_recv(self.raw_fd, &self.buf[0], self.buf.shape[0], &self.off[0], &self.ln[0],
                            &self.cap[0], self.count, self.raw_synth, self.laddr, self.lfam, 0)
                if m < 0:
                    return <int>m
                if m > 0:
                    self.ctr[K_ESP_RECEIVED] += m
                    self._batch(<int>m)
                if self.nleft:
                    return K_LEFTOVER
            if not r & 1:
                continue
            if self.gro:
                m = io_recv_gro(self.udp_fd, &self.buf[0], self.buf.shape[0], &self.off[0], &self.ln[0],
                                &self.cap[0], self.count, 17, self.laddr, self.lfam, self.lport, &self.scratch[0],
                                self.scratch.shape[0], &self.ctr[K_GRO_TRAINS])
            else:
                m = io_recv(self.udp_fd, &self.buf[0], self.buf.shape[0], &self.off[0], &self.ln[0],
                            &self.cap[0], self.count, 17, self.laddr, self.lfam, self.lport)
            if m < 0:
                return <int>m
            if m > 0:
                self.ctr[K_ESP_RECEIVED] += m
                self._batch(<int>m)
            if self.nleft:
                return K_LEFTOVER
            if _ms_since(&t0) >= budget_ms:
                break
        return K_CYCLES_DONE

    cdef InSa *_find(self, uint32_t spi) noexcept nogil:
        cdef int i
        for i in range(self.nsas):
            if self.sas[i].spi == spi:
                return &self.sas[i]
        return NULL

    cdef void _batch(self, int n) noexcept nogil:
        cdef int i, v, olen, nok = 0, begun = 0
        cdef int32_t row, res
        cdef InSa *sa = NULL
        cdef InSa *cur = NULL
        cdef long drops = 0, w
        cdef Py_ssize_t k
        for k in range(n):
            self.ctr[K_BYTES_IN] += self.ln[k]
        self.ctr[K_BATCHES] += 1
        demux_rows(&self.buf[0], self.buf.shape[0], &self.off[0], &self.ln[0], n, &self.spi[0], &self.kind[0])
        for i in range(n):
            if self.kind[i] == 1:  # IKE on the NAT-T port: for Python
                self._leave(i)
                continue
            if self.kind[i] != 0:
                v = V_DISCARDED if self.kind[i] == 2 else V_MALFORMED
            else:
                if sa == NULL or sa.spi != self.spi[i]:
                    sa = self._find(self.spi[i])
                if sa == NULL:
                    v = V_NO_SA
                else:
                    if sa != cur:
                        if cur != NULL and begun:
                            self.api.end(cur.ctx)
                        cur = sa
                        begun = self.api.begin(sa.ctx, 0) == 0
                    if not begun:
                        v = V_NO_SA
                    else:
                        olen = 0
                        v = self.api.process(sa.ctx, &self.buf[self.off[i]], self.ln[i], &self.obuf[self.ooff[i]],
                                             self.ocap[i], &olen)
                        if v == V_OK:
                            self.oln[i] = olen
                            if sa.rows >= 0:
                                res = -1
                                row = i
                                classify_rows(&self.obuf[0], self.obuf.shape[0], &self.ooff[0], &self.oln[0], &row,
                                              1, sa.check, sa.rows, &res)
                                if res < 0:
                                    v = V_POLICY_MISMATCH
            self.ctr[K_VERDICTS + (v & 31)] += 1
            if v == V_OK:
                self.sel[nok] = i
                nok += 1
            else:
                self.ctr[K_NOT_DELIVERED] += 1
        if cur != NULL and begun:
            self.api.end(cur.ctx)
        if not nok:
            return
        if self.vnet:
            k = vnet_coalesce(&self.obuf[0], self.obuf.shape[0], &self.ooff[0], &self.oln[0], &self.sel[0], nok,
                              self.uso, &self.cbuf[0], self.cbuf.shape[0], &self.coff[0], &self.cln[0], self.count)
            if k < 0:
                self.ctr[K_TUN_BAD] += 1
                return
            w = io_write(self.tun_fd, &self.cbuf[0], self.cbuf.shape[0], &self.coff[0], &self.cln[0],
                         &self.ident[0], <int>k, &drops)
            self.ctr[K_TUN_GRO_PACKETS] += nok
        else:
            w = io_write(self.tun_fd, &self.obuf[0], self.obuf.shape[0], &self.ooff[0], &self.oln[0],
                         &self.sel[0], nok, &drops)
        if w > 0:
            self.ctr[K_TUN_WRITTEN] += w
        self.ctr[K_TUN_WRITE_DROPPED] += drops

    cdef void _leave(self, int i) noexcept nogil:
        cdef int L = self.ln[i]
        cdef int k = self.nleft
        if k >= self.count or L > self.lcap[k]:
            self.ctr[K_LEFT_DROPPED] += 1
            return
        memcpy(&self.lbuf[self.loff[k]], &self.buf[self.off[i]], L)
        self.lln[k] = L
        self.nleft = k + 1
