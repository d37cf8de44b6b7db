"""The gateway's transmit cycle with a virtio_net_hdr TUN takes as many packets per cycle as without one.

A TUN read is one packet unless the sender's stack built a super-packet, and most UDP senders (iperf3 -u,
DNS, RTP, WireGuard-style tunnels inside) never do. Reading only a handful of such packets per cycle paid the
cycle's fixed cost (classification, encryption call, one GSO train) per handful: UDP at 1,400 bytes ran at
0.39 Gbit/s with offloads against 0.58 without (bench/gateway.py). No speed is asserted here: the size of the
cycle is, with a datagram socket standing in for the TUN device (read() returns one datagram, as TUN does).
"""
from __future__ import annotations

import os
import socket
import struct
import threading
from types import SimpleNamespace

import pytest

pytest.importorskip("esp._core", reason="esp._core is not built")

from esp.gateway import Gateway, GatewayConfig, QueueStats  # noqa: E402
from esp.gateway._vnet import VNET_HDR_SIZE  # noqa: E402


def _udp4(size: int, seq: int) -> bytes:
    payload = struct.pack("!I", seq) + bytes(size - 28 - 4)
    udp = struct.pack("!HHHH", 5001, 5201, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0x4000, 64, 17, 0,
                      socket.inet_aton("10.98.1.2"), socket.inet_aton("10.98.2.2"))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + udp


@pytest.mark.parametrize("loop", ["python", "compiled"])
@pytest.mark.parametrize("batch_size", [64, 200])
def test_vnet_tx_cycle_takes_a_full_batch_of_single_packet_reads(batch_size: int, loop: str) -> None:
    """Either loop; the compiled one hands the packets to Python (no SA, inner MTU 0) as it read them, one
    leftover batch per cycle, so the batches seen are its cycles too."""
    gw = Gateway(GatewayConfig(local_addr="127.0.0.1", batch_size=batch_size, loop=loop))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tun, feeder = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    wake_r, wake_w = os.pipe()
    try:
        feeder.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        tun.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        for i in range(batch_size):  # queued before the cycle starts: one read each, no super-packets
            feeder.send(bytes(VNET_HDR_SIZE) + _udp4(1428, i))
        tun.setblocking(False)
        gw.tun = SimpleNamespace(fileno=tun.fileno)  # type: ignore[assignment]
        gw._vnet, gw._wake_r = True, wake_r
        gw.stats.per_queue = [QueueStats()]  # what start() sets up: one queue
        gw.udp = udp
        gw._sad_version = gw.dataplane.sad.snapshot.version  # no path MTU work on the stand-in device
        cycles: list[int] = []

        def batch(src, dst, n: int, q: int) -> None:
            cycles.append(n)
            if sum(cycles) >= batch_size:
                gw._stop.set()

        gw._tx_batch = batch  # type: ignore[method-assign]
        t = threading.Thread(target=gw._tx_loop, daemon=True)
        t.start()
        t.join(10)
        gw._stop.set()
        os.write(wake_w, b"x")
        t.join(5)
        assert not t.is_alive()
        assert gw.stats.tun_read == batch_size and gw.stats.tun_bad == 0, gw.stats
        assert cycles == [batch_size], cycles  # was [8, 8, ...]: eight reads per cycle
    finally:
        udp.close()
        tun.close()
        feeder.close()
        os.close(wake_r)
        os.close(wake_w)
