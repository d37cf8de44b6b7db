"""IKEv1 main mode with signatures in memory: RSA and ECDSA through an intermediate CA with CRLs, identities of
each kind matched against the certificate, and every way authentication fails ending the exchange with a reason
and the ISAKMP notify that names it (never an exception, never a silent drop)."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ike.events import AuthenticationFailed, ChildSaEstablished
from ike.v1 import auth as v1auth
from ike.v1.session import Phase1Done, V1Config, V1Session
from tests.ike.v1.memory import events, exchange
from tests.ike.v1.sigpki import V1Pki


def _cfg(local: str, remote: str, lts: str, rts: str, sig) -> V1Config:  # type: ignore[no-untyped-def]
    return V1Config("v1", b"", local, remote, lts, rts, ("127.0.0.1", 500), ("127.0.0.2", 500), signature=sig)


def _run(pki_i: V1Pki, pki_r: V1Pki | None = None, *, i_remote: str = "s.test", r_remote: str = "e.test",
         i_auth=None, r_auth=None):  # type: ignore[no-untyped-def]
    pki_r = pki_r or pki_i
    ex = exchange(_cfg("e.test", i_remote, "10.0.1.0/24", "10.0.2.0/24", i_auth or pki_i.auth("e")),
                  _cfg("s.test", r_remote, "10.0.2.0/24", "10.0.1.0/24", r_auth or pki_r.auth("s")))
    return ex.i, ex.r


@pytest.mark.parametrize("kind,method", [("rsa", 3), ("ecdsa", 9), ("ecdsa384", 10)])
def test_signature_main_mode_through_an_intermediate(kind, method):
    pki = V1Pki(kind)
    i, r = _run(pki)
    assert (i.state, r.state, i.dropped, r.dropped) == ("established", "established", 0, 0), \
        (i.last_error, r.last_error)
    assert i.config.auth_method == method
    ei, er = events(i), events(r)
    assert [type(e) for e in ei] == [type(e) for e in er] == [Phase1Done, ChildSaEstablished]
    assert ei[1].enc_key_out == er[1].enc_key_in


def _refused(i: V1Session, r: V1Session, who: str, notify: str, why: str) -> None:
    failing = r if who == "responder" else i
    assert failing.state == "failed" and why in failing.last_error, failing.last_error
    evs = [e for e in events(failing) if isinstance(e, AuthenticationFailed)]
    assert len(evs) == 1 and evs[0].local_side and why in evs[0].reason
    if who == "responder":  # the initiator hears why, authenticated, and gives up
        assert i.state == "failed" and i.last_error == f"peer sent {notify}", i.last_error
        evs = [e for e in events(i) if isinstance(e, AuthenticationFailed)]
        assert len(evs) == 1 and not evs[0].local_side


def test_revoked_initiator_is_refused_by_the_responder():
    i, r = _run(V1Pki("ecdsa", revoked=("e",)))
    _refused(i, r, "responder", "AUTHENTICATION-FAILED", "revoked")


def test_revoked_responder_is_refused_by_the_initiator():
    i, r = _run(V1Pki("rsa", revoked=("s",)))
    _refused(i, r, "initiator", "AUTHENTICATION-FAILED", "revoked")


def test_untrusted_ca_is_refused():
    a, b = V1Pki("ecdsa"), V1Pki("ecdsa")
    i, r = _run(a, r_auth=replace(b.auth("s"), validator=b.validator().verify), i_auth=replace(
        a.auth("e"), validator=b.validator().verify))
    _refused(i, r, "responder", "AUTHENTICATION-FAILED", "certificate rejected")


def test_identity_not_in_the_certificate_is_refused():
    pki = V1Pki("ecdsa")
    i, r = _run(pki, i_auth=pki.auth("e"), r_remote="other.test")
    _refused(i, r, "responder", "INVALID-ID-INFORMATION", "is not the configured")


def test_claimed_identity_must_be_in_the_certificate():
    """The initiator claims an identity the responder expects, with a certificate that does not carry it."""
    pki = V1Pki("ecdsa")
    other = pki.sub.issue("x", "x.test")
    i_auth = replace(pki.auth("e"), private_key=other.key, certificate=other.cert)
    i, r = _run(pki, i_auth=i_auth)
    _refused(i, r, "responder", "INVALID-ID-INFORMATION", "is not in the certificate")


def test_wrong_key_for_the_certificate_is_an_invalid_signature():
    pki = V1Pki("rsa")
    i_auth = replace(pki.auth("e"), private_key=rsa.generate_private_key(65537, 2048))
    i, r = _run(pki, i_auth=i_auth)
    _refused(i, r, "responder", "INVALID-SIGNATURE", "signature does not verify")


def test_methods_must_agree():
    """An ECDSA initiator and an RSA responder propose different methods: no transform is chosen."""
    with pytest.raises(Exception):  # noqa: B017 - the responder refuses MM1 (ParseError), before any state
        _run(V1Pki("ecdsa"), V1Pki("rsa"))


def test_sign_and_verify_known_forms():
    """RSA signs HASH_I with PKCS#1 v1.5 padding and no DigestInfo; ECDSA r||s at the curve's size."""
    pki = V1Pki("rsa")
    digest = os.urandom(32)
    sig = v1auth.sign(pki.creds["e"].key, digest, os.urandom)
    pub = pki.creds["e"].cert.public_key()
    from cryptography.hazmat.primitives.asymmetric import padding
    assert pub.recover_data_from_signature(sig, padding.PKCS1v15(), None) == digest
    v1auth.verify_signature(3, pki.creds["e"].cert, digest, sig)
    with pytest.raises(v1auth.V1AuthError) as info:
        v1auth.verify_signature(3, pki.creds["e"].cert, os.urandom(32), sig)
    assert info.value.notify == v1auth.INVALID_SIGNATURE
    epki = V1Pki("ecdsa384")
    sig = v1auth.sign(epki.creds["e"].key, digest, os.urandom)
    assert len(sig) == 96
    v1auth.verify_signature(10, epki.creds["e"].cert, digest, sig)
    with pytest.raises(v1auth.V1AuthError):
        v1auth.verify_signature(9, epki.creds["e"].cert, digest, sig)  # method names another curve


@pytest.mark.parametrize("text,kind", [("e.test", 2), ("10.0.0.1", 1), ("user@e.test", 3),
                                       ("C=CH, O=espresso, CN=e.test", 9), ("2001:db8::1", 5)])
def test_identity_bodies_round_trip(text, kind):
    body = v1auth.id_body(text)
    assert body[0] == kind and body[1:4] == b"\0\0\0"
    from ike.core_config import Identity
    from ike.tasks.ike_auth import identities_match
    assert identities_match(v1auth.identity_of(body), Identity.parse(text))


def test_dn_identity_is_matched_against_the_subject():
    pki = V1Pki("ecdsa")
    subject = "O=espresso interop, CN=e.test"  # strongSwan order; the certificate's subject is the same DN
    _, r = _run(pki, r_remote=subject, i_auth=pki.auth("e"))
    assert r.state == "failed"  # initiator sent its FQDN, the responder wants the DN
    i2 = V1Session(_cfg(subject, "s.test", "10.0.1.0/24", "10.0.2.0/24", pki.auth("e")), os.urandom)
    body = i2._local_id_body()
    assert body[0] == 9 and body[4:] == pki.creds["e"].cert.subject.public_bytes()


def test_unsupported_key_is_a_configuration_error():
    pki = V1Pki("ecdsa")
    with pytest.raises(ValueError):
        replace(pki.auth("e"), private_key=ec.generate_private_key(ec.SECP224R1()))
