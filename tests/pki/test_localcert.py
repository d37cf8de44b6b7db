"""local-certificate generate-self-signed, export (PEM, DER, PKCS#12) and PKCS#12 import, run as an operator runs
them (``python -m pki`` subprocesses), with the openssl CLI reading what we write and writing what we read."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pki.store import Store
from tests.support import require_tool

REPO = Path(__file__).resolve().parents[2]
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def pki(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ESPRESSO_PKI_PASSPHRASE", None)

    def run(*argv: str, store: str = "st", ok: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "pki", "--store", store, *argv], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert "Traceback" not in r.stderr, r.stderr
        if ok:
            assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
        return r
    return run


def openssl(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    exe = require_tool("openssl")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def test_generate_self_signed(pki, tmp_path):
    pki("generate-key-pair", "--certificate-id", "r1", "--type", "ed25519")
    r = pki("local-certificate", "generate-self-signed", "--certificate-id", "r1", "--subject", "CN=r1,O=Corp",
            "--domain-name", "r1.corp.example", "--ip-address", "192.0.2.1", "--days", "30")
    assert r.stdout.startswith("Self-signed certificate r1: CN=r1,O=Corp, serial ")
    st = Store(tmp_path / "st")
    cert = st.local_certificate("r1")
    assert cert.issuer == cert.subject and cert.public_key().public_bytes(*SPKI) == st.public_key("r1").public_bytes(*SPKI)
    cert.verify_directly_issued_by(cert)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert "Issued by: CN=r1,O=Corp" in pki("show", "local-certificate", "--certificate-id", "r1").stdout
    # no key pair, or no subject: one clear line
    r = pki("local-certificate", "generate-self-signed", "--certificate-id", "r9", "--subject", "CN=x", ok=False)
    assert r.returncode == 1 and "generate-key-pair first" in r.stderr
    r = pki("local-certificate", "generate-self-signed", "--certificate-id", "r1", ok=False)
    assert r.returncode == 1 and "needs --subject" in r.stderr


def test_self_signed_peer_as_trust_anchor(pki, tmp_path):
    """Two routers without a CA: each trusts the other's self-signed certificate (with --add-ca-constraint, which
    the ca-certificate verbs require)."""
    pki("generate-key-pair", "--certificate-id", "a", "--type", "ecdsa", store="ra")
    pki("local-certificate", "generate-self-signed", "--certificate-id", "a", "--subject", "CN=a,O=Lab",
        "--domain-name", "a.lab.example", "--add-ca-constraint", store="ra")
    pki("local-certificate", "export", "--certificate-id", "a", "--filename", "a.pem", store="ra")
    pki("ca-profile", "add", "peer-a", "--revocation-check", "disable", store="rb")
    pki("ca-certificate", "load", "--ca-profile", "peer-a", "--filename", "a.pem", store="rb")
    r = pki("verify", "--filename", "a.pem", "--identity", "fqdn:a.lab.example", store="rb")
    assert r.stdout.startswith("OK: CN=a,O=Lab via ca-profile peer-a")


@pytest.mark.interop
def test_export_pem_der_and_pkcs12_round_trip_through_openssl(pki, tmp_path):
    pki("generate-key-pair", "--certificate-id", "r1", "--type", "rsa", "--size", "2048")
    pki("local-certificate", "generate-self-signed", "--certificate-id", "r1", "--subject", "CN=r1,O=Corp")
    st = Store(tmp_path / "st")
    cert = st.local_certificate("r1")
    # PEM to stdout, DER to a file: openssl reads both as the same certificate
    pem = pki("local-certificate", "export", "--certificate-id", "r1").stdout
    assert x509.load_pem_x509_certificate(pem.encode()) == cert
    pki("local-certificate", "export", "--certificate-id", "r1", "--type", "der", "--filename", "r1.der")
    fp = openssl("x509", "-inform", "DER", "-in", "r1.der", "-noout", "-fingerprint", "-sha256", cwd=tmp_path).stdout
    assert fp.split("=", 1)[1].strip().lower() == cert.fingerprint(hashes.SHA256()).hex(":")
    # PKCS#12 needs a passphrase file; the file is owner-only
    r = pki("local-certificate", "export", "--certificate-id", "r1", "--type", "pkcs12", "--filename", "r1.p12",
            ok=False)
    assert r.returncode == 1 and "--pkcs12-passphrase-file" in r.stderr and not (tmp_path / "r1.p12").exists()
    (tmp_path / "p12.pass").write_text("export pass\n")
    pki("local-certificate", "export", "--certificate-id", "r1", "--type", "pkcs12", "--pkcs12-passphrase-file",
        "p12.pass", "--filename", "r1.p12")
    assert (tmp_path / "r1.p12").stat().st_mode & 0o077 == 0
    # openssl opens it with the passphrase: the key it finds is the store's key, the certificate ours
    openssl("pkcs12", "-in", "r1.p12", "-passin", "file:p12.pass", "-nodes", "-out", "all.pem", cwd=tmp_path)
    openssl("pkey", "-in", "all.pem", "-pubout", "-outform", "DER", "-out", "pub.der", cwd=tmp_path)
    assert (tmp_path / "pub.der").read_bytes() == st.public_key("r1").public_bytes(*SPKI)
    assert x509.load_pem_x509_certificates((tmp_path / "all.pem").read_bytes())[0] == cert
    # ... and refuses a wrong passphrase
    (tmp_path / "wrong.pass").write_text("not it\n")
    r = openssl("pkcs12", "-in", "r1.p12", "-passin", "file:wrong.pass", "-nodes", cwd=tmp_path, check=False)
    assert r.returncode != 0
    # back: openssl writes a new PKCS#12 (its own defaults, another passphrase); we import it as a new id
    (tmp_path / "o.pass").write_text("openssl pass\n")
    openssl("pkcs12", "-export", "-in", "all.pem", "-passout", "file:o.pass", "-out", "openssl.p12", "-name", "r1",
            cwd=tmp_path)
    r = pki("local-certificate", "load", "--certificate-id", "r2", "--filename", "openssl.p12", ok=False)
    assert r.returncode == 1 and r.stderr == "error: openssl.p12: encrypted, a passphrase is needed " \
        "(--pkcs12-passphrase-file)\n"
    r = pki("local-certificate", "load", "--certificate-id", "r2", "--filename", "openssl.p12",
            "--pkcs12-passphrase-file", "wrong.pass", ok=False)
    assert r.returncode == 1 and r.stderr.startswith("error: openssl.p12: wrong passphrase")
    assert "r2" not in Store(tmp_path / "st").local_ids()  # nothing half-imported
    r = pki("local-certificate", "load", "--certificate-id", "r2", "--filename", "openssl.p12",
            "--pkcs12-passphrase-file", "o.pass")
    assert r.stdout == "Local certificate r2 loaded: CN=r1,O=Corp\n"
    st = Store(tmp_path / "st")
    assert st.local_certificate("r2") == cert
    assert st.private_key("r2").private_numbers() == st.private_key("r1").private_numbers()
    # loading it again under the same id is refused; a non-PKCS#12 file given as one is named as such
    r = pki("local-certificate", "load", "--certificate-id", "r2", "--filename", "openssl.p12",
            "--pkcs12-passphrase-file", "o.pass", ok=False)
    assert r.returncode == 1 and "exists already" in r.stderr
    r = pki("local-certificate", "load", "--certificate-id", "r3", "--filename", "r1.der",
            "--pkcs12-passphrase-file", "o.pass", ok=False)
    assert r.returncode == 1 and "not a PKCS#12 (PFX) file" in r.stderr


def test_pkcs12_import_of_an_encrypted_store_key(pki, tmp_path):
    """The stored key stays encrypted with the store's own passphrase, not the file's."""
    (tmp_path / "store.pass").write_text("store secret\n")
    (tmp_path / "p12.pass").write_text("p12 secret\n")
    pki("--passphrase-file", "store.pass", "generate-key-pair", "--certificate-id", "r1", "--type", "ecdsa")
    pki("--passphrase-file", "store.pass", "local-certificate", "generate-self-signed", "--certificate-id", "r1",
        "--subject", "CN=r1")
    r = pki("local-certificate", "export", "--certificate-id", "r1", "--type", "pkcs12", "--pkcs12-passphrase-file",
            "p12.pass", "--filename", "r1.p12", ok=False)
    assert r.returncode == 1 and "passphrase is needed" in r.stderr
    pki("--passphrase-file", "store.pass", "local-certificate", "export", "--certificate-id", "r1", "--type",
        "pkcs12", "--pkcs12-passphrase-file", "p12.pass", "--filename", "r1.p12")
    pki("--passphrase-file", "store.pass", "local-certificate", "load", "--certificate-id", "copy", "--filename",
        "r1.p12", "--pkcs12-passphrase-file", "p12.pass", store="other")
    key_pem = next((tmp_path / "other" / "local").glob(".copy.*/key.pem")).read_bytes()
    assert b"ENCRYPTED" in key_pem
