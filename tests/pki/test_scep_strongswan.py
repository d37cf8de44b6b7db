"""strongSwan's ``pki --scep`` (an independent SCEP client) enrolls against our CA service over loopback.

The certificate it gets must then pass our validator, with revocation checked live against the same service
(OCSP and the CRL distribution point), and fail it once revoked.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pki.ca import CertificateAuthority
from pki.errors import CertificateRejected, RejectReason
from pki.ocsp import OcspChecker
from pki.profile import RevocationMode, RevocationPolicy
from pki.revocation import CrlCache, default_fetch
from pki.service import CaService, list_pending
from pki.validate import TrustAnchor, Validator
from tests.support import require_tool

pytestmark = [pytest.mark.interop, pytest.mark.slow]

CHALLENGE = "strongswan-challenge"


@pytest.fixture
def ca_service(tmp_path, request):
    manual = getattr(request, "param", False)
    svc = CaService(tmp_path / "ca", challenge=CHALLENGE, manual_approval=manual)
    try:
        ca = CertificateAuthority.init(
            tmp_path / "ca",
            "CN=strongSwan Interop CA,O=espresso",
            key_type="rsa",
            key_size=2048,
            crl_url=f"{svc.url}/crl",
            ocsp_url=f"{svc.url}/ocsp",
        )
        (tmp_path / "ca.der").write_bytes(ca.certificate.public_bytes(Encoding.DER))
        ca.close()
        svc.start()
        yield svc
    finally:
        svc.stop()


def _pki_key(pki: str, path) -> None:
    with open(path, "wb") as f:
        subprocess.run(
            [pki, "--gen", "--type", "rsa", "--size", "2048", "--outform", "pem"],
            stdout=f,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )


def _scep_cmd(pki: str, svc: CaService, tmp_path, password: str = CHALLENGE) -> list[str]:
    return [
        pki,
        "--scep",
        "--url",
        f"{svc.url}/scep",
        "--in",
        str(tmp_path / "key.pem"),
        "--dn",
        "C=CH, O=espresso, CN=moon.example.net",
        "--san",
        "moon.example.net",
        "--san",
        "192.0.2.10",
        "--password",
        password,
        "--cacert-enc",
        str(tmp_path / "ca.der"),
        "--cacert-sig",
        str(tmp_path / "ca.der"),
        "--interval",
        "1",
        "--maxpolltime",
        "30",
        "--outform",
        "der",
    ]


def _validate(cert: x509.Certificate, ca_cert: x509.Certificate, mode: RevocationMode):
    anchor = TrustAnchor(ca_cert, RevocationPolicy(mode=mode))
    validator = Validator([anchor], crl_source=CrlCache(fetch=default_fetch), ocsp=OcspChecker(timeout=5))
    return validator.verify(cert, [], datetime.now(timezone.utc))


def test_strongswan_enrolls_and_our_validator_accepts(tmp_path, ca_service):
    pki = require_tool("pki")
    svc = ca_service
    _pki_key(pki, tmp_path / "key.pem")
    r = subprocess.run(_scep_cmd(pki, svc, tmp_path), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    cert = x509.load_der_x509_certificate(r.stdout)
    ca_cert = x509.load_der_x509_certificate((tmp_path / "ca.der").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=moon.example.net,O=espresso,C=CH"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["moon.example.net"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["192.0.2.10"]
    # the CA recorded it, and our validator accepts it with live revocation checks against the service
    assert svc.run(lambda: svc.ca.lookup(cert.serial_number)) is not None
    for mode in (RevocationMode.OCSP, RevocationMode.CRL):
        chain = _validate(cert, ca_cert, mode)
        assert chain.chain[0] == cert
    svc.run(lambda: svc.ca.revoke(cert.serial_number, "keyCompromise"))
    for mode in (RevocationMode.OCSP, RevocationMode.CRL):
        with pytest.raises(CertificateRejected) as exc:
            _validate(cert, ca_cert, mode)
        assert exc.value.reason is RejectReason.REVOKED


def test_strongswan_wrong_password_is_refused(tmp_path, ca_service):
    pki = require_tool("pki")
    _pki_key(pki, tmp_path / "key.pem")
    r = subprocess.run(
        _scep_cmd(pki, ca_service, tmp_path, password="wrong"), capture_output=True, timeout=120
    )
    assert r.returncode != 0
    assert b"badRequest" in r.stderr
    assert ca_service.run(lambda: ca_service.ca.records()) == []


@pytest.mark.parametrize("ca_service", [True], indirect=True)
def test_strongswan_polls_while_pending_until_approved(tmp_path, ca_service):
    pki = require_tool("pki")
    svc = ca_service
    _pki_key(pki, tmp_path / "key.pem")
    proc = subprocess.Popen(_scep_cmd(pki, svc, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pending = []
        for _ in range(150):  # bounded: at most ~30 s
            pending = list_pending(svc.ca_dir)
            if pending or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert [p.subject for p in pending] == ["CN=moon.example.net,O=espresso,C=CH"], proc.poll()
        issued = svc.approve(pending[0].transaction_id)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert x509.load_der_x509_certificate(out) == issued


def test_strongswan_scepca_chain_legacy_options_and_renewal(tmp_path):
    """Under an intermediate CA: GetCACert as a degenerate PKCS#7 chain (pki --scepca), enrollment with 3DES,
    RSA-PSS and SHA-512 (what older deployments send), then a renewal signed with the current certificate
    (pki --scep --cert/--key: no challenge password needed)."""
    pki = require_tool("pki")
    root = CertificateAuthority.init(
        tmp_path / "root", "CN=Interop Root,O=espresso", key_type="rsa", key_size=2048, path_length=1
    )
    svc = CaService(tmp_path / "ca", challenge=CHALLENGE)
    try:
        ca = CertificateAuthority.init(
            tmp_path / "ca",
            "CN=Interop Sub,O=espresso",
            key_type="rsa",
            key_size=2048,
            parent=root,
            crl_url=f"{svc.url}/crl",
        )
        (tmp_path / "ca.der").write_bytes(ca.certificate.public_bytes(Encoding.DER))
        (tmp_path / "root.der").write_bytes(root.certificate.public_bytes(Encoding.DER))
        ca.close()
        svc.start()
        r = subprocess.run(
            [pki, "--scepca", "--url", f"{svc.url}/scep", "--caout", str(tmp_path / "got.der"), "--force"],
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        got = sorted(p.name for p in tmp_path.glob("got*.der"))
        assert len(got) == 2
        assert {
            x509.load_der_x509_certificate((tmp_path / n).read_bytes()).subject.rfc4514_string() for n in got
        } == {"CN=Interop Root,O=espresso", "CN=Interop Sub,O=espresso"}

        _pki_key(pki, tmp_path / "key.pem")
        cmd = _scep_cmd(pki, svc, tmp_path) + ["--cacert", str(tmp_path / "root.der")]
        r = subprocess.run(
            cmd + ["--cipher", "des3", "--rsa-padding", "pss", "--digest", "sha512"],
            capture_output=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        first = x509.load_der_x509_certificate(r.stdout)
        (tmp_path / "first.der").write_bytes(r.stdout)

        (tmp_path / "old.pem").write_bytes((tmp_path / "key.pem").read_bytes())
        _pki_key(pki, tmp_path / "key.pem")  # re-generate-keypair
        renew = [a for a in cmd if a not in ("--password", CHALLENGE)]
        r = subprocess.run(
            renew + ["--cert", str(tmp_path / "first.der"), "--key", str(tmp_path / "old.pem")],
            capture_output=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        second = x509.load_der_x509_certificate(r.stdout)
        assert second.serial_number != first.serial_number
        assert second.public_key() != first.public_key()
        chain = Validator(
            [TrustAnchor(root.certificate, RevocationPolicy(mode=RevocationMode.DISABLE))]
        ).verify(
            second,
            [x509.load_der_x509_certificate((tmp_path / "ca.der").read_bytes())],
            datetime.now(timezone.utc),
        )
        assert chain.chain[0] == second
    finally:
        svc.stop()
        root.close()
