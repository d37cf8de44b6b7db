"""Secrets at rest on the CA side: private CA directory and database files, no challenge password in the database."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr, challenge_password, without_challenge
from pki.scep.client import enroll, get_ca_certs
from pki.scep.server import TransactionStore
from pki.service import CaService, approve, list_pending

SECRET = "chal-SECRET-123"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _db_files(ca_dir: Path) -> list[Path]:
    return [f for f in ca_dir.iterdir() if f.name.startswith("ca.db")]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def rsa_ca(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sar") / "ca"
    CertificateAuthority.init(path, "CN=At Rest CA", key_type="rsa", key_size=2048).close()
    return path


def test_new_ca_directory_and_database_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        ca = CertificateAuthority.init(tmp_path / "ca", "CN=Private CA")
        ca.crl()  # writes to the database: -wal and -shm exist now
        files = _db_files(tmp_path / "ca")
        assert {f.name for f in files} >= {"ca.db", "ca.db-wal", "ca.db-shm"}
        assert _mode(tmp_path / "ca") == 0o700
        assert all(_mode(f) == 0o600 for f in files), [(f.name, oct(_mode(f))) for f in files]
        ca.close()
    finally:
        os.umask(old)


def test_existing_ca_is_tightened_on_open(tmp_path):
    d = tmp_path / "ca"
    CertificateAuthority.init(d, "CN=Old CA").close()
    os.chmod(d, 0o755)  # as CAs made before the fix
    for f in _db_files(d):
        os.chmod(f, 0o644)
    ca = CertificateAuthority.open(d)
    ca.crl()
    assert _mode(d) == 0o700
    assert all(_mode(f) == 0o600 for f in _db_files(d))
    ca.close()


def test_without_challenge_keeps_everything_else(rsa_key):
    sans = SubjectAltNames.build(dns=["r1.example.net"])
    csr = build_csr(rsa_key, "CN=r1", sans, challenge_password=SECRET)
    clean = x509.load_der_x509_csr(without_challenge(csr))
    assert challenge_password(clean) is None
    assert SECRET.encode() not in without_challenge(csr)
    assert clean.subject == csr.subject and list(clean.extensions) == list(csr.extensions)
    assert clean.public_key() == csr.public_key()
    plain = build_csr(rsa_key, "CN=r1")
    assert without_challenge(plain) == plain.public_bytes(Encoding.DER)


def _grep_secret(ca_dir: Path) -> list[str]:
    return [f.name for f in ca_dir.iterdir() if f.is_file() and SECRET.encode() in f.read_bytes()]


def test_scep_never_stores_the_challenge(tmp_path, rsa_ca, rsa_key):
    import shutil

    d = tmp_path / "ca"
    shutil.copytree(rsa_ca, d)
    csr = build_csr(rsa_key, "CN=r1,O=espresso", challenge_password=SECRET)
    with CaService(d, challenge=SECRET, manual_approval=True) as svc:  # __enter__ starts it
        url = svc.url + "/scep"
        polls = []

        def sleep(_s: float) -> None:  # approve while the client waits: CertPoll is answered from the stored CSR
            polls.append(1)
            if len(polls) == 1:
                assert _grep_secret(d) == []
                svc.approve(list_pending(d)[0].transaction_id)

        cert = enroll(url, rsa_key, csr, get_ca_certs(url), retry_count=3, retry_interval=1, sleep=sleep)
        # a byte-identical resend is still recognised and answered with the same certificate
        again = enroll(url, rsa_key, csr, get_ca_certs(url), retry_count=0)
    assert again == cert
    assert cert.subject.rfc4514_string() == "CN=r1,O=espresso"
    assert _grep_secret(d) == []
    assert _mode(d) == 0o700 and all(_mode(f) == 0o600 for f in _db_files(d))


def test_old_database_with_challenge_is_scrubbed(tmp_path, rsa_ca, rsa_key):
    import shutil
    from datetime import datetime, timezone

    from cryptography.hazmat.primitives.serialization import Encoding

    d = tmp_path / "ca"
    shutil.copytree(rsa_ca, d)
    csr = build_csr(rsa_key, "CN=old,O=espresso", challenge_password=SECRET)
    store = TransactionStore(d / "ca.db")
    store.close()
    # a row as the previous version wrote it: the whole request, challenge included
    conn = sqlite3.connect(d / "ca.db")
    conn.execute(
        "INSERT INTO scep_transactions (transaction_id, state, subject, csr, requester, received_at)"
        " VALUES ('t1', 'pending', 'CN=old,O=espresso', ?, ?, ?)",
        (csr.public_bytes(Encoding.DER), b"x", datetime.now(timezone.utc).isoformat()),
    )
    conn.commit()
    conn.close()
    assert _grep_secret(d) != []
    assert [t.transaction_id for t in list_pending(d)] == ["t1"]  # opening scrubs
    assert _grep_secret(d) == []
    cert = approve(d, "t1")
    assert cert.subject.rfc4514_string() == "CN=old,O=espresso"


def test_router_request_with_challenge_is_owner_only(tmp_path):
    from pki.store import Store

    store = Store(tmp_path / "st")
    store.generate_key_pair("r1", "ecdsa", 256)
    store.generate_certificate_request("r1", "CN=r1", challenge_password=SECRET, filename=tmp_path / "r1.csr")
    assert _mode(tmp_path / "r1.csr") == 0o600
    store.generate_certificate_request("r1", "CN=r1", filename=tmp_path / "plain.csr")
    assert _mode(tmp_path / "plain.csr") & 0o044  # no secret in it: stays world-readable as before
