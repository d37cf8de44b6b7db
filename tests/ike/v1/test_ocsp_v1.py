"""IKEv1 certificates checked by OCSP: the ca-profile's ``revocation = "ocsp"`` reaches main mode through the same
Validator as IKEv2, in both roles. The OCSP responders (pki.ocsp, one per CA) answer in memory through the
checker's transport, so what is asserted is the IKEv1 path: a good status lets main mode finish, a revoked one
ends it with AUTHENTICATION-FAILED told to the peer, and an unreachable responder fails closed."""
from __future__ import annotations

import datetime as _dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp as x509_ocsp

from ike.v1.auth import SignatureAuth
from ike.v1.session import V1Config
from pki.ocsp import OcspCertStatus, OcspChecker, OcspResponder, SerialStatus
from pki.profile import RevocationPolicy
from pki.validate import TrustAnchor, Validator
from tests.ike.v1.memory import events, exchange
from tests.ike.v1.sigpki import V1Pki, wall_clock

URL = "http://ocsp.test/"


class _Responders:
    """One OCSP responder per CA (each signs for what it issued), reached by the issuer key hash of the request."""

    def __init__(self, pki: V1Pki, revoked: tuple[str, ...] = (), down: bool = False) -> None:
        bad = {pki.creds[n].cert.serial_number for n in revoked}
        when = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)

        def status(serial: int) -> SerialStatus:
            if serial in bad:
                return SerialStatus(OcspCertStatus.REVOKED, when, x509.ReasonFlags.key_compromise)
            return SerialStatus(OcspCertStatus.GOOD)

        self.down, self.asked = down, []
        self.by_key = {}
        for ca in (pki.root, pki.sub):
            req = x509_ocsp.OCSPRequestBuilder().add_certificate(ca.ca.cert, ca.ca.cert, hashes.SHA1()).build()
            self.by_key[req.issuer_key_hash] = OcspResponder(ca.ca.cert, ca.ca.cert, ca.ca.key, status)

    def __call__(self, url: str, body: bytes) -> bytes:
        if self.down:
            raise OSError("connection refused")
        req = x509_ocsp.load_der_ocsp_request(body)
        self.asked.append((url, req.serial_number))
        return self.by_key[req.issuer_key_hash].respond(body, _dt.datetime.now(_dt.timezone.utc))


def _auth(pki: V1Pki, name: str, responders: _Responders) -> SignatureAuth:
    anchor = TrustAnchor(pki.root.ca.cert, RevocationPolicy(mode="ocsp", ocsp_url=URL))
    validator = Validator([anchor], ocsp=OcspChecker(URL, transport=responders))
    c = pki.creds[name]
    return SignatureAuth(c.key, c.cert, validator.verify, wall_clock, chain=(pki.sub.ca.cert,),
                         ca_certs=(pki.root.ca.cert,))


def _run(pki: V1Pki, responders: _Responders):  # type: ignore[no-untyped-def]
    def cfg(local: str, remote: str, lts: str, rts: str, name: str) -> V1Config:
        return V1Config("v1", b"", local, remote, lts, rts, ("127.0.0.1", 500), ("127.0.0.2", 500),
                        signature=_auth(pki, name, responders))
    ex = exchange(cfg("e.test", "s.test", "10.0.1.0/24", "10.0.2.0/24", "e"),
                  cfg("s.test", "e.test", "10.0.2.0/24", "10.0.1.0/24", "s"))
    return ex.i, ex.r


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_good_status_by_ocsp_completes_main_mode(kind):
    pki = V1Pki(kind)
    responders = _Responders(pki)
    i, r = _run(pki, responders)
    assert (i.state, r.state) == ("established", "established"), (i.last_error, r.last_error)
    asked = {serial for _, serial in responders.asked}
    # each side asked about the other's certificate and the intermediate, at the profile's URL
    assert {pki.creds["e"].cert.serial_number, pki.creds["s"].cert.serial_number, pki.sub.ca.cert.serial_number} \
        <= asked and {url for url, _ in responders.asked} == {URL}


@pytest.mark.parametrize("who", ["e", "s"])
def test_revoked_by_ocsp_is_refused(who):
    """The initiator's certificate (e) revoked: the responder refuses MM5 and tells it AUTHENTICATION-FAILED.
    The responder's (s): the initiator refuses MM6; no quick mode runs either way."""
    i, r = _run(pki := V1Pki("ecdsa"), _Responders(pki, revoked=(who,)))
    refusing = r if who == "e" else i
    assert refusing.state == "failed" and "revoked" in refusing.last_error and "[ocsp]" in refusing.last_error, \
        refusing.last_error
    if who == "e":
        assert i.state == "failed" and i.last_error == "peer sent AUTHENTICATION-FAILED", i.last_error
    assert not any(type(e).__name__ == "ChildSaEstablished" for e in events(i) + events(r))


def test_unreachable_responder_fails_closed():
    i, r = _run(pki := V1Pki("ecdsa"), _Responders(pki, down=True))
    assert r.state == "failed" and "ocsp" in r.last_error.lower(), r.last_error
    assert i.state == "failed" and i.last_error == "peer sent AUTHENTICATION-FAILED", i.last_error
