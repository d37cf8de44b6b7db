"""Two endpoints in memory: establishment, CREATE_CHILD_SA, rekeys, deletes, retransmits, refusals."""
from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography import x509

from ike.core_config import Identity
from ike.events import (AuthenticationFailed, ChildSaDeleted, ChildSaEstablished, ChildSaFailed, ChildSaRekeyed,
                        IkeKeysDerived, IkeSaEstablished, IkeSaRekeyed, IkeSaTerminated)

from .helpers import (ADDR_I, ADDR_R, NOW, SimpleValidator, CaForTests, cert_peers, child, drain, pair, psk_peers,
                      roundtrip, run_timers, transfer)


def of(events, cls):  # type: ignore[no-untyped-def]
    return [e for e in events if isinstance(e, cls)]


def establish(peer_i, peer_r, **cfg):  # type: ignore[no-untyped-def]
    a, b = pair(peer_i, peer_r, **cfg)
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    return a, b, drain(a), drain(b)


def assert_child_keys_match(ea, eb) -> tuple[ChildSaEstablished, ChildSaEstablished]:  # type: ignore[no-untyped-def]
    ca, cb = of(ea, ChildSaEstablished)[-1], of(eb, ChildSaEstablished)[-1]
    assert ca.spi_out == cb.spi_in and ca.spi_in == cb.spi_out
    assert ca.enc_key_out == cb.enc_key_in and ca.enc_key_in == cb.enc_key_out
    assert ca.integ_key_out == cb.integ_key_in and ca.integ_key_in == cb.integ_key_out
    assert ca.enc_key_in != ca.enc_key_out
    assert ca.suite == cb.suite
    return ca, cb


def test_psk_establishes_ike_and_child_sa():
    a, b, ea, eb = establish(*psk_peers())
    assert [type(e) for e in ea] == [IkeSaEstablished, ChildSaEstablished]
    assert [type(e) for e in eb] == [IkeSaEstablished, ChildSaEstablished]
    ia, ib = ea[0], eb[0]
    assert (ia.spi_i, ia.spi_r) == (ib.spi_i, ib.spi_r)
    assert ia.proposal == "aes128gcm16-prfsha256-ecp256" and ia.auth_method == "psk"
    assert ib.remote_id == Identity("fqdn", "i.example")
    ca, cb = assert_child_keys_match(ea, eb)
    assert ca.suite == "aes128gcm16" and len(ca.enc_key_in) == 20 and ca.integ_key_in == b""
    assert ca.mode == "tunnel" and not ca.encap and not ca.esn
    # responder narrowed 10.1.0.0/16 <-> 10.2.0.0/16 down to the initiator's /24s
    assert str(cb.remote_ts[0]) == "10.1.0.0/24" and str(cb.local_ts[0]) == "10.2.0.0/24"
    assert a.list_sas()[0].state == "established" and b.list_sas()[0].children[0].suite == "aes128gcm16"


@pytest.mark.parametrize("kind_i,kind_r,method", [
    ("rsa", "rsa", "signature(rsa-pkcs1-sha2_256)"),
    ("ecdsa", "ecdsa", "signature(ecdsa-sha2_256)"),
    ("ecdsa384", "ed25519", "signature(ecdsa-sha2_384)"),
])
def test_certificate_authentication(kind_i, kind_r, method):
    i, r, _ = cert_peers(kind_i, kind_r)
    a, b, ea, eb = establish(i, r)
    assert of(eb, IkeSaEstablished)[0].auth_method == method
    assert_child_keys_match(ea, eb)


@pytest.mark.parametrize("kind,method", [("rsa", "rsa"), ("ecdsa", "ecdsa")])
def test_classic_signature_methods_without_rfc7427(kind, method):
    i, r, _ = cert_peers(kind, kind, signature_auth=False)
    a, b, ea, eb = establish(i, r)
    assert of(eb, IkeSaEstablished)[0].auth_method == method
    assert of(ea, IkeSaEstablished)[0].auth_method == method


@pytest.mark.parametrize("ike,esp,suite", [
    ("aes256-sha256-modp2048", "aes256-sha256", "aes256-sha256"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-esn", "aes256gcm16"),
    ("chacha20poly1305-prfsha512-curve25519", "chacha20poly1305", "chacha20poly1305"),
    ("aes128-sha512-ecp521", "aes128-sha384", "aes128-sha384"),
    ("aes128gcm16-prfsha256-modp3072", "aes128gcm16", "aes128gcm16"),
])
def test_algorithms(ike, esp, suite):
    i, r = psk_peers(ike_proposals=(ike,))
    i = replace(i, children=(child(esp_proposals=(esp,)),))
    r = replace(r, children=(child(local="10.2.0.0/16", remote="10.1.0.0/16", esp_proposals=(esp,)),))
    a, b, ea, eb = establish(i, r)
    assert of(ea, IkeSaEstablished)[0].proposal.startswith(ike.split("-")[0])
    ca, _ = assert_child_keys_match(ea, eb)
    assert ca.suite == suite and ca.esn == esp.endswith("-esn")


def test_key_log_event():
    a, b, ea, eb = establish(*psk_peers(), key_log=True)
    ka, kb = of(ea, IkeKeysDerived)[0], of(eb, IkeKeysDerived)[0]
    assert ka.sk_ei == kb.sk_ei and ka.sk_er == kb.sk_er and len(ka.sk_ei) == 20
    assert ka.encr == 20 and ka.encr_key_bits == 128 and "sk_ei" not in repr(ka)


def test_invalid_ke_payload_retry():
    i, r = psk_peers()
    i = replace(i, ike_proposals=("aes128gcm16-prfsha256-ecp256-curve25519",))
    r = replace(r, ike_proposals=("aes128gcm16-prfsha256-curve25519",))
    a, b, ea, eb = establish(i, r)
    assert of(ea, IkeSaEstablished)[0].proposal == "aes128gcm16-prfsha256-curve25519"


def test_no_proposal_chosen():
    i, r = psk_peers()
    i = replace(i, ike_proposals=("aes128gcm16-prfsha256-ecp256",))
    r = replace(r, ike_proposals=("aes256-sha256-modp2048",))
    a, b, ea, eb = establish(i, r)
    t = of(ea, IkeSaTerminated)[0]
    assert t.notify == 14 and not of(ea, IkeSaEstablished) and not of(eb, IkeSaEstablished)
    assert a.list_sas() == [] and b.list_sas() == []


def test_child_proposal_mismatch_keeps_ike_sa():
    i, r = psk_peers()
    i = replace(i, children=(child(esp_proposals=("chacha20poly1305",)),))
    a, b, ea, eb = establish(i, r)
    assert of(ea, IkeSaEstablished) and not of(ea, ChildSaEstablished)
    assert of(ea, ChildSaFailed)[0].notify == 14


def test_ts_unacceptable():
    i, r = psk_peers()
    i = replace(i, children=(child(local="172.16.0.0/24"),))
    a, b, ea, eb = establish(i, r)
    assert of(ea, ChildSaFailed)[0].notify == 38 and not of(eb, ChildSaEstablished)


def test_wrong_psk_is_refused():
    i, r = psk_peers()
    r = replace(r, psk=b"other-secret")
    a, b, ea, eb = establish(i, r)
    assert of(eb, AuthenticationFailed)[0].local_side
    assert of(ea, IkeSaTerminated)[0].notify == 24
    assert not of(ea, ChildSaEstablished) and not of(eb, ChildSaEstablished)


def _refused(i, r):  # type: ignore[no-untyped-def]
    a, b, ea, eb = establish(i, r)
    assert not of(ea, ChildSaEstablished) and not of(eb, ChildSaEstablished)
    assert not of(ea, IkeSaEstablished)
    return ea, eb


def test_unknown_ca_is_refused():
    i, r, ca = cert_peers()
    other = CaForTests.create("Other CA")
    r = replace(r, validator=SimpleValidator([other.cert]))
    ea, eb = _refused(i, r)
    assert "unknown_ca" in of(eb, AuthenticationFailed)[0].reason
    assert of(ea, IkeSaTerminated)[0].notify == 24


@pytest.mark.parametrize("when,reason", [("expired", "expired"), ("future", "not_yet_valid")])
def test_expired_and_not_yet_valid_certificates(when, reason):
    from datetime import timedelta

    i, r, ca = cert_peers()
    nb, na = ((NOW - timedelta(days=20), NOW - timedelta(days=10)) if when == "expired"
              else (NOW + timedelta(days=10), NOW + timedelta(days=20)))
    k, c = ca.issue("initiator", "ecdsa", [x509.DNSName("i.example")], not_before=nb, not_after=na)
    i = replace(i, credential=replace(i.credential, private_key=k, certificate=c))
    ea, eb = _refused(i, r)
    assert reason in of(eb, AuthenticationFailed)[0].reason


def test_revoked_certificate():
    i, r, ca = cert_peers()
    r = replace(r, validator=SimpleValidator([ca.cert], revoked={i.credential.certificate.serial_number}))
    ea, eb = _refused(i, r)
    assert "revoked" in of(eb, AuthenticationFailed)[0].reason


def test_identity_not_in_certificate():
    i, r, ca = cert_peers()
    i = replace(i, local_id=Identity("fqdn", "mallory.example"))
    ea, eb = _refused(i, r)
    assert "not in the certificate" in of(eb, AuthenticationFailed)[0].reason


def test_initiator_rejects_responder_identity():
    i, r, ca = cert_peers()
    i = replace(i, remote_id=Identity("fqdn", "someone-else.example"))
    a, b, ea, eb = establish(i, r)
    assert not of(ea, IkeSaEstablished)
    assert of(eb, AuthenticationFailed) or of(eb, IkeSaTerminated)


def test_dn_identities():
    ca = CaForTests.create()
    i, r, _ = cert_peers(ca=ca)
    i = replace(i, local_id=Identity("dn", "CN=initiator,O=espresso test"), remote_id=None)
    a, b, ea, eb = establish(i, r)
    assert of(eb, IkeSaEstablished)[0].remote_id.kind == "dn"


def test_create_rekey_delete_child():
    i, r = psk_peers()
    r = replace(r, children=(child(local="10.2.0.0/16", remote="10.1.0.0/16",
                                   esp_proposals=("aes128gcm16", "aes256gcm16-ecp256")),))
    a, b, ea, eb = establish(i, r)
    old_a, old_b = assert_child_keys_match(ea, eb)
    # a second CHILD_SA with CREATE_CHILD_SA and PFS
    i2 = child("web", local="10.1.1.0/24", remote="10.2.1.0/24", esp_proposals=("aes256gcm16-ecp256",))
    conn = a.connection(1)
    conn.create_child(i2, 1.0)
    roundtrip(a, b, 1.0)
    ea, eb = drain(a), drain(b)
    assert_child_keys_match(ea, eb)
    # rekey the first one: new SA installed, then outbound switch, then the old one deleted
    a.rekey_child(old_a.spi_in, 2.0)
    roundtrip(a, b, 2.0)
    ea, eb = drain(a), drain(b)
    assert [type(e) for e in ea] == [ChildSaEstablished, ChildSaRekeyed, ChildSaDeleted]
    assert [type(e) for e in eb] == [ChildSaEstablished, ChildSaRekeyed, ChildSaDeleted]
    new_a, new_b = assert_child_keys_match(ea, eb)
    assert new_a.replaces == old_a.spi_in and new_b.replaces == old_b.spi_in
    assert new_a.enc_key_in != old_a.enc_key_in
    assert of(ea, ChildSaDeleted)[0].spi_in == old_a.spi_in and of(ea, ChildSaDeleted)[0].reason == "rekeyed"
    # delete from the responder side
    b.delete_child(new_b.spi_in, 3.0)
    roundtrip(a, b, 3.0)
    assert of(drain(a), ChildSaDeleted)[0].spi_in == new_a.spi_in
    assert len(a.list_sas()[0].children) == 1 and len(b.list_sas()[0].children) == 1


def test_rekey_ike_sa_keeps_children_and_works_after():
    a, b, ea, eb = establish(*psk_peers())
    ca, cb = assert_child_keys_match(ea, eb)
    old = of(ea, IkeSaEstablished)[0]
    a.rekey_ike(1, 1.0)
    roundtrip(a, b, 1.0)
    ea, eb = drain(a), drain(b)
    ra, rb = of(ea, IkeSaRekeyed)[0], of(eb, IkeSaRekeyed)[0]
    assert (ra.spi_i, ra.spi_r) == (rb.spi_i, rb.spi_r) != (old.spi_i, old.spi_r)
    assert not of(ea, IkeSaTerminated) and not of(eb, IkeSaTerminated)
    # the new IKE_SA carries the children and can rekey one of them
    a.rekey_child(ca.spi_in, 2.0)
    roundtrip(a, b, 2.0)
    ea, eb = drain(a), drain(b)
    assert_child_keys_match(ea, eb)
    info = a.list_sas()
    assert len(info) == 1 and info[0].spi_i == ra.spi_i and len(info[0].children) == 1


def test_delete_ike_sa_from_responder():
    a, b, ea, eb = establish(*psk_peers())
    b.terminate(1, 1.0)
    roundtrip(a, b, 1.0)
    ea, eb = drain(a), drain(b)
    assert of(ea, IkeSaTerminated)[0].reason == "deleted by peer"
    assert of(eb, IkeSaTerminated)[0].reason == "deleted"
    assert len(of(ea, ChildSaDeleted)) == 1 and a.list_sas() == [] and b.list_sas() == []


def test_retransmit_and_duplicate_answered_from_cache():
    i, r = psk_peers()
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])          # INIT request reaches b
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])          # INIT response reaches a
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])          # AUTH request reaches b
    assert transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0], drop=True) == 1   # AUTH response lost
    t = a.get_timer()
    assert t is not None and t == pytest.approx(4.0)
    a.handle_timer(t)                                  # retransmit
    transfer(a, b, t, ADDR_I[0], ADDR_R[0])            # b answers the duplicate from its cache
    assert len(of(drain(b), IkeSaEstablished)) == 1    # processed once only
    transfer(b, a, t, ADDR_R[0], ADDR_I[0])
    assert of(drain(a), IkeSaEstablished)


def test_retransmit_gives_up():
    i, r = psk_peers()
    a, b = pair(i, r, retransmit_tries=3)
    a.initiate("to-r", 0.0)
    sent = len(a.datagrams_to_send(0.0))
    times = []
    for _ in range(10):
        t = a.get_timer()
        if t is None:
            break
        times.append(t)
        a.handle_timer(t)
        sent += len(a.datagrams_to_send(t))
    ev = drain(a)
    assert of(ev, IkeSaTerminated)[0].reason.startswith("retransmit timeout")
    assert sent == 4 and times[1] - times[0] > times[0]  # backoff grows


def test_dpd_liveness_check():
    i, r = psk_peers(dpd_delay=30.0)
    a, b, ea, eb = establish(i, r)
    t = a.get_timer()
    assert t == pytest.approx(30.0)
    a.handle_timer(30.0)
    assert roundtrip(a, b, 30.0) == 2  # empty INFORMATIONAL and its answer
    assert not of(drain(a), IkeSaTerminated)


def test_cookie_when_half_open_threshold_passed():
    i, r = psk_peers()
    a, b = pair(i, r, cookie_threshold=0)
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    assert b.stats["cookies_sent"] == 1
    assert of(drain(a), IkeSaEstablished) and of(drain(b), IkeSaEstablished)


def test_half_open_limit_drops():
    i, r = psk_peers()
    a, b = pair(i, r, half_open_limit=0)
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    assert b.stats["dropped_half_open_limit"] == 1 and b.list_sas() == []


def test_fragmentation_of_large_certificate_chains():
    i, r, ca = cert_peers("rsa", "rsa", fragment_size=576)
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    sizes = []
    for _ in range(10):
        dgs = a.datagrams_to_send(0.0)
        sizes += [len(d.data) for d in dgs]
        for d in dgs:
            b.receive_datagram(d.data, (ADDR_I[0], d.local_port), (ADDR_R[0], d.addr[1]), 0.0)
        dgs = b.datagrams_to_send(0.0)
        sizes += [len(d.data) for d in dgs]
        for d in dgs:
            a.receive_datagram(d.data, (ADDR_R[0], d.local_port), (ADDR_I[0], d.addr[1]), 0.0)
        if not dgs:
            break
    ea, eb = drain(a), drain(b)
    assert of(ea, IkeSaEstablished) and of(eb, IkeSaEstablished)
    assert len(sizes) > 6 and max(sizes) <= 576 - 28


def test_tampered_message_is_dropped():
    i, r = psk_peers()
    a, b = pair(i, r, retransmit_tries=1)
    a.initiate("to-r", 0.0)
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])

    def flip(data: bytes) -> bytes:
        return data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]

    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0], mangle=flip)
    assert b.datagrams_to_send(0.0) == []  # no answer to a forged message
    assert not of(drain(b), IkeSaEstablished)


def test_nat_detected_moves_to_nat_t_port():
    i, r = psk_peers(encap=False)
    i = replace(i, encap=True)
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    first = a.datagrams_to_send(0.0)
    assert first[0].local_port == 500 and not first[0].marker
    for d in first:
        b.receive_datagram(d.data, (ADDR_I[0], 500), (ADDR_R[0], 500), 0.0)
    for d in b.datagrams_to_send(0.0):
        a.receive_datagram(d.data, (ADDR_R[0], 500), (ADDR_I[0], 500), 0.0)
    auth = a.datagrams_to_send(0.0)
    assert auth[0].local_port == 4500 and auth[0].addr == (ADDR_R[0], 4500) and auth[0].marker
    for d in auth:
        b.receive_datagram(d.data, (ADDR_I[0], 4500), (ADDR_R[0], 4500), 0.0)
    resp = b.datagrams_to_send(0.0)
    assert resp[0].local_port == 4500 and resp[0].marker
    for d in resp:
        a.receive_datagram(d.data, (ADDR_R[0], 4500), (ADDR_I[0], 4500), 0.0)
    ea, eb = drain(a), drain(b)
    ca, cb = assert_child_keys_match(ea, eb)
    assert ca.encap and cb.encap and ca.remote_addr == (ADDR_R[0], 4500) and cb.remote_addr == (ADDR_I[0], 4500)


@pytest.mark.parametrize("seed", range(6))
def test_simultaneous_child_rekey_leaves_one_pair(seed):
    i, r = psk_peers()
    a, b = pair(i, r)
    a.config.random.seed += bytes([seed])  # vary nonces: seeds 3 and 5 make the initiator lose, others win
    b.config.random.seed += bytes([seed])
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    ca, cb = assert_child_keys_match(drain(a), drain(b))
    a.rekey_child(ca.spi_in, 1.0)
    b.rekey_child(cb.spi_in, 1.0)
    roundtrip(a, b, 1.0)
    ea, eb = drain(a), drain(b)
    kids_a, kids_b = a.list_sas()[0].children, b.list_sas()[0].children
    assert len(kids_a) == 1 and len(kids_b) == 1
    assert (kids_a[0].spi_in, kids_a[0].spi_out) == (kids_b[0].spi_out, kids_b[0].spi_in)
    assert kids_a[0].spi_in != ca.spi_in
    # outbound ends on the survivor on both sides, and every SA that was installed is deleted exactly once
    for ev, kid in ((ea, kids_a[0]), (eb, kids_b[0])):
        assert of(ev, ChildSaRekeyed)[-1].spi_in == kid.spi_in
        installed = {e.spi_in for e in of(ev, ChildSaEstablished)}
        deleted = [e.spi_in for e in of(ev, ChildSaDeleted)]
        assert sorted(deleted) == sorted(installed - {kid.spi_in} | {ca.spi_in if ev is ea else cb.spi_in})


@pytest.mark.parametrize("seed", range(4))
def test_simultaneous_ike_rekey_resolved_by_nonces(seed):
    i, r = psk_peers()
    a, b = pair(i, r)
    a.config.random.seed += bytes([seed])
    b.config.random.seed += bytes([seed])
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    ea, eb = drain(a), drain(b)
    a.rekey_ike(1, 1.0)
    b.rekey_ike(1, 1.0)
    roundtrip(a, b, 1.0)  # the requests cross; both complete; the lowest nonce loses (RFC 7296 2.8.2)
    ea, eb = drain(a), drain(b)
    ra, rb = of(ea, IkeSaRekeyed), of(eb, IkeSaRekeyed)
    assert len(ra) == 1 and len(rb) == 1 and (ra[0].spi_i, ra[0].spi_r) == (rb[0].spi_i, rb[0].spi_r)
    sa_a, sa_b = a.list_sas()[0], b.list_sas()[0]
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r) == (ra[0].spi_i, ra[0].spi_r)
    assert len(sa_a.children) == 1 and not of(ea + eb, IkeSaTerminated)
    assert set(a.connection(1).spis()) == {sa_a.spi_r if not sa_a.initiator else sa_a.spi_i}  # old ones gone
    # the survivor works: a CHILD_SA rekey over it
    a.rekey_child(sa_a.children[0].spi_in, 2.0)
    roundtrip(a, b, 2.0)
    assert of(drain(a), ChildSaRekeyed) and of(drain(b), ChildSaRekeyed)


def test_child_rekey_refused_during_ike_rekey_is_retried():
    a, b, ea, eb = establish(*psk_peers())
    cb = of(eb, ChildSaEstablished)[0]
    a.rekey_ike(1, 1.0)
    b.rekey_child(cb.spi_in, 1.0)
    roundtrip(a, b, 1.0)
    ea, eb = drain(a), drain(b)
    assert of(ea, IkeSaRekeyed) and of(eb, ChildSaFailed)[0].notify == 43
    t = b.get_timer()
    assert t is not None and 11.0 <= t <= 31.0
    b.handle_timer(t)
    roundtrip(a, b, t)
    assert of(drain(b), ChildSaRekeyed)


@pytest.mark.parametrize("rekeyer", ["a", "b"])
def test_child_rekey_answered_child_sa_not_found_recreates_the_child_sa(rekeyer):
    """The peer lost the CHILD_SA (no Delete ever reached us): our rekey gets CHILD_SA_NOT_FOUND (RFC 7296
    2.25, 3.10.1). We drop the CHILD_SA locally (ChildSaDeleted, no Delete sent: the peer has none) and create
    it afresh with a plain CREATE_CHILD_SA (strongSwan's child_rekey does the same), instead of retrying the
    rekey forever. Both ends end with one matching pair."""
    a, b, ea, eb = establish(*psk_peers())
    ca, cb = assert_child_keys_match(ea, eb)
    us, peer, old = (a, b, ca) if rekeyer == "a" else (b, a, cb)
    forgetter = peer.connection(peer.list_sas()[0].ike_id).sa
    assert forgetter.children.pop(old.spi_out) is not None     # the peer forgets it, silently
    us.rekey_child(old.spi_in, 1.0)
    roundtrip(a, b, 1.0)
    ev_us, ev_peer = drain(us), drain(peer)
    assert [e.notify for e in of(ev_us, ChildSaFailed)] == [44]  # CHILD_SA_NOT_FOUND, reported once
    gone = of(ev_us, ChildSaDeleted)
    assert [(e.spi_in, e.spi_out, e.reason) for e in gone] == [(old.spi_in, old.spi_out, "not found by peer")]
    assert not of(ev_peer, ChildSaDeleted) and not of(ev_us + ev_peer, ChildSaRekeyed)
    new_us, new_peer = of(ev_us, ChildSaEstablished), of(ev_peer, ChildSaEstablished)
    assert len(new_us) == len(new_peer) == 1
    assert new_us[0].replaces is None and new_peer[0].replaces is None  # a new CHILD_SA, not a rekey
    assert new_us[0].child == old.child and new_us[0].spi_in not in (old.spi_in, old.spi_out)
    assert_child_keys_match(ev_us, ev_peer) if us is a else assert_child_keys_match(ev_peer, ev_us)
    kids_us, kids_peer = us.list_sas()[0].children, peer.list_sas()[0].children
    assert [(k.spi_in, k.spi_out) for k in kids_us] == [(new_us[0].spi_in, new_us[0].spi_out)]
    assert [(k.spi_out, k.spi_in) for k in kids_peer] == [(new_us[0].spi_in, new_us[0].spi_out)]
    c_us = us.connection(us.list_sas()[0].ike_id).sa.children[new_us[0].spi_in]
    c_peer = peer.connection(peer.list_sas()[0].ike_id).sa.children[new_us[0].spi_out]
    assert c_us.keys == c_peer.keys
    # quiet afterwards: no further exchange, and the new CHILD_SA rekeys normally
    assert roundtrip(a, b, 2.0) == 0 and not drain(a) and not drain(b)
    us.rekey_child(new_us[0].spi_in, 3.0)
    roundtrip(a, b, 3.0)
    assert of(drain(us), ChildSaRekeyed) and of(drain(peer), ChildSaRekeyed)


def test_child_rekey_answered_child_sa_not_found_recreate_refused_is_not_retried():
    """Bounded: when the peer refuses the fresh CREATE_CHILD_SA too, that is one ChildSaFailed, no loop."""
    a, b, ea, eb = establish(*psk_peers())
    ca, cb = assert_child_keys_match(ea, eb)
    sb = b.connection(b.list_sas()[0].ike_id).sa
    sb.children.pop(cb.spi_in)
    sb.config = replace(sb.config, max_child_sas=0)  # b refuses new CHILD_SAs (NO_ADDITIONAL_SAS)
    a.rekey_child(ca.spi_in, 1.0)
    roundtrip(a, b, 1.0)
    ea = drain(a)
    assert [e.notify for e in of(ea, ChildSaFailed)] == [44, 35]
    assert [e.spi_in for e in of(ea, ChildSaDeleted)] == [ca.spi_in] and not of(ea, ChildSaEstablished)
    assert a.list_sas()[0].children == () and b.list_sas()[0].children == ()
    t = a.get_timer()
    assert t is None or t > 100.0  # nothing scheduled but the IKE_SA's own timers
    assert roundtrip(a, b, 5.0) == 0


def _child_rekey_queued_behind_ike_rekey():  # type: ignore[no-untyped-def]
    """b rekeys the IKE_SA; while a's answer is on its way, b also rekeys the CHILD_SA: that task is queued on
    the old IKE_SA and runs, once a's answer arrives, on the new one (sent with b's Delete of the old one)."""
    a, b, ea, eb = establish(*psk_peers(), retransmit_tries=4)
    ca, cb = assert_child_keys_match(ea, eb)
    b.rekey_ike(1, 0.5)
    transfer(b, a, 0.5, ADDR_R[0], ADDR_I[0])       # the IKE rekey request reaches a; a's answer is pending
    b.rekey_child(cb.spi_in, 1.0)                   # queued behind the IKE rekey, on the old IKE_SA
    transfer(a, b, 1.0, ADDR_I[0], ADDR_R[0])       # a's answer: b moves to the new IKE_SA
    assert transfer(b, a, 1.0, ADDR_R[0], ADDR_I[0]) == 2  # CREATE_CHILD_SA(REKEY_SA) new SA, Delete(IKE) old
    return a, b, ca, cb


def test_child_rekey_queued_behind_ike_rekey_derives_keys_from_the_new_ike_sa():
    """The exchange runs on the new IKE_SA, so the new CHILD_SA's keys come from its SK_d on both ends (the
    queued task used to keep the old IKE_SA's SK_d: ESP keys that did not match the peer's)."""
    a, b, ca, cb = _child_rekey_queued_behind_ike_rekey()
    roundtrip(a, b, 1.0)
    ea, eb = drain(a), drain(b)
    assert of(ea, IkeSaRekeyed) and of(eb, IkeSaRekeyed)
    new_a, new_b = assert_child_keys_match(ea, eb)
    assert new_b.replaces == cb.spi_in
    kids_a, kids_b = a.list_sas()[0].children, b.list_sas()[0].children
    assert [(k.spi_in, k.spi_out) for k in kids_a] == [(new_a.spi_in, new_a.spi_out)]
    assert [(k.spi_out, k.spi_in) for k in kids_b] == [(new_a.spi_in, new_a.spi_out)]


def test_child_rekey_queued_behind_ike_rekey_answer_lost_while_peer_deletes_the_child():
    """The lossy fuzzer's counterexample ["rekey_ike_b", "rekey_child_b", "drop", "delete_child_a"], stepwise.

    1. b rekeys the IKE_SA, then the CHILD_SA (queued behind, runs on the new IKE_SA), and deletes the old
       IKE_SA;
    2. a answers both (it installs the new CHILD_SA, drops the old IKE_SA); both answers are lost;
    3. a deletes the CHILD_SA, with the successor b asked for: Delete(ESP old, new); b removes the old one;
    4. b retransmits its rekey request; a answers from its cache (RFC 7296 2.1), with the SA it since deleted;
    5. b installs that CHILD_SA, finds the SA it rekeyed gone, and deletes the new one (RFC 7296 2.25): it
       used to queue that Delete on the old IKE_SA, where nothing ran it, and kept a CHILD_SA a did not have.
    """
    a, b, ca, cb = _child_rekey_queued_behind_ike_rekey()
    assert transfer(a, b, 1.5, ADDR_I[0], ADDR_R[0], drop=True) == 2   # both of a's answers lost
    ea = drain(a)
    new_a = of(ea, ChildSaEstablished)[0]
    assert new_a.replaces == ca.spi_in
    a.delete_child(ca.spi_in, 2.0)
    transfer(a, b, 2.0, ADDR_I[0], ADDR_R[0])       # Delete(ESP old, new): b only knows the old one
    transfer(b, a, 2.0, ADDR_R[0], ADDR_I[0])
    assert {e.spi_in for e in of(drain(a), ChildSaDeleted)} == {ca.spi_in, new_a.spi_in}
    assert [e.spi_in for e in of(drain(b), ChildSaDeleted)] == [cb.spi_in]
    assert a.list_sas()[0].children == () and b.list_sas()[0].children == ()
    eb = run_timers(a, b, b, 100.0, 10)              # b's retransmits; its old IKE_SA times out unanswered
    got = of(eb, ChildSaEstablished)
    assert [e.spi_in for e in got] == [new_a.spi_out] and got[0].replaces == cb.spi_in
    gone = of(eb, ChildSaDeleted)
    assert [(e.spi_in, e.reason) for e in gone] == [(new_a.spi_out, "rekeyed SA deleted meanwhile")]
    assert not of(eb, ChildSaRekeyed)               # outbound never moved to it
    sa_a, sa_b = a.list_sas(), b.list_sas()
    assert len(sa_a) == len(sa_b) == 1 and sa_a[0].children == sa_b[0].children == ()
    assert (sa_a[0].spi_i, sa_a[0].spi_r) == (sa_b[0].spi_i, sa_b[0].spi_r)
    assert of(eb, IkeSaTerminated) == [] and b.connection(1).spis() == [b.connection(1).sa.spi_local]


def test_ike_rekey_request_lost_while_peer_rekeys_the_peers_new_ike_sa_succeeds():
    """Found by the lossy fuzzer (longer runs): a rekeys the IKE_SA and its request is lost; b rekeys it too.
    a answers b's rekey while its own is outstanding (a collision for a, which parks b's new IKE_SA); b never
    saw a's request, so for b there is no collision: it switches and deletes the old IKE_SA. a must take b's
    new IKE_SA as the successor (RFC 7296 2.8.2), not tear the whole connection down with the old one."""
    a, b, ea, eb = establish(*psk_peers())
    ca, cb = assert_child_keys_match(ea, eb)
    a.rekey_ike(1, 1.0)
    assert transfer(a, b, 1.0, ADDR_I[0], ADDR_R[0], drop=True) == 1   # a's rekey request lost
    b.rekey_ike(1, 1.5)
    transfer(b, a, 1.5, ADDR_R[0], ADDR_I[0])       # b's rekey request: a answers, parks b's new IKE_SA
    transfer(a, b, 1.5, ADDR_I[0], ADDR_R[0])       # b completes, switches, deletes the old IKE_SA
    roundtrip(a, b, 1.5)
    ea, eb = drain(a), drain(b)
    assert not of(ea, IkeSaTerminated) and not of(ea, ChildSaDeleted)
    ra, rb = of(ea, IkeSaRekeyed), of(eb, IkeSaRekeyed)
    assert len(ra) == len(rb) == 1 and (ra[0].spi_i, ra[0].spi_r) == (rb[0].spi_i, rb[0].spi_r)
    sa_a, sa_b = a.list_sas(), b.list_sas()
    assert len(sa_a) == len(sa_b) == 1 and (sa_a[0].spi_i, sa_a[0].spi_r) == (ra[0].spi_i, ra[0].spi_r)
    assert [c.spi_in for c in sa_a[0].children] == [ca.spi_in]
    assert a.connection(1).spis() == [a.connection(1).sa.spi_local]   # the old IKE_SA is gone
    for t in (5.0, 15.0, 40.0, 100.0):              # nothing left to retransmit; the new IKE_SA works
        a.handle_timer(t)
        b.handle_timer(t)
        roundtrip(a, b, t)
    assert not of(drain(a), IkeSaTerminated)
    a.rekey_child(ca.spi_in, 200.0)
    roundtrip(a, b, 200.0)
    assert_child_keys_match(drain(a), drain(b))


@pytest.mark.parametrize("seed", range(6))
def test_simultaneous_ike_rekey_answers_lost_then_a_child_delete(seed):
    """Found by the lossy fuzzer: both ends rekey the IKE_SA at once; b gets a's answer, a's answer to b's
    rekey and a's follow-up (Delete of the old or of its own redundant IKE_SA, by the nonces) are lost; a
    deletes the CHILD_SA. b, whose own rekey is still outstanding, has a's new IKE_SA parked: a request on it
    means a uses it (a won), so b adopts it, CHILD_SAs and all; a Delete(IKE) on it means a lost, and only
    that SA goes. b's own rekey, if it completes later, is redundant or the winner, as the nonces say; if it
    cannot (the old IKE_SA is gone), a deletes the redundant IKE_SA b's request created. In the end: one
    IKE_SA, no CHILD_SA, and no IkeSaTerminated for the lineage (the daemon would uninstall its CHILD_SAs)."""
    i, r = psk_peers()
    a, b = pair(i, r, retransmit_tries=6)
    a.config.random.seed += bytes([seed])
    b.config.random.seed += bytes([seed])
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    ca, cb = assert_child_keys_match(drain(a), drain(b))
    a.rekey_ike(1, 1.0)
    b.rekey_ike(1, 1.0)
    transfer(a, b, 1.0, ADDR_I[0], ADDR_R[0])   # a's rekey request: b answers, parks a's new IKE_SA
    transfer(b, a, 1.0, ADDR_R[0], ADDR_I[0])   # b's request (a answers, parks) and b's answer: a resolves
    transfer(a, b, 1.0, ADDR_I[0], ADDR_R[0], drop=True)   # a's answer and a's Delete(IKE) are lost
    a.delete_child(a.list_sas()[0].children[0].spi_in, 2.0)
    now = 2.0
    for _ in range(30):
        roundtrip(a, b, now)
        t = [x for x in (a.get_timer(), b.get_timer()) if x is not None]
        if not t or min(t) > 500.0:
            break
        now = min(t)
        a.handle_timer(now)
        b.handle_timer(now)
    ea, eb = drain(a), drain(b)
    assert not of(ea + eb, IkeSaTerminated)
    sa_a, sa_b = a.list_sas(), b.list_sas()
    assert len(sa_a) == len(sa_b) == 1 and (sa_a[0].spi_i, sa_a[0].spi_r) == (sa_b[0].spi_i, sa_b[0].spi_r)
    assert sa_a[0].children == sa_b[0].children == ()
    assert [e.spi_in for e in of(eb, ChildSaDeleted)] == [cb.spi_in]
    for d in (a, b):
        assert d.connection(1).spis() == [d.connection(1).sa.spi_local]   # every other IKE_SA is gone


def test_lifetimes_drive_rekeys_and_expiry():
    i, r = psk_peers(rekey_time=100.0)
    i = replace(i, children=(child(rekey_time=50.0, life_time=80.0),))
    r = replace(r, children=(child(local="10.2.0.0/16", remote="10.1.0.0/16", rekey_time=0, life_time=0),))
    a, b, ea, eb = establish(i, r)
    first = of(ea, ChildSaEstablished)[0]
    assert 45.0 <= first.rekey_time <= 50.0 and first.life_time == 80.0
    seen = run_timers(a, b, a, 120.0, 20)
    kinds = [type(e) for e in seen]
    assert ChildSaRekeyed in kinds and IkeSaRekeyed in kinds   # child at ~47 s, IKE at ~95 s
    assert not of(seen, IkeSaTerminated)


def test_soft_expiry_from_esp_counters_starts_rekey():
    a, b, ea, eb = establish(*psk_peers())
    ca = of(ea, ChildSaEstablished)[0]
    a.child_sa_soft_expired(ca.spi_out, 5.0)   # the outbound SPI works too
    roundtrip(a, b, 5.0)
    assert of(drain(a), ChildSaRekeyed)[0].old_spi_in == ca.spi_in
    a.child_sa_soft_expired(0xDEAD, 6.0)      # unknown SPI: ignored
    assert a.datagrams_to_send(6.0) == []


def test_hard_lifetime_deletes_child():
    i, r = psk_peers()
    i = replace(i, children=(child(rekey_time=0, life_time=30.0),))
    a, b, ea, eb = establish(i, r)
    a.handle_timer(30.0)
    roundtrip(a, b, 30.0)
    assert of(drain(a), ChildSaDeleted)[0].reason == "expired"
    assert of(drain(b), ChildSaDeleted)[0].reason == "deleted by peer"


def test_ipv6_and_mixed_traffic_selectors():
    from ike.core_config import TrafficSelector as TS

    i, r = psk_peers()
    i = replace(i, children=(replace(child(), local_ts=(TS.from_cidr("10.1.0.0/24"), TS.from_cidr("2001:db8:1::/64")),
                                     remote_ts=(TS.from_cidr("2001:db8:2::/64"), TS.from_cidr("10.2.0.0/24", 6, 443))),))
    r = replace(r, children=(replace(child(), local_ts=(TS.from_cidr("2001:db8:2::/48"), TS.from_cidr("10.2.0.0/16")),
                                     remote_ts=(TS.from_cidr("::/0"), TS.from_cidr("10.1.0.0/16"))),))
    a, b, ea, eb = establish(i, r)
    ca, cb = assert_child_keys_match(ea, eb)
    assert [str(t) for t in ca.local_ts] == ["10.1.0.0/24", "2001:db8:1::/64"]
    assert [str(t) for t in ca.remote_ts] == ["2001:db8:2::/64", "10.2.0.0/24[6/443]"]
    assert set(map(str, cb.remote_ts)) == set(map(str, ca.local_ts))


@pytest.mark.parametrize("ident,san", [
    (Identity("ipv4", "192.0.2.1"), x509.IPAddress(__import__("ipaddress").ip_address("192.0.2.1"))),
    (Identity("ipv6", "2001:db8::1"), x509.IPAddress(__import__("ipaddress").ip_address("2001:db8::1"))),
    (Identity("email", "alice@example.org"), x509.RFC822Name("alice@example.org")),
    (Identity("fqdn", "i.example"), x509.DNSName("i.example")),
])
def test_identity_types_in_certificates(ident, san):
    i, r, ca = cert_peers()
    k, c = ca.issue("initiator", "ecdsa", [san])
    i = replace(i, local_id=ident, credential=replace(i.credential, private_key=k, certificate=c))
    r = replace(r, remote_id=ident)
    a, b, ea, eb = establish(i, r)
    assert of(eb, IkeSaEstablished)[0].remote_id == ident


def test_certreq_selects_the_matching_credential():
    from ike.core_config import Credential

    ca1, ca2 = CaForTests.create("CA one"), CaForTests.create("CA two")
    i, r, _ = cert_peers(ca=ca1)
    k2, c2 = ca2.issue("initiator", "ecdsa", [x509.DNSName("i.example")])
    # the initiator holds certificates of both CAs; the responder trusts (and asks for) CA two only
    i = replace(i, extra_credentials=(Credential(k2, c2),), ca_certs=(ca1.cert, ca2.cert))
    r = replace(r, validator=SimpleValidator([ca2.cert]), ca_certs=(ca2.cert,))
    a, b, ea, eb = establish(i, r)
    assert of(eb, IkeSaEstablished)
    assert b.connection(1).sa.scratch.get("peer_certs")[0] == c2.public_bytes(__import__(
        "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)


def test_truncated_ike_sa_init_is_dropped_without_state():
    i, r = psk_peers()
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    req = a.datagrams_to_send(0.0)[0].data
    cut = req[:60]
    bad = cut[:24] + len(cut).to_bytes(4, "big") + cut[28:]  # consistent header length, truncated SA payload
    b.receive_datagram(bad, ADDR_I, ADDR_R, 0.0)
    # parsed statelessly before anything is allocated: counted, dropped, unanswered
    assert b.datagrams_to_send(0.0) == [] and b.stats["dropped_ParseError"] == 1
    assert b.list_sas() == [] and b.half_open() == 0
    b.receive_datagram(req, ADDR_I, ADDR_R, 0.0)  # the intact request still works
    assert len(b.datagrams_to_send(0.0)) == 1


def test_initial_contact_replaces_stale_ike_sa():
    i, r = psk_peers()
    a, b, ea, eb = establish(i, r)
    # the initiator "restarts": a fresh instance connects again with INITIAL_CONTACT
    a2, _ = pair(i, r)
    a2.config.random.seed = b"restarted"
    a2.initiate("to-r", 10.0)
    roundtrip(a2, b, 10.0)
    ev = drain(b)
    term = of(ev, IkeSaTerminated)
    assert len(term) == 1 and term[0].ike_id == 1 and "INITIAL_CONTACT" in term[0].reason
    assert of(ev, ChildSaDeleted)[0].ike_id == 1 and of(ev, IkeSaEstablished)[0].ike_id == 2
    assert [s.ike_id for s in b.list_sas()] == [2]


def test_simultaneous_ike_delete():
    a, b, ea, eb = establish(*psk_peers())
    a.terminate(1, 1.0)
    b.terminate(1, 1.0)
    roundtrip(a, b, 1.0)
    assert len(of(drain(a), IkeSaTerminated)) == 1 and len(of(drain(b), IkeSaTerminated)) == 1
    assert a.list_sas() == [] and b.list_sas() == [] and a.get_timer() is None


def test_second_ike_sa_to_same_peer_sends_no_initial_contact():
    a, b, ea, eb = establish(*psk_peers())
    a.initiate("to-r", 5.0, reuse=False)
    roundtrip(a, b, 5.0)
    assert not of(drain(b), IkeSaTerminated)
    assert len(b.list_sas()) == 2 and len(a.list_sas()) == 2


@pytest.mark.parametrize("text", ["CN=initiator,O=espresso test", "O=espresso test, CN=initiator"])
def test_dn_identity_in_either_rdn_order(text):
    i, r, ca = cert_peers()
    i = replace(i, local_id=Identity("dn", text))
    r = replace(r, remote_id=Identity.parse("O=espresso test,CN=initiator"))
    a, b, ea, eb = establish(i, r)
    assert of(eb, IkeSaEstablished)[0].remote_id.value == "CN=initiator,O=espresso test"


def test_nat_keepalives_only_behind_nat():
    i, r = psk_peers()
    i = replace(i, encap=True)  # pretends to be behind a NAT
    a, b, ea, eb = establish(i, r)
    t = a.get_timer()
    assert t == pytest.approx(20.0)
    a.handle_timer(t)
    (ka,) = a.datagrams_to_send(t)
    assert ka.data == b"\xff" and not ka.marker and ka.local_port == 4500
    assert b.get_timer() is None or b.get_timer() > 1000  # the responder is not behind a NAT: no keepalives


def test_retransmitted_ike_sa_init_after_establishment_creates_no_second_sa():
    i, r = psk_peers()
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    (init,) = a.datagrams_to_send(0.0)
    b.receive_datagram(init.data, ADDR_I, ADDR_R, 0.0)
    (resp,) = b.datagrams_to_send(0.0)
    b.receive_datagram(init.data, ADDR_I, ADDR_R, 0.5)  # a duplicate while half-open: answered from the cache
    assert [d.data for d in b.datagrams_to_send(0.5)] == [resp.data]
    a.receive_datagram(resp.data, ADDR_R, ADDR_I, 0.5)  # a ignores the duplicate response
    roundtrip(a, b)
    assert len(b.list_sas()) == 1 and b.list_sas()[0].state == "established"
    b.receive_datagram(init.data, ADDR_I, ADDR_R, 1.0)  # a late duplicate after IKE_AUTH: dropped
    assert b.datagrams_to_send(1.0) == [] and len(b.list_sas()) == 1


def test_pfs_invalid_ke_retry_in_create_child_sa():
    i, r = psk_peers()
    r = replace(r, children=(child(local="10.2.0.0/16", remote="10.1.0.0/16", esp_proposals=("aes128gcm16-modp2048",)),))
    i = replace(i, children=(child(start=False, esp_proposals=("aes128gcm16-ecp256-modp2048",)),))
    a, b, ea, eb = establish(i, r)
    assert of(ea, IkeSaEstablished) and not of(ea, ChildSaEstablished)  # childless IKE_SA
    a.initiate("to-r", 1.0, child="net")
    roundtrip(a, b, 1.0)
    ea, eb = drain(a), drain(b)
    ca, cb = assert_child_keys_match(ea, eb)
    assert not of(ea, ChildSaFailed)


def test_ipv6_outer_addresses():
    i, r = psk_peers()
    i = replace(i, remote_addr="2001:db8::2", local_addr="2001:db8::1")
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    for _ in range(6):
        for d in a.datagrams_to_send(0.0):
            assert d.addr[0] == "2001:db8::2"
            b.receive_datagram(d.data, ("2001:db8::1", d.local_port), ("2001:db8::2", d.addr[1]), 0.0)
        for d in b.datagrams_to_send(0.0):
            a.receive_datagram(d.data, ("2001:db8::2", d.local_port), ("2001:db8::1", d.addr[1]), 0.0)
    ea, eb = drain(a), drain(b)
    ca, cb = assert_child_keys_match(ea, eb)
    assert not ca.encap and ca.remote_addr == ("2001:db8::2", 500) and cb.remote_addr == ("2001:db8::1", 500)


def test_drop_counters():
    i, r = psk_peers()
    a, b = pair(i, r, retransmit_tries=1)
    a.initiate("to-r", 0.0)
    transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
    transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    auth = a.datagrams_to_send(0.0)[0]
    forged = auth.data[:-1] + bytes([auth.data[-1] ^ 1])
    b.receive_datagram(forged, ADDR_I, ADDR_R, 0.0)
    b.receive_datagram(auth.data, ADDR_I, ADDR_R, 0.0)
    b.receive_datagram(auth.data, ADDR_I, ADDR_R, 0.0)
    assert b.stats["dropped_integrity"] == 1 and b.stats["duplicates_answered"] == 1


def test_per_address_half_open_thresholds():
    from ike.dh import create_dh
    from ike.message import Message
    from ike.payloads import KePayload, NoncePayload, SaPayload
    from ike.proposal import parse_proposals

    i, r = psk_peers()
    _, b = pair(i, r, cookie_threshold_ip=2, half_open_limit_ip=4)
    props = parse_proposals(["aes128gcm16-prfsha256-ecp256"])
    ke = create_dh(19, __import__("os").urandom).public

    def init(n: int) -> bytes:
        return Message(34, n + 1, 0, 0, False, True, [SaPayload(props), KePayload(19, ke),
                                                        NoncePayload(bytes([n]) * 32)]).encode_plain()

    for n in range(2):
        b.receive_datagram(init(n), ("198.51.100.9", 500), ADDR_R, 0.0)
    assert b.half_open() == 2 and b.stats["cookies_sent"] == 0
    b.receive_datagram(init(2), ("198.51.100.9", 500), ADDR_R, 0.0)  # third from the same address: a COOKIE
    assert b.stats["cookies_sent"] == 1 and b.half_open() == 2
    b.receive_datagram(init(3), ("198.51.100.10", 500), ADDR_R, 0.0)  # another address is not affected
    assert b.half_open() == 3


def test_child_sa_count_is_bounded():
    a, b, ea, eb = establish(*psk_peers(), max_child_sas=3)
    conn = a.connection(1)
    for n in range(4):
        conn.create_child(child(f"c{n}", local=f"10.1.{n + 1}.0/24"), 1.0 + n)
        roundtrip(a, b, 1.0 + n)
    ev = drain(a)
    assert len(of(ev, ChildSaEstablished)) == 2 and of(ev, ChildSaFailed)[0].notify == 35
    assert len(b.list_sas()[0].children) == 3 and not of(ev, IkeSaTerminated)


def test_transport_mode_negotiated_and_listed():
    i, r = psk_peers()
    i = replace(i, children=(child(mode="transport"),))
    r = replace(r, children=(child(local="10.2.0.0/16", remote="10.1.0.0/16", mode="transport"),))
    a, b, ea, eb = establish(i, r)
    ca, cb = assert_child_keys_match(ea, eb)
    assert ca.mode == cb.mode == "transport"
    info = a.list_sas()[0].children[0]
    assert info.mode == "transport" and not info.encap and info.installed_at == 0.0
    # a responder configured for tunnel mode answers without USE_TRANSPORT_MODE: tunnel it is
    r2 = replace(r, children=(child(local="10.2.0.0/16", remote="10.1.0.0/16"),))
    a, b, ea, eb = establish(i, r2)
    assert of(ea, ChildSaEstablished)[0].mode == "tunnel" and of(eb, ChildSaEstablished)[0].mode == "tunnel"


def test_responder_choosing_a_later_proposal_is_accepted():
    """RFC 7296 3.3.1: the answer carries the accepted proposal's own number (here 2), not 1."""
    i, r = psk_peers()
    i = replace(i, ike_proposals=("aes256-sha256-modp2048", "aes128gcm16-prfsha256-ecp256"),
                children=(child(esp_proposals=("aes256-sha256", "chacha20poly1305")),))
    r = replace(r, ike_proposals=("aes128gcm16-prfsha256-ecp256",),
                children=(child(local="10.2.0.0/16", remote="10.1.0.0/16", esp_proposals=("chacha20poly1305",)),))
    a, b, ea, eb = establish(i, r)
    assert of(ea, IkeSaEstablished)[0].proposal == "aes128gcm16-prfsha256-ecp256"
    assert of(ea, ChildSaEstablished)[0].suite == "chacha20poly1305"
    assert of(eb, ChildSaEstablished)[0].suite == "chacha20poly1305"


def test_initiate_reuses_an_existing_ike_sa_with_the_peer():
    """QA: `initiate` twice, then from the other side, gave three ESTABLISHED IKE_SAs with the same TS. Like
    charon, initiate reuses an IKE_SA with that peer (connecting or established, either side's)."""
    i, r = psk_peers()
    r = replace(r, remote_addr=ADDR_I[0])
    a, b = pair(i, r)
    first = a.initiate("to-r", 0.0)
    assert a.initiate("to-r", 0.0) == first  # still CONNECTING: the same one
    roundtrip(a, b, 0.0)
    assert a.initiate("to-r", 1.0) == first  # ESTABLISHED: the same one, nothing sent
    assert a.datagrams_to_send(1.0) == []
    (theirs,) = b.list_sas()
    assert b.initiate("from-i", 1.0) == theirs.ike_id and b.datagrams_to_send(1.0) == []
    roundtrip(a, b, 1.0)
    assert len(a.list_sas()) == 1 and len(b.list_sas()) == 1
    assert len(of(drain(a), IkeSaEstablished)) == 1


def test_core_reads_no_clock_certificates_need_an_injected_wall_clock():
    """STYLE: the core reads no clock. CoreConfig.wall_clock defaults to None: certificate authentication is
    then refused with a reason instead of silently reading the system time; the daemon injects one."""
    from ike.core_config import CoreConfig
    from ike.daemon import utc_wall_clock
    from ike.dispatcher import Dispatcher

    assert CoreConfig(peers=()).wall_clock is None
    assert utc_wall_clock(0.0).tzinfo is not None
    i, r, ca = cert_peers()
    a, b = pair(i, r)
    b = Dispatcher(replace(b.config, wall_clock=None))
    a.initiate("to-r", 0.0)
    roundtrip(a, b, 0.0)
    failed = of(drain(b), AuthenticationFailed)
    assert failed and "no wall clock" in failed[0].reason, failed
    assert not of(drain(a), ChildSaEstablished)


def test_rekey_of_a_child_sa_being_deleted_is_answered_temporary_failure():
    """RFC 7296 2.25.1: a rekey request for a CHILD_SA we are deleting gets TEMPORARY_FAILURE, not
    CHILD_SA_NOT_FOUND. With CHILD_SA_NOT_FOUND the peer would drop the SA and create it again (2.25), so a
    user's terminate that raced the peer's rekey, its answer overtaking its Delete, would bring the SA back."""
    a, b, ea, eb = establish(*psk_peers())
    ca, cb = assert_child_keys_match(ea, eb)
    a.delete_child(ca.spi_in, 1.0)               # a's Delete is on its way ...
    b.rekey_child(cb.spi_in, 1.0)                # ... while b rekeys the same CHILD_SA
    transfer(b, a, 1.0, ADDR_R[0], ADDR_I[0])    # b's rekey request reaches a
    out = a.datagrams_to_send(1.0)               # a's Delete request and its answer to the rekey
    assert len(out) == 2
    out.sort(key=lambda dg: not dg.data[19] & 0x20)  # the answer (IKE header flag R) overtakes the Delete
    for dg in out:
        b.receive_datagram(dg.data, (ADDR_I[0], dg.local_port), (ADDR_R[0], dg.addr[1]), 1.0)
    eb2 = drain(b)
    assert [e.notify for e in of(eb2, ChildSaFailed)] == [43]    # TEMPORARY_FAILURE
    assert not of(eb2, ChildSaEstablished)
    assert [e.spi_in for e in of(eb2, ChildSaDeleted)] == [cb.spi_in]  # then a's Delete removed it
    for now in (2.0, 40.0, 80.0):  # b's rekey retry (10-30 s later) finds nothing to rekey: nothing comes back
        b.handle_timer(now)
        a.handle_timer(now)
        roundtrip(a, b, now)
    assert a.list_sas()[0].children == () and b.list_sas()[0].children == ()
    assert not of(drain(a) + drain(b), ChildSaEstablished)
