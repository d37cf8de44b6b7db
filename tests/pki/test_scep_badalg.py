"""SCEP answers failInfo badAlg (RFC 8894 3.2.1.4.5: "unrecognized or unsupported algorithm") when a request
uses an algorithm the CA will not use: a subject key it refuses to certify, a request signed with MD5, a
pkiMessage signature it cannot check. badMessageCheck stays for integrity failures (a signature that does not
verify); badRequest for policy (challenge, subject)."""
from __future__ import annotations

import pytest
from asn1crypto import algos
from asn1crypto import csr as asn1_csr
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from pki.scep import messages as m
from pki.scep.client import get_ca_certs
from pki.scep.constants import FailInfo, MessageType, PkiStatus
from tests.pki.test_scep_service import (  # noqa: F401 - fixtures
    CHALLENGE,
    _cert_rep,
    _csr,
    _self_signed,
    _signed_request,
    ca_template,
    rsa_key,
    service,
)


def _fail(rep: m.PkiMessage) -> FailInfo | None:
    assert rep.pki_status is PkiStatus.FAILURE, rep
    return rep.fail_info


def _md5_signed_csr(key: rsa.RSAPrivateKey) -> bytes:
    """A request whose self-signature is valid, but made with MD5."""
    req = asn1_csr.CertificationRequest.load(_csr(key).public_bytes(Encoding.DER))
    tbs = req["certification_request_info"].dump()
    return asn1_csr.CertificationRequest({
        "certification_request_info": req["certification_request_info"],
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "md5_rsa"}),
        "signature": key.sign(tbs, padding.PKCS1v15(), hashes.MD5()),
    }).dump()


def test_weak_rsa_subject_key_is_bad_alg(service):
    weak = rsa.generate_private_key(65537, 1024)
    rep = _cert_rep(service, _signed_request(service, weak, tid="TID-WEAK"))
    assert _fail(rep) is FailInfo.badAlg
    assert rep.transaction_id == "TID-WEAK"


def test_md5_signed_request_is_bad_alg(service, rsa_key):
    rep = _cert_rep(service, _signed_request(service, rsa_key, payload=_md5_signed_csr(rsa_key), tid="TID-MD5"))
    assert _fail(rep) is FailInfo.badAlg


def test_integrity_failures_stay_bad_message_check(service, rsa_key):
    csr = bytearray(_md5_signed_csr(rsa_key))
    csr[-3] ^= 0x55  # MD5 *and* broken: what is wrong first is that it does not verify
    rep = _cert_rep(service, _signed_request(service, rsa_key, payload=bytes(csr), tid="TID-BROKEN"))
    assert _fail(rep) in (FailInfo.badMessageCheck, FailInfo.badAlg)
    good = bytearray(_csr(rsa_key).public_bytes(Encoding.DER))
    good[-3] ^= 0x55
    rep = _cert_rep(service, _signed_request(service, rsa_key, payload=bytes(good), tid="TID-BROKEN2"))
    assert _fail(rep) is FailInfo.badMessageCheck


def test_pki_message_signature_algorithm_it_cannot_check_is_bad_alg(service, rsa_key):
    """A pkiMessage whose SignerInfo names a signature algorithm that does not fit (RSA key, ECDSA algorithm)."""
    from asn1crypto import cms

    body = _signed_request(service, rsa_key, tid="TID-SIGALG")
    info = cms.ContentInfo.load(body)
    si = info["content"]["signer_infos"][0]
    si["signature_algorithm"] = algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})
    rep = _cert_rep(service, info.dump(force=True))
    assert _fail(rep) is FailInfo.badAlg


@pytest.mark.parametrize("manual", [False, True])
def test_refused_key_is_bad_alg_before_it_waits_for_approval(tmp_path, ca_template, manual):
    """With --manual-approval too: the request is refused at once, not held PENDING for an operator who could
    only approve something the CA will not sign."""
    from tests.pki.test_scep_service import _started

    svc = _started(ca_template, tmp_path / "ca", challenge=CHALLENGE, manual_approval=manual)
    try:
        weak = rsa.generate_private_key(65537, 1024)
        rep = _cert_rep(svc, _signed_request(svc, weak, tid="TID-W2"))
        assert _fail(rep) is FailInfo.badAlg
        assert get_ca_certs(svc.url + "/scep")  # still serving
    finally:
        svc.stop()


_ = (MessageType, _self_signed)
