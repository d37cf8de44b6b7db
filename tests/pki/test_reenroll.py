"""Auto re-enrollment with an injected clock (``at``) and an injected SCEP enroll function."""
from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from pki.ca import CertificateAuthority, IssueProfile
from pki.certs import SubjectAltNames, sans_of
from pki.errors import PkiError
from pki.profile import AutoReenrollment, CaProfile, RevocationMode, RevocationPolicy
from pki.reenroll import due, next_deadline, reenroll_at, run_due
from pki.store import Store
from tests.pki.conftest import T0

PEM = serialization.Encoding.PEM
SPKI = (PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def setup(tmp_path):
    ca = CertificateAuthority.init(tmp_path / "ca", "CN=CA", key_type="rsa", at=T0 - timedelta(days=1))
    store = Store(tmp_path / "store")
    store.add_profile(CaProfile("lab", enrollment_url="http://127.0.0.1:1/scep",
                                revocation=RevocationPolicy(mode=RevocationMode.DISABLE)))
    store.load_ca_certificate("lab", ca.certificate.public_bytes(PEM))
    store.generate_key_pair("r1", "rsa", 2048)
    csr = store.generate_certificate_request("r1", "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example"]))
    prof = IssueProfile(validity=timedelta(days=100))
    store.load_local_certificate("r1", ca.issue(csr, prof, at=T0).public_bytes(PEM))
    clock = {"at": T0}
    issued = []

    def enroll(url, key, csr, ca_certs, **kw):
        cert = ca.issue(csr, prof, at=clock["at"])
        issued.append(cert)
        return cert

    yield store, ca, enroll, clock, issued
    ca.close()


def test_deadline_arithmetic(setup):
    store, *_ = setup
    cert = store.local_certificate("r1")
    assert reenroll_at(cert, 80) == cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) * 0.8
    assert not due(cert, 80, T0 + timedelta(days=79))
    assert due(cert, 80, T0 + timedelta(days=81))
    with pytest.raises(ValueError):
        reenroll_at(cert, 0)


def test_run_due_only_after_trigger_same_key(setup):
    store, ca, enroll, clock, issued = setup
    store.set_reenrollment(AutoReenrollment("r1", "lab", 80))
    old = store.local_certificate("r1")
    old_key = store.private_key("r1").public_key().public_bytes(*SPKI)
    assert next_deadline(store) == reenroll_at(old, 80)
    clock["at"] = T0 + timedelta(days=50)
    assert run_due(store, clock["at"], enroll=enroll) == [] and issued == []
    clock["at"] = T0 + timedelta(days=81)
    [res] = run_due(store, clock["at"], enroll=enroll)
    new = store.local_certificate("r1")
    assert res.new == new and new != old and new.subject == old.subject and sans_of(new) == sans_of(old)
    assert new.not_valid_before_utc > old.not_valid_before_utc
    assert store.private_key("r1").public_key().public_bytes(*SPKI) == old_key and not res.new_key
    # the new certificate pushes the deadline out
    assert next_deadline(store) > clock["at"]


def test_regenerate_keypair_swaps_key_and_cert_together(setup):
    store, ca, enroll, clock, issued = setup
    store.set_reenrollment(AutoReenrollment("r1", "lab", 50, regenerate_keypair=True, challenge_password="pw"))
    old_key = store.private_key("r1").public_key().public_bytes(*SPKI)
    old_dir = store.key_path("r1").parent
    clock["at"] = T0 + timedelta(days=60)
    [res] = run_due(store, clock["at"], enroll=enroll)
    assert res.new_key
    new_key = store.private_key("r1")
    assert new_key.public_key().public_bytes(*SPKI) != old_key
    assert store.local_certificate("r1").public_key().public_bytes(*SPKI) == new_key.public_key().public_bytes(*SPKI)
    assert not old_dir.exists()  # old generation removed after the swap
    assert store.key_path("r1").stat().st_mode & 0o777 == 0o600
    assert (store.path / "auto-re-enrollment.json").stat().st_mode & 0o777 == 0o600  # holds the challenge


def test_failed_enrollment_changes_nothing(setup):
    store, ca, enroll, clock, issued = setup
    store.set_reenrollment(AutoReenrollment("r1", "lab", 50, regenerate_keypair=True))
    before_cert = store.local_certificate("r1")
    before_key = store.key_path("r1").read_bytes()
    entries = sorted(p.name for p in (store.path / "local").iterdir())

    def down(*a, **kw):
        raise PkiError("http://127.0.0.1:1/scep: connection refused")

    [err] = run_due(store, T0 + timedelta(days=60), enroll=down)
    assert isinstance(err, PkiError)
    assert store.local_certificate("r1") == before_cert and store.key_path("r1").read_bytes() == before_key
    assert sorted(p.name for p in (store.path / "local").iterdir()) == entries
