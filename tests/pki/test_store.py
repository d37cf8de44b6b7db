"""The router's store: key pairs, ca-profiles, CA certificates, requests, local certificates, CRLs."""
from __future__ import annotations

import os
import stat
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from pki.certs import SubjectAltNames, certificates_to_pem, fingerprint
from pki.csr import load_csr
from pki.errors import (
    CorruptInputError,
    CsrSignatureError,
    InputTooLargeError,
    KeyFileError,
    PassphraseError,
    ProfileError,
    StoreError,
)
from pki.profile import CaProfile, RevocationMode, RevocationPolicy
from pki.store import Store
from pki.validate import IdType
from tests.pki.conftest import T0, make_leaf

PEM = serialization.Encoding.PEM


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("kt,size", [("rsa", 2048), ("rsa", 3072), ("rsa", 4096), ("ecdsa", 256), ("ecdsa", 384),
                                     ("ecdsa", 521), ("ed25519", None)])
def test_generate_key_pair_types_and_mode(store, kt, size):
    if size == 4096 or size == 3072:
        pytest.importorskip("cryptography")  # still fast enough; kept for coverage of every JUNOS size
    key = store.generate_key_pair("r1", kt, size)
    p = store.key_path("r1")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert p.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = store.private_key("r1")
    assert again.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_key_pair_passphrase(store):
    store.generate_key_pair("r1", "ecdsa", 256, passphrase=b"pw")
    assert b"ENCRYPTED" in store.key_path("r1").read_bytes()
    with pytest.raises(PassphraseError):
        store.private_key("r1")
    with pytest.raises(PassphraseError):
        store.private_key("r1", b"wrong")
    store.private_key("r1", b"pw")


def test_bad_key_specs_and_duplicates(store):
    for kt, size in [("rsa", 1024), ("ecdsa", 192), ("dsa", 2048), ("ed25519", 448)]:
        with pytest.raises(ValueError):
            store.generate_key_pair("x", kt, size)
    store.generate_key_pair("r1", "ecdsa")
    with pytest.raises(StoreError):
        store.generate_key_pair("r1", "ecdsa")
    with pytest.raises(StoreError):
        store.generate_key_pair("../evil", "ecdsa")
    with pytest.raises(KeyFileError):
        store.private_key("nobody")


def test_corrupt_key_file(store):
    store.generate_key_pair("r1", "ecdsa")
    store.key_path("r1").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CorruptInputError):
        store.private_key("r1")


def test_manual_enrollment_path(store, sub_ca, root_ca, tmp_path):
    """generate-key-pair, generate-certificate-request to a file, CA issues from it, local-certificate load."""
    store.add_profile(CaProfile("lab", revocation=RevocationPolicy(mode=RevocationMode.DISABLE)))
    store.load_ca_certificate("lab", certificates_to_pem([root_ca.certificate]))
    store.generate_key_pair("r1", "ecdsa", 384)
    out = tmp_path / "r1.csr"
    store.generate_certificate_request("r1", "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example.net"],
                                       ip=["192.0.2.1"], email=["ops@example.net"]), filename=out)
    csr = load_csr(out.read_bytes())
    cert = sub_ca.issue(csr, at=T0)
    bundle = certificates_to_pem([cert, sub_ca.certificate])
    loaded = store.load_local_certificate("r1", bundle)
    assert loaded == cert and store.local_certificate("r1") == cert
    # the validator built from the store accepts it, matching an IKE identity
    chain = store.validator(fetch=None).verify(cert, [sub_ca.certificate], T0, identity=(IdType.FQDN, "r1.example.net"))
    assert chain.profile == "lab"


def test_local_certificate_must_match_key(store, sub_ca):
    store.generate_key_pair("r1", "ecdsa")
    _, other = make_leaf(sub_ca)
    before = _files(store.path)
    with pytest.raises(StoreError, match="does not match"):
        store.load_local_certificate("r1", other.public_bytes(PEM))
    assert _files(store.path) == before and store.local_certificate("r1") is None


def test_ca_certificate_load_pem_der_chain_and_refusals(store, root_ca, sub_ca):
    store.add_profile(CaProfile("root"))
    store.add_profile(CaProfile("sub"))
    assert store.load_ca_certificate("root", root_ca.certificate.public_bytes(serialization.Encoding.DER)) == \
        [root_ca.certificate]
    assert store.load_ca_certificate("sub", certificates_to_pem(sub_ca.chain)) == sub_ca.chain
    _, leaf = make_leaf(sub_ca)
    with pytest.raises(StoreError, match="not a CA"):
        store.load_ca_certificate("root", leaf.public_bytes(PEM))
    assert store.ca_certificates("root") == [root_ca.certificate]  # unchanged
    with pytest.raises(ProfileError):
        store.load_ca_certificate("nope", root_ca.certificate.public_bytes(PEM))
    for bad, err in [(b"", CorruptInputError), (b"\x30\x82\x01", CorruptInputError),
                     (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", CorruptInputError),
                     (b"x" * (2 << 20), InputTooLargeError)]:
        with pytest.raises(err):
            store.load_ca_certificate("root", bad)
    assert store.ca_certificates("root") == [root_ca.certificate]


def test_enroll_ca_certificate_with_injected_scep(store, root_ca, sub_ca):
    store.add_profile(CaProfile("lab", enrollment_url="http://127.0.0.1:1/scep"))
    seen = []

    def get_ca_certs(url):
        seen.append(url)
        return sub_ca.chain

    certs = store.enroll_ca_certificate("lab", get_ca_certs=get_ca_certs)
    assert seen == ["http://127.0.0.1:1/scep"] and certs == sub_ca.chain
    assert len(fingerprint(certs[0])) == 32 * 3 - 1


def test_enroll_local_certificate_with_injected_scep(store, tmp_path):
    from pki.ca import CertificateAuthority
    from pki.csr import challenge_password

    ca = CertificateAuthority.init(tmp_path / "rsaca", "CN=SCEP CA", key_type="rsa", at=T0)
    store.add_profile(CaProfile("lab", enrollment_url="http://127.0.0.1:1/scep", retry=3, retry_interval=7))
    store.load_ca_certificate("lab", ca.certificate.public_bytes(PEM))
    store.generate_key_pair("r1", "rsa", 2048)
    calls = {}

    def enroll(url, key, csr, ca_certs, **kw):
        calls.update(kw, url=url, challenge_in_csr=challenge_password(csr))
        return ca.issue(csr, at=T0)

    cert = store.enroll_local_certificate("r1", "lab", "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example"]),
                                          "s3cret", enroll=enroll)
    assert store.local_certificate("r1") == cert
    assert calls["retry_count"] == 3 and calls["retry_interval"] == 7.0 and calls["challenge_in_csr"] == "s3cret"
    store.generate_key_pair("ec", "ecdsa")
    with pytest.raises(StoreError, match="RSA"):
        store.enroll_local_certificate("ec", "lab", "CN=ec", enroll=enroll)
    ca.close()


def test_crl_load_show_clear(store, root_ca, sub_ca):
    store.add_profile(CaProfile("sub"))
    store.load_ca_certificate("sub", sub_ca.certificate.public_bytes(PEM))
    with pytest.raises(StoreError, match="not signed"):
        store.load_crl("sub", root_ca.crl(at=T0).public_bytes(PEM))
    crl = store.load_crl("sub", sub_ca.crl(at=T0).public_bytes(PEM))
    assert store.crl("sub") == crl
    store.clear_crl("sub")
    assert store.crl("sub") is None
    with pytest.raises(StoreError):
        store.clear_crl("sub")


def test_store_revocation_via_loaded_crl(store, root_ca, sub_ca):
    store.add_profile(CaProfile("root"))
    store.add_profile(CaProfile("sub-crl"))
    store.load_ca_certificate("root", root_ca.certificate.public_bytes(PEM))
    store.load_ca_certificate("sub-crl", sub_ca.certificate.public_bytes(PEM))
    _, leaf = make_leaf(sub_ca)
    sub_ca.revoke(leaf.serial_number, "superseded", at=T0)
    store.load_crl("sub-crl", sub_ca.crl(at=T0).public_bytes(PEM))
    store.load_crl("root", root_ca.crl(at=T0).public_bytes(PEM))
    from pki.errors import CertificateRejected, RejectReason
    with pytest.raises(CertificateRejected) as e:
        store.validator(fetch=None).verify(leaf, [sub_ca.certificate], T0 + timedelta(minutes=1))
    assert e.value.reason is RejectReason.REVOKED


def test_profiles_persist_and_validate(store):
    p = CaProfile("lab", "Lab CA", "http://ca.example/scep", 5, 60,
                  RevocationPolicy(RevocationMode.CRL, "http://ca.example/crl", timedelta(hours=4), fail_open=True))
    store.add_profile(p)
    assert Store(store.path).profile("lab") == p
    with pytest.raises(ProfileError):
        store.add_profile(p)
    for bad in [dict(name="bad name"), dict(name="x", enrollment_url="ftp://x"), dict(name="x", retry=5000)]:
        with pytest.raises(ProfileError):
            CaProfile(**bad)
    store.remove_profile("lab")
    assert store.profiles() == []


def test_clear_local(store, sub_ca):
    store.generate_key_pair("r1", "ecdsa")
    store.generate_certificate_request("r1", "CN=r1")
    assert store.request("r1") is not None
    store.clear_local("r1", what="request")
    assert store.request("r1") is None
    store.clear_local("r1")
    assert store.local_ids() == []
    assert [p.name for p in (store.path / "local").iterdir()] == []


def test_request_with_bad_signature_refused(tmp_path, store):
    store.generate_key_pair("r1", "ecdsa")
    csr = store.generate_certificate_request("r1", "CN=r1")
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-4] ^= 0x10
    with pytest.raises((CsrSignatureError, CorruptInputError)):
        load_csr(bytes(der))
    assert os.path.exists(store.key_path("r1"))


def test_credential_for_ike(store, root_ca, sub_ca):
    store.add_profile(CaProfile("root", revocation=RevocationPolicy(mode=RevocationMode.DISABLE)))
    store.add_profile(CaProfile("sub"))
    store.load_ca_certificate("root", root_ca.certificate.public_bytes(PEM))
    store.generate_key_pair("r1", "ecdsa")
    cert = sub_ca.issue(store.generate_certificate_request("r1", "CN=r1"), at=T0)
    store.load_local_certificate("r1", cert.public_bytes(PEM))
    key, c, inter = store.credential("r1")
    assert c == cert and inter == []
    store.load_ca_certificate("sub", sub_ca.certificate.public_bytes(PEM))
    assert store.credential("r1")[2] == [sub_ca.certificate]
    store.load_local_certificate("r1", certificates_to_pem([sub_ca.certificate, cert, root_ca.certificate]))
    assert store.credential("r1")[2] == [sub_ca.certificate]
    v = store.validator(fetch=None, profile="root")
    assert v.verify(cert, store.credential("r1")[2], T0 + timedelta(minutes=1)).profile == "root"


def test_load_with_key_is_atomic(store, sub_ca):
    from pki.keys import private_key_to_pem
    key, cert = make_leaf(sub_ca)
    other, _ = make_leaf(sub_ca)
    with pytest.raises(StoreError):
        store.load_local_certificate("r9", cert.public_bytes(PEM), key=private_key_to_pem(other))
    assert store.local_ids() == [] and [p.name for p in (store.path / "local").iterdir()] == []
    assert store.load_local_certificate("r9", certificates_to_pem([cert, sub_ca.certificate]),
                                        key=private_key_to_pem(key)) == cert
    assert store.credential("r9")[2] == [sub_ca.certificate]
    with pytest.raises(StoreError, match="exists"):
        store.load_local_certificate("r9", cert.public_bytes(PEM), key=private_key_to_pem(key))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=50, deadline=None)
@given(name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
       retry=st.integers(0, 1000), interval=st.integers(0, 3600),
       mode=st.sampled_from(list(RevocationMode)), fail_open=st.booleans(),
       refresh=st.one_of(st.none(), st.integers(1, 10_000)), url=st.one_of(st.none(), st.just("http://ca.example/crl")))
def test_profile_json_round_trip(name, retry, interval, mode, fail_open, refresh, url):
    p = CaProfile(name, "", url, retry, interval,
                  RevocationPolicy(mode, url, None if refresh is None else timedelta(seconds=refresh), fail_open=fail_open))
    assert CaProfile.from_dict(p.to_dict()) == p
