"""``--subject`` is one rule for every verb: RFC 4514 text (most significant RDN LAST, as ``openssl -nameopt
RFC2253`` and Python's cryptography print), or OpenSSL's slash form (most significant FIRST); ``show`` prints RFC
4514. strongSwan's ``--dn`` is written in encoding order (most significant first) and its ``pki --print`` prints
that order: the same DN reads reversed between the two, and these tests pin both sides."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.support import require_tool

REPO = Path(__file__).resolve().parents[2]
#: the DER order every spelling below must give: C, O, OU, CN (most significant first)
ENCODED = [NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME]
SPELLINGS = ["CN=r1,OU=VPN,O=Example,C=US",  # RFC 4514
             "CN=r1, OU=VPN, O=Example, C=US",  # as JUNOS and strongSwan print, spaces after commas
             "/C=US/O=Example/OU=VPN/CN=r1"]  # OpenSSL's -subj


@pytest.fixture
def pki(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ESPRESSO_PKI_PASSPHRASE", None)

    def run(*argv: str) -> str:
        r = subprocess.run([sys.executable, "-m", "pki", *argv], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
        return r.stdout
    return run


def _order(name: x509.Name) -> list:
    return [next(iter(rdn)).oid for rdn in name.rdns]  # one attribute per RDN here


@pytest.mark.parametrize("subject", SPELLINGS)
def test_every_verb_encodes_the_same_order_and_show_prints_rfc4514(pki, tmp_path, subject):
    # ca init
    pki("ca", "--ca", "ca", "init", "--subject", subject.replace("r1", "Root"))
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    assert _order(ca.subject) == ENCODED
    # generate-certificate-request (local-certificate enroll builds its request with the same code)
    pki("generate-key-pair", "--certificate-id", "r1", "--type", "ecdsa")
    pki("generate-certificate-request", "--certificate-id", "r1", "--subject", subject, "--filename", "r1.csr")
    csr = x509.load_pem_x509_csr((tmp_path / "r1.csr").read_bytes())
    assert _order(csr.subject) == ENCODED
    # ca issue keeps the request's order; local-certificate generate-self-signed
    pki("ca", "--ca", "ca", "issue", "--csr", "r1.csr", "--out", "r1.pem")
    assert _order(x509.load_pem_x509_certificate((tmp_path / "r1.pem").read_bytes()).subject) == ENCODED
    pki("generate-key-pair", "--certificate-id", "s1", "--type", "ecdsa")
    pki("local-certificate", "generate-self-signed", "--certificate-id", "s1", "--subject", subject)
    out = pki("local-certificate", "export", "--certificate-id", "s1")
    assert _order(x509.load_pem_x509_certificate(out.encode()).subject) == ENCODED
    # show: RFC 4514, whatever spelling was typed
    assert "Issued to: CN=r1,OU=VPN,O=Example,C=US" in pki("show", "local-certificate", "--certificate-id", "s1")
    assert "Subject: CN=r1,OU=VPN,O=Example,C=US" in pki("show", "certificate-request", "--certificate-id", "r1")


@pytest.mark.interop
def test_openssl_and_strongswan_read_the_same_dn(pki, tmp_path):
    openssl, sw = require_tool("openssl"), require_tool("pki")
    pki("generate-key-pair", "--certificate-id", "s1", "--type", "ecdsa")
    pki("local-certificate", "generate-self-signed", "--certificate-id", "s1", "--subject", SPELLINGS[0])
    (tmp_path / "s1.pem").write_text(pki("local-certificate", "export", "--certificate-id", "s1"))
    r = subprocess.run([openssl, "x509", "-in", "s1.pem", "-noout", "-subject", "-nameopt", "oneline"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "subject=C = US, O = Example, OU = VPN, CN = r1"  # encoding order
    r = subprocess.run([openssl, "x509", "-in", "s1.pem", "-noout", "-subject", "-nameopt", "RFC2253"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "subject=CN=r1,OU=VPN,O=Example,C=US"  # what our show prints
    r = subprocess.run([sw, "--print", "--in", "s1.pem"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert 'subject:  "C=US, O=Example, OU=VPN, CN=r1"' in r.stdout, r.stdout
    # the other way: strongSwan's --dn is written most significant first; our show prints it reversed
    key = subprocess.run([sw, "--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"], cwd=tmp_path,
                         check=True, capture_output=True, timeout=60).stdout
    (tmp_path / "sw.key").write_bytes(key)
    cert = subprocess.run([sw, "--self", "--in", "sw.key", "--dn", "C=US, O=Example, OU=VPN, CN=sw", "--ca",
                           "--outform", "pem"], cwd=tmp_path, check=True, capture_output=True, timeout=60).stdout
    (tmp_path / "sw.pem").write_bytes(cert)
    assert _order(x509.load_pem_x509_certificate((tmp_path / "sw.pem").read_bytes()).subject) == ENCODED
    pki("ca-profile", "add", "sw")
    out = pki("ca-certificate", "load", "--ca-profile", "sw", "--filename", "sw.pem")
    assert "CN=sw,OU=VPN,O=Example,C=US" in out
    # so the strongSwan spelling typed into --subject is the reversed DN, and the slash form is the way to keep it
    pki("generate-key-pair", "--certificate-id", "t1", "--type", "ecdsa")
    pki("local-certificate", "generate-self-signed", "--certificate-id", "t1", "--subject", "C=US, O=Example, CN=t1")
    out = pki("local-certificate", "export", "--certificate-id", "t1")
    assert _order(x509.load_pem_x509_certificate(out.encode()).subject) == [
        NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.COUNTRY_NAME]
