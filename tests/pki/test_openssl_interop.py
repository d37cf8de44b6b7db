"""The openssl CLI as oracle: it accepts our chains, CRLs and CSRs; we accept its CSRs and certificates."""
from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames, certificates_to_pem, sans_of
from pki.csr import build_csr, challenge_password, csr_to_pem, load_csr
from pki.keys import generate_private_key, parse_key_spec
from pki.profile import CaProfile, RevocationMode, RevocationPolicy
from pki.store import Store
from pki.validate import IdType, TrustAnchor, Validator
from tests.pki.conftest import T0, make_leaf
from tests.support import require_tool

pytestmark = pytest.mark.interop
PEM = serialization.Encoding.PEM


def openssl(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    exe = require_tool("openssl")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_openssl_verify_accepts_chain_and_crls_then_refuses_revoked(tmp_path):
    # Real time here: openssl verify checks against the current clock.
    root = CertificateAuthority.init(tmp_path / "root", "CN=Root,O=espresso", key_type="rsa", path_length=1,
                                     crl_url="http://127.0.0.1:9/root.crl")
    sub = CertificateAuthority.init(tmp_path / "sub", "CN=Sub,O=espresso", parent=root, path_length=0,
                                    crl_url="http://127.0.0.1:9/sub.crl")
    key = generate_private_key(parse_key_spec("ecdsa", 256))
    leaf = sub.issue(build_csr(key, "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example.net"])), "ipsec-server")
    _write(tmp_path / "root.pem", certificates_to_pem([root.certificate]))
    _write(tmp_path / "sub.pem", certificates_to_pem([sub.certificate]))
    _write(tmp_path / "leaf.pem", certificates_to_pem([leaf]))
    r = openssl("verify", "-CAfile", "root.pem", "-untrusted", "sub.pem", "leaf.pem", cwd=tmp_path)
    assert "leaf.pem: OK" in r.stdout
    r = openssl("verify", "-purpose", "sslserver", "-CAfile", "root.pem", "-untrusted", "sub.pem", "leaf.pem",
                cwd=tmp_path)
    assert "OK" in r.stdout

    def crls():
        _write(tmp_path / "crls.pem", root.crl().public_bytes(PEM) + sub.crl().public_bytes(PEM))

    crls()
    r = openssl("verify", "-crl_check_all", "-CRLfile", "crls.pem", "-CAfile", "root.pem", "-untrusted", "sub.pem",
                "leaf.pem", cwd=tmp_path)
    assert "leaf.pem: OK" in r.stdout
    sub.revoke(leaf.serial_number, "key-compromise")
    crls()
    r = openssl("verify", "-crl_check_all", "-CRLfile", "crls.pem", "-CAfile", "root.pem", "-untrusted", "sub.pem",
                "leaf.pem", cwd=tmp_path, check=False)
    assert r.returncode != 0 and "certificate revoked" in (r.stdout + r.stderr)
    # openssl crl parses ours, with the reason
    _write(tmp_path / "sub.crl", sub.crl().public_bytes(serialization.Encoding.DER))
    r = openssl("crl", "-inform", "DER", "-in", "sub.crl", "-noout", "-text", cwd=tmp_path)
    assert f"{leaf.serial_number:X}" in r.stdout.replace(":", "") and "Key Compromise" in r.stdout
    assert "Next Update" in r.stdout and "CRL Number" in r.stdout
    r = openssl("crl", "-inform", "DER", "-in", "sub.crl", "-noout", "-CAfile", "sub.pem", cwd=tmp_path, check=False)
    assert "verify OK" in (r.stdout + r.stderr)
    root.close()
    sub.close()


@pytest.mark.parametrize("kt,size", [("rsa", 2048), ("ecdsa", 256), ("ecdsa", 521), ("ed25519", None)])
def test_openssl_req_verifies_our_csrs(tmp_path, kt, size):
    key = generate_private_key(parse_key_spec(kt, size))
    csr = build_csr(key, "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example.net"], ip=["2001:db8::1"],
                                                                      email=["a@example.net"]), challenge_password="pw1")
    _write(tmp_path / "r.csr", csr_to_pem(csr))
    r = openssl("req", "-in", "r.csr", "-verify", "-noout", "-text", cwd=tmp_path)
    assert "verify OK" in (r.stdout + r.stderr)
    assert "challengePassword" in r.stdout and "DNS:r1.example.net" in r.stdout and "2001:DB8" in r.stdout.upper()


def test_openssl_csr_accepted_by_our_ca(tmp_path, sub_ca):
    (tmp_path / "req.cnf").write_text(
        "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\nreq_extensions = ext\n"
        "[dn]\nCN = gw.example.net\nO = OpenSSL Made\n"
        "[attrs]\nchallengePassword = otp-1234\n"
        "[ext]\nsubjectAltName = DNS:gw.example.net,IP:198.51.100.7,email:noc@example.net\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "gw.key",
            "-config", "req.cnf", "-out", "gw.csr", cwd=tmp_path)
    csr = load_csr((tmp_path / "gw.csr").read_bytes())
    assert challenge_password(csr) == "otp-1234"
    cert = sub_ca.issue(csr, "ipsec-ike", at=T0)
    sans = sans_of(cert)
    assert sans.dns == ("gw.example.net",) and [str(a) for a in sans.ip] == ["198.51.100.7"]
    assert cert.subject.rfc4514_string() == "O=OpenSSL Made,CN=gw.example.net"
    # and openssl agrees the key in the certificate is the one it generated
    _write(tmp_path / "gw.pem", cert.public_bytes(PEM))
    a = openssl("x509", "-in", "gw.pem", "-noout", "-pubkey", cwd=tmp_path).stdout
    b = openssl("pkey", "-in", "gw.key", "-pubout", cwd=tmp_path).stdout
    assert a == b


def test_openssl_made_pki_loads_into_store_and_validates(tmp_path):
    """An openssl CA and a leaf with its key: loaded into our store as ca-certificate, key pair and local cert."""
    (tmp_path / "ext.cnf").write_text(
        "[leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        "extendedKeyUsage = 1.3.6.1.5.5.7.3.17\nsubjectAltName = DNS:sun.example.org,IP:192.0.2.99\n"
        "authorityKeyIdentifier = keyid\nsubjectKeyIdentifier = hash\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/C=CH/O=OpenSSL/CN=OSSL Root",
            "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.pem", cwd=tmp_path)
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", "sun.key",
            "-subj", "/C=CH/O=OpenSSL/CN=sun.example.org", "-out", "sun.csr", cwd=tmp_path)
    openssl("x509", "-req", "-in", "sun.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "10",
            "-extfile", "ext.cnf", "-extensions", "leaf", "-out", "sun.pem", cwd=tmp_path)
    store = Store(tmp_path / "store")
    store.add_profile(CaProfile("ossl", revocation=RevocationPolicy(mode=RevocationMode.DISABLE)))
    store.load_ca_certificate("ossl", (tmp_path / "ca.pem").read_bytes())
    store.import_key_pair("sun", (tmp_path / "sun.key").read_bytes())
    cert = store.load_local_certificate("sun", (tmp_path / "sun.pem").read_bytes())
    import datetime as _dt
    now = _dt.datetime.now(_dt.timezone.utc)
    chain = store.validator(fetch=None).verify(cert, [], now, identity=(IdType.FQDN, "sun.example.org"))
    assert chain.profile == "ossl"
    assert store.validator(fetch=None).verify(cert, [], now, identity=("dn", "C=CH, O=OpenSSL, CN=sun.example.org"))
    # an openssl-signed CRL revoking it, loaded into our store, is honoured
    (tmp_path / "index.txt").write_text("")
    (tmp_path / "crlnumber").write_text("01\n")
    (tmp_path / "ca.cnf").write_text(
        f"[ca]\ndefault_ca = d\n[d]\ndatabase = {tmp_path}/index.txt\ncrlnumber = {tmp_path}/crlnumber\n"
        "default_md = sha256\ndefault_crl_days = 7\n")
    openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem", "-revoke", "sun.pem",
            "-crl_reason", "keyCompromise", cwd=tmp_path)
    openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem", "-gencrl", "-out", "ca.crl", cwd=tmp_path)
    store.add_profile(CaProfile("ossl", revocation=RevocationPolicy(mode=RevocationMode.CRL)), replace=True)
    store.load_crl("ossl", (tmp_path / "ca.crl").read_bytes())
    from pki.errors import CertificateRejected, RejectReason
    with pytest.raises(CertificateRejected) as e:
        store.validator(fetch=None).verify(cert, [], now + timedelta(seconds=1))
    assert e.value.reason is RejectReason.REVOKED


def test_openssl_verify_accepts_each_key_type(tmp_path):
    import datetime as _dt

    for kt, size in [("rsa", 3072), ("ecdsa", 384), ("ed25519", None)]:
        ca = CertificateAuthority.init(tmp_path / kt, f"CN={kt} CA", key_type=kt, key_size=size)
        _, leaf = make_leaf(ca, at=_dt.datetime.now(_dt.timezone.utc))
        _write(tmp_path / f"{kt}-ca.pem", ca.certificate.public_bytes(PEM))
        _write(tmp_path / f"{kt}-leaf.pem", leaf.public_bytes(PEM))
        r = openssl("verify", "-CAfile", f"{kt}-ca.pem", f"{kt}-leaf.pem", cwd=tmp_path)
        assert "OK" in r.stdout
        assert Validator([TrustAnchor(ca.certificate, RevocationPolicy(mode=RevocationMode.DISABLE))]).verify(
            leaf, [], leaf.not_valid_before_utc + timedelta(minutes=10))
        ca.close()
