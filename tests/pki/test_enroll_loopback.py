"""The router store against the real CA service over HTTP on loopback: SCEP GetCACert and PKCSReq through the
store, then validation fetching the CRL from the distribution point and asking the OCSP responder, before and after
a revocation, and re-enrollment over SCEP."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames, fingerprint
from pki.errors import CertificateRejected, PkiError, RejectReason
from pki.profile import AutoReenrollment, CaProfile, RevocationMode, RevocationPolicy
from pki.reenroll import run_due
from pki.revocation import RevocationStatus
from pki.store import Store
from pki.validate import IdType

service = pytest.importorskip("pki.service")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
def served(tmp_path):
    svc = service.CaService(tmp_path / "ca", challenge="otp-1")
    ca = CertificateAuthority.init(tmp_path / "ca", "CN=Loopback CA,O=espresso", key_type="rsa",
                                   crl_url=f"{svc.url}/crl", ocsp_url=f"{svc.url}/ocsp")
    ca.close()
    svc.start()
    yield svc, tmp_path / "ca"
    svc.stop()


def _enrolled_store(tmp_path, svc, revocation: RevocationPolicy) -> Store:
    store = Store(tmp_path / "store")
    store.add_profile(CaProfile("lab", enrollment_url=f"{svc.url}/scep", retry=2, retry_interval=0,
                                revocation=revocation))
    store.generate_key_pair("r1", "rsa", 2048)
    return store


def test_scep_enrollment_crl_and_ocsp_round_trip(served, tmp_path):
    svc, ca_dir = served
    store = _enrolled_store(tmp_path, svc, RevocationPolicy(mode=RevocationMode.CRL))
    [ca_cert] = store.enroll_ca_certificate("lab")
    ca = CertificateAuthority.open(ca_dir)
    assert fingerprint(ca_cert) == fingerprint(ca.certificate)
    cert = store.enroll_local_certificate("r1", "lab", "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example.net"]),
                                          "otp-1")
    assert store.local_certificate("r1") == cert and ca.lookup(cert.serial_number) is not None
    at = _now() + timedelta(seconds=1)
    chain = store.validator().verify(cert, [], at, identity=(IdType.FQDN, "r1.example.net"))
    assert chain.revocation[0].status is RevocationStatus.GOOD and chain.revocation[0].source == f"crl {svc.url}/crl"
    ocsp_profile = CaProfile("lab", enrollment_url=f"{svc.url}/scep",
                             revocation=RevocationPolicy(mode=RevocationMode.OCSP))
    store.add_profile(ocsp_profile, replace=True)
    assert store.validator().verify(cert, [], at).revocation[0].status is RevocationStatus.GOOD

    ca.revoke(cert.serial_number, "key-compromise")
    ca.crl()
    ca.close()
    later = _now() + timedelta(seconds=5)
    with pytest.raises(CertificateRejected) as e:
        store.validator().verify(cert, [], later)  # OCSP profile
    assert e.value.reason is RejectReason.REVOKED
    # back to CRL: the CRL fetched before is persisted and still before its nextUpdate, so it is reused...
    store.add_profile(CaProfile("lab", enrollment_url=f"{svc.url}/scep"), replace=True)
    assert store.validator().verify(cert, [], later).revocation[0].source.endswith("(cached)")
    # ...until the profile's refresh-interval makes it fetch the new one
    store.add_profile(CaProfile("lab", enrollment_url=f"{svc.url}/scep",
                                revocation=RevocationPolicy(refresh_interval=timedelta(seconds=2))), replace=True)
    with pytest.raises(CertificateRejected) as e:
        store.validator().verify(cert, [], later)
    assert e.value.reason is RejectReason.REVOKED


def test_wrong_challenge_writes_nothing(served, tmp_path):
    svc, _ = served
    store = _enrolled_store(tmp_path, svc, RevocationPolicy())
    store.enroll_ca_certificate("lab")
    with pytest.raises(PkiError):
        store.enroll_local_certificate("r1", "lab", "CN=r1", None, "wrong")
    assert store.local_certificate("r1") is None


def test_reenrollment_over_scep(served, tmp_path):
    svc, _ = served
    store = _enrolled_store(tmp_path, svc, RevocationPolicy(mode=RevocationMode.DISABLE))
    store.enroll_ca_certificate("lab")
    old = store.enroll_local_certificate("r1", "lab", "CN=r1", None, "otp-1")
    old_spki = old.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    store.set_reenrollment(AutoReenrollment("r1", "lab", 50, regenerate_keypair=True, challenge_password="otp-1"))
    assert run_due(store, _now()) == []
    [res] = run_due(store, old.not_valid_before_utc + (old.not_valid_after_utc - old.not_valid_before_utc) * 0.6)
    assert not isinstance(res, Exception), res
    new = store.local_certificate("r1")
    assert new == res.new and new.serial_number != old.serial_number
    assert new.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) != old_spki
    assert store.validator(fetch=None).verify(new, [], _now() + timedelta(seconds=1))


def test_manual_approval_via_cli(tmp_path, capsys):
    """``ca serve --manual-approval`` semantics through the service: the store's enrollment polls while PENDING;
    ``ca pending`` lists the request and ``ca approve`` issues it (run from another thread, like an operator)."""
    import threading
    import time

    from pki.__main__ import main as pki_main

    svc = service.CaService(tmp_path / "ca", manual_approval=True)
    CertificateAuthority.init(tmp_path / "ca", "CN=Manual CA", key_type="rsa").close()
    svc.start()
    try:
        store = _enrolled_store(tmp_path, svc, RevocationPolicy(mode=RevocationMode.DISABLE))
        store.add_profile(CaProfile("lab", enrollment_url=f"{svc.url}/scep", retry=50, retry_interval=0,
                                    revocation=RevocationPolicy(mode=RevocationMode.DISABLE)), replace=True)
        store.enroll_ca_certificate("lab")
        polls = []

        def operator():
            for _ in range(100):  # bounded: ~10 s
                if service.list_pending(tmp_path / "ca"):
                    break
                time.sleep(0.1)
            pki_main(["ca", "pending", "--ca", str(tmp_path / "ca")])
            [t] = service.list_pending(tmp_path / "ca")
            pki_main(["ca", "approve", "--ca", str(tmp_path / "ca"), t.transaction_id])

        th = threading.Thread(target=operator)
        th.start()
        cert = store.enroll_local_certificate("r1", "lab", "CN=r1,O=espresso", None, None,
                                              sleep=lambda s: (polls.append(s), time.sleep(0.1)))
        th.join(timeout=30)
        out = capsys.readouterr().out
        assert "CN=r1" in out and "Approved" in out and polls
        assert store.local_certificate("r1") == cert
    finally:
        svc.stop()
