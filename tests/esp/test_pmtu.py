"""esp.gateway.pmtu: the inner MTU against what the core really produces, ICMP errors and IPv4 fragmentation."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp import SUITES, UdpEncap
from esp.gateway.pmtu import IPV6_MIN_MTU, fragment_ipv4, max_inner, too_big_reply
from tests.esp.helpers import csum, ipv4, ipv6, sa_pair, udp

A4, B4 = bytes([10, 98, 1, 2]), bytes([10, 98, 2, 2])
A6, B6 = bytes.fromhex("fd980001" + "0" * 23 + "2"), bytes.fromhex("fd980002" + "0" * 23 + "2")


def inner_of_length(n: int, v6: bool = False) -> bytes:
    return ipv6(udp(bytes(n - 48))) if v6 else ipv4(udp(bytes(n - 28)))


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("outer6,encap", [(False, True), (False, False), (True, True)])
def test_max_inner_is_exactly_the_largest_packet_the_core_fits_in_the_outer_mtu(suite, outer6, encap):
    """The known answer is the core's own output length: max_inner fits, max_inner + 1..align does not."""
    out, _ = sa_pair(suite, v6=outer6, encap=UdpEncap(4500, 4500) if encap else None)
    outer = 1500
    m = max_inner(outer, SUITES[suite], 6 if outer6 else 4, encap)
    lengths = {len(out.encrypt(inner_of_length(n))) for n in range(m - 20, m + 1)}
    assert max(lengths) <= outer
    assert len(out.encrypt(inner_of_length(m))) + max(SUITES[suite].align, 4) > outer  # nothing larger fits
    assert any(len(out.encrypt(inner_of_length(m + k))) > outer for k in range(1, 17))


def test_gcm_in_udp_over_ipv4_carries_a_1428_byte_inner_datagram():
    assert max_inner(1500, SUITES["aes128gcm16"], 4, True) == 1438 >= 1428
    assert max_inner(1500, SUITES["aes128gcm16"], 6, True) == 1418


def _icmp4_ok(reply: bytes, orig: bytes, mtu: int) -> None:
    assert reply[0] == 0x45 and csum(reply[:20]) == 0 and reply[9] == 1
    assert struct.unpack("!H", reply[2:4])[0] == len(reply)
    assert reply[12:16] == orig[16:20] and reply[16:20] == orig[12:16]  # from the destination to the sender
    icmp = reply[20:]
    assert icmp[:2] == b"\x03\x04" and csum(icmp) == 0
    assert struct.unpack("!H", icmp[6:8])[0] == mtu
    assert icmp[8:] == orig[:len(icmp) - 8] and len(reply) <= 576


def test_icmp_fragmentation_needed_for_ipv4_with_df():
    pkt = bytearray(ipv4(udp(bytes(1472)), src=A4, dst=B4))
    pkt[6] = 0x40
    _icmp4_ok(too_big_reply(bytes(pkt), 1438), bytes(pkt), 1438)


def test_icmpv6_packet_too_big_checksum_over_the_pseudo_header():
    pkt = ipv6(udp(bytes(1452)), src=A6, dst=B6)
    reply = too_big_reply(pkt, 1418)
    assert reply[0] >> 4 == 6 and reply[6] == 58 and reply[8:24] == B6 and reply[24:40] == A6
    body = reply[40:]
    assert struct.unpack("!H", reply[4:6])[0] == len(body) and len(reply) <= IPV6_MIN_MTU
    assert body[:2] == b"\x02\x00" and struct.unpack("!I", body[4:8])[0] == 1418
    pseudo = B6 + A6 + struct.pack("!I3xB", len(body), 58)
    assert csum(pseudo + body) == 0
    assert body[8:] == pkt[:len(body) - 8]
    assert struct.unpack("!I", too_big_reply(pkt, 1000)[44:48])[0] == IPV6_MIN_MTU  # never below 1280


@pytest.mark.parametrize("pkt,why", [
    (ipv4(bytes([3, 4]) + bytes(1400), proto=1, src=A4, dst=B4), "an ICMP error"),
    (ipv6(bytes([1, 0]) + bytes(1400), nh=58, src=A6, dst=B6), "an ICMPv6 error"),
    (ipv4(udp(bytes(1400)), src=bytes([224, 0, 0, 1]), dst=B4), "a multicast source"),
    (ipv4(udp(bytes(1400)), src=bytes(4), dst=B4), "an unspecified source"),
    (bytes(19), "too short"),
    (b"\x50" + bytes(100), "not IP"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_no_error_is_sent_about_what_rfc_1122_and_4443_forbid(pkt, why):
    assert too_big_reply(pkt, 1400) is None, why


def test_no_error_about_a_later_fragment():
    pkt = bytearray(ipv4(udp(bytes(1400)), src=A4, dst=B4))
    pkt[6:8] = struct.pack("!H", 0x4000 | 100)
    assert too_big_reply(bytes(pkt), 1400) is None


def _reassemble(frags: list[bytes]) -> bytes:
    parts = {}
    for f in frags:
        ihl = (f[0] & 15) * 4
        assert csum(f[:ihl]) == 0 and struct.unpack("!H", f[2:4])[0] == len(f)
        parts[(struct.unpack("!H", f[6:8])[0] & 0x1FFF) * 8] = f[ihl:]
    data, pos = b"", 0
    for off in sorted(parts):
        assert off == pos
        data += parts[off]
        pos += len(parts[off])
    return data


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 4000), mtu=st.integers(68, 1500), opts=st.sampled_from([b"", b"\x94\x04\0\0", b"\x07\x07\x04" + bytes(4) + b"\x01"]))
def test_fragments_fit_and_reassemble_to_the_original(size, mtu, opts):
    payload = bytes(i & 0xFF for i in range(size))
    hl = 20 + len(opts)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | hl // 4, 0, hl + size, 7, 0, 64, 17, 0, A4, B4) + opts)
    hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))
    frags = fragment_ipv4(bytes(hdr) + payload, mtu)
    assert frags and all(len(f) <= mtu for f in frags)
    assert _reassemble(frags) == payload
    flags = [struct.unpack("!H", f[6:8])[0] & 0xE000 for f in frags]
    assert flags[-1] == 0 and all(x == 0x2000 for x in flags[:-1])
    assert all(f[4:6] == b"\x00\x07" and f[12:20] == A4 + B4 for f in frags)
    if len(frags) > 1 and opts == b"\x94\x04\0\0":  # router alert is "copied": in every fragment
        assert all(f[20:24] == opts for f in frags)
    if len(frags) > 1 and opts.startswith(b"\x07"):  # record route is not: first fragment only
        assert all((f[0] & 15) == 5 for f in frags[1:])


def test_df_or_malformed_is_not_fragmented():
    pkt = bytearray(ipv4(udp(bytes(1400)), src=A4, dst=B4))
    pkt[6] = 0x40
    assert fragment_ipv4(bytes(pkt), 576) == []
    assert fragment_ipv4(bytes(10), 576) == []
    assert fragment_ipv4(ipv6(udp(bytes(10))), 576) == []
    assert fragment_ipv4(ipv4(udp(bytes(100))), 20) == []


@settings(max_examples=300, deadline=None)
@given(pkt=st.binary(max_size=200), v=st.sampled_from([0x45, 0x46, 0x4F, 0x60]), mtu=st.integers(0, 70000))
def test_hostile_bytes_give_none_or_a_packet_never_an_exception(pkt, v, mtu):
    pkt = bytes([v]) + pkt
    r = too_big_reply(pkt, mtu)
    assert r is None or r[0] >> 4 in (4, 6)
    assert isinstance(fragment_ipv4(pkt, mtu), list)
