"""SPD semantics: selector parsing, vectorised header parsing, first-match ordering, actions, snapshots."""
from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp.spd import NO_MATCH, OPAQUE_PORT, UNPARSEABLE, Action, Policy, Selector, Spd, parse_headers


def ipv4(src: str, dst: str, proto: int = 17, l4: bytes = b"", frag: int = 0) -> bytes:
    total = 20 + len(l4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return hdr + l4


def ipv6(src: str, dst: str, nh: int = 17, l4: bytes = b"") -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), nh, 64, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + l4


def ports(sport: int, dport: int, rest: bytes = b"\0" * 4) -> bytes:
    return struct.pack("!HH", sport, dport) + rest


def arena(pkts: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ln = np.array([len(p) for p in pkts], np.int32)
    off = np.concatenate([[0], np.cumsum(ln, dtype=np.int64)[:-1]]).astype(np.int64)
    return np.frombuffer(b"".join(pkts), np.uint8).copy(), off, ln


def classify(spd: Spd, pkts: list[bytes]) -> list[int]:
    return spd.snapshot.classify(*arena(pkts))[0].tolist()


# ---------------------------------------------------------------- selectors
def test_selector_parsing_and_errors():
    s = Selector("10.0.0.0/24", "10.1.0.5", "tcp", sport=None, dport="80-90")
    assert s.version == 4 and s.proto == 6 and s.dport == (80, 90) and s.sport == (0, 65535)
    assert s.dst == ipaddress.ip_network("10.1.0.5/32")
    assert s.reversed() == Selector("10.1.0.5/32", "10.0.0.0/24", 6, sport=(80, 90))
    assert "10.0.0.0/24 -> 10.1.0.5/32[80-90] proto 6" == str(s)
    for bad, exc in [
        (dict(src="10.0.0.0/8", dst="2001:db8::/32"), ValueError),
        (dict(src="10.0.0.300"), ValueError),
        (dict(proto="gre-ish"), ValueError),
        (dict(proto=300), ValueError),
        (dict(dport=(90, 80)), ValueError),
        (dict(sport=70000), ValueError),
        (dict(dport="x-y"), ValueError),
        (dict(src=12), TypeError),
    ]:
        with pytest.raises(exc):
            Selector(**bad)


def test_policy_validation():
    with pytest.raises(ValueError):
        Policy("", Selector())
    with pytest.raises(TypeError):
        Policy("x", ["10.0.0.0/8"])
    assert Policy("x", Selector(), "bypass").action is Action.BYPASS
    with pytest.raises(ValueError):
        Spd([Policy("a", Selector()), Policy("a", Selector())])


# ---------------------------------------------------------------- header parsing
def test_parse_headers_v4_v6_icmp_fragments_and_garbage():
    pkts = [
        ipv4("10.0.0.1", "10.1.0.5", 6, ports(1234, 80, b"\0" * 16)),
        ipv6("2001:db8::1", "2001:db8:1::2", 17, ports(53, 5353)),
        ipv4("10.0.0.1", "10.1.0.5", 1, b"\x08\x00\0\0\0\0\0\0"),  # echo request: type 8 code 0
        b"\x45\x00",  # truncated
        ipv4("1.2.3.4", "5.6.7.8", 17, ports(1, 2), frag=10),  # non-initial fragment
        # IPv6 with a hop-by-hop header (8 bytes, next header TCP), then TCP ports
        ipv6("::1", "::2", 0, bytes([6, 0]) + b"\0" * 6 + ports(22, 2222, b"\0" * 16)),
        # IPv6 non-initial fragment
        ipv6("::1", "::2", 44, bytes([17, 0]) + struct.pack("!H", 8 << 3) + b"\0\0\0\1" + ports(1, 2)),
        b"\x20" + b"\0" * 40,  # version 2
        ipv4("9.9.9.9", "8.8.8.8", 50, b"\0\0\0\1"),  # ESP: no ports
    ]
    h = parse_headers(*arena(pkts))
    assert h.ok.tolist() == [True, True, True, False, True, True, True, False, True]
    assert h.version.tolist() == [4, 6, 4, 0, 4, 6, 6, 0, 4]
    assert h.proto.tolist()[:3] == [6, 17, 1] and h.proto[5] == 6 and h.proto[6] == 17
    assert h.sport.tolist() == [1234, 53, 8, OPAQUE_PORT, OPAQUE_PORT, 22, OPAQUE_PORT, OPAQUE_PORT, OPAQUE_PORT]
    assert h.dport.tolist() == [80, 5353, 0, OPAQUE_PORT, OPAQUE_PORT, 2222, OPAQUE_PORT, OPAQUE_PORT, OPAQUE_PORT]
    assert int(h.src_lo[0]) == int(ipaddress.IPv4Address("10.0.0.1"))
    v6 = int(ipaddress.IPv6Address("2001:db8:1::2"))
    assert (int(h.dst_hi[1]) << 64 | int(h.dst_lo[1])) == v6


def test_parse_headers_empty_and_all_garbage():
    h = parse_headers(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int32))
    assert len(h.ok) == 0
    buf = np.frombuffer(b"\xff" * 10, np.uint8)
    h = parse_headers(buf, np.array([0, 5], np.int64), np.array([5, 5], np.int32))
    assert not h.ok.any()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=20))
def test_parse_headers_never_crashes_on_random_bytes(pkts):
    buf, off, ln = arena(pkts)
    if len(buf) == 0:
        return
    h = parse_headers(buf, off, ln)
    assert len(h.ok) == len(pkts)
    spd = Spd([Policy("p", Selector("10.0.0.0/8", proto="tcp", dport=80))])
    idx = spd.snapshot.classify_headers(h)
    assert set(idx.tolist()) <= {0, NO_MATCH, UNPARSEABLE}


@settings(max_examples=100, deadline=None)
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535),
       st.integers(0, 32), st.integers(0, 32))
def test_vectorised_match_agrees_with_ipaddress(src, dst, sp, dp, slen, dlen):
    """The numpy prefix/port match gives the same answer as ipaddress for random packets and prefixes."""
    snet = ipaddress.ip_network(f"{src}/{slen}", strict=False)
    dnet = ipaddress.ip_network(f"{dst}/{max(dlen - 1, 0)}", strict=False)
    probe = ipaddress.IPv4Address(int(dst) ^ 1)
    spd = Spd([Policy("p", Selector(snet, dnet, "udp", sport=sp, dport=(dp // 2, dp)))])
    pkts = [ipv4(str(src), str(dst), 17, ports(sp, dp)), ipv4(str(src), str(probe), 17, ports(sp, dp))]
    got = classify(spd, pkts)
    assert got == [0 if (dst in dnet) else NO_MATCH, 0 if (probe in dnet) else NO_MATCH]


# ---------------------------------------------------------------- ordering and actions
def test_first_match_wins_in_order():
    spd = Spd([
        Policy("ssh-bypass", Selector("10.0.0.0/24", "10.1.0.0/16", "tcp", dport=22), "bypass"),
        Policy("block-host", Selector(dst="10.1.0.66"), "discard"),
        Policy("site", Selector("10.0.0.0/24", "10.1.0.0/16")),
        Policy("v6", Selector("2001:db8::/48", "2001:db8:1::/48")),
        Policy("icmp-any", Selector(proto="icmp"), "bypass"),
    ])
    pkts = [
        ipv4("10.0.0.1", "10.1.2.3", 6, ports(5555, 22)),   # bypass before site
        ipv4("10.0.0.1", "10.1.0.66", 6, ports(5555, 22)),  # ssh-bypass first (ordering)
        ipv4("10.0.0.1", "10.1.0.66", 6, ports(5555, 80)),  # block-host before site
        ipv4("10.0.0.1", "10.1.9.9", 6, ports(5555, 80)),   # site
        ipv4("10.0.0.1", "10.1.9.9", 1, b"\x08\0\0\0"),     # site (before icmp-any)
        ipv4("10.9.0.1", "10.1.9.9", 1, b"\x08\0\0\0"),     # icmp-any
        ipv6("2001:db8::5", "2001:db8:1::7", 6, ports(1, 2)),
        ipv6("2001:db8::5", "2001:db8:2::7", 6, ports(1, 2)),  # no match
        b"\x00",
    ]
    assert classify(spd, pkts) == [0, 0, 1, 2, 2, 4, 3, NO_MATCH, UNPARSEABLE]
    # moving a policy changes the result: insert a discard in front
    spd.add(Policy("front", Selector("10.0.0.0/24"), "discard"), index=0)
    assert classify(spd, pkts)[:4] == [0, 0, 0, 0]
    snap = spd.snapshot
    assert snap.actions_of(np.array([0, 3, -1, -2])).tolist() == [Action.DISCARD, Action.PROTECT, -1, -1]


def test_any_family_and_opaque_ports():
    spd = Spd([
        Policy("ports", Selector(proto="udp", dport=(1000, 2000))),
        Policy("catch", Selector()),
    ])
    pkts = [
        ipv4("1.1.1.1", "2.2.2.2", 17, ports(1, 1500)),
        ipv6("::1", "::2", 17, ports(1, 1500)),
        ipv4("1.1.1.1", "2.2.2.2", 17, ports(1, 1500), frag=3),  # non-initial fragment: OPAQUE
    ]
    assert classify(spd, pkts) == [0, 0, 1]


def test_multiple_selectors_per_policy():
    spd = Spd([Policy("two", [Selector(dst="10.1.0.0/16"), Selector(dst="2001:db8::/32")])])
    pkts = [ipv4("1.1.1.1", "10.1.1.1"), ipv6("::1", "2001:db8::9"), ipv4("1.1.1.1", "10.2.1.1")]
    assert classify(spd, pkts) == [0, 0, NO_MATCH]


def test_snapshot_is_immutable_while_spd_changes():
    spd = Spd([Policy("a", Selector(dst="10.0.0.0/8"))])
    snap = spd.snapshot
    spd.add(Policy("b", Selector(dst="10.1.0.0/16")), index=0)
    spd.replace(Policy("a", Selector(dst="11.0.0.0/8"), "discard"))
    assert [p.name for p in snap.policies] == ["a"] and snap.version == 0
    assert [p.name for p in spd.policies] == ["b", "a"] and spd.snapshot.version == 2
    assert spd.get("a").action is Action.DISCARD
    assert spd.remove("b").name == "b"
    with pytest.raises(KeyError):
        spd.remove("b")
    with pytest.raises(KeyError):
        spd.replace(Policy("zz", Selector()))
    with pytest.raises(ValueError):
        spd.add(Policy("a", Selector()))


# ---------------------------------------------------------------- compiled twin == numpy reference
try:
    from esp import _classify
except ImportError:  # pragma: no cover - setup.py builds it; the tests below then skip (or fail under CI)
    _classify = None


def _need_classify() -> None:
    from tests.support import require

    require(_classify is not None, "esp._classify is not built (python setup.py build_ext --inplace)")

_NETS4 = st.builds(lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False), st.ip_addresses(v=4),
                   st.integers(0, 32))
_NETS6 = st.builds(lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False), st.ip_addresses(v=6),
                   st.integers(0, 128))
_PORTS = st.one_of(st.none(), st.integers(0, 65535).flatmap(lambda lo: st.tuples(st.just(lo),
                                                                                  st.integers(lo, 65535))))


@st.composite
def selectors(draw):
    fam = draw(st.sampled_from([None, 4, 6]))
    nets = {None: st.none(), 4: st.one_of(st.none(), _NETS4), 6: st.one_of(st.none(), _NETS6)}[fam]
    return Selector(draw(nets), draw(nets), draw(st.sampled_from([0, 1, 6, 17, 58, 50])), draw(_PORTS), draw(_PORTS))


@st.composite
def packets(draw):
    kind = draw(st.sampled_from(["v4", "v6", "v6ext", "junk"]))
    proto = draw(st.sampled_from([1, 6, 17, 50, 58, 132]))
    l4 = draw(st.binary(min_size=0, max_size=12))
    if kind == "v4":
        return ipv4(str(draw(st.ip_addresses(v=4))), str(draw(st.ip_addresses(v=4))), proto, l4,
                    frag=draw(st.sampled_from([0, 0, 0x4000, 5])))
    if kind == "v6":
        return ipv6(str(draw(st.ip_addresses(v=6))), str(draw(st.ip_addresses(v=6))), proto, l4)
    if kind == "v6ext":
        ext = draw(st.sampled_from([0, 43, 60, 44, 51]))
        hdr = bytes([proto, draw(st.integers(0, 2))]) + draw(st.binary(min_size=6, max_size=6))
        return ipv6(str(draw(st.ip_addresses(v=6))), str(draw(st.ip_addresses(v=6))), ext, hdr + l4)
    return draw(st.binary(min_size=0, max_size=60))


@settings(max_examples=120, deadline=None)
@given(st.lists(packets(), min_size=1, max_size=24), st.lists(selectors(), min_size=0, max_size=6))
def test_compiled_classifier_agrees_with_numpy_reference(pkts, sels):
    """esp._classify.classify (the data plane's path) gives exactly the numpy reference's answer."""
    _need_classify()
    pols = [Policy(f"p{i}", s) for i, s in enumerate(sels)]
    snap = Spd(pols).snapshot
    buf, off, ln = arena(pkts)
    if len(buf) == 0:
        return
    reference = snap.classify_headers(parse_headers(buf, off, ln)).tolist()
    assert snap.classify_batch(buf, off, ln, len(pkts)).tolist() == reference
    rows = np.arange(len(pkts), dtype=np.int32)[::-1].copy()
    out = np.empty(len(rows), np.int32)
    _classify.classify(buf, off, ln, snap._sel.table, out, rows)
    assert out.tolist() == reference[::-1]


def test_compiled_classifier_checks_its_arguments():
    _need_classify()
    snap = Spd([Policy("p", Selector())]).snapshot
    buf, off, ln = arena([ipv4("1.1.1.1", "2.2.2.2")])
    with pytest.raises(IndexError):
        _classify.classify(buf, off, ln, snap._sel.table, np.empty(1, np.int32), np.array([5], np.int32))
    with pytest.raises(ValueError):
        _classify.classify(buf, off, ln, snap._sel.table, np.empty(3, np.int32))
    with pytest.raises(ValueError):
        _classify.classify(buf, off, ln, np.zeros((1, 3), np.uint64), np.empty(1, np.int32))
    # offsets pointing outside the arena are unparseable, not a crash
    out = np.empty(1, np.int32)
    _classify.classify(buf, np.array([10 ** 9], np.int64), ln, snap._sel.table, out)
    assert out.tolist() == [UNPARSEABLE]
