"""Batched I/O (esp.gateway._io) and TUN devices (esp.gateway.tun): UDP on loopback, TUN inside a network namespace."""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from esp import Direction, PacketBatch, Sa, SaParams, UdpEncap
from tests.support import require, require_module, require_root, require_tool

try:
    from esp.gateway import _io as io
except ImportError:  # pragma: no cover - setup.py builds it
    io = None


@pytest.fixture(autouse=True)
def _built() -> None:
    require_module("esp.gateway._io")  # skip, or fail under ESPRESSO_REQUIRE_INTEROP=1, when the extension is missing

ROOT = Path(__file__).resolve().parents[2]


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if s.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, s.packed, d.packed) + udp
    return struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64, s.packed, d.packed) + udp


def sockets(family: int, host: str):
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # the whole burst must fit
    rx.bind((host, 0))
    tx.bind((host, 0))
    rx.setblocking(False)
    return rx, tx


def recv_all(rx: socket.socket, batch: PacketBatch, want: int, **kw) -> int:
    """recv until ``want`` packets arrived, bounded in tries and time (poll with a timeout)."""
    got = 0
    for _ in range(200):
        if got >= want:
            break
        if io.poll([rx.fileno()], 50) == 0:
            continue
        n = io.recv(rx.fileno(), batch.buf, batch.offsets[got:], batch.lengths[got:], batch.capacity[got:],
                    batch.count - got, **kw)
        got += n
    return got


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_udp_sendmmsg_recvmmsg_round_trip_with_synthesized_headers(family, host):
    if family == socket.AF_INET6:
        require(socket.has_ipv6, "no IPv6 on loopback")
    rx, tx = sockets(family, host)
    try:
        rport, tport = rx.getsockname()[1], tx.getsockname()[1]
        payloads = [os.urandom(n) for n in (1, 100, 1400, 7, 1000)] * 30  # 150 packets: > one mmsg chunk
        src = PacketBatch.from_packets([udp_packet(host, host, 9, rport, p) for p in payloads])
        sent, dropped = io.send(tx.fileno(), 4 if family == socket.AF_INET else 6, True, src.buf, src.offsets,
                                src.lengths, np.arange(src.count, dtype=np.int32))
        assert (sent, dropped) == (len(payloads), 0)
        dst = PacketBatch.empty(len(payloads), 2048)
        assert recv_all(rx, dst, len(payloads), synth=io.SYNTH_UDP, local_addr=host, local_port=rport) == len(payloads)
        hl = 20 if family == socket.AF_INET else 40
        for i, p in enumerate(payloads):
            pkt = dst.packet(i)
            assert pkt[hl + 8:] == p
            if hl == 20:
                assert pkt[0] == 0x45 and pkt[9] == 17 and struct.unpack("!H", pkt[2:4])[0] == len(pkt)
                assert socket.inet_ntop(family, pkt[12:16]) == host and socket.inet_ntop(family, pkt[16:20]) == host
                assert sum(struct.unpack("!10H", pkt[:20])) % 0xFFFF == 0  # header checksum valid
            else:
                assert pkt[0] >> 4 == 6 and pkt[6] == 17 and struct.unpack("!H", pkt[4:6])[0] == len(pkt) - 40
            assert struct.unpack("!HHH", pkt[hl:hl + 6]) == (tport, rport, 8 + len(p))
        # nothing more is waiting: recv returns 0 at once without blocking
        assert io.recv(rx.fileno(), dst.buf, dst.offsets, dst.lengths, dst.capacity, 4) == 0
    finally:
        rx.close()
        tx.close()


def test_esp_in_udp_through_real_sockets():
    """The core's ESP-in-UDP packets go out via sendmmsg and come back whole via recvmmsg for decryption."""
    rx, tx = sockets(socket.AF_INET, "127.0.0.1")
    try:
        rport, tport = rx.getsockname()[1], tx.getsockname()[1]
        key = os.urandom(20)
        out = Sa(SaParams(spi=0x4242, direction=Direction.OUT, suite="aes128gcm16", enc_key=key, src="127.0.0.1",
                          dst="127.0.0.1", encap=UdpEncap(tport, rport)))
        inn = Sa(SaParams(spi=0x4242, direction=Direction.IN, suite="aes128gcm16", enc_key=key, dst="127.0.0.1",
                          encap=UdpEncap(tport, rport)))
        inner = [udp_packet("10.0.0.1", "10.1.0.1", 5, 6, os.urandom(n)) for n in range(10, 1300, 37)]
        plain = PacketBatch.from_packets(inner)
        enc = PacketBatch.empty(plain.count, 2048)
        assert out.encrypt_batch(plain, enc) == plain.count
        assert io.send(tx.fileno(), 4, True, enc.buf, enc.offsets, enc.lengths,
                       np.arange(enc.count, dtype=np.int32)) == (plain.count, 0)
        got = PacketBatch.empty(plain.count, 2048)
        assert recv_all(rx, got, plain.count, synth=io.SYNTH_UDP, local_addr="127.0.0.1", local_port=rport) == plain.count
        dec = PacketBatch.empty(plain.count, 2048)
        assert inn.decrypt_batch(got, dec) == plain.count
        assert dec.packets() == inner
    finally:
        rx.close()
        tx.close()


def test_send_drops_what_it_cannot_address_and_checks_arguments():
    rx, tx = sockets(socket.AF_INET, "127.0.0.1")
    try:
        rport = rx.getsockname()[1]
        good = udp_packet("127.0.0.1", "127.0.0.1", 1, rport, b"x")
        v6 = udp_packet("::1", "::1", 1, rport, b"y")  # wrong family for this socket
        esp = bytearray(good)
        esp[9] = 50  # not UDP
        b = PacketBatch.from_packets([good, v6, bytes(esp), b"\x45", good])
        assert io.send(tx.fileno(), 4, True, b.buf, b.offsets, b.lengths, np.arange(5, dtype=np.int32)) == (2, 3)
        with pytest.raises(IndexError):
            io.send(tx.fileno(), 4, True, b.buf, b.offsets, b.lengths, np.array([7], np.int32))
        with pytest.raises(ValueError):
            io.send(tx.fileno(), 5, True, b.buf, b.offsets, b.lengths, np.array([0], np.int32))
        with pytest.raises(ValueError):
            io.recv(rx.fileno(), b.buf, b.offsets, b.lengths, b.capacity, 99)
        with pytest.raises(OSError):
            io.recv(-1, b.buf, b.offsets, b.lengths, b.capacity, 1)
        assert io.poll([rx.fileno()], 0) in (0, 1)
    finally:
        rx.close()
        tx.close()


def test_truncated_datagram_gets_length_zero():
    rx, tx = sockets(socket.AF_INET, "127.0.0.1")
    try:
        tx.sendto(b"z" * 500, rx.getsockname())
        b = PacketBatch.empty(1, 100)
        assert recv_all(rx, b, 1, synth=io.SYNTH_UDP, local_addr="127.0.0.1", local_port=1) == 1
        assert b.lengths[0] == 0
    finally:
        rx.close()
        tx.close()


# ------------------------------------------------------------------------------------- UDP GSO / GRO
def _kernel_has(opt: int, value: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(socket.IPPROTO_UDP, opt, value)
            return True
        except OSError:
            return False


def _mixed_train(host: str, ports: list[int]) -> list[bytes]:
    """What a gateway sends: long runs of one size to one peer (the last shorter), single datagrams, runs
    broken by a change of size or destination, and more than one train's worth (> 64) of one size."""
    p0, p1 = ports
    plan = [(p0, 1400)] * 70 + [(p0, 700)] + [(p1, 1400)] * 5 + [(p0, 100)] * 3 + [(p1, 1400), (p0, 1400)] * 3 \
        + [(p0, 64)] * 10 + [(p0, 65)] + [(p0, 64)]
    return [udp_packet(host, host, 9, port, bytes([k & 0xFF]) + os.urandom(size - 1)) for k, (port, size) in
            enumerate(plan)]


def _drain(rx: socket.socket) -> list[bytes]:
    out = []
    for _ in range(2000):
        try:
            out.append(rx.recv(65535))
        except BlockingIOError:
            if io.poll([rx.fileno()], 50) == 0:
                break
    return out


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_udp_gso_puts_the_same_datagrams_on_the_wire_as_sendmmsg(family, host):
    require(_kernel_has(io.UDP_SEGMENT, 1400), "this kernel has no UDP GSO (UDP_SEGMENT)")
    rx0, tx = sockets(family, host)
    rx1, _ = sockets(family, host)
    try:
        pkts = _mixed_train(host, [rx0.getsockname()[1], rx1.getsockname()[1]])
        b = PacketBatch.from_packets(pkts)
        sel = np.arange(b.count, dtype=np.int32)
        got = {}
        for gso in (False, True):
            ctr = np.zeros(io.COUNTERS, np.int64)
            assert io.send(tx.fileno(), 4 if family == socket.AF_INET else 6, True, b.buf, b.offsets, b.lengths,
                           sel, gso=gso, counters=ctr) == (len(pkts), 0)
            got[gso] = (_drain(rx0), _drain(rx1))
            if gso:  # trains: 46 x 1400 (64 KB), 24 x 1400 + the shorter 700 that closes it, 5 x 1400 to the
                # other port, 3 x 100, the last alternating 1400 + the first (shorter) 64, 9 x 64, 65 + 64
                assert ctr.tolist() == [7, 46 + 25 + 5 + 3 + 2 + 9 + 2, 0]
            else:
                assert ctr.tolist() == [0, 0, 0]
        hl = 28 if family == socket.AF_INET else 48
        want0 = [p[hl:] for p in pkts if struct.unpack("!H", p[hl - 6:hl - 4])[0] == rx0.getsockname()[1]]
        assert got[False][0] == want0 and got[True][0] == want0
        assert got[False][1] == got[True][1] and len(got[True][1]) == 8
    finally:
        for s in (rx0, rx1, tx):
            s.close()


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_udp_gro_trains_are_split_at_the_reported_size(family, host):
    require(_kernel_has(io.UDP_SEGMENT, 1400) and _kernel_has(io.UDP_GRO, 1), "this kernel has no UDP GSO/GRO")
    rx, tx = sockets(family, host)
    try:
        rx.setsockopt(socket.IPPROTO_UDP, io.UDP_GRO, 1)
        rport, tport = rx.getsockname()[1], tx.getsockname()[1]
        pkts = _mixed_train(host, [rport, rport])
        b = PacketBatch.from_packets(pkts)
        assert io.send(tx.fileno(), 4 if family == socket.AF_INET else 6, True, b.buf, b.offsets, b.lengths,
                       np.arange(b.count, dtype=np.int32), gso=True) == (len(pkts), 0)
        dst = PacketBatch.empty(256, 2048)
        scratch = np.zeros(4 * io.GRO_BUFFER, np.uint8)
        ctr = np.zeros(io.COUNTERS, np.int64)
        n = 0
        for _ in range(50):
            if n >= len(pkts):
                break
            if io.poll([rx.fileno()], 50):
                n += io.recv(rx.fileno(), dst.buf, dst.offsets[n:], dst.lengths[n:], dst.capacity[n:], 256 - n,
                             io.SYNTH_UDP, host, rport, gro_scratch=scratch, counters=ctr)
        hl = 28 if family == socket.AF_INET else 48
        assert n == len(pkts)
        for i, p in enumerate(pkts):  # the same packets, headers synthesized as without GRO
            got = dst.packet(i)
            assert got[hl:] == p[hl:] and struct.unpack("!HHH", got[hl - 8:hl - 2]) == (tport, rport, len(p) - hl + 8)
        assert ctr[0] >= 1 and ctr[1] >= 2 and ctr[2] == 0, ctr  # at least one train arrived coalesced
    finally:
        rx.close()
        tx.close()


def test_gro_into_a_batch_smaller_than_a_train_counts_what_it_cannot_take():
    require(_kernel_has(io.UDP_SEGMENT, 1400) and _kernel_has(io.UDP_GRO, 1), "this kernel has no UDP GSO/GRO")
    rx, tx = sockets(socket.AF_INET, "127.0.0.1")
    try:
        rx.setsockopt(socket.IPPROTO_UDP, io.UDP_GRO, 1)
        rport = rx.getsockname()[1]
        b = PacketBatch.from_packets([udp_packet("127.0.0.1", "127.0.0.1", 9, rport, bytes(1000))] * 20)
        io.send(tx.fileno(), 4, True, b.buf, b.offsets, b.lengths, np.arange(20, dtype=np.int32), gso=True)
        dst = PacketBatch.empty(5, 2048)
        ctr = np.zeros(io.COUNTERS, np.int64)
        assert io.poll([rx.fileno()], 1000)
        n = io.recv(rx.fileno(), dst.buf, dst.offsets, dst.lengths, dst.capacity, 5, io.SYNTH_UDP, "127.0.0.1",
                    rport, gro_scratch=np.zeros(io.GRO_BUFFER, np.uint8), counters=ctr)
        assert n == 5 and ctr[2] == 20 - 5 and all(dst.lengths == 1028)
        with pytest.raises(ValueError):
            io.recv(rx.fileno(), dst.buf, dst.offsets, dst.lengths, dst.capacity, 5,
                    gro_scratch=np.zeros(100, np.uint8))
        with pytest.raises(ValueError):
            io.recv(rx.fileno(), dst.buf, dst.offsets, dst.lengths, dst.capacity, 5, counters=np.zeros(1, np.int64))
        with pytest.raises(ValueError):
            io.send(tx.fileno(), 4, True, b.buf, b.offsets, b.lengths, np.arange(2, dtype=np.int32), gso=True,
                    counters=np.zeros(1, np.int64))
    finally:
        rx.close()
        tx.close()


# ------------------------------------------------------------------------------------------------ TUN
TUN_CHILD = textwrap.dedent("""
    import socket, struct, sys, numpy as np
    sys.path.insert(0, {root!r})
    from esp import PacketBatch
    from esp.gateway import _io as io
    from esp.gateway.tun import open_tun
    tun = open_tun("esptest%d", addresses=["10.77.0.1/24", "fd77::1/64"], routes=["10.78.0.0/24"], mtu=1400)
    # kernel -> TUN: datagrams routed into the device are read as a batch
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(40):
        s.sendto(struct.pack("!I", i) * 100, ("10.78.0.9", 7000 + i))
    b = PacketBatch.empty(64, 2048)
    got = 0
    for _ in range(100):
        if got >= 40:
            break
        if io.poll([tun.fd], 50):
            got += io.tun_read(tun.fd, b.buf, b.offsets[got:], b.lengths[got:], b.capacity[got:], 64 - got)
    pkts = [p for p in b.packets()[:got] if p[9] == 17]
    assert len(pkts) == 40, got
    assert sorted(struct.unpack("!H", p[22:24])[0] for p in pkts) == list(range(7000, 7040))
    # TUN -> kernel: packets written to the device reach a local socket
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("10.77.0.1", 9999))
    r.settimeout(2)
    out = []
    for i in range(20):
        udp = struct.pack("!HHHH", 1234, 9999, 8 + 4, 0) + struct.pack("!I", i)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton("10.78.0.9"), socket.inet_aton("10.77.0.1"))
        c = sum(struct.unpack("!10H", ip))
        c = (c & 0xFFFF) + (c >> 16); c = (c & 0xFFFF) + (c >> 16)
        out.append(ip[:10] + struct.pack("!H", ~c & 0xFFFF) + ip[12:] + udp)
    wb = PacketBatch.from_packets(out + [b""])  # an empty slot is dropped, not written
    written, dropped = io.tun_write(tun.fd, wb.buf, wb.offsets, wb.lengths, np.arange(21, dtype=np.int32))
    assert (written, dropped) == (20, 1), (written, dropped)
    seen = sorted(struct.unpack("!I", r.recv(100))[0] for _ in range(20))
    assert seen == list(range(20)), seen
    tun.close()
    print("TUN-OK", tun.name)
""")


def run_in_netns(script: str, timeout: float = 30) -> subprocess.CompletedProcess:
    ns = f"espio{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True, timeout=10)
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], capture_output=True,
                              text=True, timeout=timeout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)


@pytest.mark.interop
def test_tun_batched_read_and_write_in_a_namespace():
    require_root()
    require_tool("ip")
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing")
    r = run_in_netns(TUN_CHILD.format(root=str(ROOT)))
    assert r.returncode == 0 and "TUN-OK esptest" in r.stdout, r.stderr[-3000:]


def test_tun_errors_are_clear():
    from esp.gateway.tun import TunError, open_tun

    with pytest.raises(ValueError):
        open_tun("x" * 20)
    with pytest.raises(ValueError):
        open_tun("bad/name")
    if os.geteuid() == 0 and os.path.exists("/usr/bin/setpriv"):
        # without CAP_NET_ADMIN the ioctl is refused: the message says what is missing
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                "from esp.gateway.tun import open_tun, TunError\n"
                "try:\n    open_tun('esperr%d')\nexcept TunError as e:\n    print('ERR', e)\n")
        r = subprocess.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", sys.executable, "-c",
                            code], capture_output=True, text=True, timeout=30)
        assert "ERR" in r.stdout and ("CAP_NET_ADMIN" in r.stdout or "permission" in r.stdout), r.stdout + r.stderr
    assert issubclass(TunError, Exception)


def test_missing_tun_device_is_a_clear_error(monkeypatch, tmp_path):
    from esp.gateway import tun

    monkeypatch.setattr(tun, "TUN_PATH", str(tmp_path / "no-such-tun"))
    with pytest.raises(tun.TunError, match="modprobe tun"):
        tun.open_tun("espnodev%d")
