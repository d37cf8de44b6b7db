"""TUN offload kernels (esp.gateway._offload): TSO/USO segmentation, checksum completion and userspace GRO.

Super-packets are built here the way the kernel hands them to a TUN reader with IFF_VNET_HDR: full-length IP
header (valid IPv4 header checksum), the L4 checksum field holding the pseudo-header partial sum
(CHECKSUM_PARTIAL), and a virtio_net_hdr with NEEDS_CSUM, gso_type, gso_size, csum_start and csum_offset.
scapy is the independent oracle for every segment's headers and checksums. Fuzz budgets are small for CI;
ESPRESSO_FUZZ_EXAMPLES raises them for a longer run by hand.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import require, require_module

try:
    from esp.gateway import _offload, _vnet
except ImportError:  # until esp/gateway/ is a package (branch h/gateway): load the modules by path
    def _load(pattern: str):
        found = glob.glob(str(Path(__file__).resolve().parents[2] / "esp" / "gateway" / pattern))
        assert found, f"esp/gateway/{pattern} is not built"
        spec = importlib.util.spec_from_file_location("esp.gateway." + pattern.split("*")[0].split(".")[0],
                                                      found[0])
        assert spec is not None and spec.loader is not None
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    _offload, _vnet = _load("_offload*.so"), _load("_vnet.py")

scapy_all = require_module("scapy.all")
IP, IPv6, TCP, UDP, Raw = scapy_all.IP, scapy_all.IPv6, scapy_all.TCP, scapy_all.UDP, scapy_all.Raw

V = _offload.OffloadVerdict
G = _offload.GsoType
FUZZ = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "0"))
NEEDS_CSUM = _offload.FLAG_NEEDS_CSUM
FIN, PSH, CWR = 0x01, 0x08, 0x80


def examples(n: int) -> int:
    """CI's budget, or the longer one asked for with ESPRESSO_FUZZ_EXAMPLES."""
    return max(n, FUZZ)


# ---- an independent checksum and kernel-style super-packets --------------------------------------------------

def ocsum(data: bytes) -> int:
    """Folded one's-complement sum (RFC 1071), not inverted."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(ip: bytes, proto: int, l4len: int) -> int:
    addrs = ip[12:20] if ip[0] >> 4 == 4 else ip[8:40]
    return ocsum(addrs + struct.pack("!HHH", proto, l4len >> 16, l4len & 0xFFFF))


def vnet(flags: int = 0, gso: int = 0, hdr_len: int = 0, gso_size: int = 0, start: int = 0, offset: int = 0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, start, offset)


def inner(v6: bool, l4, payload: bytes, ident: int = 7, tos: int = 0, ttl: int = 64):
    if v6:
        pkt = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=tos, hlim=ttl, fl=0x12345) / l4 / Raw(payload)
    else:
        pkt = IP(src="10.0.0.1", dst="10.0.0.2", id=ident, tos=tos, ttl=ttl, flags="DF") / l4 / Raw(payload)
    return bytes(pkt)


def partial(pkt: bytes, proto: int) -> tuple[bytes, int, int]:
    """pkt with its L4 checksum field replaced by the pseudo-header partial sum (CHECKSUM_PARTIAL)."""
    ihl = 40 if pkt[0] >> 4 == 6 else (pkt[0] & 15) * 4
    off = 16 if proto == 6 else 6
    b = bytearray(pkt)
    struct.pack_into("!H", b, ihl + off, pseudo(pkt, proto, len(pkt) - ihl))
    return bytes(b), ihl, off


def tcp_super(v6: bool, payload: bytes, mss: int, *, seq: int = 1000, flags: int = 0x18, ident: int = 7,
              options: list | None = None, sport: int = 40000, dport: int = 5201, tos: int = 0) -> bytes:
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=555, flags=flags, window=502, options=options or [])
    pkt, ihl, off = partial(inner(v6, tcp, payload, ident, tos), 6)
    hlen = ihl + (pkt[ihl + 12] >> 4) * 4
    gso = (G.TCPV6 if v6 else G.TCPV4) | (G.ECN if flags & CWR else 0)
    return vnet(NEEDS_CSUM, gso, hlen, mss, ihl, off) + pkt


def udp_super(v6: bool, payload: bytes, size: int, *, ident: int = 9, sport: int = 5000, dport: int = 5201) -> bytes:
    pkt, ihl, off = partial(inner(v6, UDP(sport=sport, dport=dport), payload, ident), 17)
    return vnet(NEEDS_CSUM, G.UDP_L4, ihl + 8, size, ihl, off) + pkt


class Slots:
    """A batch arena like esp.PacketBatch.empty: fixed slots, offsets/lengths/capacity arrays."""

    def __init__(self, count: int = 64, slot: int = 2048) -> None:
        self.buf = np.zeros(count * slot, dtype=np.uint8)
        self.offsets = np.arange(count, dtype=np.int64) * slot
        self.lengths = np.zeros(count, dtype=np.int32)
        self.capacity = np.full(count, slot, dtype=np.int32)

    def segment(self, data: bytes) -> int:
        return _offload.segment(data, self.buf, self.offsets, self.lengths, self.capacity)

    def packets(self, n: int) -> list[bytes]:
        return [self.buf[o:o + ln].tobytes() for o, ln in zip(self.offsets[:n], self.lengths[:n])]


def segment(data: bytes, count: int = 64, slot: int = 2048) -> list[bytes]:
    s = Slots(count, slot)
    n = s.segment(data)
    assert n > 0, V(n)
    return s.packets(n)


def coalesce(packets: list[bytes], udp: bool = False, select: list[int] | None = None) -> list[bytes]:
    lengths = np.array([len(p) for p in packets], dtype=np.int32)
    offsets = np.zeros(len(packets), dtype=np.int64)
    if len(packets) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    buf = np.frombuffer(b"".join(packets) or b"\0", dtype=np.uint8).copy()
    out = np.zeros(int(lengths.sum()) + 10 * len(packets) + 1, dtype=np.uint8)
    oo = np.zeros(len(packets), dtype=np.int64)
    ol = np.zeros(len(packets), dtype=np.int32)
    sel = None if select is None else np.array(select, dtype=np.int32)
    n = _offload.coalesce(buf, offsets, lengths, out, oo, ol, sel, udp)
    assert n >= 0, V(n)
    return [out[o:o + ln].tobytes() for o, ln in zip(oo[:n], ol[:n])]


# ---- checks with scapy as the oracle ---------------------------------------------------------------------

def l3(seg: bytes):
    return IPv6(seg) if seg[0] >> 4 == 6 else IP(seg)


def assert_checksums_valid(seg: bytes) -> None:
    """scapy recomputes every checksum of the packet; they must equal ours."""
    p = l3(seg)
    l4 = p[TCP] if TCP in p else p[UDP]
    ours = l4.chksum
    del l4.chksum
    if IP in p:
        ours_ip = p[IP].chksum
        del p[IP].chksum
    rebuilt = l3(bytes(p))
    assert (rebuilt[TCP] if TCP in rebuilt else rebuilt[UDP]).chksum == ours
    if IP in p:
        assert rebuilt[IP].chksum == ours_ip


def check_tcp_segments(sup: bytes, segs: list[bytes], mss: int) -> None:
    orig = l3(sup[10:])
    payload = bytes(orig[TCP].payload)
    assert len(segs) == max(1, -(-len(payload) // mss))
    got = b""
    for i, seg in enumerate(segs):
        assert_checksums_valid(seg)
        p = l3(seg)
        t = p[TCP]
        data = bytes(t.payload)
        assert len(data) == (mss if i < len(segs) - 1 else len(payload) - mss * (len(segs) - 1))
        assert t.seq == (orig[TCP].seq + len(got)) & 0xFFFFFFFF
        got += data
        want = int(orig[TCP].flags)
        if i < len(segs) - 1:
            want &= ~(FIN | PSH)
        if i > 0:
            want &= ~CWR
        assert int(t.flags) == want
        assert t.options == orig[TCP].options and t.ack == orig[TCP].ack and t.window == orig[TCP].window
        if IP in p:
            assert p[IP].id == (orig[IP].id + i) & 0xFFFF and p[IP].len == len(seg)
            assert (p.tos, p.ttl, p.flags) == (orig.tos, orig.ttl, orig.flags)
        else:
            assert p.plen == len(seg) - 40 and (p.tc, p.fl, p.hlim) == (orig.tc, orig.fl, orig.hlim)
    assert got == payload


def check_udp_segments(sup: bytes, segs: list[bytes], size: int) -> None:
    orig = l3(sup[10:])
    payload = bytes(orig[UDP].payload)
    got = b""
    for i, seg in enumerate(segs):
        assert_checksums_valid(seg)
        p = l3(seg)
        u = p[UDP]
        assert u.len == len(seg) - (40 if IPv6 in p else 20) and (u.sport, u.dport) == (orig.sport, orig.dport)
        got += bytes(u.payload)
        if IP in p:
            assert p[IP].id == (orig[IP].id + i) & 0xFFFF
    assert got == payload and all(len(bytes(l3(s)[UDP].payload)) == size for s in segs[:-1])


# ---- segmentation and the round trip -----------------------------------------------------------------------

OPTIONS = [None, [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v6=st.booleans(), mss=st.integers(1, 1460), size=st.integers(2, 20000), seq=st.integers(0, 2**32 - 1),
       ident=st.integers(0, 0xFFFF), fin=st.booleans(), cwr=st.booleans(), opts=st.sampled_from(OPTIONS),
       data=st.data())
def test_tcp_segment_then_coalesce_round_trip(v6, mss, size, seq, ident, fin, cwr, opts, data) -> None:
    size = max(size, mss + 1)            # at least two segments: one segment is written without GSO
    size = min(size, mss * 60)           # and no more than the slots
    payload = data.draw(st.binary(min_size=size, max_size=size))
    flags = 0x18 | (FIN if fin else 0) | (CWR if cwr else 0)
    sup = tcp_super(v6, payload, mss, seq=seq, flags=flags, ident=ident, options=opts)
    assert _offload.parse(sup) == -(-size // mss)
    segs = segment(sup)
    check_tcp_segments(sup, segs, mss)
    assert coalesce(segs) == [sup]


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v6=st.booleans(), size=st.integers(1, 1472), count=st.integers(2, 40), tail=st.integers(0, 1471),
       ident=st.integers(0, 0xFFFF))
def test_udp_segment_then_coalesce_round_trip(v6, size, count, tail, ident) -> None:
    payload = os.urandom(size * (count - 1) + min(tail, size - 1) + 1)
    sup = udp_super(v6, payload, size, ident=ident)
    segs = segment(sup)
    check_udp_segments(sup, segs, size)
    assert coalesce(segs, udp=True) == [sup]
    # without USO on the TUN, datagrams go out one by one, as they came
    assert coalesce(segs, udp=False) == [bytes(10) + s for s in segs]


def test_interleaved_flows_coalesce_each_in_order() -> None:
    a = tcp_super(False, os.urandom(1400 * 5), 1400, sport=1111)
    b = tcp_super(False, os.urandom(1400 * 3 + 10), 1400, sport=2222, ident=99)
    c = udp_super(True, os.urandom(1000 * 4), 1000)
    sa, sb, sc = segment(a), segment(b), segment(c)
    mixed = [sa[0], sb[0], sc[0], sa[1], sc[1], sb[1], sa[2], sa[3], sc[2], sb[2], sb[3], sa[4], sc[3]]
    assert coalesce(mixed, udp=True) == [a, b, c]
    # select picks and orders the slots (verdict OK only, as the gateway does)
    assert coalesce(mixed + [b"junk"], udp=True, select=list(range(len(mixed)))) == [a, b, c]


def test_uncoalescable_packets_pass_as_they_are_and_flow_order_holds() -> None:
    segs = segment(tcp_super(False, os.urandom(1000 * 4), 1000))
    ack = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=5201, flags="A", seq=99))
    icmp = bytes(IP(src="10.0.0.1", dst="10.0.0.9") / scapy_all.ICMP())
    out = coalesce([segs[0], segs[1], ack, segs[2], segs[3], icmp, b"", b"\x45junk"])
    # the pure ACK closes the flow's first run: what follows it in the flow is a new run, after it
    assert [o[:1] for o in out] == [bytes([NEEDS_CSUM]), b"\0", bytes([NEEDS_CSUM]), b"\0", b"\0", b"\0"]
    assert out[1] == bytes(10) + ack and out[3] == bytes(10) + icmp and out[4] == bytes(10) and out[5][10:] == b"\x45junk"
    first, second = l3(out[0][10:]), l3(out[2][10:])
    assert bytes(first[TCP].payload) + bytes(second[TCP].payload) == b"".join(bytes(l3(s)[TCP].payload) for s in segs)


def mutate(pkt: bytes, at: int, value: bytes) -> bytes:
    return pkt[:at] + value + pkt[at + len(value):]


def fix_ipv4(seg: bytes) -> bytes:
    b = bytearray(seg)
    b[10:12] = b"\0\0"
    struct.pack_into("!H", b, 10, ~ocsum(bytes(b[:20])) & 0xFFFF)
    p = IP(bytes(b))
    del p[TCP].chksum
    return bytes(p)


def test_segments_that_gro_must_not_merge() -> None:
    segs = segment(tcp_super(False, os.urandom(800 * 3), 800))
    cases = {
        "bad TCP checksum": mutate(segs[1], 36, b"\x00\x01"),
        "bad IPv4 header checksum": mutate(segs[1], 10, b"\xde\xad"),
        "sequence gap": fix_ipv4(mutate(segs[1], 24, struct.pack("!I", 999))),
        "other TTL": fix_ipv4(mutate(segs[1], 8, b"\x05")),
        "IP ID not +1": fix_ipv4(mutate(segs[1], 4, b"\x00\x00")),
        "other window": fix_ipv4(mutate(segs[1], 34, b"\x00\x01")),
        "SYN": fix_ipv4(mutate(segs[1], 33, b"\x12")),
    }
    for why, bad in cases.items():
        out = coalesce([segs[0], bad, segs[2]])
        assert len(out) == 3 and out[1] == bytes(10) + bad, why
    # CWR may only be on a run's first segment: it starts a new run (gso_type ECN), as the kernel's GRO does
    cwr = fix_ipv4(mutate(segs[1], 33, b"\x90"))
    out = coalesce([segs[0], cwr, segs[2]])
    assert len(out) == 2 and out[0] == bytes(10) + segs[0] and out[1][1] == G.TCPV4 | G.ECN
    # a short segment ends a run: what follows is not merged behind it
    short = segment(tcp_super(False, os.urandom(1000), 600))
    out = coalesce(short + segs)
    assert len(out) == 2 and out[0][1] == G.TCPV4 and out[1][1] == G.TCPV4


def test_single_segment_and_plain_packets_get_checksums_completed() -> None:
    for v6 in (False, True):
        sup = tcp_super(v6, b"hello", 1400)               # GSO, but one segment
        (seg,) = segment(sup)
        assert_checksums_valid(seg)
        assert coalesce([seg]) == [bytes(10) + seg]
        for proto, l4 in ((6, TCP(sport=1, dport=2, flags="PA")), (17, UDP(sport=1, dport=2))):
            pkt, ihl, off = partial(inner(v6, l4, os.urandom(333)), proto)
            (seg,) = segment(vnet(NEEDS_CSUM, 0, 0, 0, ihl, off) + pkt)
            assert_checksums_valid(seg)
            assert segment(vnet() + pkt) == [pkt]        # no NEEDS_CSUM: copied as it is
    icmp = bytes(IP(dst="10.0.0.2") / scapy_all.ICMP() / Raw(b"x" * 50))
    assert segment(vnet() + icmp) == [icmp]


def test_segment_into_batch_slots_with_room_checked() -> None:
    sup = tcp_super(False, os.urandom(1400 * 4), 1400)
    s = Slots(4, 1440)
    assert s.segment(sup) == 4 and s.packets(4) == segment(sup)
    assert Slots(3, 2048).segment(sup) == V.TOO_MANY
    assert Slots(4, 1439).segment(sup) == V.NO_SPACE
    s = Slots(4, 2048)
    s.capacity[2] = 100
    assert s.segment(sup) == V.NO_SPACE
    s = Slots(4, 2048)
    s.offsets[3] = len(s.buf) - 100                   # a slot that runs past the arena
    assert s.segment(sup) == V.NO_SPACE


# ---- malformed input: a verdict each, never a crash -------------------------------------------------------

def _cases() -> list[tuple[str, bytes, V]]:
    t4 = tcp_super(False, b"x" * 3000, 1000)
    t6 = tcp_super(True, b"x" * 3000, 1000)
    u4 = udp_super(False, b"y" * 3000, 1000)
    hbh = bytearray(t6)
    hbh[10 + 6] = 0
    return [
        ("short", t4[:29], V.SHORT),
        ("unknown flag", mutate(t4, 0, b"\x05"), V.FLAGS),
        ("UFO", mutate(t4, 1, b"\x03"), V.GSO_TYPE),
        ("unknown gso type", mutate(t4, 1, b"\x09"), V.GSO_TYPE),
        ("ECN on UDP", mutate(u4, 1, b"\x85"), V.GSO_TYPE),
        ("gso_size 0", mutate(t4, 4, b"\0\0"), V.GSO_SIZE),
        ("TCPV4 on IPv6", mutate(t6, 1, b"\x01"), V.IP_VERSION),
        ("TCPV6 on IPv4", mutate(t4, 1, b"\x04"), V.IP_VERSION),
        ("IP version 5", mutate(t4, 10, b"\x55"), V.IP_VERSION),
        ("IHL 4", mutate(t4, 10, b"\x44"), V.IP_HEADER),
        ("IHL past the data", mutate(t4, 10, b"\x4f")[:10 + 40], V.IP_HEADER),
        ("total length past the data", t4[:-1], V.IP_LENGTH),
        ("total length below IHL", mutate(t4, 12, b"\x00\x10"), V.IP_LENGTH),
        ("IPv6 payload length past the data", t6[:-1], V.IP_LENGTH),
        ("IPv6 header cut", t6[:10 + 39], V.IP_HEADER),
        ("fragment", mutate(t4, 16, b"\x20\x00"), V.IP_FRAGMENT),
        ("IPv6 hop-by-hop", bytes(hbh), V.EXT_HEADER),
        ("UDP_L4 on TCP", mutate(t4, 1, b"\x05"), V.PROTOCOL),
        ("TCP data offset 4", mutate(t4, 10 + 32, b"\x40"), V.TCP_HEADER),
        ("TCP header past the IP length", mutate(t4, 10 + 2, b"\x00\x24"), V.TCP_HEADER),
        ("UDP length wrong", mutate(u4, 10 + 24, b"\x00\x09"), V.UDP_HEADER),
        ("hdr_len past the packet", mutate(t4, 2, b"\xff\xff"), V.HDR_LEN),
        ("csum_start past the packet", mutate(t4, 6, b"\xff\x0f"), V.CSUM),
        ("csum_start inside the IP header", mutate(t4, 6, b"\x02\x00"), V.CSUM),
        ("csum_offset not TCP's", mutate(t4, 8, b"\x06\x00"), V.CSUM),
        ("csum_offset past the packet", mutate(t4, 8, b"\xff\xff"), V.CSUM),
    ]


@pytest.mark.parametrize("why,data,verdict", _cases(), ids=[c[0] for c in _cases()])
def test_malformed_headers_get_verdicts(why: str, data: bytes, verdict: V) -> None:
    assert _offload.parse(data) == verdict
    assert Slots(8).segment(data) == verdict


@settings(max_examples=examples(300), deadline=None)
@given(blob=st.binary(max_size=600))
def test_random_bytes_never_crash(blob: bytes) -> None:
    s = Slots(8, 256)
    n = s.segment(blob)
    assert n < 0 and n in set(V) or 1 <= n <= 8
    if n > 0:
        assert all(0 < ln <= 256 for ln in s.lengths[:n])


@settings(max_examples=examples(300), deadline=None)
@given(v6=st.booleans(), kind=st.sampled_from(["tcp", "udp"]), edits=st.lists(
    st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=6), cut=st.integers(0, 200))
def test_mutated_super_packets_never_crash(v6: bool, kind: str, edits, cut: int) -> None:
    sup = bytearray(tcp_super(v6, b"z" * 3000, 700) if kind == "tcp" else udp_super(v6, b"z" * 3000, 700))
    for at, value in edits:
        sup[at] = value
    data = bytes(sup[:len(sup) - cut])
    s = Slots(8, 1024)
    n = s.segment(data)
    assert n == _offload.parse(data) or (n < 0 and _offload.parse(data) > 0)
    if n > 0:
        assert all(0 < ln <= 1024 for ln in s.lengths[:n])
        # whatever came out, coalescing it back never crashes either
        coalesce(s.packets(n), udp=True)


@settings(max_examples=examples(200), deadline=None)
@given(blobs=st.lists(st.binary(max_size=200), min_size=1, max_size=20), udp=st.booleans())
def test_coalesce_random_packets_passes_them_through(blobs: list[bytes], udp: bool) -> None:
    assert coalesce(blobs, udp=udp) == [bytes(10) + b for b in blobs]


def test_coalesce_refuses_bad_arguments_with_verdicts() -> None:
    buf = np.zeros(100, dtype=np.uint8)
    offs, lens = np.array([0, 90], dtype=np.int64), np.array([50, 20], dtype=np.int32)
    out, oo, ol = np.zeros(1000, dtype=np.uint8), np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int32)
    assert _offload.coalesce(buf, offs, lens, out, oo, ol) == V.BAD_SLOT
    lens[1] = 10
    assert _offload.coalesce(buf, offs, lens, out[:50], oo, ol) == V.NO_SPACE
    assert _offload.coalesce(buf, offs, lens, out, oo[:1], ol[:1]) == V.TOO_MANY
    assert _offload.coalesce(buf, offs, lens, out, oo, ol) == 2
    with pytest.raises(IndexError):
        _offload.coalesce(buf, offs, lens, out, oo, ol, np.array([2], dtype=np.int32))


def test_super_packets_up_to_64k_coalesce_and_no_further() -> None:
    mss = 1448
    big = tcp_super(False, os.urandom(65535 - 40), mss)       # the largest IPv4 super-packet
    segs = segment(big, count=64)
    assert coalesce(segs) == [big]
    more = segment(tcp_super(False, os.urandom(mss * 2), mss, seq=1000 + 65535 - 40, ident=7 + len(segs)))
    out = coalesce(segs + more)
    assert len(out) == 2 and out[0] == big


def test_udp_runs_stop_at_the_kernels_segment_limit() -> None:
    """The kernel refuses (EINVAL) a USO packet of more than UDP_MAX_SEGMENTS datagrams written to a TUN
    (virtio_net_hdr_to_skb; 64 on older kernels, 128 on newer ones such as 6.18): 200 small datagrams of one
    flow, as a 64-byte UDP benchmark delivers them, coalesce into runs of at most 64 that segment back into the
    same packets."""
    segs = segment(udp_super(False, os.urandom(64 * 200), 64), count=256)
    assert len(segs) == 200
    out = coalesce(segs, udp=True)
    assert [len(segment(o, count=256)) for o in out] == [64, 64, 64, 8]
    assert [p for o in out for p in segment(o, count=256)] == segs


# ---- against the Linux kernel: its GSO as the oracle, and real TSO reads from a TUN -------------------------

def _kernel_lab(tmp_path):
    from tests.support import require_root, require_tool
    require_root()
    require_tool("ip")
    require(Path(_vnet.TUN_PATH).exists(), f"{_vnet.TUN_PATH} is missing (modprobe tun)")
    from tests.interop.strongswan import Lab
    return Lab(tmp_path)


def in_netns(ns, fn):
    """Run fn in a thread that entered ``ns``: TUN devices and sockets it creates belong to that namespace."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    box: list = []

    def work() -> None:
        try:
            with open(ns.path, "rb") as f:
                if libc.setns(f.fileno(), 0x40000000) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns.name}) failed")
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=10)
    assert box, "namespace helper thread did not finish"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def read_packets(fd: int, want: int, keep=lambda p: True, timeout: float = 3.0) -> list[bytes]:
    """Up to ``want`` packets that ``keep`` accepts (the kernel also sends its own: MLD, router solicitations)."""
    import select
    import time

    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    p = select.poll()
    p.register(fd, select.POLLIN)
    while len(got) < want and time.monotonic() < deadline:
        if not p.poll(100):
            continue
        while len(got) < 10_000:
            try:
                pkt = os.read(fd, 70000)
            except BlockingIOError:
                break
            if keep(pkt):
                got.append(pkt)
    return got


def forwarded(seg: bytes) -> bytes:
    """seg as the kernel forwards it: TTL / hop limit minus one (and the IPv4 header checksum updated)."""
    b = bytearray(seg)
    if b[0] >> 4 == 6:
        b[7] -= 1
        return bytes(b)
    b[8] -= 1
    b[10:12] = b"\0\0"
    struct.pack_into("!H", b, 10, ~ocsum(bytes(b[:(b[0] & 15) * 4])) & 0xFFFF)
    return bytes(b)


def test_segments_equal_the_kernels_gso(tmp_path) -> None:
    """Super-packets written into a TUN with IFF_VNET_HDR are forwarded out of a TUN without offloads, so the
    kernel's own GSO segments them: its segments must be ours, byte for byte."""
    import socket

    with _kernel_lab(tmp_path) as lab:
        ns = lab.netns()
        tin = in_netns(ns, lambda: _vnet.open_vnet_tun("offin%d"))
        tout = in_netns(ns, lambda: _vnet.open_vnet_tun("offout%d", offloads=_vnet.Offload.NONE))
        try:
            assert tin.vnet_hdr and tin.segmentation and not tout.vnet_hdr
            for cmd in (["sysctl", "-qw", "net.ipv4.ip_forward=1"], ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
                        ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
                        ["ip", "link", "set", tin.name, "up"], ["ip", "link", "set", tout.name, "up"],
                        ["ip", "route", "add", "10.0.0.2/32", "dev", tout.name],
                        ["ip", "-6", "route", "add", "2001:db8::2/128", "dev", tout.name]):
                ns.run(cmd)
            cases = [tcp_super(False, os.urandom(5000), 1400), tcp_super(True, os.urandom(7777), 1220, flags=0x19),
                     tcp_super(False, os.urandom(3000), 536, flags=0x98, options=OPTIONS[1], ident=0xFFFE),
                     tcp_super(True, os.urandom(2900), 1000, flags=0x90, seq=2**32 - 5)]
            if tin.uso:
                cases += [udp_super(False, os.urandom(4000), 1300), udp_super(True, os.urandom(3333), 1111)]
            dst4, dst6 = socket.inet_pton(socket.AF_INET, "10.0.0.2"), socket.inet_pton(socket.AF_INET6, "2001:db8::2")
            for sup in cases:
                ours = segment(sup)
                os.write(tin.fd, sup)
                theirs = read_packets(tout.fd, len(ours), lambda p: p[16:20] == dst4 or p[24:40] == dst6)
                assert [forwarded(s) for s in ours] == theirs
        finally:
            os.close(tin.fd)
            os.close(tout.fd)


def test_coalesced_udp_trains_are_taken_by_the_kernel(tmp_path) -> None:
    """What userspace GRO makes of 300 small datagrams of one flow is written into a TUN with USO: the kernel
    takes every write (no EINVAL for too many segments) and forwards all 300 datagrams, in order."""
    import socket

    with _kernel_lab(tmp_path) as lab:
        ns = lab.netns()
        tin = in_netns(ns, lambda: _vnet.open_vnet_tun("offin%d"))
        tout = in_netns(ns, lambda: _vnet.open_vnet_tun("offout%d", offloads=_vnet.Offload.NONE))
        try:
            require(tin.uso, "this kernel's TUN has no USO")
            for cmd in (["sysctl", "-qw", "net.ipv4.ip_forward=1"],
                        ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
                        ["ip", "link", "set", tin.name, "up"], ["ip", "link", "set", tout.name, "up"],
                        ["ip", "route", "add", "10.0.0.2/32", "dev", tout.name]):
                ns.run(cmd)
            segs = segment(udp_super(False, os.urandom(40 * 300), 40), count=512)
            dst4 = socket.inet_pton(socket.AF_INET, "10.0.0.2")
            for sup in coalesce(segs, udp=True):
                os.write(tin.fd, sup)
            theirs = read_packets(tout.fd, len(segs), lambda p: p[16:20] == dst4)
            assert theirs == [forwarded(s) for s in segs]
        finally:
            os.close(tin.fd)
            os.close(tout.fd)


def _wire(a, b, stop, stats) -> None:
    """A userspace wire between two vnet TUNs: each read is segmented, then coalesced again for the write,
    as the gateway does around its ESP core (which is left out here)."""
    import select
    import time

    slots = Slots(64, 2048)
    p = select.poll()
    p.register(a.fd, select.POLLIN)
    p.register(b.fd, select.POLLIN)
    peer = {a.fd: b, b.fd: a}
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        for fd, _ in p.poll(50):
            for _ in range(64):
                try:
                    data = os.read(fd, 70000)
                except BlockingIOError:
                    break
                n = slots.segment(data)
                if n < 0:
                    stats["refused"] += 1
                    continue
                stats["supers_read"] += data[1] != 0
                stats["segments"] += n
                dst = peer[fd]
                for out in coalesce(slots.packets(n), udp=dst.uso):
                    stats["supers_written"] += out[1] != 0
                    os.write(dst.fd, out)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_tcp_through_a_userspace_wire_of_two_offload_tuns(tmp_path, v6: bool) -> None:
    """A TCP transfer between two namespaces whose only link is _wire: real TSO super-packets are read,
    segmented, coalesced and written; the bytes arrive intact."""
    import hashlib
    import socket
    import threading
    from collections import Counter

    with _kernel_lab(tmp_path) as lab:
        n1, n2 = lab.netns(), lab.netns()
        t1 = in_netns(n1, lambda: _vnet.open_vnet_tun("offa%d"))
        t2 = in_netns(n2, lambda: _vnet.open_vnet_tun("offb%d"))
        a1, a2 = ("fd77::1", "fd77::2") if v6 else ("10.77.0.1", "10.77.0.2")
        for ns, t, addr in ((n1, t1, a1), (n2, t2, a2)):
            ns.run(["ip", "addr", "add", f"{addr}/64" if v6 else f"{addr}/24", "dev", t.name]
                   + (["nodad"] if v6 else []))
            ns.run(["ip", "link", "set", t.name, "up"])
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        server = in_netns(n2, lambda: socket.socket(fam, socket.SOCK_STREAM))
        client = in_netns(n1, lambda: socket.socket(fam, socket.SOCK_STREAM))
        stop, stats = threading.Event(), Counter()
        wire = threading.Thread(target=_wire, args=(t1, t2, stop, stats))
        payload = os.urandom(8 << 20)
        received = hashlib.sha256()
        count = [0]
        try:
            server.bind((a2, 5201))
            server.listen(1)
            server.settimeout(20)
            wire.start()

            def serve() -> None:
                conn, _ = server.accept()
                conn.settimeout(20)
                with conn:
                    while chunk := conn.recv(1 << 20):
                        received.update(chunk)
                        count[0] += len(chunk)

            rx = threading.Thread(target=serve)
            rx.start()
            client.settimeout(20)
            client.connect((a2, 5201))
            client.sendall(payload)
            client.close()
            rx.join(timeout=30)
        finally:
            stop.set()
            wire.join(timeout=10)
            server.close()
            client.close()
            os.close(t1.fd)
            os.close(t2.fd)
        assert count[0] == len(payload) and received.digest() == hashlib.sha256(payload).digest()
        assert stats["refused"] == 0
        assert stats["supers_read"] > 0, "the kernel handed over no TSO super-packet"
        assert stats["supers_written"] > 0, "nothing was coalesced towards the receiving TUN"


def test_offload_probe_steps_down_on_refusal(monkeypatch) -> None:
    """An older kernel refuses unknown TUN_F_* bits with EINVAL: each refusal is a step down, never an error."""
    import errno

    O = _vnet.Offload
    tried: list[int] = []

    def ioctl(fd, req, arg):
        assert req == _vnet.TUNSETOFFLOAD
        tried.append(arg)
        if arg & (O.USO4 | O.TSO_ECN):           # a kernel before USO, without TSO_ECN
            raise OSError(errno.EINVAL, "Invalid argument")
        return 0

    monkeypatch.setattr(_vnet.fcntl, "ioctl", ioctl)
    assert _vnet.set_offloads(99) == O.CSUM | O.TSO4 | O.TSO6
    assert tried == [int(_vnet.OFFLOADS_ALL), int(O.CSUM | O.TSO4 | O.TSO6 | O.TSO_ECN), int(O.CSUM | O.TSO4 | O.TSO6)]
    assert _vnet.set_offloads(99, O.CSUM | O.TSO4) == O.CSUM | O.TSO4
    monkeypatch.setattr(_vnet.fcntl, "ioctl", lambda fd, req, arg: (_ for _ in ()).throw(OSError(errno.EINVAL, "")))
    assert _vnet.set_offloads(99) == O.NONE
    monkeypatch.setattr(_vnet.fcntl, "ioctl", lambda fd, req, arg: (_ for _ in ()).throw(OSError(errno.EBADF, "bad")))
    with pytest.raises(_vnet.TunError):
        _vnet.set_offloads(99)
