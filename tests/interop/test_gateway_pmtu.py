"""Path MTU through two espresso gateways (RFC 4301 section 8), in network namespaces.

Same topology as tests/interop/test_gateway.py (hostA - gwA == gwB - hostB, outer link MTU 1500). Evidence:

* with no ``mtu`` configured, the TUN MTU follows from the outer MTU and the SA's overhead, so a 1,428-byte
  inner UDP datagram (a 1,400-byte payload, iperf3 ``-u -l 1400``) crosses whole: no host or gateway counts a
  fragment created or reassembled (``/proc/net/snmp`` of each namespace);
* with a TUN MTU larger than the path allows, a too-big packet with DF (IPv4) or any too-big IPv6 packet is
  answered with ICMP "fragmentation needed" / ICMPv6 "packet too big" carrying the path's MTU, and the sender's
  kernel learns it (``ip route get`` shows ``mtu``); a packet of exactly that size then crosses;
* an IPv4 packet without DF that does not fit is fragmented before encryption and arrives whole.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

import pytest

from tests.interop.test_gateway import GatewayProcess, build_topology, ping, sh, static_configs
from tests.support import require, require_root, require_tool

pytestmark = pytest.mark.interop

#: aes128gcm16 in UDP 4500 over a 1500-byte outer MTU: IPv4 outer 1500-20-8-8-8-16 = 1440 (a multiple of the
#: 4-byte alignment), minus the 2-byte trailer; IPv6 outer: 40-byte header instead of 20.
INNER_MTU_V4_OUTER = 1438
INNER_MTU_V6_OUTER = 1418

UDP_RECEIVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 5002)); s.settimeout(3)
    print("LISTENING", flush=True)
    sizes = []
    try:
        while len(sizes) < int(sys.argv[2]):
            sizes.append(len(s.recv(65535)))
    except socket.timeout:
        pass
    print(" ".join(map(str, sizes)), flush=True)
""")

UDP_SENDER = textwrap.dedent("""
    import socket, sys, time
    dst, size, count, df = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
    if df == "dont":  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: no DF bit, the network may fragment
        s.setsockopt(socket.IPPROTO_IP, 10, 0)
    for _ in range(count):
        s.sendto(bytes(size), (dst, 5002)); time.sleep(0.02)
""")


def snmp(ns: str) -> dict[str, int]:
    """The IPv4 and IPv6 fragmentation counters of a namespace."""
    out = {}
    lines = sh("cat", "/proc/net/snmp", ns=ns).stdout.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("Ip:"):
            out.update({f"Ip{k}": int(v) for k, v in zip(head.split()[1:], vals.split()[1:])})
    for line in sh("cat", "/proc/net/snmp6", ns=ns).stdout.splitlines():
        k, v = line.split()
        out[k] = int(v)
    return {k: v for k, v in out.items() if re.search("Frag|Reasm", k)}


def udp_transfer(topo, dst: str, size: int, count: int, df: str = "want") -> list[int]:
    rx = subprocess.Popen(["ip", "netns", "exec", topo.host_b, sys.executable, "-c", UDP_RECEIVER, dst, str(count)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().startswith("LISTENING")
        sh(sys.executable, "-c", UDP_SENDER, dst, str(size), str(count), df, ns=topo.host_a)
        out, err = rx.communicate(timeout=20)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    return [int(x) for x in out.split()]


def tun_mtu(ns: str, cfg: dict) -> int:
    out = sh("ip", "-o", "link", "show", "dev", cfg["gateway"]["tun_name"], ns=ns).stdout
    return int(re.search(r" mtu (\d+)", out).group(1))


def route_mtu(ns: str, dst: str) -> int | None:
    out = sh("ip", "route", "get", dst, ns=ns).stdout
    m = re.search(r" mtu (\d+)", out)
    return int(m.group(1)) if m else None


@pytest.fixture
def topo():
    require_root()
    require_tool("ip")
    require_tool("ping")
    import os
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing")
    t = build_topology()
    try:
        yield t
    finally:
        t.close()


def _gateways(topo, tmp_path, *, outer6: bool = False, mtu: int | None = None):
    cfg_a, cfg_b = static_configs(outer6=outer6)
    for c in (cfg_a, cfg_b):
        if mtu is None:
            c["gateway"].pop("mtu")
        else:
            c["gateway"]["mtu"] = mtu
    gw_a = GatewayProcess(topo.gw_a, cfg_a, tmp_path, "a")
    try:
        gw_b = GatewayProcess(topo.gw_b, cfg_b, tmp_path, "b")
    except BaseException:
        gw_a.stop()
        raise
    return cfg_a, gw_a, gw_b


def test_tun_mtu_follows_from_the_outer_mtu_and_a_1428_byte_udp_datagram_crosses_unfragmented(topo, tmp_path):
    cfg_a, gw_a, gw_b = _gateways(topo, tmp_path)
    try:
        assert tun_mtu(topo.gw_a, cfg_a) == INNER_MTU_V4_OUTER
        p = ping(topo.host_a, "10.98.2.2", count=2)  # neighbours resolved on every link
        assert p.returncode == 0, p.stdout + p.stderr
        before = {ns: snmp(ns) for ns in topo.namespaces}
        sizes = udp_transfer(topo, "10.98.2.2", 1400, 20)
        after = {ns: snmp(ns) for ns in topo.namespaces}
    finally:
        stats_b = gw_b.stop()
        stats_a = gw_a.stop()
    assert len(sizes) >= 19 and set(sizes) == {1400}, sizes
    for ns in topo.namespaces:
        for k in ("IpFragCreates", "IpReasmReqds", "Ip6FragCreates", "Ip6ReasmReqds"):
            assert after[ns][k] == before[ns][k], (ns, k, before[ns][k], after[ns][k])
    assert stats_a["gateway"]["too_big"] == 0 and stats_a["gateway"]["fragmented"] == 0
    assert stats_b["inbound"]["OK"] >= 19


def test_too_big_packets_are_answered_with_icmp_and_the_sender_learns_the_path_mtu(topo, tmp_path):
    # TUN MTU 1500 over an outer IPv6 path that fits only 1418-byte inner packets: the gateway must say so.
    cfg_a, gw_a, gw_b = _gateways(topo, tmp_path, outer6=True, mtu=1500)
    try:
        assert tun_mtu(topo.gw_a, cfg_a) == 1500
        assert ping(topo.host_a, "10.98.2.2", count=2).returncode == 0
        ping(topo.host_a, "fd98:2::2", count=1)  # IPv6 neighbour discovery on the way
        assert ping(topo.host_a, "fd98:2::2", count=2).returncode == 0
        # IPv4 without DF: fragmented before encryption (RFC 4301 section 8.1), reassembled by the receiver
        # (first, while the sender's kernel has not yet learned the path MTU and fragments nothing itself)
        sizes = udp_transfer(topo, "10.98.2.2", 1472, 5, df="dont")
        for dst in ("10.98.2.2", "fd98:2::2"):
            assert route_mtu(topo.host_a, dst) is None
            hdr = 28 if ":" not in dst else 48
            big = sh("ping", "-n", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", str(1500 - hdr), dst,
                     ns=topo.host_a, check=False)
            assert big.returncode != 0, big.stdout  # the first is answered with ICMP, the second refused locally
            deadline = time.monotonic() + 5
            while route_mtu(topo.host_a, dst) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert route_mtu(topo.host_a, dst) == INNER_MTU_V6_OUTER, sh("ip", "route", "get", dst, ns=topo.host_a).stdout
            fits = sh("ping", "-n", "-c", "2", "-i", "0.3", "-W", "2", "-M", "do", "-s",
                      str(INNER_MTU_V6_OUTER - hdr), dst, ns=topo.host_a, check=False)
            assert fits.returncode == 0 and " 0% packet loss" in fits.stdout, fits.stdout + fits.stderr
    finally:
        stats_b = gw_b.stop()
        stats_a = gw_a.stop()
    assert sizes == [1472] * 5, sizes
    assert stats_a["gateway"]["too_big"] >= 2 and stats_a["gateway"]["fragmented"] == 5
    assert stats_a["gateway"]["errors"] == [] and stats_b["gateway"]["errors"] == []
    for bad in ("AUTH_FAILED", "REPLAYED", "MALFORMED", "NO_SA"):
        assert stats_b["inbound"][bad] == 0, (bad, stats_b)
