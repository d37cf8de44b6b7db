"""The peer's certificate checked by pki.validate.Validator (the real validator, not the test stand-in)."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ike.authenticators import pki_validator
from ike.events import AuthenticationFailed, ChildSaEstablished, IkeSaEstablished, IkeSaTerminated

from .helpers import NOW, CaForTests, cert_peers, drain, pair, roundtrip

validate = pytest.importorskip("pki.validate")


def _validator(ca, crl=None):  # type: ignore[no-untyped-def]
    from pki.revocation import CrlCache

    cache = CrlCache(fetch=None)
    if crl is not None:
        cache.add(crl)
    policy = validate.ValidationPolicy(check_revocation=crl is not None)
    return pki_validator(validate.Validator([ca.cert], policy, crl_source=cache))


def _run(i, r):  # type: ignore[no-untyped-def]
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    roundtrip(a, b)
    return drain(a), drain(b)


def test_pki_validator_accepts_and_matches_identity():
    i, r, ca = cert_peers("rsa", "ecdsa")
    v = _validator(ca)
    ea, eb = _run(replace(i, validator=v), replace(r, validator=v))
    assert any(isinstance(e, ChildSaEstablished) for e in ea)
    assert any(isinstance(e, IkeSaEstablished) for e in eb)


def test_pki_validator_unknown_ca():
    i, r, ca = cert_peers()
    other = CaForTests.create("Elsewhere CA")
    ea, eb = _run(i, replace(r, validator=_validator(other)))
    fail = [e for e in eb if isinstance(e, AuthenticationFailed)][0]
    assert "untrusted" in fail.reason and fail.local_side
    assert [e for e in ea if isinstance(e, IkeSaTerminated)][0].notify == 24
    assert not any(isinstance(e, ChildSaEstablished) for e in ea + eb)


def test_pki_validator_revoked_by_crl():
    i, r, ca = cert_peers()
    serial = i.credential.certificate.serial_number
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
           .last_update(NOW - timedelta(hours=1)).next_update(NOW + timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                    .revocation_date(NOW - timedelta(hours=1)).build())
           .sign(ca.key, hashes.SHA256()))
    ea, eb = _run(i, replace(r, validator=_validator(ca, crl)))
    reasons = [e.reason for e in eb if isinstance(e, AuthenticationFailed)]
    assert reasons and "revoked" in reasons[0]
    assert not any(isinstance(e, ChildSaEstablished) for e in ea + eb)


def test_intermediate_ca_sent_and_validated():
    from ike.core_config import Credential

    root = CaForTests.create("Root")
    ikey, icert = root.issue("Intermediate", "ecdsa", ca=True)
    inter = CaForTests(ikey, icert)
    i, r, _ = cert_peers(ca=root)
    k, c = inter.issue("initiator", "rsa", [x509.DNSName("i.example")])
    i = replace(i, credential=Credential(k, c, (icert,)))
    v = _validator(root)
    ea, eb = _run(i, replace(r, validator=v))
    assert any(isinstance(e, IkeSaEstablished) for e in eb)
    # without the intermediate the path cannot be built
    ea, eb = _run(replace(i, credential=Credential(k, c)), replace(r, validator=v))
    assert "untrusted" in [e for e in eb if isinstance(e, AuthenticationFailed)][0].reason
