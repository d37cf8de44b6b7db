"""End to end: two espresso peers negotiate with IKEv2 and certificates over loopback UDP, then carry traffic
through the negotiated ESP SAs over the same UDP sockets; and the same I/O path carrying the same packets
unencrypted, which is the tunnel's ceiling.

The peers live in one process, each with one UDP socket on 127.0.0.1 (IKE and ESP-in-UDP share it, RFC 3948,
as on port 4500). IKE is the sans-I/O core (``ike.dispatcher``) with ECDSA P-256 certificates checked by
``pki.validate`` against a CRL; its datagrams really cross the sockets. The data path is the gateway's: batches
of inner packets -> ``Sa.encrypt_batch`` -> ``esp.gateway._io.send`` (sendmmsg) -> loopback -> ``esp.gateway._io.recv``
(recvmmsg, outer header synthesized) -> ``Sa.decrypt_batch`` (anti-replay on) on the other peer, a sender
thread and a receiver thread with the GIL released in the core and the I/O calls. The plain path runs the same
sockets, batch sizes and threads with the inner packets as UDP payloads and no ESP. The sender keeps at most a
window of packets in flight (the receiver's count is shared in memory), so the socket buffers do not overflow;
anything that does not arrive is counted as lost.
"""
from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Peer", "negotiate", "run"]

BATCH = 256
WINDOW = 2048  # packets in flight at most
RCVBUF = 8 << 20


@dataclass
class Peer:
    name: str
    sock: socket.socket
    port: int
    dispatcher: object
    child: object | None = None  # ChildSaEstablished


def _sockets() -> tuple[socket.socket, socket.socket]:
    out = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
        s.bind(("127.0.0.1", 0))
        out.append(s)
    return out[0], out[1]


def negotiate(kind: str = "ecdsa", esp: str = "aes128gcm16", timeout: float = 20.0) -> tuple[Peer, Peer, float]:
    """IKE_SA + CHILD_SA between two peers over real loopback UDP; (initiator, responder, seconds taken)."""
    from bench.ike import _validator, make_pki
    from ike.authenticators import pki_validator
    from ike.core_config import ChildConfig, CoreConfig, Credential, Identity, PeerConfig, TrafficSelector
    from ike.dispatcher import Dispatcher
    from ike.events import ChildSaEstablished

    pki = make_pki(kind)
    check = pki_validator(_validator(pki))
    sa, sb = _sockets()
    pa, pb = sa.getsockname()[1], sb.getsockname()[1]
    ts = TrafficSelector.from_cidr
    clock = lambda now: dt.datetime.now(dt.timezone.utc)
    ki, ci = pki.leaves["i.example"]
    kr, cr = pki.leaves["r.example"]
    cfg_a = PeerConfig("to-b", Identity("fqdn", "i.example"), Identity("fqdn", "r.example"),
                       remote_addr="127.0.0.1", local_addr="127.0.0.1", remote_port=pb, local_port=pa,
                       local_nat_port=pa, credential=Credential(ki, ci), validator=check, ca_certs=(pki.ca_cert,),
                       encap=True, children=(ChildConfig("net", (ts("10.1.0.0/16"),), (ts("10.2.0.0/16"),),
                                                         esp_proposals=(esp,)),))
    cfg_b = PeerConfig("from-a", Identity("fqdn", "r.example"), None, local_addr="127.0.0.1", local_port=pb,
                       local_nat_port=pb, credential=Credential(kr, cr), validator=check, ca_certs=(pki.ca_cert,),
                       encap=True, children=(ChildConfig("net", (ts("10.2.0.0/16"),), (ts("10.1.0.0/16"),),
                                                         esp_proposals=(esp,)),))
    a = Peer("a", sa, pa, Dispatcher(CoreConfig(peers=(cfg_a,), wall_clock=clock)))
    b = Peer("b", sb, pb, Dispatcher(CoreConfig(peers=(cfg_b,), wall_clock=clock)))
    t0 = time.perf_counter()
    a.dispatcher.initiate("to-b", time.monotonic())
    for p in (a, b):
        p.sock.settimeout(0.05)
    deadline = t0 + timeout
    while time.perf_counter() < deadline and not (a.child and b.child):
        for p in (a, b):
            now = time.monotonic()
            for dg in p.dispatcher.datagrams_to_send(now):
                p.sock.sendto((b"\0\0\0\0" if dg.marker else b"") + dg.data, dg.addr)
        for p in (a, b):
            try:
                data, addr = p.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if data[:4] == b"\0\0\0\0":
                data = data[4:]
            p.dispatcher.receive_datagram(data, addr, ("127.0.0.1", p.port), time.monotonic())
            while (ev := p.dispatcher.next_event()) is not None:
                if isinstance(ev, ChildSaEstablished):
                    p.child = ev
    took = time.perf_counter() - t0
    if not (a.child and b.child):
        for s in (sa, sb):
            s.close()
        raise RuntimeError(f"IKE did not establish the CHILD_SA within {timeout:.0f} s")
    for p in (a, b):
        p.sock.setblocking(False)
    return a, b, took


def _sas(p: Peer):
    """(outbound Sa, inbound Sa) from a peer's ChildSaEstablished, as the daemon maps them."""
    from esp import Direction, Mode, Sa, SaParams, UdpEncap

    ev = p.child
    lh, lp = ev.local_addr
    rh, rp = ev.remote_addr
    out = Sa(SaParams(spi=ev.spi_out, direction=Direction.OUT, suite=ev.suite, enc_key=ev.enc_key_out,
                      integ_key=ev.integ_key_out, mode=Mode(ev.mode), src=lh, dst=rh, esn=ev.esn,
                      encap=UdpEncap(lp, rp) if ev.encap else None))
    inb = Sa(SaParams(spi=ev.spi_in, direction=Direction.IN, suite=ev.suite, enc_key=ev.enc_key_in,
                      integ_key=ev.integ_key_in, mode=Mode(ev.mode), src=rh, dst=lh, esn=ev.esn,
                      encap=UdpEncap(rp, lp) if ev.encap else None, replay_window=4096))
    return out, inb


def _udp_wrapped(inner: list[bytes], src_port: int, dst_port: int) -> list[bytes]:
    """Outer IPv4 + UDP headers (127.0.0.1 -> 127.0.0.1) in front of each inner packet: the plain path."""
    import struct

    out = []
    for p in inner:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(p), 0, 0x4000, 64, 17, 0, bytes([127, 0, 0, 1]),
                         bytes([127, 0, 0, 1]))
        out.append(ip + struct.pack("!HHHH", src_port, dst_port, 8 + len(p), 0) + p)
    return out


def _pump(tx: Peer, rx: Peer, count: int, encrypt, decrypt, src_batches, seconds_cap: float) -> dict:
    """Send ``count`` packets from tx to rx in batches, a window at most in flight; receiver in its own thread."""
    from esp import PacketBatch
    from esp.gateway import _io

    slot = int(max(b.lengths.max() for b in src_batches)) + 160
    received = [0]
    bad = [0]
    stop = threading.Event()
    cond = threading.Condition()
    rbuf = PacketBatch.empty(BATCH, slot)
    rout = PacketBatch.empty(BATCH, slot)
    fd = rx.sock.fileno()

    def receiver() -> None:
        while not stop.is_set():
            if _io.poll([fd], 20) == 0:
                continue
            while True:
                n = _io.recv(fd, rbuf.buf, rbuf.offsets, rbuf.lengths, rbuf.capacity, BATCH, _io.SYNTH_UDP,
                             "127.0.0.1", rx.port)
                if n <= 0:
                    break
                if decrypt is not None:
                    rbuf_n = rbuf if n == BATCH else _view(rbuf, n)
                    ok = decrypt(rbuf_n, rout)
                    bad[0] += n - ok
                else:
                    ok = n
                with cond:
                    received[0] += ok
                    cond.notify_all()

    th = threading.Thread(target=receiver, daemon=True)
    th.start()
    sent = dropped = 0
    outs = [PacketBatch.empty(b.count, slot) for b in src_batches]
    sels = [np.arange(b.count, dtype=np.int32) for b in src_batches]
    txfd = tx.sock.fileno()
    t0 = time.perf_counter()
    i = 0
    try:
        while sent < count and time.perf_counter() - t0 < seconds_cap:
            k = i % len(src_batches)
            i += 1
            with cond:
                while sent - received[0] - bad[0] > WINDOW - src_batches[k].count:
                    if not cond.wait(0.2):
                        break  # a window did not come back: lost in flight; carry on
            if encrypt is not None:
                ok = encrypt(src_batches[k], outs[k])
                b = outs[k]
                if ok != b.count:
                    dropped += b.count - ok
            else:
                b = src_batches[k]
            s, d = _io.send(txfd, 4, True, b.buf, b.offsets, b.lengths, sels[k])
            sent += s
            dropped += d
        deadline = time.perf_counter() + 1.0
        with cond:
            while received[0] + bad[0] < sent and time.perf_counter() < deadline:
                cond.wait(0.05)
        el = time.perf_counter() - t0
    finally:
        stop.set()
        th.join(2)
    return {"sent": sent, "received": received[0], "lost": sent - received[0] - bad[0], "rejected": bad[0],
            "send_dropped": dropped, "seconds": el, "pps": received[0] / el}


def _view(b, n: int):
    """The first n slots of a batch (a receive that filled only part of it)."""
    from esp import PacketBatch

    return PacketBatch(b.buf, b.offsets[:n], b.lengths[:n], b.capacity[:n])


def daemon_path(packets: int, size: int = 1000) -> dict:
    """The IKE daemon's own data path, as ``python -m ike demo`` runs it: SCEP-enrolled RSA certificates, two
    ``ike.daemon`` instances on loopback, ``Daemon.send`` -> ESP-in-UDP -> ``on_packets``, windows of 64 packets
    confirmed before the next. Reported as measured; it has no unencrypted twin to compare with."""
    import argparse
    import io

    from ike.demo import add_arguments, run_demo

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--packets", str(packets), "--size", str(size), "--no-rekey", "--timeout", "120"])
    r = run_demo(args, io.StringIO())
    if not r.ok:
        return {"unavailable": f"ike demo failed: {r.error}"}
    return {"packets_each_way": packets, "size": size, "ike_ms": r.ike_ms,
            "directions": [{"name": d.name, "packets": d.packets, "kpps": d.kpps, "mbit_s": d.mbit_s,
                            "lost": d.lost, "altered": d.altered} for d in r.directions]}


def run(quick: bool = False, repeats: int = 3, size: str = "imix") -> dict:
    try:
        import ike.dispatcher  # noqa: F401
        from esp import PacketBatch  # noqa: F401
        from esp.gateway import _io  # noqa: F401
    except ImportError as exc:
        return {"unavailable": f"the IKE core or esp.gateway._io is not importable ({exc})"}
    from bench.esp import core_available
    from bench.harness import spread
    from bench.workloads import make_workload

    reason = core_available()
    if reason:
        return {"unavailable": reason}
    a, b, ike_s = negotiate()
    try:
        out_a, _ = _sas(a)
        _, in_b = _sas(b)
        w = make_workload(size, count=BATCH * 16)
        inner = [PacketBatch.from_packets(w.packets[i:i + BATCH]) for i in range(0, w.count, BATCH)]
        plain = [PacketBatch.from_packets(_udp_wrapped(list(w.packets[i:i + BATCH]), a.port, b.port))
                 for i in range(0, w.count, BATCH)]
        count = 20_000 if quick else 200_000
        cap = 3.0 if quick else 10.0
        reps = min(repeats, 2 if quick else 3)
        esp_runs, plain_runs = [], []
        state = {"in": in_b}

        def decrypt(src, dst):
            return state["in"].decrypt_batch(src, dst)

        for _ in range(reps):  # interleaved: ESP, plain, ESP, plain ...
            esp_runs.append(_pump(a, b, count, out_a.encrypt_batch, decrypt, inner, cap))
            plain_runs.append(_pump(a, b, count, None, None, plain, cap))
        ratios = spread(e["pps"] / p["pps"] for e, p in zip(esp_runs, plain_runs) if p["pps"])
        e_pps, p_pps = spread(r["pps"] for r in esp_runs), spread(r["pps"] for r in plain_runs)
        gbps = w.mean_size * 8 / 1e9
        lost = sum(r["lost"] for r in esp_runs)
        rejected = sum(r["rejected"] for r in esp_runs)
        suite = a.child.suite
        daemon: dict = {"unavailable": "skipped with --quick"}
        if not quick:
            try:
                daemon = daemon_path(20_000)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                daemon = {"unavailable": f"{type(exc).__name__}: {exc}"}
        if "unavailable" in daemon:
            daemon_text = f"; the daemon path (ike demo): not available: {daemon['unavailable']}"
        else:
            daemon_text = ("; the daemon's own path (python -m ike demo: SCEP-enrolled RSA certificates, "
                           f"{daemon['packets_each_way']} packets of {daemon['size']} B each way in windows of 64): "
                           + ", ".join(f"{d['name']} {d['kpps']:.1f} kpps {d['mbit_s']:.0f} Mbit/s, lost {d['lost']}"
                                       for d in daemon["directions"]))
        return {
            "daemon": daemon,
            "ike_seconds": ike_s, "suite": suite, "workload": size, "packets_per_run": count,
            "esp": esp_runs, "plain": plain_runs, "esp_pps": e_pps.as_dict(), "plain_pps": p_pps.as_dict(),
            "ratio_to_plain": ratios.as_dict(), "esp_lost": lost, "esp_rejected": rejected,
            "summary": (f"IKEv2 (ECDSA P-256 certificates, CRL-checked) over loopback UDP in {ike_s * 1000:.0f} ms; "
                        f"{suite} ESP-in-UDP, {size} packets, sendmmsg/recvmmsg in batches of {BATCH}: "
                        f"{e_pps.median / 1e6:.2f} Mpps [{e_pps.min / 1e6:.2f}-{e_pps.max / 1e6:.2f}] "
                        f"({e_pps.median * gbps:.2f} Gbit/s inner) vs the same path unencrypted "
                        f"{p_pps.median / 1e6:.2f} Mpps [{p_pps.min / 1e6:.2f}-{p_pps.max / 1e6:.2f}]: "
                        f"{ratios.median * 100:.0f}% [{ratios.min * 100:.0f}-{ratios.max * 100:.0f}]; "
                        f"lost {lost}, rejected {rejected} of {sum(r['sent'] for r in esp_runs)} ESP packets"
                        + daemon_text),
        }
    finally:
        a.sock.close()
        b.sock.close()
