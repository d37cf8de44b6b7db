"""The CA's HTTP service beyond SCEP: CRL distribution point and OCSP responder, openssl as oracle."""

from __future__ import annotations

import base64
import socket
import subprocess
import urllib.parse
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.fetch import FetchError, fetch_crl, http_get, http_request
from pki.keys import generate_private_key, parse_key_spec
from pki.ocsp import OcspCertStatus, OcspChecker, build_request
from pki.service import CaService
from tests.support import require_tool


@pytest.fixture
def setup(tmp_path):
    """(service, ca): the test's own CA instance (test thread) and a started service on the same directory."""
    svc = CaService(tmp_path / "ca")
    ca = None
    try:
        ca = CertificateAuthority.init(
            tmp_path / "ca",
            "CN=Service CA,O=espresso",
            crl_url=f"{svc.url}/pki/ca.crl",
            ocsp_url=f"{svc.url}/ocsp",
        )
        svc.start()
        yield svc, ca
    finally:
        svc.stop()
        if ca is not None:
            ca.close()


def _issue(ca, cn="r1"):
    key = generate_private_key(parse_key_spec("ecdsa"))
    return ca.issue(build_csr(key, f"CN={cn},O=espresso", SubjectAltNames.build(dns=[f"{cn}.example.net"])))


def _files(tmp_path, ca, cert):
    (tmp_path / "ca.pem").write_bytes(ca.certificate.public_bytes(Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(cert.public_bytes(Encoding.PEM))
    return tmp_path / "ca.pem", tmp_path / "leaf.pem"


def _openssl_ocsp(openssl, svc, ca_pem, leaf_pem, url_path=""):
    r = subprocess.run(
        [
            openssl,
            "ocsp",
            "-issuer",
            str(ca_pem),
            "-cert",
            str(leaf_pem),
            "-url",
            svc.url + url_path,
            "-CAfile",
            str(ca_pem),
            "-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r


def test_openssl_ocsp_good_then_revoked(tmp_path, setup):
    openssl = require_tool("openssl")
    svc, ca = setup
    cert = _issue(ca)
    ca_pem, leaf_pem = _files(tmp_path, ca, cert)
    r = _openssl_ocsp(openssl, svc, ca_pem, leaf_pem)  # openssl POSTs to "/"
    assert r.returncode == 0, r.stderr
    assert f"{leaf_pem}: good" in r.stdout and "Response verify OK" in r.stderr
    ca.revoke(cert.serial_number, "keyCompromise")
    r = _openssl_ocsp(openssl, svc, ca_pem, leaf_pem, "/ocsp")
    assert r.returncode == 0, r.stderr
    assert f"{leaf_pem}: revoked" in r.stdout and "Response verify OK" in r.stderr
    assert "Reason: keyCompromise" in r.stdout


def test_openssl_ocsp_several_certificates(tmp_path, setup):
    """openssl ocsp with two -cert options sends one request listing both: both answered, nonce verified."""
    openssl = require_tool("openssl")
    svc, ca = setup
    good, bad = _issue(ca, "good"), _issue(ca, "bad")
    ca.revoke(bad.serial_number, "superseded")
    ca_pem, good_pem = _files(tmp_path, ca, good)
    (tmp_path / "bad.pem").write_bytes(bad.public_bytes(Encoding.PEM))
    r = subprocess.run(
        [
            openssl,
            "ocsp",
            "-issuer",
            str(ca_pem),
            "-cert",
            str(good_pem),
            "-cert",
            str(tmp_path / "bad.pem"),
            "-url",
            svc.url + "/ocsp",
            "-CAfile",
            str(ca_pem),
            "-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "Response verify OK" in r.stderr
    assert f"{good_pem}: good" in r.stdout and f"{tmp_path / 'bad.pem'}: revoked" in r.stdout
    assert "WARNING" not in r.stdout + r.stderr  # e.g. no "no nonce in response"


def test_openssl_ocsp_unknown_serial(tmp_path, setup):
    openssl = require_tool("openssl")
    svc, ca = setup
    other = CertificateAuthority.init(tmp_path / "other", "CN=Service CA,O=espresso")  # same name, other key
    try:
        cert = _issue(other)
    finally:
        other.close()
    ca_pem, leaf_pem = _files(tmp_path, ca, cert)
    r = _openssl_ocsp(openssl, svc, ca_pem, leaf_pem)
    assert f"{leaf_pem}: unknown" in r.stdout, r.stdout + r.stderr


def test_ocsp_checker_over_http(setup):
    _svc, ca = setup
    cert = _issue(ca)
    checker = OcspChecker(timeout=5)  # URL from the certificate's AIA, which points at the service
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    assert checker.check(cert, ca.certificate, now).status is OcspCertStatus.GOOD
    ca.revoke(cert.serial_number, "superseded")
    result = checker.check(cert, ca.certificate, now)
    assert result.status is OcspCertStatus.REVOKED and result.revocation_reason is x509.ReasonFlags.superseded


def test_ocsp_get(setup):
    svc, ca = setup
    cert = _issue(ca)
    req = build_request(cert, ca.certificate)
    url = svc.url + "/ocsp/" + urllib.parse.quote(base64.b64encode(req).decode(), safe="")
    resp = x509_ocsp.load_der_ocsp_response(http_get(url))
    assert resp.certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    with urllib.request.urlopen(url, timeout=5) as r:  # RFC 5019: cacheable until nextUpdate
        assert r.headers["Cache-Control"].startswith("public, max-age=")


@pytest.mark.parametrize("body", [b"", b"garbage", b"\x30\x03\x02\x01\x00"])
def test_ocsp_malformed_post(setup, body):
    svc, _ = setup
    resp = x509_ocsp.load_der_ocsp_response(
        http_request("POST", svc.url + "/ocsp", body, "application/ocsp-request").body
    )
    assert resp.response_status is x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ocsp_oversized_post_is_413(setup):
    svc, _ = setup
    with pytest.raises(FetchError) as exc:
        http_request("POST", svc.url + "/ocsp", b"\x30" * 100_000, "application/ocsp-request")
    assert exc.value.status == 413


def test_crl_at_distribution_point_parses_with_openssl(tmp_path, setup):
    openssl = require_tool("openssl")
    svc, ca = setup
    cert = _issue(ca)
    dp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = dp[0].full_name[0].value
    assert url == f"{svc.url}/pki/ca.crl"
    crl = fetch_crl(url)
    assert crl.is_signature_valid(ca.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    ca.revoke(cert.serial_number, "cessationOfOperation")
    der = http_get(url)
    (tmp_path / "crl.der").write_bytes(der)
    (tmp_path / "ca.pem").write_bytes(ca.certificate.public_bytes(Encoding.PEM))
    r = subprocess.run(
        [
            openssl,
            "crl",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "crl.der"),
            "-noout",
            "-text",
            "-CAfile",
            str(tmp_path / "ca.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "verify OK" in r.stderr + r.stdout
    assert f"{cert.serial_number:X}" in r.stdout.replace(":", "").upper()
    assert "Cessation Of Operation" in r.stdout


def test_crl_default_path_and_404(setup):
    svc, ca = setup
    assert x509.load_der_x509_crl(http_get(svc.url + "/crl")).issuer == ca.certificate.subject
    with urllib.request.urlopen(svc.url + "/crl", timeout=5) as resp:  # caching headers (until nextUpdate)
        assert "max-age=" in resp.headers["Cache-Control"] and resp.headers["Expires"].endswith("GMT")
    with pytest.raises(FetchError) as exc:
        http_get(svc.url + "/nothing-here")
    assert exc.value.status == 404


def test_restart_keeps_issued_and_revoked(tmp_path):
    """Stop the service, start a new one on the same directory: revocations still answer revoked."""
    port_holder = socket.socket()
    port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    port_holder.close()
    svc = CaService(tmp_path / "ca", port=port)
    ca = CertificateAuthority.init(
        tmp_path / "ca", "CN=Restart CA", crl_url=f"{svc.url}/crl", ocsp_url=f"{svc.url}/ocsp"
    )
    try:
        good, bad = _issue(ca, "good"), _issue(ca, "bad")
        ca.revoke(bad.serial_number, "keyCompromise")
        ca_cert = ca.certificate
    finally:
        ca.close()
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    try:
        svc.start()
        assert OcspChecker(timeout=5).check(bad, ca_cert, now).status is OcspCertStatus.REVOKED
    finally:
        svc.stop()
    svc = CaService(tmp_path / "ca", port=port)  # same port: the URLs in the certificates still work
    try:
        svc.start()
        assert OcspChecker(timeout=5).check(bad, ca_cert, now).status is OcspCertStatus.REVOKED
        assert OcspChecker(timeout=5).check(good, ca_cert, now).status is OcspCertStatus.GOOD
        crl = fetch_crl(f"{svc.url}/crl")
        assert crl.get_revoked_certificate_by_serial_number(bad.serial_number) is not None
    finally:
        svc.stop()


def test_missing_content_length_is_411(setup):
    svc, _ = setup
    with socket.create_connection(("127.0.0.1", svc.port), timeout=5) as s:
        s.sendall(b"POST /ocsp HTTP/1.0\r\nContent-Type: application/ocsp-request\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        for _ in range(100):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.0 411")


def test_start_fails_cleanly_without_ca(tmp_path):
    svc = CaService(tmp_path / "nothing")
    with pytest.raises(Exception, match="not a CA directory"):
        svc.start()


def test_delegated_ocsp_responder_with_openssl(tmp_path):
    """OCSP answers signed by an id-kp-OCSPSigning certificate of the CA, accepted by openssl and us."""
    openssl = require_tool("openssl")
    from datetime import datetime, timezone

    from cryptography.x509.oid import ExtendedKeyUsageOID

    from pki.ca import IssueProfile

    ca = CertificateAuthority.init(tmp_path / "ca", "CN=Delegating CA")
    svc = None
    try:
        signer_key = generate_private_key(parse_key_spec("ecdsa"))
        profile = IssueProfile(
            name="ocsp",
            key_usage=frozenset({"digital_signature"}),
            extended_key_usage=(ExtendedKeyUsageOID.OCSP_SIGNING,),
            san_types=frozenset(),
        )
        signer = ca.issue(build_csr(signer_key, "CN=OCSP Signer"), profile)
        cert = _issue(ca)
        ca_pem, leaf_pem = _files(tmp_path, ca, cert)
        svc = CaService(tmp_path / "ca", ocsp_signer=(signer, signer_key)).start()
        r = _openssl_ocsp(openssl, svc, ca_pem, leaf_pem, "/ocsp")
        assert f"{leaf_pem}: good" in r.stdout and "Response verify OK" in r.stderr, r.stdout + r.stderr
        result = OcspChecker(f"{svc.url}/ocsp", timeout=5).check(
            cert, ca.certificate, datetime.now(timezone.utc)
        )
        assert result.status is OcspCertStatus.GOOD and result.responder == signer
    finally:
        if svc is not None:
            svc.stop()
        ca.close()


def test_delegate_without_eku_is_refused_at_start(tmp_path):
    ca = CertificateAuthority.init(tmp_path / "ca", "CN=Delegating CA")
    try:
        key = generate_private_key(parse_key_spec("ecdsa"))
        not_a_signer = ca.issue(build_csr(key, "CN=Just a router"))
        svc = CaService(tmp_path / "ca", ocsp_signer=(not_a_signer, key))
        with pytest.raises(ValueError, match="OCSPSigning"):
            svc.start()  # start() closes the socket when it fails
    finally:
        ca.close()


@pytest.mark.interop
@pytest.mark.parametrize("method", ["ocsp", "crl"])
def test_strongswan_pki_verify_online(tmp_path, method):
    """strongSwan's revocation checking (pki --verify --online) against our responder / distribution point."""
    pki = require_tool("pki")
    svc = CaService(tmp_path / "ca")
    urls = {"ocsp_url": f"{svc.url}/ocsp"} if method == "ocsp" else {"crl_url": f"{svc.url}/crl"}
    ca = CertificateAuthority.init(tmp_path / "ca", "CN=Verify CA,O=espresso", **urls)
    try:
        cert = _issue(ca)
        ca_pem, leaf_pem = _files(tmp_path, ca, cert)
        svc.start()
        cmd = [pki, "--verify", "--in", str(leaf_pem), "--cacert", str(ca_pem), "--online"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "certificate status is good" in r.stdout + r.stderr
        if method == "crl":
            assert "crl correctly signed" in r.stdout + r.stderr
        else:
            assert "ocsp response correctly signed" in r.stdout + r.stderr
        ca.revoke(cert.serial_number, "keyCompromise")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert "certificate was revoked" in r.stdout + r.stderr and "key compromise" in r.stdout + r.stderr
    finally:
        svc.stop()
        ca.close()
