"""The embedding API end to end on the real core: two data planes (gateway A and B) facing each other.

What is checked: round trips by policy, grouping by SA within one batch, bypass/discard/no-policy verdicts,
acquire (rate limited), the RFC 4301 inbound policy check (POLICY_MISMATCH counted), NAT-T demux (IKE
marker, keepalive), lifetime and sequence-exhaustion events, and SA changes racing with traffic.
"""
from __future__ import annotations

import ipaddress
import os
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp import Direction, Lifetime, PacketBatch, Sa, SaParams, UdpEncap, Verdict, parse_suite
from esp.dataplane import Dataplane
from esp.events import ExpiryReason, SaAcquire, SaExpired
from esp.spd import Action, Policy, Selector

A_OUT, B_OUT = "192.0.2.1", "192.0.2.2"  # outer (public) addresses


def ipv4(src: str, dst: str, proto: int = 17, payload: bytes = b"", sport: int = 1000, dport: int = 2000) -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload if proto in (6, 17) else payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + l4


def ipv6(src: str, dst: str, payload: bytes = b"", sport: int = 1000, dport: int = 2000) -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), 17, 64, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + l4


def sa_pair(spi: int, src: str = A_OUT, dst: str = B_OUT, suite: str = "aes128gcm16", encap: bool = True,
            lifetime: Lifetime = Lifetime(), initial_seq: int = 0) -> tuple[Sa, Sa]:
    s = parse_suite(suite)
    key, ikey = os.urandom(s.enc_keymat_len), os.urandom(s.integ_key_len)
    enc = UdpEncap(4500, 4500) if encap else None
    out = Sa(SaParams(spi=spi, direction=Direction.OUT, suite=s, enc_key=key, integ_key=ikey, src=src, dst=dst,
                      encap=enc, lifetime=lifetime), initial_seq=initial_seq)
    inn = Sa(SaParams(spi=spi, direction=Direction.IN, suite=s, enc_key=key, integ_key=ikey, dst=dst, encap=enc))
    return out, inn


SITE_A, SITE_B = "10.0.0.0/24", "10.1.0.0/24"
V6_A, V6_B = "2001:db8:a::/48", "2001:db8:b::/48"


def gateways() -> tuple[Dataplane, Dataplane]:
    """A protects SITE_A<->SITE_B and V6_A<->V6_B; B is its mirror. One SA pair per policy and direction."""
    a, b = Dataplane(acquire_interval=10.0), Dataplane(acquire_interval=10.0)
    a.add_policy(Policy("ssh", Selector(SITE_A, SITE_B, "tcp", dport=22), "bypass"))
    a.add_policy(Policy("blocked", Selector(dst="10.1.0.66"), "discard"))
    a.add_policy(Policy("site", Selector(SITE_A, SITE_B)))
    a.add_policy(Policy("v6", Selector(V6_A, V6_B)))
    b.add_policy(Policy("site", Selector(SITE_B, SITE_A)))
    b.add_policy(Policy("v6", Selector(V6_B, V6_A)))
    for name, spi in (("site", 0x1000), ("v6", 0x2000)):
        o, i = sa_pair(spi)
        a.install_sa(o, name)
        b.install_sa(i, name)
        o, i = sa_pair(spi + 1, B_OUT, A_OUT)
        b.install_sa(o, name)
        a.install_sa(i, name)
    return a, b


def deliver(out: PacketBatch, verdicts: np.ndarray) -> PacketBatch:
    return PacketBatch.from_packets([out.packet(int(i)) for i in np.flatnonzero(verdicts == Verdict.OK)])


def test_round_trip_policies_bypass_discard_and_grouping():
    a, b = gateways()
    pkts = [
        ipv4("10.0.0.1", "10.1.0.9", payload=b"one"),
        ipv6("2001:db8:a::1", "2001:db8:b::1", payload=b"six"),
        ipv4("10.0.0.1", "10.1.0.9", 6, payload=b"ssh", dport=22),  # bypass
        ipv4("10.0.0.2", "10.1.0.66", payload=b"x"),  # discard policy
        ipv4("172.16.0.1", "10.1.0.9", payload=b"y"),  # no policy: discarded
        b"\x45\x00\x00",  # malformed
        ipv4("10.0.0.3", "10.1.0.10", payload=b"two" * 100),
        ipv6("2001:db8:a::2", "2001:db8:b::2", payload=b"six2"),
    ]
    batch = PacketBatch.from_packets(pkts)
    out = PacketBatch.empty(len(pkts), 2048)
    v = a.outbound(batch, out)
    assert v.tolist() == [Verdict.OK, Verdict.OK, Verdict.BYPASSED, Verdict.DISCARDED, Verdict.DISCARDED,
                          Verdict.MALFORMED, Verdict.OK, Verdict.OK]
    assert out.status.tolist()[:8] == v.tolist()
    # packets were grouped by SA: the v4 ones under SPI 0x1000, the v6 ones under 0x2000, seqs 1, 2 each
    spis = [struct.unpack("!II", out.packet(i)[28:36]) for i in (0, 1, 6, 7)]
    assert spis == [(0x1000, 1), (0x2000, 1), (0x1000, 2), (0x2000, 2)]
    rx = deliver(out, v)
    inner = PacketBatch.empty(rx.count, 2048)
    vb = b.inbound(rx, inner)
    assert vb.tolist() == [Verdict.OK] * 4
    assert [inner.packet(i) for i in range(4)] == [pkts[0], pkts[1], pkts[6], pkts[7]]
    c = a.counters()
    assert c.outbound["OK"] == 4 and c.outbound["BYPASSED"] == 1 and c.outbound["DISCARDED"] == 2
    assert c.outbound["MALFORMED"] == 1
    assert b.counters().inbound["OK"] == 4
    # and back: B -> A
    back = PacketBatch.from_packets([ipv4("10.1.0.9", "10.0.0.1", payload=b"reply")])
    vo = b.outbound(back)
    assert vo.tolist() == [Verdict.OK]


def test_outbound_allocates_output_when_not_given():
    a, b = gateways()
    v = a.outbound(PacketBatch.from_packets([ipv4("10.0.0.1", "10.1.0.1", payload=b"z" * 1400)]))
    assert v.tolist() == [Verdict.OK]


def test_no_sa_raises_rate_limited_acquire():
    dp = Dataplane(acquire_interval=5.0)
    dp.add_policy(Policy("on-demand", Selector(SITE_A, SITE_B)))
    batch = PacketBatch.from_packets([ipv4("10.0.0.1", "10.1.0.1", 6, sport=4000, dport=443)] * 3)
    assert dp.outbound(batch, now=100.0).tolist() == [Verdict.NO_SA] * 3
    ev = dp.next_event()
    assert ev == SaAcquire("on-demand", "10.0.0.1", "10.1.0.1", 6, 4000, 443)
    assert dp.next_event() is None
    dp.outbound(batch, now=102.0)  # within the interval: no second acquire
    assert dp.next_event() is None
    dp.outbound(batch, now=106.0)
    assert isinstance(dp.next_event(), SaAcquire)
    assert dp.counters().acquires == 2 and dp.counters().outbound["NO_SA"] == 9
    # SAs can only serve PROTECT policies, and only policies that exist
    dp.add_policy(Policy("pass", Selector(dst="192.0.2.0/24"), Action.BYPASS))
    o, _ = sa_pair(0x5000)
    with pytest.raises(ValueError):
        dp.install_sa(o, "pass")
    with pytest.raises(KeyError):
        dp.install_sa(o, "nope")


def test_inbound_policy_check_failures_are_counted():
    """B's SA was negotiated for 10.0.0.0/24 -> 10.1.0.0/24 only; A's policy (misconfigured, or a
    malicious peer) sends 10.9.0.0/16 traffic through it: decrypted fine, then refused."""
    a, b = Dataplane(), Dataplane()
    a.add_policy(Policy("wide", Selector("10.0.0.0/8", "10.1.0.0/24")))
    b.add_policy(Policy("narrow", Selector(SITE_B, SITE_A)))
    o, i = sa_pair(0x6000)
    a.install_sa(o, "wide")
    b.install_sa(i, "narrow")
    pkts = [ipv4("10.0.0.5", "10.1.0.5", payload=b"ok"), ipv4("10.9.0.5", "10.1.0.5", payload=b"bad"),
            ipv4("10.0.0.6", "10.1.0.6", payload=b"ok2")]
    out = PacketBatch.empty(3, 2048)
    assert a.outbound(PacketBatch.from_packets(pkts), out).tolist() == [Verdict.OK] * 3
    v = b.inbound(deliver(out, np.zeros(3, np.uint8)))
    assert v.tolist() == [Verdict.OK, Verdict.POLICY_MISMATCH, Verdict.OK]
    assert b.counters().inbound["POLICY_MISMATCH"] == 1
    # negotiated traffic selectors narrower than the policy are honoured when given at install time
    b2 = Dataplane()
    b2.add_policy(Policy("narrow", Selector(SITE_B, SITE_A)))
    o2, i2 = sa_pair(0x6001)
    b2.install_sa(i2, "narrow", selectors=[Selector("10.1.0.5/32", "10.0.0.5/32")])
    out2 = PacketBatch.empty(3, 2048)
    a2 = Dataplane()
    a2.add_policy(Policy("wide", Selector("10.0.0.0/8", "10.1.0.0/24")))
    a2.install_sa(o2, "wide")
    a2.outbound(PacketBatch.from_packets(pkts), out2)
    assert b2.inbound(deliver(out2, np.zeros(3, np.uint8))).tolist() == [
        Verdict.OK, Verdict.POLICY_MISMATCH, Verdict.POLICY_MISMATCH]


def test_inbound_unknown_spi_tamper_ike_marker_and_keepalive():
    a, b = gateways()
    out = PacketBatch.empty(1, 2048)
    a.outbound(PacketBatch.from_packets([ipv4("10.0.0.1", "10.1.0.1", payload=b"p")]), out)
    good = out.packet(0)
    wrong_spi = good[:28] + struct.pack("!I", 0xDEAD) + good[32:]
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    udp_hdr = struct.pack("!HHHH", 4500, 4500, 8 + 12, 0)
    ike = ipv4(B_OUT, A_OUT, 17, b"")[:20]
    ike = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 12, 0, 0, 64, 17, 0,
                      ipaddress.IPv4Address(A_OUT).packed, ipaddress.IPv4Address(B_OUT).packed)
    ike_pkt = ike + udp_hdr + b"\0\0\0\0" + b"IKEmessage"[:8]
    ka_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 29, 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(A_OUT).packed, ipaddress.IPv4Address(B_OUT).packed)
    keepalive = ka_hdr + struct.pack("!HHHH", 4500, 4500, 9, 0) + b"\xff"
    v = b.inbound(PacketBatch.from_packets([wrong_spi, tampered, ike_pkt, keepalive, b"junk", good, good]))
    assert v.tolist() == [Verdict.NO_SA, Verdict.AUTH_FAILED, Verdict.BYPASSED, Verdict.DISCARDED,
                          Verdict.MALFORMED, Verdict.OK, Verdict.REPLAYED]


def test_raw_esp_and_ipv6_outer():
    a, b = Dataplane(), Dataplane()
    a.add_policy(Policy("p", Selector(SITE_A, SITE_B)))
    b.add_policy(Policy("p", Selector(SITE_B, SITE_A)))
    o, i = sa_pair(0x7000, "2001:db8::1", "2001:db8::2", encap=False, suite="aes256-sha256")
    a.install_sa(o, "p")
    b.install_sa(i, "p")
    pkt = ipv4("10.0.0.1", "10.1.0.1", payload=b"v4 over v6")
    out = PacketBatch.empty(1, 2048)
    assert a.outbound(PacketBatch.from_packets([pkt]), out).tolist() == [Verdict.OK]
    assert out.packet(0)[6] == 50  # IPv6 next header ESP
    inner = PacketBatch.empty(1, 2048)
    assert b.inbound(PacketBatch.from_packets([out.packet(0)]), inner).tolist() == [Verdict.OK]
    assert inner.packet(0) == pkt


def test_lifetime_and_sequence_exhaustion_events():
    seen = []
    a = Dataplane(on_event=seen.append)
    a.add_policy(Policy("p", Selector(SITE_A, SITE_B)))
    o, _ = sa_pair(0x8000, lifetime=Lifetime(soft_packets=2, hard_packets=4))
    a.install_sa(o, "p")
    batch = PacketBatch.from_packets([ipv4("10.0.0.1", "10.1.0.1", payload=b"x")] * 3)
    assert a.outbound(batch).tolist() == [Verdict.OK] * 3
    assert a.next_event() == SaExpired(0x8000, False, "out", ExpiryReason.PACKETS, "p")
    assert a.next_event() is None
    v = a.outbound(batch)
    assert v.tolist() == [Verdict.OK, Verdict.EXPIRED, Verdict.EXPIRED]
    assert a.next_event() == SaExpired(0x8000, True, "out", ExpiryReason.PACKETS, "p")
    a.outbound(batch)
    assert a.next_event() is None  # signalled once per level
    assert [e.hard for e in seen] == [False, True]
    # sequence exhaustion (32-bit, no ESN): the last number is 2^32-1
    b = Dataplane()
    b.add_policy(Policy("p", Selector(SITE_A, SITE_B)))
    o, _ = sa_pair(0x8001, initial_seq=(1 << 32) - 2)
    b.install_sa(o, "p")
    v = b.outbound(PacketBatch.from_packets([ipv4("10.0.0.1", "10.1.0.1")] * 2))
    assert v.tolist() == [Verdict.OK, Verdict.SEQ_EXHAUSTED]
    evs = [b.next_event(), b.next_event()]
    assert evs[1] == SaExpired(0x8001, True, "out", ExpiryReason.SEQUENCE, "p")
    # removing the SA forgets the signal state; a new SA starts fresh
    b.remove_sa(0x8001, "out")
    assert b.outbound(PacketBatch.from_packets([ipv4("10.0.0.1", "10.1.0.1")])).tolist() == [Verdict.NO_SA]


def test_sa_removed_or_rekeyed_during_a_batch_does_not_affect_that_batch():
    """Simulate IKE changing tables at the worst moment: inside the core call of a batch."""
    a, b = gateways()
    pkts = [ipv4("10.0.0.1", "10.1.0.1", payload=b"a"), ipv6("2001:db8:a::1", "2001:db8:b::1", payload=b"b")] * 4
    out = PacketBatch.empty(len(pkts), 2048)
    a.outbound(PacketBatch.from_packets(pkts), out)
    rx = deliver(out, np.zeros(len(pkts), np.uint8))
    site_in = b.sad.snapshot.inbound_by_spi[0x1000].sa
    real = site_in.decrypt_batch

    def racing(src, dst, select=None):
        b.remove_sa(0x1000, "in")  # both SAs of the batch vanish mid-batch
        b.remove_sa(0x2000, "in")
        return real(src, dst, select)

    site_in.decrypt_batch = racing
    assert b.inbound(rx).tolist() == [Verdict.OK] * len(pkts)
    assert b.inbound(rx).tolist() == [Verdict.NO_SA] * len(pkts)  # the next batch sees the removal
    # outbound: rekey mid-batch; this batch stays on the old SA, the next one uses the new SA
    o_new, _ = sa_pair(0x1100)
    site_out = a.sad.snapshot.outbound["site"].sa
    real_enc = site_out.encrypt_batch

    def racing_enc(src, dst, select=None):
        a.rekey_sa(0x1000, o_new)
        return real_enc(src, dst, select)

    site_out.encrypt_batch = racing_enc
    out = PacketBatch.empty(2, 2048)
    a.outbound(PacketBatch.from_packets([pkts[0]] * 2), out)
    assert struct.unpack("!I", out.packet(0)[28:32])[0] == 0x1000
    a.outbound(PacketBatch.from_packets([pkts[0]] * 2), out)
    assert struct.unpack("!I", out.packet(0)[28:32])[0] == 0x1100


@pytest.mark.slow
def test_sa_replacement_under_traffic_loses_nothing():
    """One thread pushes batches A -> B; another rekeys the site SA repeatedly the way IKE does (new inbound
    at B, then A's outbound moves, then B's old inbound goes once a later batch has passed), and adds and
    removes an unrelated SA. Every packet must arrive, intact and in its own SA's order."""
    a, b = gateways()
    stop = threading.Event()
    done_batches = [0]
    results = {"sent": 0, "ok": 0, "bad": []}
    deadline = time.monotonic() + 20

    def traffic():
        rng = np.random.default_rng(1)
        n = 0
        while not stop.is_set() and n < 3000 and time.monotonic() < deadline:
            pkts = [ipv4("10.0.0.%d" % (k % 200 + 1), "10.1.0.7", payload=struct.pack("!II", n, k))
                    for k in range(int(rng.integers(1, 48)))]
            pkts += [ipv6("2001:db8:a::1", "2001:db8:b::1", payload=struct.pack("!I", n))]
            src = PacketBatch.from_packets(pkts)
            out = PacketBatch.empty(src.count, 2048)
            v = a.outbound(src, out)
            if not (v == Verdict.OK).all():
                results["bad"].append(("out", n, v.tolist()))
            rx = deliver(out, v)
            inner = PacketBatch.empty(rx.count, 2048)
            vi = b.inbound(rx, inner)
            results["sent"] += src.count
            results["ok"] += int((vi == Verdict.OK).sum())
            if not (vi == Verdict.OK).all() or inner.packets() != pkts:
                results["bad"].append(("in", n, vi.tolist()))
            n += 1
            done_batches[0] = n

    def wait_batches(k: int) -> None:
        target = done_batches[0] + k
        t_end = time.monotonic() + 5
        while done_batches[0] < target and time.monotonic() < t_end and not stop.is_set():
            time.sleep(0.0005)

    t = threading.Thread(target=traffic)
    t.start()
    spi = 0x1000
    rekeys = 0
    try:
        for r in range(1, 31):
            if not t.is_alive():
                break
            new_spi = 0x10000 + r
            o, i = sa_pair(new_spi)
            b.install_sa(i, "site")          # 1. new inbound first (responder installs both)
            wait_batches(1)
            a.rekey_sa(spi, o)               # 2. outbound moves to the new SA
            a.remove_sa(spi, "out")
            wait_batches(2)                  # 3. DELETE exchange: old inbound removed after traffic moved
            b.remove_sa(spi, "in")
            spi = new_spi
            rekeys += 1
            # unrelated churn: an SA for a policy that carries no traffic here
            x = 0x90000 + r
            xo, xi = sa_pair(x)
            b.install_sa(xi, "v6")
            b.remove_sa(x, "in")
    finally:
        wait_batches(3)
        stop.set()
        t.join(30)
    assert not t.is_alive()
    assert rekeys >= 5 and done_batches[0] > rekeys
    assert results["bad"] == []
    assert results["ok"] == results["sent"] > 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(
    st.binary(min_size=0, max_size=80),
    st.builds(lambda spi, body, udp: (struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + (8 if udp else 0) + 4 + len(body),
                                                  0, 0, 64, 17 if udp else 50, 0, b"\1\1\1\1", b"\2\2\2\2")
                                      + (struct.pack("!HHHH", 4500, 4500, 12 + len(body), 0) if udp else b"")
                                      + struct.pack("!I", spi) + body),
              st.sampled_from([0, 1, 0x1000, 0xFFFFFFFF]), st.binary(min_size=0, max_size=20), st.booleans())),
    min_size=1, max_size=16))
def test_compiled_demux_agrees_with_numpy_reference(pkts):
    from esp import dataplane

    batch = PacketBatch.from_packets(pkts)
    if batch.buf.size == 0:
        return
    fast = dataplane._demux(batch, batch.count)
    saved, dataplane._compiled = dataplane._compiled, None
    try:
        slow = dataplane._demux(batch, batch.count)
    finally:
        dataplane._compiled = saved
    assert fast[1].tolist() == slow[1].tolist()
    assert fast[0][fast[1] == 0].tolist() == slow[0][slow[1] == 0].tolist()


def test_packets_a_compiled_loop_encrypted_are_counted_and_raise_the_same_events():
    """A compiled loop (esp.gateway._loop) drives the SA contexts itself and hands the data plane only the
    verdict counts: counters and expiry events must come out as Dataplane.outbound's would."""
    seen = []
    a = Dataplane(on_event=seen.append)
    a.add_policy(Policy("p", Selector(SITE_A, SITE_B)))
    o, _ = sa_pair(0x8100, lifetime=Lifetime(soft_packets=2, hard_packets=4))
    a.install_sa(o, "p")
    counts = np.zeros(32, np.int64)
    for _ in range(3):  # what the loop does: the SA's context, one packet at a time
        v, _ = o.context.process_one(ipv4("10.0.0.1", "10.1.0.1", payload=b"x"))
        counts[int(v)] += 1
    a.note_outbound(counts)
    assert a.counters().outbound["OK"] == 3
    assert seen == [SaExpired(0x8100, False, "out", ExpiryReason.PACKETS, "p")]
    a.note_outbound(np.zeros(32, np.int64))
    assert len(seen) == 1  # signalled once per level
    b = Dataplane(on_event=seen.append)
    b.add_policy(Policy("p", Selector(SITE_A, SITE_B)))
    o, _ = sa_pair(0x8101, initial_seq=(1 << 32) - 2)
    b.install_sa(o, "p")
    counts[:] = 0
    for _ in range(2):
        v, _ = o.context.process_one(ipv4("10.0.0.1", "10.1.0.1"))
        counts[int(v)] += 1
    b.note_outbound(counts)
    assert b.counters().outbound["SEQ_EXHAUSTED"] == 1
    assert seen[-1] == SaExpired(0x8101, True, "out", ExpiryReason.SEQUENCE, "p")
