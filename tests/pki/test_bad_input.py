"""Bad input: every parser raises only package errors with a one-line message, refuses oversized input, and a
refused input leaves no file or database row behind. Includes Hypothesis round trips and bit-flip fuzzing."""
from __future__ import annotations

import os
import sqlite3
import stat
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki._files import MAX_INPUT_BYTES, write_atomic
from pki.certs import SubjectAltNames, load_certificates, load_crl, parse_subject, sans_of
from pki.csr import build_csr, challenge_password, load_csr, parse_csr
from pki.errors import (
    CaError,
    CorruptInputError,
    CsrSignatureError,
    InputTooLargeError,
    PassphraseError,
    PkiError,
)
from pki.keys import (
    generate_private_key,
    load_private_key,
    parse_key_spec,
    private_key_to_pem,
    save_private_key,
)
from tests.pki.conftest import T0, make_leaf

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
KEY = generate_private_key(parse_key_spec("ecdsa", 256))

CORRUPT = [
    b"",
    b"\x00",
    b"\x30\x03\x02\x01",  # truncated DER
    b"\x30\x84\xff\xff\xff\xff",  # absurd length
    b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    "é".encode() * 10,
]
PARSERS = [load_certificates, load_crl, load_csr, lambda d: parse_csr(d)[0], lambda d: load_private_key(d)]


@pytest.mark.parametrize("data", CORRUPT)
@pytest.mark.parametrize("parse", PARSERS)
def test_corrupt_inputs_raise_package_errors(parse, data):
    with pytest.raises(PkiError) as e:
        parse(data)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("parse", PARSERS)
def test_oversized_input_refused_before_parsing(parse):
    with pytest.raises((InputTooLargeError, CorruptInputError)):
        parse(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (MAX_INPUT_BYTES + 1))


def test_read_bounded_refuses_big_file(tmp_path):
    from pki._files import read_bounded
    p = tmp_path / "big.pem"
    p.write_bytes(b"A" * (MAX_INPUT_BYTES + 1))
    with pytest.raises(InputTooLargeError):
        read_bounded(p)


def test_key_file_created_0600_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        save_private_key(tmp_path / "k.pem", KEY)
        write_atomic(tmp_path / "pub.pem", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pub.pem").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_key_file_is_never_world_readable_while_written(tmp_path, monkeypatch):
    """The temporary file is opened with mode 0600 by os.open itself (no chmod afterwards)."""
    seen = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        if str(path).endswith(".tmp"):
            seen.append(mode)
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: pytest.fail("chmod used"))
    save_private_key(tmp_path / "k.pem", KEY, b"pw")
    assert seen == [0o600]


def test_passphrase_errors():
    enc = private_key_to_pem(KEY, b"right")
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        load_private_key(enc, b"wrong")
    with pytest.raises(PassphraseError, match="needed"):
        load_private_key(enc)
    assert load_private_key(enc, b"right")


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "ca.pem"
    target.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ca.pem"]


def test_forged_csr_refused(sub_ca):
    csr = build_csr(KEY, "CN=x")
    der = bytearray(csr.public_bytes(DER))
    der[-2] ^= 0x01
    with pytest.raises((CsrSignatureError, CorruptInputError)):
        load_csr(bytes(der))
    with pytest.raises((CsrSignatureError, CorruptInputError)):
        parse_csr(bytes(der))


def test_corrupt_database_is_a_ca_error(tmp_path, root_ca):
    path = root_ca.path
    root_ca.close()
    for f in path.glob("ca.db*"):
        f.unlink()
    (path / "ca.db").write_bytes(b"this is not sqlite" * 100)
    from pki.ca import CertificateAuthority
    with pytest.raises(CaError):
        CertificateAuthority.open(path)


def test_mismatched_ca_key_refused(tmp_path, root_ca, sub_ca):
    from pki.ca import CertificateAuthority
    (root_ca.path / "ca.key").write_bytes((sub_ca.path / "ca.key").read_bytes())
    with pytest.raises(CaError, match="does not match"):
        CertificateAuthority.open(root_ca.path)


def test_db_consistent_after_refused_requests(sub_ca):
    before = len(sub_ca.records())
    small_rsa = None
    from cryptography.hazmat.primitives.asymmetric import rsa
    small_rsa = rsa.generate_private_key(65537, 1024)
    with pytest.raises(CaError):
        sub_ca.issue(build_csr(small_rsa, "CN=weak"), at=T0)
    with pytest.raises(CaError):
        sub_ca.issue(build_csr(KEY, "CN=late"), at=sub_ca.certificate.not_valid_after_utc + timedelta(days=1))
    assert len(sub_ca.records()) == before
    con = sqlite3.connect(sub_ca.db_path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


# -- Hypothesis: round trips and fuzzing -------------------------------------------------------------------------
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
_dns = st.builds(lambda a, b: f"{a}.{b}.example", _label, _label)
_ip = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
_email = st.builds(lambda a, b: f"{a}@{b}.example", _label, _label)
_cn = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=16)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cn=_cn, dns=st.lists(_dns, max_size=3), ip=st.lists(_ip, max_size=3), email=st.lists(_email, max_size=2),
       challenge=st.one_of(st.none(), st.text(alphabet="abcXYZ012-_!", min_size=1, max_size=20)))
def test_csr_round_trip(cn, dns, ip, email, challenge):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    sans = SubjectAltNames.build(dns=dns, ip=ip, email=email)
    csr = build_csr(KEY, name, sans or None, challenge)
    again = load_csr(csr.public_bytes(PEM))
    assert again.subject == name
    got = sans_of(again)
    assert list(got.dns) == dns and [str(a) for a in got.ip] == [str(__import__("ipaddress").ip_address(a)) for a in ip]
    assert list(got.email) == email and challenge_password(again) == challenge


@settings(max_examples=30, deadline=None)
@given(cn=_label, org=_label)
def test_subject_parse_round_trip(cn, org):
    name = parse_subject(f"CN={cn},O={org}")
    assert parse_subject(name.rfc4514_string()) == name
    assert parse_subject(f"/O={org}/CN={cn}") == name


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from pki.ca import CertificateAuthority
    ca = CertificateAuthority.init(tmp_path_factory.mktemp("fuzzca"), "CN=Fuzz CA", at=T0)
    _, leaf = make_leaf(ca)
    ca.revoke(leaf.serial_number, "superseded", at=T0)
    out = {
        "cert": leaf.public_bytes(DER),
        "crl": ca.crl(at=T0).public_bytes(DER),
        "csr": build_csr(KEY, "CN=f", SubjectAltNames.build(dns=["a.example"]), "pw").public_bytes(DER),
        "key": private_key_to_pem(KEY),
    }
    ca.close()
    return out


_PARSE = {"cert": load_certificates, "crl": load_crl, "csr": lambda d: parse_csr(d), "key": load_private_key}


@pytest.mark.parametrize("kind", sorted(_PARSE))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bit_flips_raise_only_package_errors(samples, kind, data):
    blob = bytearray(samples[kind])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(1, len(blob)))
    try:
        obj = _PARSE[kind](bytes(blob[:cut]))
    except PkiError:
        return
    # what parsed must be usable by show and the CA without raising
    from pki.show import show_certificate, show_crl, show_request
    if kind == "cert":
        for c in obj:
            show_certificate(c, T0, detail=True)
    elif kind == "crl":
        show_crl(obj, T0, detail=True)
    elif kind == "csr":
        show_request(obj[0], detail=True)


@pytest.fixture(scope="module")
def chain_sample(tmp_path_factory):
    from pki.ca import CertificateAuthority
    ca = CertificateAuthority.init(tmp_path_factory.mktemp("vca"), "CN=V CA", at=T0)
    _, leaf = make_leaf(ca)
    yield ca.certificate, leaf.public_bytes(DER)
    ca.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validator_on_mutated_certificates_only_rejects(chain_sample, data):
    from pki.profile import RevocationMode, RevocationPolicy
    from pki.validate import TrustAnchor, Validator
    anchor, der = chain_sample
    blob = bytearray(der)
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    try:
        [cert] = load_certificates(bytes(blob))
    except PkiError:
        return
    v = Validator([TrustAnchor(anchor, RevocationPolicy(mode=RevocationMode.DISABLE))])
    try:
        v.verify(cert, [], T0, identity=("fqdn", "r1.example.net"))
    except PkiError:
        pass
