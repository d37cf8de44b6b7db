"""strongSwan's ``pki`` tool as oracle: its certificates, keys, CSRs and CRLs work with our store, CA and validator,
and it verifies what our CA issues."""
from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pki.__main__ import main as pki_main
from pki.ca import CertificateAuthority
from pki.certs import certificates_to_pem
from pki.csr import challenge_password, parse_csr
from pki.errors import CertificateRejected, RejectReason
from pki.profile import CaProfile, RevocationMode, RevocationPolicy
from pki.store import Store
from pki.validate import IdType
from tests.support import require_tool

pytestmark = pytest.mark.interop
PEM = serialization.Encoding.PEM


def swpki(*args: str, cwd: Path, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    exe = require_tool("pki")
    r = subprocess.run([exe, *args], cwd=cwd, input=stdin, capture_output=True, timeout=60)
    if check:
        assert r.returncode == 0, f"pki {' '.join(args)}: {r.stdout!r} {r.stderr!r}"
    return r


@pytest.fixture
def sw(tmp_path):
    """A strongSwan-made CA (ECDSA) and a gateway certificate (RSA) with SANs and strongSwan's EKU flags."""
    d = tmp_path / "sw"
    d.mkdir()
    (d / "ca.key").write_bytes(swpki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem", cwd=d).stdout)
    (d / "ca.pem").write_bytes(swpki("--self", "--ca", "--lifetime", "30", "--in", "ca.key", "--dn",
                                     "C=CH, O=strongSwan, CN=strongSwan Root CA", "--outform", "pem", cwd=d).stdout)
    (d / "moon.key").write_bytes(swpki("--gen", "--type", "rsa", "--size", "2048", "--outform", "pem", cwd=d).stdout)
    pub = swpki("--pub", "--in", "moon.key", cwd=d).stdout
    (d / "moon.pem").write_bytes(swpki(
        "--issue", "--cacert", "ca.pem", "--cakey", "ca.key", "--dn", "C=CH, O=strongSwan, CN=moon.strongswan.org",
        "--san", "moon.strongswan.org", "--san", "192.168.0.1", "--flag", "serverAuth", "--flag", "ikeIntermediate",
        "--lifetime", "10", "--outform", "pem", cwd=d, stdin=pub).stdout)
    return d


def _now() -> datetime:
    return datetime.now(timezone.utc)


def test_strongswan_certificates_load_and_validate(sw, tmp_path):
    store = Store(tmp_path / "store")
    store.add_profile(CaProfile("sw", revocation=RevocationPolicy(mode=RevocationMode.DISABLE)))
    [ca] = store.load_ca_certificate("sw", (sw / "ca.pem").read_bytes())
    store.import_key_pair("moon", (sw / "moon.key").read_bytes())  # traditional "RSA PRIVATE KEY" PEM
    cert = store.load_local_certificate("moon", (sw / "moon.pem").read_bytes())
    assert store.key_path("moon").stat().st_mode & 0o777 == 0o600
    v = store.validator(fetch=None)
    at = _now() + timedelta(minutes=1)
    assert v.verify(cert, [], at, identity=(IdType.FQDN, "moon.strongswan.org")).profile == "sw"
    assert v.verify(cert, [], at, identity=(IdType.IPV4, "192.168.0.1"))
    assert v.verify(cert, [], at, identity=(IdType.DN, "C=CH, O=strongSwan, CN=moon.strongswan.org"))
    with pytest.raises(CertificateRejected) as e:
        v.verify(cert, [], at, identity=(IdType.FQDN, "sun.strongswan.org"))
    assert e.value.reason is RejectReason.IDENTITY_MISMATCH


def test_strongswan_key_and_certificate_via_cli(sw, tmp_path, capsys):
    store = str(tmp_path / "st")
    assert pki_main(["--store", store, "ca-profile", "add", "sw", "--revocation-check", "disable"]) == 0
    assert pki_main(["--store", store, "ca-certificate", "load", "--ca-profile", "sw", "--filename",
                     str(sw / "ca.pem")]) == 0
    assert pki_main(["--store", store, "local-certificate", "load", "--certificate-id", "moon", "--filename",
                     str(sw / "moon.pem"), "--key", str(sw / "moon.key")]) == 0
    assert pki_main(["--store", store, "verify", "--offline", "--filename", str(sw / "moon.pem"),
                     "--identity", "fqdn:moon.strongswan.org"]) == 0
    out = capsys.readouterr().out
    assert "via ca-profile sw" in out and "DNS:moon.strongswan.org" in out
    key, cert, inter = Store(store).credential("moon")
    assert cert.subject.rfc4514_string() == "CN=moon.strongswan.org,O=strongSwan,C=CH" and inter == []


def test_strongswan_crl_honoured(sw, tmp_path):
    crl = swpki("--signcrl", "--cacert", "ca.pem", "--cakey", "ca.key", "--reason", "key-compromise",
                "--cert", "moon.pem", "--lifetime", "1", "--outform", "pem", cwd=sw).stdout
    store = Store(tmp_path / "store")
    store.add_profile(CaProfile("sw"))  # CRL checking, fail closed
    store.load_ca_certificate("sw", (sw / "ca.pem").read_bytes())
    store.load_crl("sw", crl)
    from pki.certs import load_certificate
    moon = load_certificate((sw / "moon.pem").read_bytes())
    with pytest.raises(CertificateRejected) as e:
        store.validator(fetch=None).verify(moon, [], _now() + timedelta(seconds=5))
    assert e.value.reason is RejectReason.REVOKED and "key_compromise" in e.value.detail


def test_strongswan_csr_issued_by_our_ca_and_verified_by_strongswan(tmp_path, capsys):
    """``pki --req --password`` (attributes SET not in DER order) -> our ``ca issue`` -> ``pki --verify``."""
    d = tmp_path
    (d / "sun.key").write_bytes(swpki("--gen", "--type", "ed25519", "--outform", "pem", cwd=d).stdout)
    (d / "sun.csr").write_bytes(swpki("--req", "--in", "sun.key", "--type", "priv", "--dn", "C=CH, O=strongSwan, CN=sun",
                                      "--san", "sun.strongswan.org", "--password", "otp-42", "--outform", "pem",
                                      cwd=d).stdout)
    csr, reencoded = parse_csr((d / "sun.csr").read_bytes())
    assert challenge_password(csr) == "otp-42"
    assert pki_main(["ca", "--ca", str(d / "ca"), "init", "--subject", "CN=espresso Root,O=espresso",
                     "--key-type", "rsa", "--crl-url", "http://127.0.0.1:9/crl"]) == 0
    assert pki_main(["ca", "--ca", str(d / "ca"), "issue", "--csr", str(d / "sun.csr"), "--out", str(d / "sun.pem"),
                     "--profile", "ipsec-client"]) == 0
    capsys.readouterr()
    r = swpki("--verify", "--in", "sun.pem", "--cacert", "ca/ca.pem", cwd=d)
    assert b"certificate trusted" in r.stdout + r.stderr
    printed = swpki("--print", "--in", "sun.pem", cwd=d).stdout
    assert b"sun.strongswan.org" in printed and b"http://127.0.0.1:9/crl" in printed


def test_strongswan_verifies_our_chain_and_reads_our_crl(tmp_path):
    root = CertificateAuthority.init(tmp_path / "root", "CN=Root,O=espresso", key_type="ecdsa", key_size=384)
    sub = CertificateAuthority.init(tmp_path / "sub", "CN=Sub,O=espresso", parent=root, path_length=0)
    from pki.certs import SubjectAltNames
    from pki.csr import build_csr
    from pki.keys import generate_private_key, parse_key_spec

    key = generate_private_key(parse_key_spec("rsa", 2048))
    leaf = sub.issue(build_csr(key, "CN=gw,O=espresso", SubjectAltNames.build(dns=["gw.example.net"])), "ipsec-ike")
    (tmp_path / "root.pem").write_bytes(certificates_to_pem([root.certificate]))
    (tmp_path / "sub.pem").write_bytes(certificates_to_pem([sub.certificate]))
    (tmp_path / "leaf.pem").write_bytes(certificates_to_pem([leaf]))
    r = swpki("--verify", "--in", "leaf.pem", "--cacert", "root.pem", "--cacert", "sub.pem", cwd=tmp_path)
    assert b"certificate trusted" in r.stdout + r.stderr
    sub.revoke(leaf.serial_number, "superseded")
    (tmp_path / "sub.crl").write_bytes(sub.crl().public_bytes(serialization.Encoding.DER))
    printed = swpki("--print", "--type", "crl", "--in", "sub.crl", cwd=tmp_path).stdout
    assert b"superseded" in printed and b"1 revoked certificate" in printed
    r = swpki("--verify", "--in", "leaf.pem", "--cacert", "root.pem", "--cacert", "sub.pem", "--crl", "sub.crl",
              cwd=tmp_path, check=False)
    assert r.returncode != 0 and b"revoked" in r.stdout + r.stderr
    root.close()
    sub.close()
