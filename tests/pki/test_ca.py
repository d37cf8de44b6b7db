"""The CA: init, issue, revoke, CRLs, restart, and its database staying consistent."""
from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.ca import IPSEC_IKE, CertificateAuthority, IssueProfile
from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.db import CertStatus
from pki.errors import CaError, CsrSignatureError, PassphraseError, UnknownSerialError
from pki.keys import generate_private_key, parse_key_spec
from tests.pki.conftest import T0, make_leaf


def test_root_and_intermediate_basic_constraints(root_ca, sub_ca):
    bc = root_ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 1
    bc = sub_ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert sub_ca.chain == [sub_ca.certificate, root_ca.certificate]
    assert sub_ca.certificate.issuer == root_ca.certificate.subject
    # the intermediate is recorded by its parent
    assert root_ca.lookup(sub_ca.certificate.serial_number).status is CertStatus.VALID


def test_issue_copies_extensions_from_config_and_profile(sub_ca):
    _, cert = make_leaf(sub_ca, profile="ipsec-server")
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH, IPSEC_IKE]
    dp = ext.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
    assert dp == "http://127.0.0.1:1/sub.crl"
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value[0].access_location.value
    assert aia == "http://127.0.0.1:1/ocsp"
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["r1.example.net"]
    assert cert.not_valid_after_utc <= sub_ca.certificate.not_valid_after_utc


def test_no_eku_by_default_rfc4945(sub_ca):
    _, cert = make_leaf(sub_ca)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_sans_filtered_by_policy(sub_ca):
    key = generate_private_key(parse_key_spec("ecdsa"))
    csr = build_csr(key, "CN=r2", SubjectAltNames.build(dns=["r2.example.net", "evil.example.com"],
                                                        ip=["192.0.2.9", "10.0.0.1"], email=["a@example.net"]))
    prof = IssueProfile(san_types=frozenset({"dns", "ip"}), dns_suffixes=("example.net",), ip_networks=("192.0.2.0/24",))
    cert = sub_ca.issue(csr, prof, at=T0)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["r2.example.net"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.9"]
    assert san.get_values_for_type(x509.RFC822Name) == []


def test_serials_unique_and_random(sub_ca):
    serials = {make_leaf(sub_ca)[1].serial_number for _ in range(5)}
    assert len(serials) == 5 and all(s.bit_length() > 64 for s in serials)


def test_serial_collision_redrawn(sub_ca):
    _, first = make_leaf(sub_ca)
    draws = iter([first.serial_number, first.serial_number, 12345678901234567890])
    sub_ca.serial_source = lambda: next(draws)
    _, second = make_leaf(sub_ca)
    assert second.serial_number == 12345678901234567890


def test_csr_with_bad_signature_refused_and_nothing_recorded(sub_ca):
    key = generate_private_key(parse_key_spec("ecdsa"))
    other = generate_private_key(parse_key_spec("ecdsa"))
    good = build_csr(key, "CN=x")
    # same request body, signature from another key
    from cryptography.hazmat.primitives import hashes, serialization
    forged_der = bytearray(good.public_bytes(serialization.Encoding.DER))
    forged_der[-5] ^= 0x01
    forged = x509.load_der_x509_csr(bytes(forged_der))
    before = len(sub_ca.records())
    with pytest.raises(CsrSignatureError):
        sub_ca.issue(forged, at=T0)
    assert len(sub_ca.records()) == before
    del other, hashes


def test_revoke_and_crl(sub_ca):
    _, cert = make_leaf(sub_ca)
    crl0 = sub_ca.crl(at=T0)
    assert crl0.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    rec = sub_ca.revoke(cert.serial_number, "key-compromise", at=T0 + timedelta(hours=1))
    assert rec.status is CertStatus.REVOKED and rec.reason is x509.ReasonFlags.key_compromise
    crl1 = sub_ca.crl(at=T0 + timedelta(hours=1))
    entry = crl1.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    assert crl1.next_update_utc == T0 + timedelta(hours=1) + sub_ca.config.crl_validity
    n0 = crl0.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    n1 = crl1.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert n1 > n0
    assert crl1.is_signature_valid(sub_ca.certificate.public_key())
    # cached while fresh
    assert sub_ca.crl(at=T0 + timedelta(hours=2)).public_bytes == crl1.public_bytes or \
        sub_ca.crl(at=T0 + timedelta(hours=2)).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == n1
    with pytest.raises(CaError):
        sub_ca.revoke(cert.serial_number, "superseded", at=T0)
    with pytest.raises(UnknownSerialError):
        sub_ca.revoke(0xDEAD, at=T0)
    with pytest.raises(ValueError):
        sub_ca.revoke(cert.serial_number, "because")


def test_reopen_keeps_state(tmp_path, root_ca):
    ca = CertificateAuthority.init(tmp_path / "enc", "CN=Enc", passphrase=b"s3cret", crl_url="http://x/crl", at=T0)
    _, cert = make_leaf(ca)
    ca.revoke(cert.serial_number, "superseded", at=T0)
    ca.crl(at=T0)
    ca.close()
    with pytest.raises(PassphraseError):
        CertificateAuthority.open(tmp_path / "enc", passphrase=b"wrong")
    with pytest.raises(PassphraseError):
        CertificateAuthority.open(tmp_path / "enc")
    again = CertificateAuthority.open(tmp_path / "enc", passphrase=b"s3cret")
    assert again.config.crl_url == "http://x/crl"
    assert again.lookup(cert.serial_number).status is CertStatus.REVOKED
    assert again.crl(at=T0 + timedelta(minutes=1)).get_revoked_certificate_by_serial_number(cert.serial_number)
    assert (tmp_path / "enc" / "ca.key").stat().st_mode & 0o777 == 0o600
    again.close()


def test_init_refuses_existing_and_open_refuses_missing(tmp_path, root_ca):
    with pytest.raises(CaError):
        CertificateAuthority.init(root_ca.path, "CN=again")
    half = tmp_path / "half"
    half.mkdir()
    (half / "ca.key").write_bytes(b"left over by an interrupted init")
    with pytest.raises(CaError, match="incomplete"):
        CertificateAuthority.init(half, "CN=again")
    with pytest.raises(CaError, match="missing ca.pem"):
        CertificateAuthority.open(half)
    with pytest.raises(CaError):
        CertificateAuthority.open(tmp_path / "nothing")


def test_path_length_zero_cannot_issue_ca(tmp_path, sub_ca):
    with pytest.raises(CaError):
        CertificateAuthority.init(tmp_path / "subsub", "CN=subsub", parent=sub_ca, at=T0)
    assert not (tmp_path / "subsub" / "ca.pem").exists()


def test_expired_ca_refuses_to_issue(sub_ca):
    later = sub_ca.certificate.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(CaError, match="expired"):
        make_leaf(sub_ca, at=later)
    with pytest.raises(CaError, match="expired"):
        sub_ca.crl(at=later)


def test_issue_is_one_transaction(sub_ca, monkeypatch):
    """A failure after signing but inside the transaction leaves no record (the cert is never handed out)."""
    before = len(sub_ca.records())

    def boom(conn, cert, at):
        conn.execute("INSERT INTO certificates (serial) VALUES ('x')")  # violates NOT NULL

    monkeypatch.setattr(sub_ca.db, "insert_certificate", boom)
    with pytest.raises(sqlite3.IntegrityError):
        make_leaf(sub_ca)
    monkeypatch.undo()
    assert len(sub_ca.records()) == before
    make_leaf(sub_ca)
    assert len(sub_ca.records()) == before + 1


@pytest.mark.parametrize("kt,size", [("rsa", 2048), ("ecdsa", 384), ("ecdsa", 521), ("ed25519", None)])
def test_ca_key_types(tmp_path, kt, size):
    ca = CertificateAuthority.init(tmp_path / kt, f"CN={kt} root", key_type=kt, key_size=size, at=T0)
    _, cert = make_leaf(ca)
    cert.verify_directly_issued_by(ca.certificate)
    ca.close()


def test_rsa_pss_ca(tmp_path):
    ca = CertificateAuthority.init(tmp_path / "pss", "CN=pss", key_type="rsa", rsa_pss=True, at=T0)
    _, cert = make_leaf(ca)
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"
    crl = ca.crl(at=T0)
    assert crl.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"
    assert crl.is_signature_valid(ca.certificate.public_key())
    from pki.revocation import RevocationStatus, check_crl
    assert check_crl(cert, ca.certificate, crl, T0).status is RevocationStatus.GOOD
    ca.close()


def test_crl_issued_just_after_the_validation_time_is_current(tmp_path):
    """A CRL the CA issues on demand is newer than a validation time taken a moment before it was fetched (the
    demo's race): thisUpdate gets the same clock skew as OCSP; a CRL from further in the future does not."""
    from pki.errors import RevocationUnavailable
    from pki.ocsp import CLOCK_SKEW
    from pki.revocation import RevocationStatus, check_crl, verify_crl

    ca = CertificateAuthority.init(tmp_path / "ca", "CN=skew", key_type="ecdsa", key_size=256, at=T0)
    _, cert = make_leaf(ca)
    crl = ca.crl(at=T0 + timedelta(seconds=1))
    assert check_crl(cert, ca.certificate, crl, T0).status is RevocationStatus.GOOD
    verify_crl(crl, ca.certificate, T0 + timedelta(seconds=1) - CLOCK_SKEW)
    with pytest.raises(RevocationUnavailable, match="not valid before"):
        verify_crl(crl, ca.certificate, T0 - CLOCK_SKEW)
    ca.close()


def test_crash_between_sign_and_commit_leaves_no_record(tmp_path, root_ca):
    """A process killed after signing and inserting, before COMMIT: after restart the CA has no record of that
    certificate (it was never handed out), its database is intact, and it keeps issuing."""
    import subprocess
    import sys
    from pathlib import Path

    before = len(root_ca.records())
    root_ca.close()
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pki.ca import CertificateAuthority
from pki.csr import build_csr
from pki.keys import generate_private_key, parse_key_spec
ca = CertificateAuthority.open({str(root_ca.path)!r})
real = ca.db.insert_certificate
def crash(conn, cert, at):
    real(conn, cert, at)
    os._exit(17)   # no COMMIT, no cleanup: like a power cut
ca.db.insert_certificate = crash
ca.issue(build_csr(generate_private_key(parse_key_spec("ecdsa", 256)), "CN=lost"))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert r.returncode == 17, r.stderr
    again = CertificateAuthority.open(root_ca.path)
    assert len(again.records()) == before
    assert again.db._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    _, cert = make_leaf(again)
    assert again.lookup(cert.serial_number) is not None
    again.close()


@pytest.mark.parametrize("stored", ["{not json", "[1, 2]", '{"crl_validity": "x"}', "[" * 50000 + "]" * 50000])
def test_damaged_stored_configuration_is_a_ca_error(tmp_path, stored):
    """A CA database whose stored configuration was damaged opens with a CaError naming the problem, not a
    traceback from json or from a value of the wrong type."""
    ca = CertificateAuthority.init(tmp_path / "ca", "CN=damaged", key_type="ecdsa", key_size=256, at=T0)
    ca._db.set_meta("config", stored)
    ca.close()
    with pytest.raises(CaError, match="configuration is damaged"):
        CertificateAuthority.open(tmp_path / "ca")
