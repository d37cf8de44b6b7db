"""IKEv1 main mode with certificates (ike/v1/auth.py) against strongSwan charon (``version = 1``, ``auth = pubkey``).

Both ends' certificates are issued by an intermediate CA under a root; each end trusts the root only and gets the
intermediate in the peer's CERT payloads. Evidence: RSA (method 3) and ECDSA P-256 (method 9) main modes with
either side initiating, charon logging that our signature verified and the SKEYID it derived (RFC 2409 5.1's
signature form) equal to ours; a revoked certificate (the intermediate's CRL) refused each way: charon refuses
ours and tells us so with an authenticated AUTHENTICATION-FAILED notify; we refuse charon's with a logged reason
and the same notify, which charon reports.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ike.events import AuthenticationFailed, ChildSaEstablished
from ike.v1.session import Phase1Done, V1Config, V1Session
from tests.ike.v1.sigpki import V1Pki
from tests.interop import strongswan as ss
from tests.interop.test_ikev1_strongswan import (  # noqa: F401 - lab is a fixture
    _drive,
    _serve_while_charon_initiates,
    _V1Conn,
    lab,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

#: what charon logs for a signature of each kind in IKEv1 (pubkey_v1_authenticator)
SCHEME = {"rsa": "RSA_EMSA_PKCS1_NULL", "ecdsa": "ECDSA_WITH_NULL"}


#: charon's connection: certificates both ways, PFS
_V1CertConn = partial(_V1Conn, auth="pubkey", esp="aes128-sha256-modp2048")


def _charon(lab_: ss.Lab, tmp_path: Path, pki: V1Pki, s_site: ss.Site, e_site: ss.Site,
            ike: str = "aes128-sha256-modp2048") -> ss.Charon:
    """charon trusting the root, holding its own certificate and the intermediate (which it sends in CERT), with
    the CRLs of both CAs; ``ike`` its phase-1 proposal."""
    charon = ss.Charon(tmp_path / "charon", s_site.netns, log_levels={"ike": 4, "cfg": 2})
    lab_.charons.append(charon)
    charon.add_ca(pki.root.ca)
    charon.add_ca(pki.sub.ca)
    charon.add_credential(pki.creds["s"])
    crl_dir = charon.swanctl_dir / "x509crl"
    crl_dir.mkdir(exist_ok=True)
    for n, crl in enumerate(pki.crls()):
        (crl_dir / f"ca{n}.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    charon.connections.append(_V1CertConn(s_site.outer, e_site.outer, ike=ike))
    charon.start()
    return charon


def _cfg(pki: V1Pki, e_site, s_site) -> V1Config:  # type: ignore[no-untyped-def]
    return V1Config("v1", b"", "e.test", "s.test", "10.98.1.1/32", "10.98.2.1/32", (e_site.outer, 500),
                    (s_site.outer, 500), signature=pki.auth("e"), natt=False)  # a bare port-500 socket


def _initiate(lab_: ss.Lab, tmp_path: Path, pki: V1Pki):  # type: ignore[no-untyped-def]
    e, s = lab_.pair()
    charon = _charon(lab_, tmp_path, pki, s, e)
    (sock,) = ss.netns_sockets(e.netns, [(e.outer, 500)])
    try:
        session = V1Session(_cfg(pki, e, s), os.urandom)
        events = _drive(session, sock, (s.outer, 500))
    finally:
        sock.close()
    return charon, session, events


def _respond(lab_: ss.Lab, tmp_path: Path, pki: V1Pki):  # type: ignore[no-untyped-def]
    e, s = lab_.pair()
    charon = _charon(lab_, tmp_path, pki, s, e)
    (sock,) = ss.netns_sockets(e.netns, [(e.outer, 500)])
    session, events = _serve_while_charon_initiates(charon, sock, _cfg(pki, e, s), (s.outer, 500),
                                                    serve_timeout=12, swanctl_timeout=8)
    return charon, session, events


def _same_skeyid(charon: ss.Charon, session: V1Session) -> None:
    dumps = {label: data for label, data, _ in ss.parse_dumps(charon.log())}
    assert session.keys is not None
    for label, ours in (("SKEYID", session.keys.skeyid), ("SKEYID_d", session.keys.skeyid_d),
                        ("SKEYID_e", session.keys.skeyid_e)):
        assert dumps.get(label) == ours, (label, sorted(dumps))


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_espresso_initiates_with_a_certificate(lab, tmp_path, kind):  # noqa: F811
    pki = V1Pki(kind)
    charon, session, events = _initiate(lab, tmp_path, pki)
    assert session.state == "established", (session.state, session.dropped, session.last_error, charon.tail(60))
    assert [type(ev) for ev in events] == [Phase1Done, ChildSaEstablished]
    log = charon.wait_for(lambda: (lg := charon.log()) and "authentication of 'e.test'" in lg and lg,
                          "charon verifying espresso's signature")
    assert f"authentication of 'e.test' with {SCHEME[kind]} successful" in log, charon.tail(60)
    assert "received cert request for 'O=espresso interop, CN=v1 root" in log, charon.tail(60)
    assert "generating ID_PROT response 0 [ ID CERT CERT SIG ]" in log, charon.tail(60)
    _same_skeyid(charon, session)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_charon_initiates_to_espresso_with_a_certificate(lab, tmp_path, kind):  # noqa: F811
    pki = V1Pki(kind)
    charon, session, events = _respond(lab, tmp_path, pki)
    assert session is not None and session.state in ("r_qm3", "established"), (
        session and (session.state, session.dropped, session.last_error), charon.tail(60))
    assert any(isinstance(ev, Phase1Done) for ev in events)
    log = charon.wait_for(lambda: (lg := charon.log()) and "authentication of 'e.test'" in lg and lg,
                          "charon verifying espresso's signature")
    assert f"authentication of 'e.test' with {SCHEME[kind]} successful" in log, charon.tail(60)
    assert "parsed ID_PROT response 0 [ ID CERT CERT SIG ]" in log, charon.tail(60)
    _same_skeyid(charon, session)


def test_charon_refuses_our_revoked_certificate(lab, tmp_path):  # noqa: F811
    pki = V1Pki("ecdsa", revoked=("e",))
    charon, session, events = _initiate(lab, tmp_path, pki)
    log = charon.wait_for(lambda: (lg := charon.log()) and "revoked" in lg and lg, "charon refusing our certificate")
    assert "certificate was revoked" in log, charon.tail(60)
    assert session.state == "failed" and session.last_error == "peer sent AUTHENTICATION-FAILED", (
        session.state, session.last_error, charon.tail(60))
    (failed,) = [ev for ev in events if isinstance(ev, AuthenticationFailed)]
    assert not failed.local_side


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_espresso_refuses_charons_revoked_certificate(lab, tmp_path, role):  # noqa: F811
    pki = V1Pki("rsa", revoked=("s",))
    charon, session, events = (_initiate if role == "initiator" else _respond)(lab, tmp_path, pki)
    assert session is not None and session.state == "failed", (session and session.state, charon.tail(60))
    assert "certificate rejected: revoked" in session.last_error, session.last_error
    (failed,) = [ev for ev in events if isinstance(ev, AuthenticationFailed)]
    assert failed.local_side and "revoked" in failed.reason
    charon.wait_for(lambda: "received AUTHENTICATION_FAILED" in charon.log() or None,
                    "charon to hear AUTHENTICATION-FAILED")
