"""NAT traversal in main mode (RFC 3947) between the IKEv1 initiator and responder in memory: vendor IDs, NAT-D
hashes against the addresses each side sees, the verdict (who is behind the NAT), and UDP-encapsulated tunnel
mode offered and accepted in quick mode."""
from __future__ import annotations

import pytest

from ike.events import ChildSaEstablished
from ike.v1.message import PayloadType, decode_sa, pull_message
from ike.v1.natt import ENCAP_UDP_TUNNEL, VID_DRAFT_02N, VID_RFC3947, natd_hash
from ike.v1.session import P2_MODE, V1Config, V1Session
from tests.ike.v1.memory import events, exchange

NATT_VIDS = (VID_RFC3947, VID_DRAFT_02N)

#: the initiator's own address, and what the responder sees after a NAT rewrote it
INSIDE, OUTSIDE, SERVER = ("10.0.0.5", 500), ("192.0.2.7", 31000), ("198.51.100.1", 500)


def _pair(seen_by_responder: tuple[str, int], *, natt_i: bool = True, encap_i: bool = False):
    ex = exchange(V1Config("v1", b"secret", "e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24", INSIDE, SERVER,
                           natt=natt_i, encap=encap_i),
                  V1Config("v1", b"secret", "s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", SERVER,
                           seen_by_responder))
    return ex.i, ex.r, ex.wire


def _child(s: V1Session) -> ChildSaEstablished:
    return next(e for e in events(s) if isinstance(e, ChildSaEstablished))


def test_nat_between_the_peers_is_detected_by_both_and_esp_goes_in_udp():
    i, r, wire = _pair(OUTSIDE)
    assert (i.state, r.state) == ("established", "established"), (i.last_error, r.last_error)
    assert (i.natt.nat_local, i.natt.nat_remote) == (True, False)  # the initiator is behind the NAT
    assert (r.natt.nat_local, r.natt.nat_remote) == (False, True)
    assert i.natt.floated and r.natt.floated
    assert _child(i).encap and _child(r).encap
    # on the wire: both announce RFC 3947, main mode's 3rd/4th messages carry two NAT-D payloads each
    _, mm1 = pull_message(wire[0])
    _, mm2 = pull_message(wire[1])
    assert any(p.type == PayloadType.VID and p.body == VID_RFC3947 for p in mm1 + mm2)
    _, mm3 = pull_message(wire[2])
    natd = [p.body for p in mm3 if p.type == PayloadType.NAT_D]
    assert natd == [natd_hash("sha256", i.cky_i, i.cky_r, SERVER), natd_hash("sha256", i.cky_i, i.cky_r, INSIDE)]


def test_quick_mode_offers_udp_encapsulated_tunnel_mode_when_floated():
    _i, r, wire = _pair(OUTSIDE)
    qm1 = wire[6]  # MM1..MM6, then quick mode's first message
    _, payloads = r._cipher.decrypt(qm1)
    (sa,) = [p.body for p in payloads if p.type == PayloadType.SA]
    (t,) = decode_sa(sa).proposals[0].transforms
    assert t.get(P2_MODE) == ENCAP_UDP_TUNNEL


def test_no_nat_no_float():
    i, r, _ = _pair(INSIDE[:1] + (500,))
    assert (i.state, r.state) == ("established", "established")
    assert not i.natt.floated and not r.natt.floated
    assert not _child(i).encap and not _child(r).encap


def test_forced_encapsulation_floats_without_a_nat():
    i, r, _ = _pair(INSIDE, encap_i=True)
    assert (i.state, r.state) == ("established", "established")
    assert i.natt.nat_local and r.natt.nat_remote and i.natt.floated and r.natt.floated
    assert _child(i).encap and _child(r).encap


@pytest.mark.parametrize("natt_i", [False])
def test_a_peer_without_nat_t_gets_no_vendor_id_and_no_nat_d(natt_i):
    i, r, wire = _pair(OUTSIDE, natt_i=natt_i)
    assert (i.state, r.state) == ("established", "established")
    for d in wire[:4]:
        _h, payloads = pull_message(d)
        assert not any(p.type == PayloadType.NAT_D or (p.type == PayloadType.VID and p.body in NATT_VIDS)
                       for p in payloads)
    assert not r.natt.floated and not _child(r).encap
