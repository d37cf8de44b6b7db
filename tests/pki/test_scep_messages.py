"""SCEP message layer (pki.scep.messages): round trips, openssl as the CMS oracle, tampering, fuzz."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki.scep import messages as m
from pki.scep.constants import FailInfo, MessageType, PkiStatus
from pki.scep.errors import ScepError, ScepFailure, ScepFormatError
from tests.support import require_tool

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def _self_signed(key, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def ca():
    key = rsa.generate_private_key(65537, 2048)
    return key, _self_signed(key, "SCEP CA")


@pytest.fixture(scope="module")
def requester():
    key = rsa.generate_private_key(65537, 2048)
    return key, _self_signed(key, "router1")


def _request(requester, ca, payload=b"csr bytes", **kw):
    rkey, rcert = requester
    _, ccert = ca
    return m.sign_pki_message(
        message_type=kw.pop("message_type", MessageType.PKCSReq),
        transaction_id="T1",
        sender_nonce=b"\x01" * 16,
        signer_cert=rcert,
        signer_key=rkey,
        envelope=m.envelope(payload, ccert),
        signing_time=NOW,
        **kw,
    )


@pytest.mark.parametrize("cipher", sorted(m.CIPHERS))
def test_envelope_round_trip(ca, cipher):
    key, cert = ca
    env = m.envelope(b"x" * 100, cert, cipher=cipher)
    assert m.envelope_cipher(env) == cipher
    assert m.open_envelope(env, key, cert) == b"x" * 100


def test_envelope_not_for_us(ca, requester):
    env = m.envelope(b"secret", ca[1])
    with pytest.raises(ScepFailure) as exc:
        m.open_envelope(env, requester[0], requester[1])
    assert exc.value.fail_info is FailInfo.badMessageCheck


def test_envelope_needs_rsa(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="RSA"):
        m.envelope(b"x", _self_signed(key, "ec"))


def test_pki_message_round_trip(ca, requester):
    der = _request(requester, ca)
    msg = m.parse_pki_message(der)
    assert msg.message_type is MessageType.PKCSReq
    assert msg.transaction_id == "T1"
    assert msg.sender_nonce == b"\x01" * 16
    assert msg.signer == requester[1]
    assert msg.pki_status is None and msg.recipient_nonce is None
    assert m.open_envelope(msg.envelope, *ca) == b"csr bytes"


def test_cert_rep_attributes_round_trip(ca):
    key, cert = ca
    der = m.sign_pki_message(
        message_type=MessageType.CertRep,
        transaction_id="T2",
        sender_nonce=b"\x02" * 16,
        recipient_nonce=b"\x03" * 16,
        pki_status=PkiStatus.FAILURE,
        fail_info=FailInfo.badCertId,
        fail_info_text="nope",
        signer_cert=cert,
        signer_key=key,
        digest="sha512",
    )
    msg = m.parse_pki_message(der)
    assert (msg.pki_status, msg.fail_info, msg.fail_info_text) == (
        PkiStatus.FAILURE,
        FailInfo.badCertId,
        "nope",
    )
    assert msg.recipient_nonce == b"\x03" * 16 and msg.digest_algorithm == "sha512"
    assert msg.envelope is None


def test_openssl_verifies_and_decrypts(tmp_path, ca, requester):
    """openssl cms is the oracle: our SignedData verifies and our EnvelopedData decrypts with the CA key."""
    openssl = require_tool("openssl")
    (tmp_path / "req.der").write_bytes(_request(requester, ca, b"hello SCEP"))
    (tmp_path / "ca.key").write_bytes(ca[0].private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(ca[1].public_bytes(Encoding.PEM))
    subprocess.run(
        [
            openssl,
            "cms",
            "-verify",
            "-noverify",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "req.der"),
            "-out",
            str(tmp_path / "env.der"),
        ],
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [
            openssl,
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "env.der"),
            "-inkey",
            str(tmp_path / "ca.key"),
            "-recip",
            str(tmp_path / "ca.pem"),
        ],
        check=True,
        capture_output=True,
    ).stdout
    assert out == b"hello SCEP"


def test_openssl_built_envelope_opens(tmp_path, ca):
    """The other direction: an EnvelopedData from openssl (AES-256-CBC) opens with our code."""
    openssl = require_tool("openssl")
    (tmp_path / "ca.pem").write_bytes(ca[1].public_bytes(Encoding.PEM))
    (tmp_path / "msg").write_bytes(b"from openssl")
    der = subprocess.run(
        [
            openssl,
            "cms",
            "-encrypt",
            "-binary",
            "-aes-256-cbc",
            "-outform",
            "DER",
            "-in",
            str(tmp_path / "msg"),
            str(tmp_path / "ca.pem"),
        ],
        check=True,
        capture_output=True,
    ).stdout
    assert m.open_envelope(der, *ca) == b"from openssl"


def test_tampered_signature_is_bad_message_check(ca, requester):
    der = bytearray(_request(requester, ca))
    der[-10] ^= 0x01  # inside the signature (the last field of SignerInfo)
    with pytest.raises(ScepFailure) as exc:
        m.parse_pki_message(bytes(der))
    assert exc.value.fail_info is FailInfo.badMessageCheck
    assert exc.value.transaction_id == "T1" and exc.value.sender_nonce == b"\x01" * 16


def test_content_swapped_is_bad_message_check(ca, requester):
    """A valid signature over other content: the messageDigest check catches it."""
    der = _request(requester, ca, b"A" * 40)
    good = m.parse_pki_message(der)
    other = m.envelope(b"B" * 40, ca[1])
    assert good.envelope is not None and len(other) == len(good.envelope) and good.envelope in der
    with pytest.raises(ScepFailure) as exc:
        m.parse_pki_message(der.replace(good.envelope, other))
    assert exc.value.fail_info is FailInfo.badMessageCheck


def test_signer_missing_is_bad_cert_id(ca, requester):
    from asn1crypto import cms

    info = cms.ContentInfo.load(_request(requester, ca))
    info["content"]["certificates"] = []
    with pytest.raises(ScepFailure) as exc:
        m.parse_pki_message(info.dump(force=True))
    assert exc.value.fail_info is FailInfo.badCertId
    # ... but a caller who knows the signer (a client with the CA certificate) can supply it
    assert m.parse_pki_message(info.dump(force=True), extra_signers=[requester[1]]).transaction_id == "T1"


@pytest.mark.parametrize(
    "data", [b"", b"\x30", b"\x30\x03\x02\x01\x01", b"garbage" * 10, b"\x30\x82\xff\xff"]
)
def test_garbage_is_format_error(data):
    with pytest.raises(ScepFormatError):
        m.parse_pki_message(data)


def test_oversized_is_format_error():
    with pytest.raises(ScepFormatError, match="more than"):
        m.parse_pki_message(b"\x30" + b"\0" * (m.MAX_MESSAGE_SIZE + 1))


def test_envelope_instead_of_signed_data(ca):
    with pytest.raises(ScepFormatError, match="not signedData"):
        m.parse_pki_message(m.envelope(b"x", ca[1]))


def test_certs_only_round_trip(ca, requester):
    der = m.certs_only([ca[1], requester[1]])
    # a SET OF in DER: the order on the wire is the encoding order, not ours
    assert sorted(c.subject.rfc4514_string() for c in m.parse_certs_only(der)) == ["CN=SCEP CA", "CN=router1"]


def test_issuer_and_subject(ca, requester):
    issuer, subject = m.parse_issuer_and_subject(m.issuer_and_subject(ca[1].subject, requester[1].subject))
    assert issuer == ca[1].subject.public_bytes() and subject == requester[1].subject.public_bytes()
    issuer, serial = m.parse_issuer_and_serial(m.issuer_and_serial(ca[1].subject, 12345))
    assert issuer == ca[1].subject.public_bytes() and serial == 12345
    with pytest.raises(ScepFormatError):
        m.parse_issuer_and_subject(b"\x30\x00")


def test_transaction_id_is_stable_hex(requester):
    tid = m.transaction_id_for(requester[0].public_key())
    assert tid == m.transaction_id_for(requester[1].public_key())
    assert len(tid) == 64 and all(c in "0123456789ABCDEF" for c in tid)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.binary(max_size=600))
def test_fuzz_parse_only_package_errors(data):
    try:
        m.parse_pki_message(data)
    except ScepError:
        pass


_SEED: dict[str, bytes] = {}


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=255))
def test_fuzz_bit_flips_only_package_errors(ca, requester, pos, flip):
    if "req" not in _SEED:
        _SEED["req"] = _request(requester, ca)
    der = bytearray(_SEED["req"])
    der[pos % len(der)] ^= flip
    try:
        msg = m.parse_pki_message(bytes(der))
        if msg.envelope:
            m.open_envelope(msg.envelope, *ca)
    except ScepError:
        pass


_printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=64)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    message_type=st.sampled_from(list(MessageType)),
    tid=_printable,
    sender=st.binary(min_size=1, max_size=32),
    recipient=st.none() | st.binary(min_size=1, max_size=32),
    status=st.none() | st.sampled_from(list(PkiStatus)),
    fail=st.none() | st.sampled_from(list(FailInfo)),
    text=st.none() | st.text(min_size=1, max_size=40),
    digest=st.sampled_from(["sha256", "sha384", "sha512", "sha1"]),
    payload=st.none() | st.binary(max_size=200),
)
def test_round_trip_attributes(
    ca, requester, message_type, tid, sender, recipient, status, fail, text, digest, payload
):
    """Whatever attribute values we sign, parsing gives back exactly them."""
    key, cert = requester
    env = None if payload is None else m.envelope(payload, ca[1])
    der = m.sign_pki_message(
        message_type=message_type,
        transaction_id=tid,
        sender_nonce=sender,
        recipient_nonce=recipient,
        pki_status=status,
        fail_info=fail,
        fail_info_text=text,
        signer_cert=cert,
        signer_key=key,
        envelope=env,
        digest=digest,
    )
    msg = m.parse_pki_message(der)
    assert (msg.message_type, msg.transaction_id, msg.sender_nonce, msg.recipient_nonce) == (
        message_type,
        tid,
        sender,
        recipient,
    )
    assert (msg.pki_status, msg.fail_info, msg.fail_info_text, msg.digest_algorithm) == (
        status,
        fail,
        text,
        digest,
    )
    assert msg.envelope == env
    if payload is not None:
        assert m.open_envelope(msg.envelope, *ca) == payload


_names = st.lists(
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_categories=("Cs",)),
        min_size=1,
        max_size=20,
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(issuer=_names, subject=_names, serial=st.integers(min_value=1, max_value=2**159))
def test_round_trip_issuer_payloads(issuer, subject, serial):
    iname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, v) for v in issuer])
    sname = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, v) for v in subject])
    assert m.parse_issuer_and_subject(m.issuer_and_subject(iname, sname)) == (
        iname.public_bytes(),
        sname.public_bytes(),
    )
    assert m.parse_issuer_and_serial(m.issuer_and_serial(iname, serial)) == (iname.public_bytes(), serial)
