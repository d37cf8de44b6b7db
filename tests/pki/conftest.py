"""Fixtures for the PKI tests: a fixed clock and small CAs built on demand (ECDSA P-256 keeps them fast)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pki.__main__ import main
from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.keys import generate_private_key, parse_key_spec

#: Every test runs at this instant unless it says otherwise.
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m pki`` in process: (exit code, stdout, stderr)."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A working directory for CLI tests, with no passphrase in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ESPRESSO_PKI_PASSPHRASE", raising=False)
    return tmp_path


@pytest.fixture
def t0() -> datetime:
    return T0


@pytest.fixture
def root_ca(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority.init(tmp_path / "root", "CN=Test Root,O=espresso", path_length=1,
                                   crl_url="http://127.0.0.1:1/root.crl", at=T0 - timedelta(days=1))
    yield ca
    ca.close()


@pytest.fixture
def sub_ca(tmp_path: Path, root_ca: CertificateAuthority) -> CertificateAuthority:
    ca = CertificateAuthority.init(tmp_path / "sub", "CN=Test Sub,O=espresso", parent=root_ca, path_length=0,
                                   crl_url="http://127.0.0.1:1/sub.crl", ocsp_url="http://127.0.0.1:1/ocsp",
                                   at=T0 - timedelta(days=1))
    yield ca
    ca.close()


def make_leaf(ca: CertificateAuthority, cn: str = "r1", dns=("r1.example.net",), ip=("192.0.2.1",),
              email=("ops@example.net",), profile=None, at: datetime = T0, key_type: str = "ecdsa", key_size=None):
    key = generate_private_key(parse_key_spec(key_type, key_size))
    csr = build_csr(key, f"CN={cn},O=espresso", SubjectAltNames.build(dns=list(dns), ip=list(ip), email=list(email)))
    return key, ca.issue(csr, profile, at=at)


def raw_cert(subject: str, key, issuer_name: str | None = None, issuer_key=None, *, ca: bool | None = True,
             path_length=None, key_usage: dict | None = None, extra=(), not_before=None, not_after=None, serial=None):
    """A certificate built directly (no CA checks), for shapes our CA refuses to produce."""
    from cryptography import x509 as _x

    from pki.certs import parse_subject
    from pki.csr import signing_hash

    name = parse_subject(subject)
    issuer = parse_subject(issuer_name) if issuer_name else name
    signer = issuer_key or key
    b = (_x.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
         .serial_number(serial or _x.random_serial_number())
         .not_valid_before(not_before or T0 - timedelta(days=1)).not_valid_after(not_after or T0 + timedelta(days=30)))
    if ca is not None:
        b = b.add_extension(_x.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if key_usage is not None:
        flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                     key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
        flags.update(key_usage)
        b = b.add_extension(_x.KeyUsage(**flags), critical=True)
    for ext, crit in extra:
        b = b.add_extension(ext, critical=crit)
    return b.sign(signer, signing_hash(signer))
