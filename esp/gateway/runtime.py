"""The tunnel gateway runtime: a TUN device on the plaintext side, UDP 4500 (and raw ESP) on the other.

Two threads move packets, each one batch at a time with the GIL released in every system call and in the
crypto (so they run in parallel on two cores, and neither shares a thread with IKE):

* **tx**: TUN --read() loop--> :meth:`Dataplane.outbound` --sendmmsg--> UDP 4500 (RFC 3948) or raw ESP
* **rx**: UDP 4500 / raw ESP --recvmmsg--> :meth:`Dataplane.inbound` --write() loop--> TUN

With ``loop = "compiled"`` (the default) both threads run esp.gateway._loop: whole cycles of read, segment,
classify, encrypt and send (and back) in compiled code with the GIL released; Python only publishes the
SPD/SAD snapshot when a watcher on them fires, folds the loops' counters into the stats, and handles what the
fast path leaves (no SA yet, bypass, too big for the path, IKE). There is then one tx and one rx thread per
queue (``queues``: multi-queue TUN + SO_REUSEPORT sockets; raw ESP, which one raw socket receives, is read by
queue 0's rx thread and sent by every tx thread). With ``loop = "python"`` (the reference path), one pair
of threads runs a fixed number of numpy operations and one core call per SA per batch.

ESP and IKE share the NAT-T port (the kernel cannot tell them apart), so the gateway owns that
socket: IKE messages (non-ESP marker) are passed to ``on_ike`` and IKE sends through :meth:`send_ike`.

The key manager drives :attr:`Gateway.dataplane` (see :mod:`esp.dataplane`); without IKE, SAs can be
installed by hand, or from a JSON file with :func:`run_static` (a router's static SA configuration).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from esp import _core
from esp.batch import PacketBatch, Verdict
from esp.dataplane import ESP_OVERHEAD_MAX, Dataplane
from esp.errors import EspError
from esp.sad import SadSnapshot
from esp.spd import Action, SpdSnapshot

from . import _io
try:
    from . import _loop
except ImportError:  # pragma: no cover - setup.py builds it; without it the python loop runs
    _loop = None  # type: ignore[assignment]
from .pmtu import DEFAULT_OUTER_MTU, DEFAULT_SUITE, fragment_ipv4, max_inner, too_big_reply
from . import _offload
from ._vnet import OFFLOADS_ALL, Offload, open_vnet_tun
from .stats import GatewayStats, QueueStats
from .tun import Tun, TunError, interface_mtu, open_tun

__all__ = ["Gateway", "GatewayConfig", "GatewayError"]

IkeSink = Callable[[bytes, tuple, tuple], None]

#: Socket buffer asked for on the ESP sockets: a burst of a few thousand full-size packets.
SOCKET_BUFFER = 8 << 20
NON_ESP_MARKER = b"\0\0\0\0"
#: Pause after an I/O error before a data loop carries on (seconds): no busy loop on a dead device.
IO_ERROR_PAUSE = 0.05
_OK, _BYPASSED = int(Verdict.OK), int(Verdict.BYPASSED)
_NVERDICTS = max(int(v) for v in Verdict) + 1
_PROTECT = int(Action.PROTECT)
#: Receive batch with UDP GRO on (slots), and the 64 KB GRO messages read per call: a few whole trains.
GRO_BATCH = 256
GRO_MESSAGES = 4
#: With TUN offloads: reads per call at least (batch_size if larger), their slot (64 KB + virtio_net_hdr: the
#: pages of a slot are touched only as far as a read fills it), and the transmit
#: batch the segments go into (a 64 KB TSO packet at a small MSS makes a few hundred).
TSO_READS = 8
_VNET_SLOT = 65536 + 64
TSO_BATCH = 512
_VNET_NONE = bytes(10)  # a virtio_net_hdr saying "no offload": in front of packets written whole
LOOPS = ("compiled", "python")
#: Most queues (TUN queues, reuseport sockets, thread pairs) a gateway opens.
MAX_QUEUES = 64
#: Cycles, and milliseconds, the compiled loop runs at most before it returns to fold counters and raise SA
#: expiry events (a soft lifetime running out reaches the key manager within about LOOP_MS).
LOOP_CYCLES = 64
LOOP_MS = 10


class GatewayError(EspError):
    """The gateway could not start (privilege, device, address in use); the message says what to fix."""


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway sits. ``local_addr`` is the outer address ESP leaves from and arrives at;
    ``routes`` are the remote inner prefixes sent into the TUN device (and so into the SPD)."""

    local_addr: str
    tun_name: str = "esp%d"
    tun_addresses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    #: The TUN device's MTU. None (the default): the largest inner packet that fits ``outer_mtu`` after the
    #: installed SAs' ESP overhead (esp.gateway.pmtu), followed as SAs come and go. Whatever it is, an inner
    #: packet too big for the path is answered with ICMP "too big" (or, IPv4 without DF, fragmented).
    mtu: int | None = None
    #: MTU of the outer path. None: the MTU of the interface holding ``local_addr``, else 1500.
    outer_mtu: int | None = None
    nat_port: int = 4500
    raw_esp: bool = False
    batch_size: int = 64
    slot_size: int = 2048
    poll_ms: int = 100
    #: Use the kernel's UDP segmentation offloads where a probe at start shows they work: UDP GSO (one
    #: sendmsg per train of equal-size ESP datagrams to one peer) and UDP GRO (trains read in one call and
    #: split here). False: one datagram per message, as ``--no-offload`` asks. GatewayStats.offloads says
    #: which are on.
    offload: bool = True
    #: Also open a second socket on the NAT-T port that the kernel fills with the IKE messages (non-ESP
    #: marker) only: ``Gateway.ike_socket``, for the IKE daemon to read and send on as its own port-4500
    #: socket. ESP never reaches it and IKE never reaches the data threads (SO_REUSEPORT + a classic BPF
    #: program that looks at the first four bytes). Without it IKE goes through ``on_ike``/``send_ike``.
    ike_socket: bool = False
    #: The transmit data loop: "compiled" (esp.gateway._loop: read, segment, classify, encrypt and send
    #: in compiled code with the GIL released, Python only for what the fast path does not cover) or
    #: "python" (one Dataplane.outbound call per batch, the reference path).
    loop: str = "compiled"
    #: Data queues: a multi-queue TUN (IFF_MULTI_QUEUE, one fd per queue; the kernel spreads flows over them)
    #: and as many SO_REUSEPORT sockets on the NAT-T port (the kernel spreads peers over them), each queue with
    #: its own tx and rx thread. None: one per CPU. The Python loop runs one queue. Raw ESP (``raw_esp``)
    #: arrives on one raw socket, read by queue 0; every queue sends on it.
    queues: int | None = None

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.local_addr)
        object.__setattr__(self, "tun_addresses", tuple(self.tun_addresses))
        object.__setattr__(self, "routes", tuple(self.routes))
        if not 0 < self.nat_port < 65536:
            raise ValueError("nat_port must be 1..65535")
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, not {self.loop!r}")
        if self.queues is not None and not 1 <= self.queues <= MAX_QUEUES:
            raise ValueError(f"queues must be 1..{MAX_QUEUES}")
        if not 1 <= self.batch_size <= 1024:
            raise ValueError("batch_size must be 1..1024")
        for name in ("mtu", "outer_mtu"):
            v = getattr(self, name)
            if v is not None and not 576 <= v <= 65535:
                raise ValueError(f"{name} {v} outside 576..65535")
        if self.mtu is not None and self.slot_size < self.mtu + ESP_OVERHEAD_MAX:
            raise ValueError(f"slot_size {self.slot_size} too small for MTU {self.mtu} plus ESP overhead")


class _Slots:
    """A preallocated batch plus views of its first n slots (what the data plane processes)."""

    def __init__(self, count: int, slot_size: int) -> None:
        self.full = PacketBatch.empty(count, slot_size)
        self._views: dict[int, PacketBatch] = {}

    def view(self, n: int) -> PacketBatch:
        """Slots 0..n-1 as a batch sharing the arena and arrays (built once per n, then reused)."""
        v = self._views.get(n)
        if v is None:
            f = self.full
            v = self._views[n] = PacketBatch(f.buf, f.offsets[:n], f.lengths[:n], f.capacity[:n])
        return v


class Gateway:
    """One TUN device, the NAT-T UDP socket (and optionally a raw ESP socket), two data threads."""

    def __init__(self, config: GatewayConfig, dataplane: Dataplane | None = None, *,
                 on_ike: IkeSink | None = None) -> None:
        self.config = config
        self.dataplane = dataplane if dataplane is not None else Dataplane()
        self.on_ike = on_ike
        self.stats = GatewayStats()
        self.family = ipaddress.ip_address(config.local_addr).version
        self.tun: Tun | None = None
        self.udp: socket.socket | None = None
        self.raw: socket.socket | None = None
        #: The NAT-T port's IKE side (see GatewayConfig.ike_socket): give it to the IKE daemon.
        self.ike_socket: socket.socket | None = None
        self._stop = threading.Event()
        #: Queues 1.. (queue 0 is self.tun / self.udp): (TUN queue, reuseport UDP socket) each.
        self._extra: list[tuple[Tun, socket.socket]] = []
        self._nq = 1
        #: Taken by the data threads to fold counters into stats and the data plane, and around the Python
        #: path they fall back to (the Dataplane runs one outbound batch at a time).
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1
        self._threads: list[threading.Thread] = []
        self._sad_version = -1
        self._gso = self._gro = self._vnet = self._tun_uso = False
        self._gso_ctr = np.zeros(_io.COUNTERS, np.int64)  # written by the tx thread only
        self._gro_ctr = np.zeros(_io.COUNTERS, np.int64)  # written by the rx thread only

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the TUN device and sockets, then start the threads. Raises GatewayError with the reason."""
        c = self.config
        af = socket.AF_INET if self.family == 4 else socket.AF_INET6
        compiled = c.loop == "compiled" and _loop is not None
        self._nq = nq = (c.queues or os.cpu_count() or 1) if compiled else 1
        try:
            self.udp = self._socket(af, socket.SOCK_DGRAM, 0)
            if c.ike_socket or nq > 1:
                self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                self.udp.bind((c.local_addr, c.nat_port))
            except OSError as exc:
                raise GatewayError(f"cannot bind UDP {c.local_addr} port {c.nat_port}: {exc.strerror}") from None
            extra_udp = []
            for _ in range(nq - 1):  # the rest of the reuseport group, before the IKE socket joins it
                u = self._socket(af, socket.SOCK_DGRAM, 0)
                extra_udp.append(u)
                u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                u.bind((c.local_addr, self.nat_port))
            self._extra = [(None, u) for u in extra_udp]  # type: ignore[misc]  # TUN queues follow
            if c.ike_socket:
                self.ike_socket = _ike_socket_beside(self.udp, af, c.local_addr, self.nat_port, nq)
            self._probe_offloads()
            for u in extra_udp:
                if self._gro:
                    u.setsockopt(socket.IPPROTO_UDP, _io.UDP_GRO, 1)
            if c.raw_esp:
                try:
                    self.raw = self._socket(af, socket.SOCK_RAW, socket.IPPROTO_ESP)
                except PermissionError:
                    raise GatewayError("raw ESP (IP protocol 50) needs CAP_NET_RAW: run as root, or set "
                                       "raw_esp = false to carry ESP in UDP only") from None
                self.raw.bind((c.local_addr, 0))
            st = self.stats
            st.outer_mtu = c.outer_mtu or interface_mtu(c.local_addr) or DEFAULT_OUTER_MTU
            self._update_path_mtu()
            st.tun_mtu = c.mtu if c.mtu is not None else st.inner_mtu
            try:
                self.tun = self._open_tun()
                self._extra = [(self._open_tun_queue(), u) for _, u in self._extra]
            except TunError as exc:
                raise GatewayError(str(exc)) from None
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._stop.clear()
            st.queues = nq
            st.per_queue = [QueueStats() for _ in range(nq)]
            self._threads = []
            for q in range(nq):
                sfx = str(q) if nq > 1 else ""
                self._threads += [
                    threading.Thread(target=self._guard, args=(self._tx_loop, q), name=f"esp-tx{sfx}", daemon=True),
                    threading.Thread(target=self._guard, args=(self._rx_loop, q), name=f"esp-rx{sfx}", daemon=True)]
            for t in self._threads:
                t.start()
        except BaseException:
            self._close()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads (within ``timeout``), close the device and sockets."""
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        self._close()

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def send_ike(self, data: bytes, addr: tuple) -> None:
        """Send an IKE message from the NAT-T port, with the 4-byte non-ESP marker (RFC 3948 2.2)."""
        if self.udp is None:
            raise GatewayError("the gateway is not started")
        self.udp.sendto(NON_ESP_MARKER + data, addr)

    def send_keepalive(self, addr: tuple) -> None:
        """A NAT keepalive (RFC 3948 2.3): one 0xFF byte from the NAT-T port, no marker."""
        if self.udp is None:
            raise GatewayError("the gateway is not started")
        self.udp.sendto(b"\xff", addr)

    @property
    def nat_port(self) -> int:
        return self.udp.getsockname()[1] if self.udp is not None else self.config.nat_port

    def _socket(self, af: int, kind: int, proto: int) -> socket.socket:
        s = socket.socket(af, kind, proto)
        if af == socket.AF_INET6 and kind == socket.SOCK_DGRAM:  # a raw IPv6 socket refuses it (EINVAL)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_RCVBUFFORCE / SO_SNDBUFFORCE
            try:
                s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        s.setblocking(False)
        return s

    def _close(self) -> None:
        for t, u in self._extra:
            u.close()
            if t is not None:
                t.close()
        self._extra = []
        for s in (self.udp, self.raw, self.ike_socket):
            if s is not None:
                s.close()
        self.udp = self.raw = self.ike_socket = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _queue(self, q: int) -> tuple[int, int]:
        """(TUN fd, UDP fd) of queue ``q``."""
        if q == 0:
            return self.tun.fileno(), self.udp.fileno()  # type: ignore[union-attr]
        t, u = self._extra[q - 1]
        return t.fileno(), u.fileno()

    def _guard(self, loop: Callable[[int], None], q: int = 0) -> None:
        """Run a data loop; an I/O error (a TUN device going down, a socket error) is counted and the loop
        restarted after a pause, anything else stops the gateway with the reason in ``stats.errors``."""
        while not self._stop.is_set():
            try:
                loop(q)
                return
            except OSError as exc:
                if self._stop.is_set():
                    return
                with self._lock:
                    self.stats.io_errors += 1
                self.stats.last_io_error = f"{threading.current_thread().name}: {exc}"
                self._stop.wait(IO_ERROR_PAUSE)
            except Exception as exc:  # a data thread must not die silently
                self.stats.errors.append(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")
                self._stop.set()
                return

    # ------------------------------------------------------------------ tx: TUN -> ESP
    def _open_tun(self) -> Tun:
        """The TUN device, with virtio_net_hdr segmentation offloads (TSO4/TSO6, USO, CSUM) where the kernel
        grants them and ``offload`` is on (esp.gateway._vnet probes and falls back), else a plain one."""
        c, st = self.config, self.stats
        mq = self._nq > 1
        if not c.offload:
            return open_tun(c.tun_name, addresses=c.tun_addresses, routes=c.routes, mtu=st.tun_mtu, multi_queue=mq)
        vt = open_vnet_tun(c.tun_name, offloads=OFFLOADS_ALL, multi_queue=mq)
        tun = Tun(vt.fd, vt.name)
        try:
            tun.configure(addresses=c.tun_addresses, routes=c.routes, mtu=st.tun_mtu)
        except BaseException:
            tun.close()
            raise
        self._vnet = vt.vnet_hdr
        self._tun_uso = vt.uso
        if vt.vnet_hdr:
            st.offloads += [f"tun_{o.name.lower()}" for o in Offload if o and o in vt.offloads] or ["tun_vnet_hdr"]
        return tun

    def _open_tun_queue(self) -> Tun:
        """Another queue of the multi-queue TUN device (same name, same offloads as queue 0)."""
        name = self.tun.name  # type: ignore[union-attr]
        if not self.config.offload:
            return open_tun(name, multi_queue=True)
        vt = open_vnet_tun(name, offloads=OFFLOADS_ALL if self._vnet else Offload.NONE, multi_queue=True)
        if vt.vnet_hdr != self._vnet or vt.uso != self._tun_uso:
            os.close(vt.fd)
            raise TunError(f"queue of {name} opened with other offloads than its first queue")
        return Tun(vt.fd, vt.name)

    def _tx_loop(self, q: int = 0) -> None:
        if self.config.loop == "compiled" and _loop is not None:
            self.stats.tx_loop = "compiled"
            self._tx_loop_compiled(q)
            return
        self.stats.tx_loop = "python"
        self._tx_loop_python(q)

    def _tx_loop_compiled(self, q: int = 0) -> None:
        """The transmit thread on esp.gateway._loop: Python runs between runs of up to LOOP_CYCLES cycles
        (or a poll timeout), to publish a new SPD/SAD snapshot, fold the counters into the stats and the
        data plane, and send what the fast path left (no SA, bypass, too big) through :meth:`_tx_batch`."""
        c = self.config
        count = max(c.batch_size, TSO_BATCH) if self._vnet else c.batch_size
        src, dst = PacketBatch.empty(count, c.slot_size), PacketBatch.empty(count, c.slot_size)
        left, left_dst = _Slots(count, c.slot_size), _Slots(count, c.slot_size)
        # as many reads per cycle as a plain batch (see _tx_loop_python): a read is one packet unless the
        # sender built a super-packet, and 8 per cycle made 64-byte UDP slower with offloads than without
        sup = PacketBatch.empty(max(TSO_READS, c.batch_size), _VNET_SLOT) if self._vnet else None
        ctr = np.zeros(_loop.COUNTERS, np.int64)
        tun_fd, udp_fd = self._queue(q)
        self._with_resync(lambda resync: self._run_tx_loop(
            _loop.TxLoop(_core.SA_API, tun_fd, self._wake_r, resync, udp_fd, self.family, self._vnet, self._gso,
                         src, dst, sup, left.full, ctr, self.raw.fileno() if self.raw is not None else -1),
            resync, ctr, left, left_dst, q))

    def _run_tx_loop(self, loop: _loop.TxLoop, resync: int, ctr: np.ndarray, left: _Slots, left_dst: _Slots,
                     q: int) -> None:
        c, dp = self.config, self.dataplane
        seen = np.zeros(_loop.COUNTERS, np.int64)
        published = None
        while not self._stop.is_set():
            _drain(resync)  # before the versions are read: a later change wakes the loop again
            spd, sad = dp.spd.snapshot, dp.sad.snapshot
            if (spd.version, sad.version) != published:
                published = (spd.version, sad.version)
                with self._lock:
                    if sad.version != self._sad_version:
                        self._update_path_mtu()
                    self._publish(loop, spd, sad)
            rc = loop.run(LOOP_CYCLES, c.poll_ms, LOOP_MS)
            with self._lock:
                self._fold_counters(ctr, seen, q, True)
                if loop.nleft:
                    self._tx_batch(left, left_dst, loop.nleft, q)
                if rc == _loop.GSO_REFUSED:
                    ctr[_loop.C_GSO_REFUSED] = seen[_loop.C_GSO_REFUSED] = 0
                    self._gso_refused()
            if rc == _loop.GSO_REFUSED or not self._gso:
                loop.gso = False
            if rc < 0:
                raise OSError(-rc, "TUN read failed")

    def _publish(self, loop: _loop.TxLoop, spd: SpdSnapshot, sad: SadSnapshot) -> None:
        """Give the compiled loop the policies and each PROTECT policy's outbound SA context (None for the
        other policies, and for an SA it cannot drive: their packets go to Python), and the inner MTU."""
        table, actions = spd.compiled_table()
        contexts = []
        for p, act in zip(spd.policies, actions):
            e = sad.outbound.get(p.name) if int(act) == _PROTECT else None
            ctx = getattr(e.sa, "context", None) if e is not None else None
            contexts.append(ctx if isinstance(ctx, _core.SaContext) else None)
        loop.publish(np.ascontiguousarray(table, np.uint64), contexts, self.stats.inner_mtu)

    def _fold_counters(self, ctr: np.ndarray, seen: np.ndarray, q: int, outbound: bool) -> None:
        """Add what a compiled loop counted since the last call to queue ``q``, the totals and the data plane
        (under self._lock: the queues' threads fold into the same totals)."""
        d = ctr - seen
        seen[:] = ctr
        if not d.any():
            return
        self.stats.fold(q, d, outbound)
        verdicts = d[_loop.C_VERDICTS:_loop.C_VERDICTS + 32]
        if verdicts.any():
            (self.dataplane.note_outbound if outbound else self.dataplane.note_inbound)(verdicts)

    def queue_stats(self) -> list[QueueStats]:
        """A consistent copy of each data queue's counters (what the metrics endpoint exports with a ``queue``
        label): packets, bytes, drops by verdict, segmentation and coalescing. Empty before :meth:`start`."""
        with self._lock:
            return [q.copy() for q in self.stats.per_queue]

    def _tx_loop_python(self, q: int = 0) -> None:
        c, st = self.config, self.stats
        count = max(c.batch_size, TSO_BATCH) if self._vnet else c.batch_size
        src, dst = _Slots(count, c.slot_size), _Slots(count, c.slot_size)
        tun_fd, wake = self.tun.fileno(), self._wake_r  # type: ignore[union-attr]
        f = src.full
        # Reads per cycle: as many as a plain batch takes. A read is one packet unless the sender's stack made
        # a super-packet (iperf3 -u, DNS, RTP never do), and a cycle of only TSO_READS of them paid the cycle's
        # fixed cost (numpy, outbound(), a GSO train of 8) per 8 packets: UDP ran slower than without offloads.
        reads = max(TSO_READS, c.batch_size)
        sup = PacketBatch.empty(reads, _VNET_SLOT) if self._vnet else None
        while not self._stop.is_set():
            if not _io.poll([tun_fd, wake], c.poll_ms) & 1:
                continue
            if sup is None:
                n = _io.tun_read(tun_fd, f.buf, f.offsets, f.lengths, f.capacity, count)
                if n > 0:
                    st.add(q, tun_read=n)
                    self._tx_batch(src, dst, n, q)
                continue
            # virtio_net_hdr: each read is a super-packet (or one packet) that is cut into MTU-sized packets
            m = _io.tun_read(tun_fd, sup.buf, sup.offsets, sup.lengths, sup.capacity, reads)
            st.add(q, tun_read=max(m, 0))
            n = 0
            for j in range(max(m, 0)):
                off = int(sup.offsets[j])
                data = sup.buf[off:off + int(sup.lengths[j])]
                need = _offload.parse(data)
                if need > count - n and n:
                    self._tx_batch(src, dst, n, q)
                    n = 0
                r = _offload.segment(data, f.buf, f.offsets[n:], f.lengths[n:], f.capacity[n:]) if need > 0 else need
                if r <= 0:
                    st.add(q, tun_bad=1)  # malformed header or more segments than a batch: counted, dropped
                    continue
                if r > 1:
                    st.add(q, tso_segments=r, tso_super_packets=1)
                n += r
            if n:
                self._tx_batch(src, dst, n, q)

    def _tx_batch(self, src: _Slots, dst: _Slots, n: int, q: int) -> None:
        """Slots 0..n-1 of ``src`` hold inner packets read from queue ``q``'s TUN: path MTU, encrypt, send."""
        st, dp = self.stats, self.dataplane
        f = src.full
        st.add(q, tx_batches=1, tx_bytes=int(f.lengths[:n].sum()))
        if dp.sad.snapshot.version != self._sad_version:
            self._update_path_mtu()
        big = np.flatnonzero(f.lengths[:n] > st.inner_mtu)
        if len(big):
            n = self._too_big(f, n, big, q)
            if not n:
                return
        out = dst.view(n)
        verdicts = dp.outbound(src.view(n), out)
        ok = np.flatnonzero(verdicts == _OK).astype(np.int32)
        st.add(q, not_sent=n - len(ok))
        st.add_verdicts(q, True, np.bincount(verdicts, minlength=_NVERDICTS))
        if len(ok):
            self._send(out, ok, q)

    def _send(self, out: PacketBatch, ok: np.ndarray, q: int) -> None:
        """Send the encrypted slots ``ok`` of ``out``: UDP-encapsulated ones on the NAT-T socket (as GSO
        trains when that offload is on), raw ESP on the raw socket."""
        udp_fd = self._queue(q)[1]
        if self.raw is not None:
            proto = _outer_proto(out, ok)
            self._send_on(udp_fd, True, out, ok[proto == 17], q)
            self._send_on(self.raw.fileno(), False, out, ok[proto == 50], q)
        else:
            self._send_on(udp_fd, True, out, ok, q)
        if self._gso_ctr[2]:  # the kernel refused a train on this path: one datagram per message from now on
            self._gso_refused()

    def _gso_refused(self) -> None:
        """The kernel refused a UDP GSO train on this path: one datagram per message from now on."""
        st = self.stats
        self._gso = False
        self._gso_ctr[2] = 0
        if "udp_gso" in st.offloads:
            st.offloads.remove("udp_gso")
        st.offload_fallback = "udp_gso: the kernel refused a UDP_SEGMENT send; sending datagram by datagram"

    def _send_on(self, fd: int, udp: bool, out: PacketBatch, sel: np.ndarray, q: int) -> None:
        if not len(sel):
            return
        st, ctr = self.stats, self._gso_ctr
        t, d = int(ctr[0]), int(ctr[1])
        sent, dropped = _io.send(fd, self.family, udp, out.buf, out.offsets, out.lengths, sel,
                                 self._gso and udp, ctr)
        st.add(q, esp_sent=sent, esp_send_dropped=dropped, gso_trains=int(ctr[0]) - t,
               gso_datagrams=int(ctr[1]) - d)

    # ------------------------------------------------------------------ path MTU (RFC 4301 section 8)
    def _update_path_mtu(self) -> None:
        """Recompute the inner MTU from the outbound SAs' overhead (see esp.gateway.pmtu); when the TUN MTU
        is not configured, the device follows. Runs when the SAD changes, checked once per batch."""
        st, snap = self.stats, self.dataplane.sad.snapshot
        self._sad_version = snap.version
        limits = [max_inner(st.outer_mtu, e.sa.params.suite, self.family, e.sa.params.encap is not None)
                  for e in snap.outbound_by_spi.values()]
        if not limits:  # no SA yet (IKE installs them later)
            limits = [max_inner(st.outer_mtu, DEFAULT_SUITE, self.family, True)]
        # a packet must fit a slot with the ESP overhead added, and the kernel takes no TUN MTU below 576
        st.inner_mtu = max(576, min(min(limits), self.config.slot_size - ESP_OVERHEAD_MAX))
        if self.config.mtu is None and self.tun is not None and st.tun_mtu != st.inner_mtu:
            self.tun.set_mtu(st.inner_mtu)
            st.tun_mtu = st.inner_mtu

    def _too_big(self, f: PacketBatch, n: int, big: np.ndarray, q: int) -> int:
        """Handle the slots ``big`` of the first ``n`` (longer than the inner MTU): ICMP error into the TUN,
        or IPv4 without DF fragmented, encrypted and sent. Returns how many slots remain, moved to the front
        in their order (the slots are permuted, never lost, so the arena stays whole)."""
        st, lim = self.stats, self.stats.inner_mtu
        frags: list[bytes] = []
        for i in big:
            off, ln = int(f.offsets[i]), int(f.lengths[i])
            pkt = f.buf[off:off + ln].tobytes()
            if pkt[0] >> 4 == 4 and not pkt[6] & 0x40:
                pieces = fragment_ipv4(pkt, lim)
                if pieces:
                    frags += pieces
                    st.add(q, fragmented=1)
                    continue
            reply = too_big_reply(pkt, lim)
            if reply is None:
                st.add(q, too_big_dropped=1)
                continue
            try:
                os.write(self.tun.fileno(), (_VNET_NONE + reply) if self._vnet else reply)  # type: ignore[union-attr]
                st.add(q, too_big=1)
            except OSError:
                st.add(q, too_big_dropped=1)
        keep = np.ones(n, dtype=bool)
        keep[big] = False
        order = np.concatenate([np.flatnonzero(keep), big])
        f.offsets[:n] = f.offsets[:n][order]
        f.lengths[:n] = f.lengths[:n][order]
        if frags:
            src = PacketBatch.from_packets(frags)
            out = PacketBatch.empty(len(frags), self.config.slot_size)
            verdicts = self.dataplane.outbound(src, out)
            ok = np.flatnonzero(verdicts == _OK).astype(np.int32)
            st.add(q, not_sent=len(frags) - len(ok))
            st.add_verdicts(q, True, np.bincount(verdicts, minlength=_NVERDICTS))
            if len(ok):
                self._send(out, ok, q)
        return n - len(big)

    # ------------------------------------------------------------------ rx: ESP -> TUN
    def _rx_loop(self, q: int = 0) -> None:
        if self.config.loop == "compiled" and _loop is not None:
            self.stats.rx_loop = "compiled"
            self._with_resync(lambda resync: self._rx_loop_compiled(resync, q))
            return
        self.stats.rx_loop = "python"
        self._rx_loop_python(q)

    def _with_resync(self, body: Callable[[int], None]) -> None:
        """Run a compiled loop ``body(resync_fd)`` with a pipe that becomes readable whenever the SPD or SAD
        changes (their watchers write to it), so the loop returns and takes the new snapshot at once."""
        dp = self.dataplane
        resync_r, resync_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        def changed() -> None:  # in the thread changing the SPD/SAD
            try:
                os.write(resync_w, b"x")
            except OSError:  # the pipe is full: a wake-up is pending already
                pass

        dp.spd.watch(changed)
        dp.sad.watch(changed)
        try:
            body(resync_r)
        finally:
            dp.spd.unwatch(changed)
            dp.sad.unwatch(changed)
            os.close(resync_r)
            os.close(resync_w)

    def _rx_loop_compiled(self, resync: int, q: int = 0) -> None:
        """The receive thread on esp.gateway._loop.RxLoop; Python publishes the inbound SAs, folds counters
        and hands IKE messages to ``on_ike``."""
        c, dp = self.config, self.dataplane
        count = max(c.batch_size, GRO_BATCH) if self._gro else c.batch_size
        src, dst = PacketBatch.empty(count, c.slot_size), PacketBatch.empty(count, c.slot_size)
        left = PacketBatch.empty(count, c.slot_size)
        scratch = np.zeros(GRO_MESSAGES * _io.GRO_BUFFER, np.uint8) if self._gro else None
        coal = PacketBatch(np.zeros(count * c.slot_size + count * _offload.VNET_HDR_SIZE + (1 << 17), np.uint8),
                           np.zeros(count, np.int64), np.zeros(count, np.int32),
                           np.zeros(count, np.int32)) if self._vnet else None
        ctr = np.zeros(_loop.COUNTERS, np.int64)
        seen = np.zeros(_loop.COUNTERS, np.int64)
        port = self.nat_port
        tun_fd, udp_fd = self._queue(q)
        loop = _loop.RxLoop(_core.SA_API, udp_fd, self._wake_r, resync, tun_fd, self._vnet, self._tun_uso,
                            ipaddress.ip_address(c.local_addr).packed, port, src, dst, coal, left, scratch,
                            ctr,
                            self.raw.fileno() if self.raw is not None and q == 0 else -1)
        published = -1
        while not self._stop.is_set():
            _drain(resync)
            sad = dp.sad.snapshot
            if sad.version != published:
                published = sad.version
                loop.publish([(spi, e.sa.context, e.check.table if e.check is not None else None)
                              for spi, e in sad.inbound_by_spi.items()
                              if isinstance(getattr(e.sa, "context", None), _core.SaContext)])
            rc = loop.run(LOOP_CYCLES, c.poll_ms, LOOP_MS)
            with self._lock:
                self._fold_counters(ctr, seen, q, False)
                self.stats.add(q, ike_received=loop.nleft)
            if rc < 0:
                raise OSError(-rc, "UDP receive failed")
            for i in range(loop.nleft):  # IKE: rare, handed over one message at a time
                self._deliver_ike(left.packet(i), port)

    def _rx_loop_python(self, q: int = 0) -> None:
        c, st, dp = self.config, self.stats, self.dataplane
        # with GRO a read may bring trains of up to 64 datagrams: room for a few whole ones per call
        count = max(c.batch_size, GRO_BATCH) if self._gro else c.batch_size
        src, dst = _Slots(count, c.slot_size), _Slots(count, c.slot_size)
        scratch = np.zeros(GRO_MESSAGES * _io.GRO_BUFFER, np.uint8) if self._gro else None
        ctr = self._gro_ctr
        # with virtio_net_hdr every write carries the header: coalesced super-packets (or single packets
        # behind a zero header) are built here; at most one output per input, each at most 64 KB + header
        coal = PacketBatch(np.zeros(count * c.slot_size + count * _offload.VNET_HDR_SIZE + (1 << 17), np.uint8),
                          np.zeros(count, np.int64), np.zeros(count, np.int32),
                           np.zeros(count, np.int32)) if self._vnet else None
        all_slots = np.arange(count, dtype=np.int32)
        udp_fd, wake = self.udp.fileno(), self._wake_r  # type: ignore[union-attr]
        tun_fd = self.tun.fileno()  # type: ignore[union-attr]
        port = self.nat_port
        fds = [udp_fd, wake]
        if self.raw is not None:
            fds.append(self.raw.fileno())
        # IPv4 raw sockets deliver the IP header; IPv6 ones only the payload (synthesize the header).
        raw_synth = _io.SYNTH_NONE if self.family == 4 else _io.SYNTH_ESP
        local = ipaddress.ip_address(c.local_addr).packed
        f = src.full
        while not self._stop.is_set():
            ready = _io.poll(fds, c.poll_ms)
            for bit, fd, synth in ((1, udp_fd, _io.SYNTH_UDP), (4, fds[-1], raw_synth)):
                if not ready & bit:
                    continue
                gro_buf = scratch if fd == udp_fd else None
                t, d = int(ctr[0]), int(ctr[1])
                n = _io.recv(fd, f.buf, f.offsets, f.lengths, f.capacity, count, synth, local, port, gro_buf, ctr)
                st.add(q, gro_trains=int(ctr[0]) - t, gro_datagrams=int(ctr[1]) - d)
                if n <= 0:
                    continue
                st.add(q, esp_received=n, rx_batches=1, rx_bytes=int(f.lengths[:n].sum()))
                out = dst.view(n)
                inb = src.view(n)
                verdicts = dp.inbound(inb, out)
                ok = np.flatnonzero(verdicts == _OK).astype(np.int32)
                if len(ok) and coal is not None:  # userspace GRO: one flow's segments into super-packets
                    k = _offload.coalesce(out.buf, out.offsets, out.lengths, coal.buf, coal.offsets, coal.lengths,
                                          ok, self._tun_uso)
                    if k < 0:  # cannot happen with these buffers; never lose the batch over it
                        st.add(q, tun_bad=1)
                    else:
                        written, dropped = _io.tun_write(tun_fd, coal.buf, coal.offsets, coal.lengths, all_slots[:k])
                        st.add(q, tun_written=written, tun_write_dropped=dropped, tun_gro_packets=len(ok))
                elif len(ok):
                    written, dropped = _io.tun_write(tun_fd, out.buf, out.offsets, out.lengths, ok)
                    st.add(q, tun_written=written, tun_write_dropped=dropped)
                ike = np.flatnonzero(verdicts == _BYPASSED) if synth == _io.SYNTH_UDP else ()
                st.add(q, ike_received=len(ike), not_delivered=n - len(ok) - len(ike))
                st.add_verdicts(q, False, np.bincount(verdicts, minlength=_NVERDICTS))
                for i in ike:  # control traffic: rare, handed over one message at a time
                    self._deliver_ike(inb.packet(int(i)), port)

    def _probe_offloads(self) -> None:
        """Turn on UDP GSO and GRO on the NAT-T socket where this kernel has them and a test train goes
        through (a kernel without them, or a path that refuses them, keeps the plain sendmmsg/recvmmsg)."""
        st, udp = self.stats, self.udp
        st.offloads = []
        self._gso = self._gro = False
        if not self.config.offload or udp is None:
            return
        self._gso = _gso_works(udp, self.family, self.config.local_addr)
        if self._gso:
            st.offloads.append("udp_gso")
        try:
            udp.setsockopt(socket.IPPROTO_UDP, _io.UDP_GRO, 1)
            self._gro = True
            st.offloads.append("udp_gro")
        except OSError:
            pass

    def _deliver_ike(self, pkt: bytes, port: int) -> None:
        hl = 20 if self.family == 4 else 40
        sport = int.from_bytes(pkt[hl:hl + 2], "big")
        raw = pkt[12:16] if self.family == 4 else pkt[8:24]
        addr = (str(ipaddress.ip_address(raw)), sport)
        if self.on_ike is not None:
            self.on_ike(pkt[hl + 8 + 4:], addr, (self.config.local_addr, port))


# Classic BPF run by the kernel on each datagram for the NAT-T port's reuseport group (data = UDP payload):
# a zero first word (the non-ESP marker) selects socket 1 (IKE), anything else socket 0 (ESP). A datagram
# shorter than 4 bytes (a NAT keepalive) fails the load and returns 0: the data plane counts and drops it.
# With n ESP sockets (queues) ahead of the IKE one, IKE is socket n and ESP goes to socket rxhash % n.
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K, _BPF_MOD_K, _BPF_RET_A = 0x20, 0x15, 0x06, 0x94, 0x16
_SKF_AD_RXHASH = 0xFFFFF000 + 32  # SKF_AD_OFF + SKF_AD_RXHASH: the packet's flow hash
SO_ATTACH_REUSEPORT_CBPF = 51


def _split_program(n: int) -> tuple[tuple[int, int, int, int], ...]:
    if n == 1:
        return ((_BPF_LD_W_ABS, 0, 0, 0), (_BPF_JEQ_K, 0, 1, 0), (_BPF_RET_K, 0, 0, 1), (_BPF_RET_K, 0, 0, 0))
    return ((_BPF_LD_W_ABS, 0, 0, 0), (_BPF_JEQ_K, 0, 1, 0), (_BPF_RET_K, 0, 0, n),
            (_BPF_LD_W_ABS, 0, 0, _SKF_AD_RXHASH), (_BPF_MOD_K, 0, 0, n), (_BPF_RET_A, 0, 0, 0))


def _ike_socket_beside(esp_sock: socket.socket, af: int, addr: str, port: int, n_esp: int = 1) -> socket.socket:
    """Bind one more socket to the ESP sockets' address and port (``n_esp`` of them, one per queue, bound
    first) and steer IKE to it in the kernel."""
    import ctypes

    ike = socket.socket(af, socket.SOCK_DGRAM)
    try:
        if af == socket.AF_INET6:
            ike.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        ike.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ike.bind((addr, port))  # last in the group: index n_esp
        program = _split_program(n_esp)
        code = b"".join(struct.pack("=HBBI", *ins) for ins in program)
        buf = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("@HP", len(program), ctypes.addressof(buf))
        esp_sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
        ike.setblocking(False)
    except OSError as exc:
        ike.close()
        raise GatewayError(f"cannot share UDP port {port} between IKE and ESP (SO_REUSEPORT/BPF): "
                           f"{exc.strerror}") from None
    return ike


def _gso_works(sock: socket.socket, family: int, local_addr: str) -> bool:
    """Send a two-datagram UDP_SEGMENT train from ``sock`` to a scratch socket on the same address and see
    both arrive: the option exists, the kernel takes the cmsg and segments on this address's path."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    try:
        sock.setsockopt(socket.IPPROTO_UDP, _io.UDP_SEGMENT, 0)  # known option; 0 = no default segmenting
        with socket.socket(af, socket.SOCK_DGRAM) as rx:
            rx.bind((local_addr, 0))
            rx.setblocking(False)
            port = rx.getsockname()[1]
            dst = ipaddress.ip_address(local_addr).packed
            hdr = (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, 17, 0, dst, dst) if family == 4 else
                   struct.pack("!IHBB16s16s", 0x60000000, 0, 17, 64, dst, dst))
            pkts = [hdr + struct.pack("!HHHH", 0, port, 8 + 64, 0) + bytes([k]) * 64 for k in range(2)]
            b = PacketBatch.from_packets(pkts)
            ctr = np.zeros(_io.COUNTERS, np.int64)
            sent, _ = _io.send(sock.fileno(), family, True, b.buf, b.offsets, b.lengths,
                               np.arange(2, dtype=np.int32), True, ctr)
            if sent != 2 or ctr[0] != 1 or ctr[2]:
                return False
            got = []
            for _ in range(20):
                if _io.poll([rx.fileno()], 10):
                    try:
                        got.append(rx.recv(2048))
                    except BlockingIOError:
                        pass
                if len(got) == 2:
                    break
            return got == [p[-64:] for p in pkts]
    except OSError:
        return False


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 64):
            pass
    except BlockingIOError:
        pass


def _outer_proto(batch: PacketBatch, idx: np.ndarray) -> np.ndarray:
    off = batch.offsets[idx]
    v6 = (batch.buf[off] >> 4) == 6
    return np.where(v6, batch.buf[off + 6], batch.buf[off + 9])
