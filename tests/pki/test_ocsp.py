"""OCSP (pki.ocsp): responder and client in memory, with negative cases for every check the client makes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from pki.ocsp import (
    OcspCertStatus,
    OcspChecker,
    OcspError,
    OcspResponder,
    SerialStatus,
    build_request,
    ocsp_urls,
    verify_response,
)

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca=False, eku=None, serial=None, aia=None):
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(T0 - timedelta(days=1))
        .not_valid_after(T0 + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if aia:
        b = b.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(aia)
                    )
                ]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("OCSP CA", self.ca_key, "OCSP CA", self.ca_key, ca=True)
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.good = _cert(
            "good", self.leaf_key, "OCSP CA", self.ca_key, serial=1001, aia="http://ocsp.invalid/"
        )
        self.revoked = _cert("revoked", self.leaf_key, "OCSP CA", self.ca_key, serial=1002)
        self.stranger = _cert("stranger", self.leaf_key, "OCSP CA", self.ca_key, serial=1003)
        self.db = {
            1001: SerialStatus(OcspCertStatus.GOOD),
            1002: SerialStatus(
                OcspCertStatus.REVOKED, T0 - timedelta(hours=2), x509.ReasonFlags.key_compromise
            ),
        }
        self.responder = OcspResponder(self.ca, self.ca, self.ca_key, self.db.get)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


NONCE = b"\x42" * 16


@pytest.mark.parametrize(
    "which,status",
    [
        ("good", OcspCertStatus.GOOD),
        ("revoked", OcspCertStatus.REVOKED),
        ("stranger", OcspCertStatus.UNKNOWN),
    ],
)
def test_statuses(pki, which, status):
    cert = getattr(pki, which)
    resp = pki.responder.respond(build_request(cert, pki.ca, nonce=NONCE), T0)
    result = verify_response(resp, cert, pki.ca, T0, nonce=NONCE)
    assert result.status is status
    assert result.this_update == T0 and result.next_update == T0 + timedelta(hours=1)
    if status is OcspCertStatus.REVOKED:
        assert result.revocation_time == T0 - timedelta(hours=2)
        assert result.revocation_reason is x509.ReasonFlags.key_compromise


def test_nonce_echoed_and_checked(pki):
    resp = pki.responder.respond(build_request(pki.good, pki.ca, nonce=NONCE), T0)
    parsed = x509_ocsp.load_der_ocsp_response(resp)
    assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == NONCE
    with pytest.raises(OcspError, match="nonce does not match"):
        verify_response(resp, pki.good, pki.ca, T0, nonce=b"\x43" * 16)


def test_missing_nonce_fails_when_required(pki):
    resp = pki.responder.respond(build_request(pki.good, pki.ca), T0)  # request without a nonce
    with pytest.raises(OcspError, match="did not echo"):
        verify_response(resp, pki.good, pki.ca, T0, nonce=NONCE)
    assert (
        verify_response(resp, pki.good, pki.ca, T0, nonce=NONCE, require_nonce=False).status
        is OcspCertStatus.GOOD
    )


def test_sha256_cert_id(pki):
    req = build_request(pki.good, pki.ca, nonce=NONCE, algorithm=hashes.SHA256())
    assert (
        verify_response(pki.responder.respond(req, T0), pki.good, pki.ca, T0, nonce=NONCE).status
        is OcspCertStatus.GOOD
    )


def test_other_issuer_is_unknown(pki):
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("Other CA", other_key, "Other CA", other_key, ca=True)
    cert = _cert("x", pki.leaf_key, "Other CA", other_key, serial=1001)  # same serial as a good one of ours
    resp = pki.responder.respond(build_request(cert, other_ca, nonce=NONCE), T0)
    with pytest.raises(OcspError, match="not authorise"):  # signed by our CA, not theirs
        verify_response(resp, cert, other_ca, T0, nonce=NONCE)
    single = x509_ocsp.load_der_ocsp_response(resp)
    assert single.certificate_status is x509_ocsp.OCSPCertStatus.UNKNOWN


@pytest.mark.parametrize(
    "at,match", [(T0 + timedelta(hours=2), "stale"), (T0 - timedelta(hours=1), "future")]
)
def test_time_window(pki, at, match):
    resp = pki.responder.respond(build_request(pki.good, pki.ca, nonce=NONCE), T0)
    with pytest.raises(OcspError, match=match):
        verify_response(resp, pki.good, pki.ca, at, nonce=NONCE)


def test_forged_signature(pki):
    resp = bytearray(pki.responder.respond(build_request(pki.good, pki.ca, nonce=NONCE), T0))
    # flip a bit inside the signature BIT STRING (at the very end, before no certs)
    resp[-3] ^= 0x01
    with pytest.raises(OcspError):
        verify_response(bytes(resp), pki.good, pki.ca, T0, nonce=NONCE)


def test_response_signed_by_wrong_key(pki):
    """An impostor with the CA's name but its own key says "good" about a revoked certificate."""
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_ca = _cert("OCSP CA", rogue_key, "OCSP CA", rogue_key, ca=True)
    rogue = OcspResponder(pki.ca, rogue_ca, rogue_key, lambda serial: SerialStatus(OcspCertStatus.GOOD))
    resp = rogue.respond(build_request(pki.revoked, pki.ca, nonce=NONCE), T0)
    with pytest.raises(OcspError, match="not signed by the certificate.s CA|did not authorise"):
        verify_response(resp, pki.revoked, pki.ca, T0, nonce=NONCE)
    # even when it ships its certificate along
    rogue2 = OcspResponder(
        pki.ca,
        _cert("OCSP signer", rogue_key, "OCSP CA", rogue_key, eku=[ExtendedKeyUsageOID.OCSP_SIGNING]),
        rogue_key,
        lambda serial: SerialStatus(OcspCertStatus.GOOD),
    )
    resp = rogue2.respond(build_request(pki.revoked, pki.ca, nonce=NONCE), T0)
    with pytest.raises(OcspError, match="not signed by the certificate's CA"):
        verify_response(resp, pki.revoked, pki.ca, T0, nonce=NONCE)


def test_delegated_responder(pki):
    key = ec.generate_private_key(ec.SECP256R1())
    delegate = _cert("OCSP signer", key, "OCSP CA", pki.ca_key, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    responder = OcspResponder(pki.ca, delegate, key, pki.db.get)
    resp = responder.respond(build_request(pki.revoked, pki.ca, nonce=NONCE), T0)
    result = verify_response(resp, pki.revoked, pki.ca, T0, nonce=NONCE)
    assert result.status is OcspCertStatus.REVOKED and result.responder == delegate


def test_delegate_without_ocsp_signing_eku_is_refused(pki):
    key = ec.generate_private_key(ec.SECP256R1())
    delegate = _cert("OCSP signer", key, "OCSP CA", pki.ca_key, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    resp = OcspResponder(pki.ca, delegate, key, pki.db.get).respond(build_request(pki.good, pki.ca), T0)
    with pytest.raises(OcspError, match="OCSPSigning"):
        verify_response(resp, pki.good, pki.ca, T0)


def test_response_for_other_certificate(pki):
    resp = pki.responder.respond(build_request(pki.good, pki.ca, nonce=NONCE), T0)
    with pytest.raises(OcspError, match="does not cover"):
        verify_response(resp, pki.revoked, pki.ca, T0, nonce=NONCE)


@pytest.mark.parametrize(
    "status", [x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST, x509_ocsp.OCSPResponseStatus.TRY_LATER]
)
def test_unsuccessful_response(pki, status):
    resp = x509_ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)
    with pytest.raises(OcspError, match=status.name.lower()):
        verify_response(resp, pki.good, pki.ca, T0)


@pytest.mark.parametrize("body", [b"", b"\x30\x00", b"garbage", b"\x30" * 20000])
def test_malformed_request_gets_malformed_response(pki, body):
    resp = x509_ocsp.load_der_ocsp_response(pki.responder.respond(body, T0))
    assert resp.response_status is x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_fuzz_responder_never_raises(data):
    p = _FUZZ_PKI
    resp = x509_ocsp.load_der_ocsp_response(p.responder.respond(data, T0))
    assert resp.response_status in (
        x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        x509_ocsp.OCSPResponseStatus.SUCCESSFUL,
    )


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_fuzz_client_only_ocsp_errors(data):
    p = _FUZZ_PKI
    with pytest.raises(OcspError):
        verify_response(data, p.good, p.ca, T0, nonce=NONCE)


_FUZZ_PKI = Pki()


def test_checker_with_injected_transport(pki):
    seen = []

    def transport(url: str, body: bytes) -> bytes:
        seen.append(url)
        return pki.responder.respond(body, T0)

    checker = OcspChecker(transport=transport)
    assert checker.check(pki.good, pki.ca, T0).status is OcspCertStatus.GOOD
    assert seen == ["http://ocsp.invalid/"]  # from the certificate's AIA
    override = OcspChecker("http://override.invalid/ocsp", transport=transport)
    assert override.check(pki.revoked, pki.ca, T0).status is OcspCertStatus.REVOKED
    assert seen[-1] == "http://override.invalid/ocsp"


def test_checker_replayed_response_is_refused(pki):
    """A recorded answer replayed to a new request: the fresh nonce does not match."""
    old = pki.responder.respond(build_request(pki.good, pki.ca, nonce=b"\x01" * 16), T0)
    checker = OcspChecker(transport=lambda url, body: old)
    with pytest.raises(OcspError, match="nonce"):
        checker.check(pki.good, pki.ca, T0)


def test_checker_without_url(pki):
    with pytest.raises(OcspError, match="no OCSP responder"):
        OcspChecker(transport=lambda u, b: b"").check(pki.revoked, pki.ca, T0)


def test_checker_unreachable_fails_closed():
    p = _FUZZ_PKI
    checker = OcspChecker("http://127.0.0.1:1/ocsp", timeout=2)
    with pytest.raises(OcspError, match="unreachable"):
        checker.check(p.good, p.ca, T0)


def test_ocsp_urls(pki):
    assert ocsp_urls(pki.good) == ["http://ocsp.invalid/"]
    assert ocsp_urls(pki.revoked) == []


def _multi_request(pki, certs, nonce=NONCE) -> bytes:
    """An OCSPRequest naming several certificates (cryptography builds only single ones)."""
    from asn1crypto import ocsp as asn1_ocsp

    reqs = [
        asn1_ocsp.OCSPRequest.load(build_request(c, pki.ca))["tbs_request"]["request_list"][0] for c in certs
    ]
    tbs = {"request_list": reqs}
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": nonce}]
    return asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump()


@pytest.mark.parametrize("delegated", [False, True])
def test_several_certificates_in_one_request(pki, delegated):
    responder = pki.responder
    if delegated:
        key = ec.generate_private_key(ec.SECP256R1())
        signer = _cert("OCSP signer", key, "OCSP CA", pki.ca_key, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
        responder = OcspResponder(pki.ca, signer, key, pki.db.get)
    resp = responder.respond(_multi_request(pki, [pki.good, pki.revoked, pki.stranger]), T0)
    assert len(list(x509_ocsp.load_der_ocsp_response(resp).responses)) == 3
    expected = {
        "good": OcspCertStatus.GOOD,
        "revoked": OcspCertStatus.REVOKED,
        "stranger": OcspCertStatus.UNKNOWN,
    }
    for name, status in expected.items():
        result = verify_response(resp, getattr(pki, name), pki.ca, T0, nonce=NONCE)
        assert result.status is status
        assert result.next_update == T0 + timedelta(hours=1)
    revoked = verify_response(resp, pki.revoked, pki.ca, T0, nonce=NONCE)
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise


def test_too_many_certificates_in_one_request(pki):
    from pki.ocsp import MAX_CERTS_PER_REQUEST

    resp = pki.responder.respond(_multi_request(pki, [pki.good] * (MAX_CERTS_PER_REQUEST + 1)), T0)
    assert (
        x509_ocsp.load_der_ocsp_response(resp).response_status
        is x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )


_REASONS = [
    r for r in x509.ReasonFlags if r not in (x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl)
]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    status=st.sampled_from([OcspCertStatus.GOOD, OcspCertStatus.REVOKED, None]),
    reason=st.none() | st.sampled_from(_REASONS),
    revoked_ago=st.integers(min_value=0, max_value=10 * 365 * 86400),
    nonce=st.none() | st.binary(min_size=1, max_size=32),
    sha256=st.booleans(),
)
def test_round_trip_responder_client(status, reason, revoked_ago, nonce, sha256):
    """Whatever the database says, the verified answer says the same."""
    p = _FUZZ_PKI
    rtime = T0 - timedelta(seconds=revoked_ago)
    info = None if status is None else SerialStatus(status, rtime, reason)
    responder = OcspResponder(p.ca, p.ca, p.ca_key, lambda serial: info)
    req = build_request(p.good, p.ca, nonce=nonce, algorithm=hashes.SHA256() if sha256 else None)
    result = verify_response(responder.respond(req, T0), p.good, p.ca, T0, nonce=nonce)
    assert result.status is (status or OcspCertStatus.UNKNOWN)
    if status is OcspCertStatus.REVOKED:
        assert result.revocation_time == rtime and result.revocation_reason is reason
    else:
        assert result.revocation_time is None
