"""The daemon's IKEv1 side without sockets: two VersionDispatchers (IKEv2 dispatcher + IKEv1 manager) joined by a
pump that plays the network (and, optionally, a NAT). Routing by the version byte, retransmitted openings,
half-open limits and timeouts, retransmit give-up, keepalives behind a NAT, quick-mode lifetimes, rekeys,
DELETE, and a bounded fuzz: nothing a peer sends raises out of the core (ESPRESSO_FUZZ_EXAMPLES)."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.core_config import ChildConfig, CoreConfig, Identity, PeerConfig, TrafficSelector
from ike.errors import InvalidStateError
from ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    IkeSaEstablished,
    IkeSaTerminated,
)
from ike.v1.adapter import VersionDispatcher
from ike.v1.rekey import ISAKMP_DELETE_DELAY, SWITCH_DELAY
from ike.v1.message import Exchange, Payload, PayloadType, push_message

A, B = ("192.0.2.1", 500), ("198.51.100.2", 500)
PSK = b"v1-lab-secret-0123"


def _peer(name: str, me: str, them: str, local: str, remote_addr: str | None, lts: str, rts: str,
          **kw: object) -> PeerConfig:
    child = ChildConfig("net", (TrafficSelector.from_cidr(lts),), (TrafficSelector.from_cidr(rts),),
                        esp_proposals=("aes128-sha256-modp2048",), life_time=kw.pop("life_time", 3960.0))
    return PeerConfig(name, Identity("fqdn", me), Identity("fqdn", them), remote_addr=remote_addr, local_addr=local,
                      ike_proposals=("aes128-sha256-modp2048",), auth="psk", remote_auth="psk", psk=PSK,
                      children=(child,), version=1, **kw)  # type: ignore[arg-type]


def _pair(nat: bool = False, **kw: object) -> tuple[VersionDispatcher, VersionDispatcher]:
    a = VersionDispatcher(CoreConfig((_peer("b", "a.test", "b.test", A[0], B[0], "10.1.0.0/24", "10.2.0.0/24", **kw),),
                                     retransmit_timeout=1.0))
    b = VersionDispatcher(CoreConfig((_peer("a", "b.test", "a.test", B[0], None, "10.2.0.0/24", "10.1.0.0/24", **kw),),
                                     retransmit_timeout=1.0, half_open_limit_ip=2, half_open_timeout=5.0))
    return a, b


#: what the NAT in front of A maps A's ports to
NAT_OUT = {500: ("203.0.113.9", 61000), 4500: ("203.0.113.9", 61001)}


def _pump(a: VersionDispatcher, b: VersionDispatcher, now: float, nat: bool = False, rounds: int = 10) -> list:
    """Deliver datagrams both ways until quiet; A sits behind a NAT when ``nat``. Returns A's wire datagrams."""
    sent = []
    for _ in range(rounds):
        moved = False
        for dg in a.datagrams_to_send(now):
            moved = True
            sent.append(dg)
            src = NAT_OUT[dg.local_port] if nat else (A[0], dg.local_port)
            b.receive_datagram(dg.data, src, (B[0], dg.addr[1]), now)
        for dg in b.datagrams_to_send(now):
            moved = True
            if nat and (dg.addr[0], dg.addr[1]) in NAT_OUT.values():
                port = next(p for p, m in NAT_OUT.items() if m == tuple(dg.addr))
                a.receive_datagram(dg.data, (B[0], dg.local_port), (A[0], port), now)
            elif not nat:
                a.receive_datagram(dg.data, (B[0], dg.local_port), (A[0], dg.addr[1]), now)
        if not moved:
            break
    return sent


def _events(d: VersionDispatcher) -> list:
    out = []
    while (ev := d.next_event()) is not None:
        out.append(ev)
    return out


def test_ikev1_through_a_nat_floats_and_installs_encapsulated_sas():
    a, b = _pair()
    ike_id = a.initiate("b", 0.0)
    wire = _pump(a, b, 0.0, nat=True)
    ea, eb = _events(a), _events(b)
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaEstablished], ea
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaEstablished], eb  # INITIAL-CONTACT: the manager's
    ca, cb = ea[1], eb[1]
    assert ca.encap and cb.encap and (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert ca.local_addr == (A[0], 4500) and ca.remote_addr == (B[0], 4500)
    assert cb.remote_addr == NAT_OUT[4500] and cb.local_addr == (B[0], 4500)  # B answers the NAT's mapping
    assert ea[0].nat_local and not ea[0].nat_remote and eb[0].nat_remote and not eb[0].nat_fake
    # MM1-MM4 on port 500 without the marker, from MM5 on port 4500 with it (RFC 3947 4)
    assert [(d.local_port, d.marker) for d in wire[:2]] == [(500, False), (500, False)]
    assert all((d.local_port, d.marker) == (4500, True) for d in wire[2:])
    (info,) = a.list_sas()
    assert info.version == 1 and info.ike_id == ike_id and info.nat and info.children[0].encap
    # keepalives: A is behind the NAT, so it keeps the mapping alive from its NAT-T port, without marker
    t = a.get_timer()
    assert t is not None and t <= 20.0 + 0.01
    a.handle_timer(20.0)
    (ka,) = a.datagrams_to_send(20.0)
    assert (ka.data, ka.local_port, ka.marker) == (b"\xff", 4500, False)
    b.handle_timer(20.0)
    assert b.datagrams_to_send(20.0) == []  # B is not behind a NAT: no keepalives


def test_version_byte_routes_and_unknown_versions_are_counted():
    a, b = _pair()
    v2 = bytes(17) + b"\x20" + bytes(6) + (28).to_bytes(4, "big")
    b.receive_datagram(v2, A, B, 0.0)
    assert b.v2.stats["received"] + sum(v for k, v in b.v2.stats.items() if k.startswith("dropped")) >= 1
    b.receive_datagram(bytes(17) + b"\x30" + bytes(10), A, B, 0.0)
    assert b.stats["dropped_unknown_version"] == 1
    b.receive_datagram(os.urandom(8) + bytes(8) + b"\x01\x10\x05\x00" + bytes(4) + (28).to_bytes(4, "big"), A, B,
                       0.0)
    assert b.stats["v1_dropped_unknown_cookie"] == 1 and _events(b) == []


def test_a_retransmitted_opening_gets_the_same_answer_and_no_second_sa():
    a, b = _pair()
    a.initiate("b", 0.0)
    (mm1,) = a.datagrams_to_send(0.0)
    b.receive_datagram(mm1.data, A, B, 0.0)
    (mm2,) = b.datagrams_to_send(0.0)
    b.receive_datagram(mm1.data, A, B, 0.5)
    (again,) = b.datagrams_to_send(0.5)
    assert again.data == mm2.data and len(b.list_sas()) == 1


def test_half_open_limits_and_timeout():
    a, b = _pair()
    opens = []
    for _ in range(3):
        x = VersionDispatcher(a.config)
        x.initiate("b", 0.0)
        opens.append(x.datagrams_to_send(0.0)[0].data)
    for mm1 in opens:
        b.receive_datagram(mm1, A, B, 0.0)
    assert len(b.list_sas()) == 2 and b.stats["v1_dropped_half_open_limit"] == 1  # half_open_limit_ip = 2
    b.receive_datagram(opens[2], ("203.0.113.5", 500), B, 0.0)  # another address: its own budget (%any peer)
    assert len(b.list_sas()) == 3
    assert b.get_timer() == 5.0
    b.handle_timer(5.0)
    assert b.list_sas() == [] and all(isinstance(e, IkeSaTerminated) and e.reason == "half-open timeout"
                                      for e in _events(b))


def test_unanswered_initiator_gives_up_within_bounds():
    a, _ = _pair()
    a.initiate("b", 0.0)
    now, sends = 0.0, len(a.datagrams_to_send(0.0))
    for _ in range(20):
        t = a.get_timer()
        if t is None:
            break
        now = t
        a.handle_timer(now)
        sends += len(a.datagrams_to_send(now))
    evs = _events(a)
    assert [type(e) for e in evs] == [IkeSaTerminated] and evs[0].reason == "retransmit timeout"
    assert sends == 4 and a.list_sas() == [] and now < 30  # the opening and three retransmits


def _up(**kw: object) -> tuple[VersionDispatcher, VersionDispatcher, int, ChildSaEstablished, ChildSaEstablished]:
    a, b = _pair(**kw)
    ike_id = a.initiate("b", 0.0)
    _pump(a, b, 0.0)
    ca = next(e for e in _events(a) if isinstance(e, ChildSaEstablished))
    cb = next(e for e in _events(b) if isinstance(e, ChildSaEstablished))
    return a, b, ike_id, ca, cb


def _switch(a: VersionDispatcher, b: VersionDispatcher, now: float) -> None:
    """SWITCH_DELAY later: the rekeying side moves its outbound traffic to the new ESP SA, deletes the old one."""
    a.handle_timer(now + SWITCH_DELAY)
    b.handle_timer(now + SWITCH_DELAY)
    _pump(a, b, now + SWITCH_DELAY)


def _spis(d: VersionDispatcher) -> set[int]:
    return {c.spi_in for i in d.list_sas() for c in i.children}


def test_the_session_rekeys_before_the_quick_mode_lifetime_make_before_break():
    a, b, ike_id, ca, cb = _up(life_time=100.0)
    assert a.list_sas()[0].children[0].rekey_at == 90.0 and a.list_sas()[0].auth_method == "psk"
    assert a.get_timer() == 90.0
    a.handle_timer(90.0)
    _pump(a, b, 90.0)
    a.handle_timer(90.0 + SWITCH_DELAY)  # our outbound moves once the peer has surely installed the new SA
    _pump(a, b, 90.0 + SWITCH_DELAY)
    ea, eb = _events(a), _events(b)
    assert [type(e).__name__ for e in ea] == ["ChildSaEstablished", "ChildSaRekeyed", "ChildSaDeleted"], ea
    new = ea[0]
    assert new.replaces == ca.spi_in and new.child == "net" and ea[1].ike_id == ike_id
    assert ea[2].spi_in == ca.spi_in and ea[2].reason == "rekeyed"
    # the responder installs the new pair, then removes the old one on our DELETE
    assert [type(e).__name__ for e in eb] == ["ChildSaEstablished", "ChildSaRekeyed", "ChildSaDeleted"], eb
    assert eb[2].spi_in == cb.spi_in and eb[2].reason == "deleted by peer"
    assert _spis(a) == {new.spi_in} and _spis(b) == {new.spi_out}


def test_commands_reach_the_peer_rekey_soft_expiry_delete_and_terminate():
    a, b, ike_id, ca, cb = _up()
    b.child_sa_soft_expired(cb.spi_in, 0.5)  # b answered the quick mode: the peer rekeys, b waits
    assert b.datagrams_to_send(0.5) == [] and b.v1.stats["v1_soft_expiry_left_to_peer"] == 1
    with pytest.raises(InvalidStateError):
        a.rekey_child(0x1234, 1.0)
    a.child_sa_soft_expired(ca.spi_out, 1.0)  # esp's byte/packet soft limit: a rekey
    _pump(a, b, 1.0)
    _switch(a, b, 1.0)
    new = next(e for e in _events(a) if isinstance(e, ChildSaEstablished))
    assert new.replaces == ca.spi_in and _spis(a) == {new.spi_in}
    _events(b)
    a.rekey_child(new.spi_in, 2.0)
    _pump(a, b, 2.0)
    _switch(a, b, 2.0)
    newer = next(e for e in _events(a) if isinstance(e, ChildSaEstablished))
    _events(b)
    a.delete_child(newer.spi_in, 3.0)
    _pump(a, b, 3.0)
    assert [(type(e), e.reason) for e in _events(b)] == [(ChildSaDeleted, "deleted by peer")] and _spis(b) == set()
    a.rekey_ike(ike_id, 4.0)
    _pump(a, b, 4.0)
    assert "IkeSaRekeyed" in [type(e).__name__ for e in _events(a)]
    assert len(a.list_sas()) == 1 and a.list_sas()[0].ike_id == ike_id
    assert len(b.list_sas()) == 2  # the old ISAKMP SA's DELETE waits for the peer to move its ESP SAs
    a.handle_timer(4.0 + ISAKMP_DELETE_DELAY)
    _pump(a, b, 4.0 + ISAKMP_DELETE_DELAY)
    _events(b)
    assert len(b.list_sas()) == 1  # the old ISAKMP SA went on our DELETE
    a.terminate(ike_id, 5.0)
    _pump(a, b, 5.0)
    assert isinstance(_events(a)[-1], IkeSaTerminated) and a.list_sas() == []
    (gone,) = _events(b)
    assert isinstance(gone, IkeSaTerminated) and gone.reason == "deleted by peer" and b.list_sas() == []


def test_either_side_rekeys_and_the_main_mode_initiator_answers_a_peer_started_quick_mode():
    """charon rekeys an ESP SA with its own quick mode when its lifetime is shorter, also as main-mode responder:
    our initiator answers it, installs the new pair, and removes the old one on the peer's DELETE."""
    a, b, _, ca, cb = _up()
    b.rekey_child(cb.spi_in, 1.0)
    _pump(a, b, 1.0)
    _switch(a, b, 1.0)
    ea, eb = _events(a), _events(b)
    assert [type(e).__name__ for e in eb] == ["ChildSaEstablished", "ChildSaRekeyed", "ChildSaDeleted"], eb
    assert [type(e).__name__ for e in ea] == ["ChildSaEstablished", "ChildSaRekeyed", "ChildSaDeleted"], ea
    assert ea[0].replaces == ca.spi_in and not ea[0].initiator and eb[0].initiator and eb[0].rekey_time
    assert ea[2].spi_in == ca.spi_in and ea[2].reason == "deleted by peer"
    assert _spis(a) == {eb[0].spi_out} and _spis(b) == {ea[0].spi_out}
    # the new pair is b's to rekey: a's soft expiry waits for it, b's starts one
    a.child_sa_soft_expired(ea[0].spi_in, 2.0)
    assert a.datagrams_to_send(2.0) == []
    b.child_sa_soft_expired(eb[0].spi_in, 2.0)
    _pump(a, b, 2.0)
    _switch(a, b, 2.0)
    assert _spis(a) == {c.spi_out for i in b.list_sas() for c in i.children} != {ea[0].spi_in}


def test_terminate_deletes_the_esp_sas_on_both_sides():
    a, b, ike_id, _, cb = _up()
    a.terminate(ike_id, 1.0)
    _pump(a, b, 1.0)
    ea, eb = _events(a), _events(b)
    assert [type(e) for e in ea] == [ChildSaDeleted, IkeSaTerminated]
    assert [type(e) for e in eb] == [ChildSaDeleted, IkeSaTerminated] and eb[0].spi_in == cb.spi_in
    assert a.list_sas() == b.list_sas() == []


def test_dpd_takes_a_dead_peer_down():
    a, *_ = _up(dpd_delay=10.0)
    now = 0.0
    for _ in range(30):  # b is gone: nothing is delivered any more
        t = a.get_timer()
        if t is None or not a.list_sas():
            break
        now = t
        a.handle_timer(now)
        a.datagrams_to_send(now)
    evs = _events(a)
    assert [type(e).__name__ for e in evs] == ["DeadPeerDetected", "ChildSaDeleted", "IkeSaTerminated"], evs
    assert evs[-1].reason == "dead peer" and a.list_sas() == [] and now < 200


def test_initial_contact_from_a_restarted_peer_clears_its_older_sas():
    a, b, _, _, cb = _up()
    a2 = VersionDispatcher(a.config)  # a restarts: it holds nothing, b still holds the old SAs
    a2.initiate("b", 10.0)
    _pump(a2, b, 10.0)
    eb = _events(b)
    assert b.v1.stats["v1_initial_contact_cleared"] >= 1
    old = [e for e in eb if isinstance(e, ChildSaDeleted)]
    assert [e.spi_in for e in old] == [cb.spi_in]
    assert len(b.list_sas()) == 1 and _spis(b) != {cb.spi_in}


def _valid_prefix() -> list[bytes]:
    """The datagrams of a real exchange, as material for mutation."""
    a, b = _pair()
    a.initiate("b", 0.0)
    return [d.data for d in _pump(a, b, 0.0)]


SEEDS = _valid_prefix()


@settings(max_examples=int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "80")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(SEEDS) - 1), st.integers(0, 400), st.binary(max_size=8), st.binary(max_size=200),
       st.booleans())
def test_nothing_a_peer_sends_raises_out_of_the_core(which, cut, splice, blob, as_responder):
    a, b = _pair()
    if not as_responder:
        a.initiate("b", 0.0)
        a.datagrams_to_send(0.0)
    target = b if as_responder else a
    base = SEEDS[which]
    mutated = base[:cut] + splice + base[cut + len(splice):]
    fixed = mutated[:24] + struct.pack("!I", len(mutated)) + mutated[28:] if len(mutated) >= 28 else mutated
    for data in (mutated, fixed, blob, base):
        target.receive_datagram(data, A if as_responder else B, B if as_responder else A, 1.0)
    target.handle_timer(50.0)
    target.datagrams_to_send(50.0)
    _events(target)
    target.list_sas()


def test_a_hostile_opening_with_our_initiator_cookie_does_not_take_over_our_sa():
    a, b = _pair()
    a.initiate("b", 0.0)
    (mm1,) = a.datagrams_to_send(0.0)
    cky_i = mm1.data[:8]
    forged = push_message(cky_i, bytes(8), Exchange.MAIN, 0, 0, [Payload(PayloadType.SA, b"\x00" * 8)])
    a.receive_datagram(forged, B, A, 0.1)
    assert len(a.list_sas()) == 1 and a.list_sas()[0].initiator


def test_a_responder_with_two_wildcard_peers_chooses_by_identity():
    """B answers anyone (%any) as "a" (a.test) or "z" (z.test), same key: the initiator's identity in main mode's
    fifth message chooses, and the events, the quick mode's selectors and list-sas name the peer chosen."""
    a = VersionDispatcher(CoreConfig((_peer("b", "z.test", "b.test", A[0], B[0], "10.9.0.0/24", "10.2.0.0/24"),),
                                     retransmit_timeout=1.0))
    b = VersionDispatcher(CoreConfig((
        _peer("a", "b.test", "a.test", B[0], None, "10.2.0.0/24", "10.1.0.0/24"),
        _peer("z", "b.test", "z.test", B[0], "%any", "10.2.0.0/24", "10.9.0.0/24")), retransmit_timeout=1.0))
    a.initiate("b", 0.0)
    _pump(a, b, 0.0)
    evs = _events(b)
    ike = [e for e in evs if isinstance(e, IkeSaEstablished)]
    child = [e for e in evs if isinstance(e, ChildSaEstablished)]
    assert [e.peer for e in ike] == ["z"] and [e.peer for e in child] == ["z"]
    assert str(child[0].remote_ts[0]).startswith("10.9.0.0")
    assert [s.peer for s in b.list_sas()] == ["z"]
