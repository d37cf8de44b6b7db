"""IKEv1 aggressive mode in memory: PSK and signatures, quick mode after it as after main mode, the keys main mode
would derive from the same values, and the refusals: a responder not configured for it, a wrong PSK, a wrong identity,
a revoked certificate."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest

from ike.events import AuthenticationFailed, ChildSaEstablished
from ike.v1 import keymat as km
from ike.v1.message import Exchange, Payload, PayloadType, pull_header, pull_message, push_message
from ike.v1.responder import V1Responder
from ike.v1.session import Phase1Done, V1Config, V1Session
from tests.ike.v1.memory import events, exchange
from tests.ike.v1.sigpki import V1Pki


def _cfg(local: str, remote: str, lts: str, rts: str, psk: bytes = b"secret", **kw) -> V1Config:  # type: ignore
    return V1Config("v1", psk, local, remote, lts, rts, ("127.0.0.1", 500), ("127.0.0.2", 500), aggressive=True,
                    **kw)


def _pair(i_kw: dict | None = None, r_kw: dict | None = None):  # type: ignore[no-untyped-def]
    ex = exchange(_cfg("e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24", **(i_kw or {})),
                  _cfg("s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", **(r_kw or {})))
    return ex.i, ex.r, ex.ins[0]


def _assert_up(i: V1Session, r: V1Session) -> None:
    assert (i.state, r.state, i.dropped, r.dropped) == ("established", "established", 0, 0), \
        (i.last_error, r.last_error)
    ei, er = events(i), events(r)
    assert [type(e) for e in ei] == [type(e) for e in er] == [Phase1Done, ChildSaEstablished]
    assert (ei[1].spi_in, ei[1].spi_out) == (er[1].spi_out, er[1].spi_in)
    assert (ei[1].enc_key_out, ei[1].integ_key_out) == (er[1].enc_key_in, er[1].integ_key_in)
    assert i.keys == r.keys and (i.cky_i, i.cky_r) == (r.cky_i, r.cky_r)


@pytest.mark.parametrize("pfs", [14, None])
def test_psk_aggressive_mode_then_quick_mode(pfs):
    i, r, am1 = _pair({"pfs_group": pfs}, {"pfs_group": pfs})
    _assert_up(i, r)
    h, payloads = pull_message(am1)
    assert h.exchange == Exchange.AGGRESSIVE and not h.encrypted
    assert [p.type for p in payloads][:4] == [PayloadType.SA, PayloadType.KE, PayloadType.NONCE, PayloadType.ID]
    # SKEYID is main mode's: prf(psk, Ni | Nr) (RFC 2409 5.4 changes the exchange, not the keys)
    assert i.keys is not None
    assert i.keys.skeyid == km.skeyid_psk("sha256", b"secret", i._ni, i._nr)


def test_am3_is_encrypted_and_a_plain_am3_is_accepted_too():
    i = V1Session(_cfg("e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24"), os.urandom)
    i.initiate(0.0)
    (am1,) = i.datagrams_to_send()
    r = V1Responder(_cfg("s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24"), os.urandom, am1, 0.0)
    (am2,) = r.datagrams_to_send()
    assert not pull_header(am2).encrypted and r.state == "r_am3"
    i.receive_datagram(am2, 0.0)
    am3, _qm1 = i.datagrams_to_send()
    assert pull_header(am3).exchange == Exchange.AGGRESSIVE and pull_header(am3).encrypted
    # the same payloads sent the RFC's way, in the clear (the phase-1 IV is still the initial one)
    assert r.keys is not None
    payloads = km.Phase1Cipher(r.keys).decrypt(am3)[1]
    assert [p.type for p in payloads][:1] == [PayloadType.HASH]
    plain = push_message(r.cky_i, r.cky_r, Exchange.AGGRESSIVE, 0, 0, payloads)
    r.receive_datagram(plain, 0.0)
    assert (r.state, r.dropped) == ("r_qm1", 0), r.last_error
    assert [type(e) for e in events(r)] == [Phase1Done]


def test_responder_refuses_aggressive_mode_unless_configured():
    i = V1Session(_cfg("e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24"), os.urandom)
    i.initiate(0.0)
    (am1,) = i.datagrams_to_send()
    with pytest.raises(Exception, match="aggressive mode is not enabled"):
        V1Responder(replace(_cfg("s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24"), aggressive=False),
                    os.urandom, am1, 0.0)


def test_aggressive_is_off_by_default():
    assert V1Config("v1", b"k", "a", "b", "10.0.0.0/24", "10.0.1.0/24", ("127.0.0.1", 500),
                    ("127.0.0.2", 500)).aggressive is False


def test_wrong_psk_is_refused_by_the_initiator():
    i, r, _ = _pair(r_kw={"psk": b"other"})
    assert i.state == "am2" and i.dropped >= 1 and "HASH_R" in i.last_error
    assert r.state == "r_am3" and events(i) == []


def test_wrong_identity_is_refused_by_the_responder():
    i = V1Session(_cfg("x.test", "s.test", "10.0.1.0/24", "10.0.2.0/24"), os.urandom)
    i.initiate(0.0)
    (am1,) = i.datagrams_to_send()
    with pytest.raises(Exception, match="remote_id"):
        V1Responder(_cfg("s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24"), os.urandom, am1, 0.0)


def test_forged_am3_is_dropped():
    i = V1Session(_cfg("e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24"), os.urandom)
    i.initiate(0.0)
    (am1,) = i.datagrams_to_send()
    r = V1Responder(_cfg("s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24"), os.urandom, am1, 0.0)
    r.datagrams_to_send()
    h = pull_header(am1)
    forged = push_message(h.cookie_i, r.cky_r, Exchange.AGGRESSIVE, 0, 0, [Payload(PayloadType.HASH, b"\0" * 32)])
    r.receive_datagram(forged, 0.0)
    assert r.state == "r_am3" and r.dropped == 1 and "HASH_I" in r.last_error and events(r) == []


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_signature_aggressive_mode(kind):
    pki = V1Pki(kind)
    i, r, _ = _pair({"signature": pki.auth("e"), "psk": b""}, {"signature": pki.auth("s"), "psk": b""})
    _assert_up(i, r)
    assert i.keys is not None and i.keys.skeyid == km.skeyid_sig("sha256", i._ni, i._nr, i._dh.shared(i._gxr))


def test_revoked_initiator_is_refused_in_am3():
    pki = V1Pki("ecdsa", revoked=("e",))
    _, r, _ = _pair({"signature": pki.auth("e"), "psk": b""}, {"signature": pki.auth("s"), "psk": b""})
    evs = events(r)
    assert r.state == "failed" and [type(e) for e in evs] == [AuthenticationFailed] and "revoked" in evs[0].reason
    assert r.dropped >= 1  # the quick mode that follows AM3 at once finds no ISAKMP SA


def test_revoked_responder_is_refused_in_am2():
    pki = V1Pki("rsa", revoked=("s",))
    i, _, _ = _pair({"signature": pki.auth("e"), "psk": b""}, {"signature": pki.auth("s"), "psk": b""})
    assert i.state == "failed" and "revoked" in i.last_error
    assert [type(e) for e in events(i)] == [AuthenticationFailed]


def test_the_initiator_hears_am3_refused_and_fails_at_once():
    """AM3 has no answer in aggressive mode: a responder that refuses it says so with an authenticated notify,
    which ends the initiator's SA with that reason (it used to wait out its quick mode's retransmissions)."""
    pki = V1Pki("ecdsa", revoked=("e",))
    i, r, _ = _pair({"signature": pki.auth("e"), "psk": b""}, {"signature": pki.auth("s"), "psk": b""})
    assert r.state == "failed"
    assert i.state == "failed" and i.last_error == "peer sent AUTHENTICATION-FAILED", (i.state, i.last_error)
    # phase 1 was up from its side once it sent AM3; then the refusal
    assert [type(e).__name__ for e in events(i)] == ["Phase1Done", "AuthenticationFailed"]
