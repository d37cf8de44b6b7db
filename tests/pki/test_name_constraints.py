"""RFC 5280 name constraints: a constrained intermediate (built with cryptography, and one built with the openssl
CLI) accepts names inside its subtrees and refuses others with RejectReason.NAME_CONSTRAINTS; openssl verify
agrees case by case."""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from pki.certs import certificates_to_pem, parse_subject
from pki.csr import signing_hash
from pki.errors import CertificateRejected, RejectReason
from pki.keys import generate_private_key, load_private_key, parse_key_spec
from pki.profile import RevocationMode, RevocationPolicy
from pki.validate import TrustAnchor, Validator
from tests.support import require_tool

PEM = serialization.Encoding.PEM
NO_REV = RevocationPolicy(mode=RevocationMode.DISABLE)
NOW = datetime.now(timezone.utc).replace(microsecond=0)  # openssl verify reads the real clock


def _key():
    return generate_private_key(parse_key_spec("ecdsa", 256))


def _cert(subject, key, issuer=None, issuer_key=None, *, ca=False, nc=None, nc_critical=True, sans=()):
    b = (x509.CertificateBuilder().subject_name(parse_subject(subject))
         .issuer_name(issuer.subject if issuer is not None else parse_subject(subject))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    if issuer is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False)
    if nc is not None:
        b = b.add_extension(nc, critical=nc_critical)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    signer = issuer_key or key
    return b.sign(signer, signing_hash(signer))


CONSTRAINTS = x509.NameConstraints(
    permitted_subtrees=[x509.DNSName("corp.example"), x509.DNSName(".branch.example"),
                        x509.IPAddress(ipaddress.ip_network("192.0.2.0/24")),
                        x509.IPAddress(ipaddress.ip_network("2001:db8::/32")),
                        x509.RFC822Name("corp.example"), x509.DirectoryName(parse_subject("O=Corp,C=US"))],
    excluded_subtrees=[x509.DNSName("lab.corp.example"), x509.IPAddress(ipaddress.ip_network("192.0.2.128/25"))])

D, IP, EM = x509.DNSName, (lambda a: x509.IPAddress(ipaddress.ip_address(a))), x509.RFC822Name
# (subject, subjectAltNames, expected: None = accepted, else the detail's key words)
CASES = [
    ("CN=gw1,O=Corp,C=US", [D("corp.example")], None),
    ("CN=gw1,O=Corp,C=US", [D("gw1.corp.example"), IP("192.0.2.1"), EM("ops@corp.example")], None),
    ("CN=gw1,O=Corp,C=US", [D("r7.branch.example"), IP("2001:db8::7")], None),
    ("CN=gw1,OU=Sales,O=Corp,C=US", [D("gw1.corp.example")], None),  # deeper DN under O=Corp,C=US
    ("CN=gw1,O=Corp,C=US", [D("gw1.evil.example")], "outside the permitted"),
    ("CN=gw1,O=Corp,C=US", [D("branch.example")], "outside the permitted"),  # ".branch.example": only below
    ("CN=gw1,O=Corp,C=US", [D("notcorp.example")], "outside the permitted"),  # label boundary
    ("CN=gw1,O=Corp,C=US", [D("x.lab.corp.example")], "excluded"),
    ("CN=gw1,O=Corp,C=US", [D("gw1.corp.example"), IP("198.51.100.1")], "outside the permitted"),
    ("CN=gw1,O=Corp,C=US", [D("gw1.corp.example"), IP("192.0.2.200")], "excluded"),
    ("CN=gw1,O=Corp,C=US", [D("gw1.corp.example"), EM("ops@evil.example")], "outside the permitted"),
    ("CN=gw1,O=Evil,C=US", [D("gw1.corp.example")], "outside the permitted"),  # directoryName
]


@pytest.fixture(scope="module")
def pki_set():
    rk, ik = _key(), _key()
    root = _cert("CN=NC Root,O=Corp,C=US", rk, ca=True)
    inter = _cert("CN=NC Sub,O=Corp,C=US", ik, root, rk, ca=True, nc=CONSTRAINTS)
    return root, inter, ik


def _verify(root, inter, leaf):
    return Validator([TrustAnchor(root, NO_REV, "corp")]).verify(leaf, [inter], NOW)


@pytest.mark.parametrize("subject,sans,expected", CASES)
def test_constrained_intermediate(pki_set, subject, sans, expected):
    root, inter, ik = pki_set
    leaf = _cert(subject, _key(), inter, ik, sans=sans)
    if expected is None:
        assert _verify(root, inter, leaf).profile == "corp"
        return
    with pytest.raises(CertificateRejected) as info:
        _verify(root, inter, leaf)
    assert info.value.reason is RejectReason.NAME_CONSTRAINTS, info.value
    assert expected in info.value.detail and "CN=NC Sub" in info.value.detail


def test_non_critical_is_enforced_too_and_root_constraints_apply(pki_set):
    rk, ik = _key(), _key()
    root = _cert("CN=NC Root2", rk, ca=True, nc=x509.NameConstraints([x509.DNSName("corp.example")], None))
    inter = _cert("CN=Sub2", ik, root, rk, ca=True)
    bad = _cert("CN=gw", _key(), inter, ik, sans=[D("gw.evil.example")])
    with pytest.raises(CertificateRejected) as info:
        _verify(root, inter, bad)
    assert info.value.reason is RejectReason.NAME_CONSTRAINTS
    ok = _cert("CN=gw", _key(), inter, ik, sans=[D("gw.corp.example")])
    _verify(root, inter, ok)
    r2, i2 = _key(), _key()
    root2 = _cert("CN=Root3", r2, ca=True)
    inter2 = _cert("CN=Sub3", i2, root2, r2, ca=True, nc_critical=False,
                   nc=x509.NameConstraints(None, [x509.DNSName("evil.example")]))
    with pytest.raises(CertificateRejected) as info:
        _verify(root2, inter2, _cert("CN=gw", _key(), inter2, i2, sans=[D("x.evil.example")]))
    assert info.value.reason is RejectReason.NAME_CONSTRAINTS


def test_unevaluated_form_is_refused_only_when_the_certificate_has_one():
    rk, ik = _key(), _key()
    root = _cert("CN=Root U", rk, ca=True)
    nc = x509.NameConstraints([x509.UniformResourceIdentifier(".corp.example"), x509.DNSName("corp.example")], None)
    inter = _cert("CN=Sub U", ik, root, rk, ca=True, nc=nc)
    _verify(root, inter, _cert("CN=gw", _key(), inter, ik, sans=[D("gw.corp.example")]))
    with pytest.raises(CertificateRejected) as info:
        _verify(root, inter, _cert("CN=gw", _key(), inter, ik,
                                   sans=[D("gw.corp.example"), x509.UniformResourceIdentifier("https://gw.corp.example/")]))
    assert info.value.reason is RejectReason.NAME_CONSTRAINTS and "not evaluated" in info.value.detail


def test_subject_email_attribute_is_an_rfc822_name(pki_set):
    root, inter, ik = pki_set
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corp"),
                      x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@evil.example")])
    leaf = _cert(name.rfc4514_string(), _key(), inter, ik, sans=[D("gw.corp.example")])
    with pytest.raises(CertificateRejected) as info:
        _verify(root, inter, leaf)
    assert info.value.reason is RejectReason.NAME_CONSTRAINTS and "ops@evil.example" in info.value.detail


# -- the openssl CLI as oracle and as the maker of the intermediate ----------------------------------------------
def _openssl(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    exe = require_tool("openssl")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


@pytest.mark.interop
def test_openssl_verify_agrees_case_by_case(pki_set, tmp_path):
    root, inter, ik = pki_set
    (tmp_path / "root.pem").write_bytes(root.public_bytes(PEM))
    (tmp_path / "inter.pem").write_bytes(inter.public_bytes(PEM))
    for n, (subject, sans, expected) in enumerate(CASES):
        leaf = _cert(subject, _key(), inter, ik, sans=sans)
        (tmp_path / f"leaf{n}.pem").write_bytes(leaf.public_bytes(PEM))
        r = _openssl("verify", "-CAfile", "root.pem", "-untrusted", "inter.pem", f"leaf{n}.pem", cwd=tmp_path,
                     check=False)
        ours = None
        try:
            _verify(root, inter, leaf)
        except CertificateRejected as exc:
            ours = exc.reason
        assert (r.returncode == 0) == (ours is None), (subject, sans, r.stdout, r.stderr, ours)
        if r.returncode:
            assert "subtree violation" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.interop
def test_intermediate_made_by_openssl_cli(tmp_path):
    """An intermediate the openssl CLI made (critical nameConstraints from an extfile), used through the CLI
    verb as an operator would: ``python -m pki verify --filename leaf --intermediate sub``."""
    def o(*a: str) -> subprocess.CompletedProcess:
        return _openssl(*a, cwd=tmp_path)

    o("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "root.key",
      "-out", "root.pem", "-subj", "/C=US/O=Corp/CN=OpenSSL Root", "-days", "30",
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    o("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "sub.key",
      "-out", "sub.csr", "-subj", "/C=US/O=Corp/CN=OpenSSL Sub")
    (tmp_path / "ext.cnf").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        "nameConstraints=critical,permitted;DNS:corp.example,permitted;IP:192.0.2.0/255.255.255.0,"
        "excluded;DNS:lab.corp.example\n")
    o("x509", "-req", "-in", "sub.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
      "-out", "sub.pem", "-days", "20", "-extfile", "ext.cnf")
    text = o("x509", "-in", "sub.pem", "-noout", "-text").stdout
    assert "X509v3 Name Constraints: critical" in text
    sub = x509.load_pem_x509_certificate((tmp_path / "sub.pem").read_bytes())
    sub_key = load_private_key((tmp_path / "sub.key").read_bytes(), None)

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("ESPRESSO_PKI_PASSPHRASE", None)

    def pki(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pki", "--store", str(tmp_path / "st"), *argv], env=env,
                              capture_output=True, text=True, timeout=60)

    assert pki("ca-profile", "add", "corp", "--revocation-check", "disable").returncode == 0
    r = pki("ca-certificate", "load", "--ca-profile", "corp", "--filename", str(tmp_path / "root.pem"))
    assert r.returncode == 0, r.stderr
    for name, ok in (("gw1.corp.example", True), ("gw1.lab.corp.example", False), ("gw1.evil.example", False)):
        leaf = _cert("CN=gw1,O=Corp,C=US", _key(), sub, sub_key, sans=[D(name), IP("192.0.2.10")])
        (tmp_path / "leaf.pem").write_bytes(certificates_to_pem([leaf]))
        r = pki("verify", "--filename", str(tmp_path / "leaf.pem"), "--intermediate", str(tmp_path / "sub.pem"),
                "--offline")
        ssl = _openssl("verify", "-CAfile", "root.pem", "-untrusted", "sub.pem", "leaf.pem", cwd=tmp_path, check=False)
        assert (ssl.returncode == 0) is ok, ssl.stdout + ssl.stderr
        if ok:
            assert r.returncode == 0 and r.stdout.startswith("OK: "), r.stdout + r.stderr
        else:
            assert r.returncode == 1, r.stdout + r.stderr
            assert r.stderr.startswith("error: certificate rejected (name-constraints): "), r.stderr
            assert name in r.stderr and "Traceback" not in r.stderr
