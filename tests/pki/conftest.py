"""Fixtures for the PKI tests: a fixed clock and small CAs built on demand (ECDSA P-256 keeps them fast)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.keys import generate_private_key, parse_key_spec

#: Every test runs at this instant unless it says otherwise.
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


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
