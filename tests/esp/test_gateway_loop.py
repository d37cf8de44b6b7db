"""The gateway's compiled data loops (esp.gateway._loop) on their own, without root: a packet-mode pipe
(O_DIRECT: one read() per write()) stands in for the TUN device, loopback UDP sockets for the NAT-T socket.

Known answers: what the transmit loop sends decrypts with the peer SA to the packets written into the "TUN", in
order, with consecutive sequence numbers; packets no fast-path rule covers come back to Python untouched; the
receive loop writes the decrypted packets, hands IKE to Python, and drops (counted) what fails the SA's
selectors or has no SA; a readable wake or resync fd ends a run.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

import numpy as np
import pytest

from esp import Direction, PacketBatch, Sa, SaParams, UdpEncap, Verdict, parse_suite
from esp import _core
from esp.gateway import _loop
from esp.spd import Policy, Selector, Spd, compile_selectors

SUITE = parse_suite("aes128gcm16")


def ipv4(src: str, dst: str, payload: bytes, sport: int = 1000) -> bytes:
    l4 = struct.pack("!HHHH", sport, 2000, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + l4


def sa_pair(port: int, spi: int = 0x1234) -> tuple[Sa, Sa]:
    key = os.urandom(SUITE.enc_keymat_len)
    enc = UdpEncap(4500, port)
    common = dict(spi=spi, suite=SUITE, enc_key=key, src="127.0.0.1", dst="127.0.0.1", encap=enc)
    return Sa(SaParams(direction=Direction.OUT, **common)), Sa(SaParams(direction=Direction.IN, **common))


class Rig:
    """Pipes and sockets of one loop; closed at the end of the test."""

    def __init__(self) -> None:
        self.tun_r, self.tun_w = os.pipe2(os.O_DIRECT | os.O_NONBLOCK)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK)
        self.resync_r, self.resync_w = os.pipe2(os.O_NONBLOCK)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(2)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.ctr = np.zeros(_loop.COUNTERS, np.int64)
        self.batches = [PacketBatch.empty(16, 2048) for _ in range(3)]

    def close(self) -> None:
        for fd in (self.tun_r, self.tun_w, self.wake_r, self.wake_w, self.resync_r, self.resync_w):
            os.close(fd)
        self.peer.close()
        self.udp.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def tx_loop(rig: Rig) -> _loop.TxLoop:
    src, dst, left = rig.batches
    return _loop.TxLoop(_core.SA_API, rig.tun_r, rig.wake_r, rig.resync_r, rig.udp.fileno(), 4, False, False,
                        src, dst, None, left, rig.ctr)


def test_tx_loop_encrypts_in_order_and_leaves_what_it_does_not_cover_to_python(rig):
    out_sa, in_sa = sa_pair(rig.peer.getsockname()[1])
    spd = Spd([Policy("site", Selector("10.0.0.0/8", "10.1.0.0/16")),
               Policy("other", Selector("10.0.0.0/8", "10.2.0.0/16"))])
    table, _ = spd.snapshot.compiled_table()
    loop = tx_loop(rig)
    # policy 0 protects with the SA; policy 1 has none (bypass, discard or no SA yet): Python's
    loop.publish(np.ascontiguousarray(table, np.uint64), [out_sa.context, None], 1000)
    pkts = [ipv4("10.0.0.1", "10.1.0.1", bytes([k]) * (100 + k)) for k in range(5)]
    other = ipv4("10.0.0.1", "10.2.0.1", b"other")
    big = ipv4("10.0.0.1", "10.1.0.1", b"b" * 1200)  # over the inner MTU: ICMP too big is Python's
    nomatch = ipv4("10.9.0.1", "10.9.0.2", b"none")
    for p in pkts[:2] + [other, big] + pkts[2:] + [nomatch]:
        os.write(rig.tun_w, p)
    assert loop.run(4, 100) == _loop.LEFTOVER and loop.nleft == 3
    left = rig.batches[2]
    assert [left.packet(i) for i in range(3)] == [other, big, nomatch]
    got = [rig.peer.recvfrom(4096) for _ in pkts]
    assert all(addr == ("127.0.0.1", rig.udp.getsockname()[1]) for _, addr in got)
    seqs = [struct.unpack("!I", d[4:8])[0] for d, _ in got]
    assert seqs == [1, 2, 3, 4, 5]  # one SA: consecutive numbers, in the order read
    hdr = socket.inet_aton("127.0.0.1")
    for (d, _), p in zip(got, pkts):
        outer_udp = struct.pack("!HHHH", 4500, rig.peer.getsockname()[1], 8 + len(d), 0)
        outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(d), 0, 0, 64, 17, 0, hdr, hdr) + outer_udp + d
        assert in_sa.decrypt(outer) == p
    c = rig.ctr
    assert c[_loop.C_TUN_READ] == 8 and c[_loop.C_ESP_SENT] == 5 and c[_loop.C_VERDICTS + Verdict.OK] == 5
    assert out_sa.seq == 5  # the SA's own counter: the loop used its context, not a copy


def test_tx_loop_returns_on_stop_resync_and_idle(rig):
    loop = tx_loop(rig)
    loop.publish(np.zeros((0, 15), np.uint64), [], 1400)
    assert loop.run(4, 10) == _loop.IDLE
    os.write(rig.resync_w, b"x")
    assert loop.run(4, 1000) == _loop.RESYNC
    os.write(rig.wake_w, b"x")
    assert loop.run(4, 1000) == _loop.STOP
    # no policy at all: every packet is Python's, nothing is sent
    os.read(rig.resync_r, 10)
    os.read(rig.wake_r, 10)
    os.write(rig.tun_w, ipv4("10.0.0.1", "10.1.0.1", b"x"))
    assert loop.run(4, 100) == _loop.LEFTOVER and loop.nleft == 1 and rig.ctr[_loop.C_ESP_SENT] == 0


def test_rx_loop_decrypts_checks_selectors_and_hands_ike_to_python(rig):
    port = rig.udp.getsockname()[1]
    out_sa, in_sa = sa_pair(port)
    src, dst, left = rig.batches
    loop = _loop.RxLoop(_core.SA_API, rig.udp.fileno(), rig.wake_r, rig.resync_r, rig.tun_w, False, False,
                        socket.inet_aton("127.0.0.1"), port, src, dst, None, left, None, rig.ctr)
    # the inbound check: inner packets from 10.1.0.0/16 to 10.0.0.0/8 only (selectors as the SAD keeps them)
    check = compile_selectors([Selector("10.1.0.0/16", "10.0.0.0/8")])
    loop.publish([(0x1234, in_sa.context, np.ascontiguousarray(check.table, np.uint64))])
    good = [ipv4("10.1.0.1", "10.0.0.1", bytes([k]) * 50) for k in range(3)]
    outside = ipv4("10.7.0.1", "10.0.0.1", b"outside")
    for p in good[:2] + [outside] + good[2:]:
        esp = out_sa.encrypt(p)
        rig.peer.sendto(esp[28:], ("127.0.0.1", port))  # the UDP payload: ESP
    rig.peer.sendto(b"\0\0\0\0ike message", ("127.0.0.1", port))
    rig.peer.sendto(b"\x00\x00\x99\x99" + bytes(40), ("127.0.0.1", port))  # an SPI nobody has
    rig.peer.sendto(b"\xff", ("127.0.0.1", port))  # NAT keepalive
    rc = loop.run(1, 1000)
    assert rc == _loop.LEFTOVER and loop.nleft == 1
    assert left.packet(0).endswith(b"\0\0\0\0ike message")
    assert [os.read(rig.tun_r, 4096) for _ in good] == good
    with pytest.raises(BlockingIOError):
        os.read(rig.tun_r, 4096)
    v = rig.ctr[_loop.C_VERDICTS:_loop.C_VERDICTS + 32]
    assert v[Verdict.OK] == 3 and v[Verdict.POLICY_MISMATCH] == 1 and v[Verdict.NO_SA] == 1
    assert v[Verdict.DISCARDED] == 1 and rig.ctr[_loop.C_TUN_WRITTEN] == 3 and rig.ctr[_loop.C_NOT_DELIVERED] == 3
