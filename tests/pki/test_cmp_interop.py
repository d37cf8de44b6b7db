"""CMPv2 both ways against OpenSSL 3, as deployed: ``python -m pki ca serve`` in its own process with the
``ca cmp-secret`` verb beside it and ``openssl cmp`` as the router; then espresso's client (the store's
``local-certificate enroll --protocol cmpv2``) against ``openssl cmp -port``, OpenSSL's mock CMP server, with a
CA made by openssl. Every certificate obtained is checked with ``openssl verify``. Loopback only."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.cmp import client
from pki.cmp.messages import CmpError
from pki.fetch import http_get
from tests.pki.http_helpers import REPO, Served, free_port
from tests.support import require, require_tool

pytestmark = pytest.mark.interop

KEYS = {"rsa": lambda: rsa.generate_private_key(65537, 2048), "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1())}
CMP_PATH = "/.well-known/cmp"


def _openssl() -> str:
    path = require_tool("openssl")
    out = subprocess.run([path, "version"], check=False, capture_output=True, text=True, timeout=30).stdout
    require(out.startswith("OpenSSL 3"), f"openssl cmp needs OpenSSL 3, found {out.strip()}")
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ESPRESSO_PKI_PASSPHRASE", None)
    return env


def pki(cwd: Path, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "pki", *argv], check=False, cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    if ok:
        assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r


def ossl(*argv: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """openssl, with its stderr folded into stdout (``openssl cmp`` writes its progress to either)."""
    r = subprocess.run([_openssl(), *argv], check=False, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    if ok:
        assert r.returncode == 0, f"openssl {' '.join(argv)}:\n{r.stdout}"
    return r


def write_key(path: Path, key) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _ca_cert(ca_dir: Path) -> x509.Certificate:
    from pki.ca import CertificateAuthority

    ca = CertificateAuthority.open(ca_dir)
    try:
        return ca.certificate
    finally:
        ca.close()


@pytest.fixture(params=["ecdsa", "rsa"])
def cmp_ca(request, tmp_path):
    """A CA of the given key type served by ``ca serve`` (its own process), with one CMP reference."""
    _openssl()
    pki(tmp_path, "ca", "--ca", "ca", "init", "--subject", "CN=CMP Lab CA,O=Example", "--key-type", request.param)
    (tmp_path / "scep-challenge").write_text("scep-challenge-1\n")
    served = Served(tmp_path, tmp_path / "ca", "--challenge-file", str(tmp_path / "scep-challenge"))
    yield served
    served.stop()
    assert "Traceback" not in served.stderr()


def _cmp_client(served: Served, *args: str) -> list[str]:
    return ["cmp", "-server", f"127.0.0.1:{served.port}", "-path", CMP_PATH.lstrip("/"), "-msg_timeout", "20",
            "-total_timeout", "60", *args]


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa"])
def test_openssl_cmp_ir_kur_rr_against_espresso(cmp_ca, tmp_path, key_type):
    pki(tmp_path, "ca", "--ca", "ca", "cmp-secret", "add", "--reference-number", "1234", "--secret", "lab-secret-1234")
    write_key(tmp_path / "k1.pem", KEYS[key_type]())
    write_key(tmp_path / "k2.pem", KEYS[key_type]())
    # ir with PBM: the CA certificate comes in caPubs of the MAC-protected ip
    r = ossl(*_cmp_client(cmp_ca, "-cmd", "ir", "-ref", "1234", "-secret", "pass:lab-secret-1234",
                          "-recipient", "/O=Example/CN=CMP Lab CA", "-newkey", "k1.pem", "-subject", "/CN=r1/O=Example",
                          "-sans", "r1.example.net", "-certout", "c1.pem", "-cacertsout", "ca.pem"), cwd=tmp_path)
    assert "received PKICONF" in r.stdout
    ossl("verify", "-CAfile", "ca.pem", "c1.pem", cwd=tmp_path)
    c1 = x509.load_pem_x509_certificate((tmp_path / "c1.pem").read_bytes())
    assert c1.subject.rfc4514_string() == "O=Example,CN=r1"
    assert c1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["r1.example.net"]
    # kur signed with the current certificate
    ossl(*_cmp_client(cmp_ca, "-cmd", "kur", "-cert", "c1.pem", "-key", "k1.pem", "-trusted", "ca.pem",
                      "-newkey", "k2.pem", "-certout", "c2.pem"), cwd=tmp_path)
    ossl("verify", "-CAfile", "ca.pem", "c2.pem", cwd=tmp_path)
    c2 = x509.load_pem_x509_certificate((tmp_path / "c2.pem").read_bytes())
    assert c2.subject == c1.subject and c2.serial_number != c1.serial_number
    # rr of the new certificate, signed with it: the CRL lists it and openssl verify -crl_check refuses it
    r = ossl(*_cmp_client(cmp_ca, "-cmd", "rr", "-cert", "c2.pem", "-key", "k2.pem", "-trusted", "ca.pem",
                          "-oldcert", "c2.pem", "-revreason", "1"), cwd=tmp_path)
    assert "revocation accepted" in r.stdout
    (tmp_path / "crl.der").write_bytes(http_get(f"{cmp_ca.url}/crl"))
    ossl("crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem", cwd=tmp_path)
    v = ossl("verify", "-crl_check", "-CAfile", "ca.pem", "-CRLfile", "crl.pem", "c2.pem", cwd=tmp_path, ok=False)
    assert v.returncode != 0 and "certificate revoked" in v.stdout
    ossl("verify", "-crl_check", "-CAfile", "ca.pem", "-CRLfile", "crl.pem", "c1.pem", cwd=tmp_path)
    # kur with the revoked certificate: refused with certRevoked
    r = ossl(*_cmp_client(cmp_ca, "-cmd", "kur", "-cert", "c2.pem", "-key", "k2.pem", "-trusted", "ca.pem",
                          "-newkey", "k1.pem", "-certout", "c3.pem"), cwd=tmp_path, ok=False)
    assert r.returncode != 0 and "certRevoked" in r.stdout
    assert not (tmp_path / "c3.pem").exists()
    # p10cr with the MAC of a second reference and implicit confirmation (no certConf), then a cr signed with
    # the certificate it gave, for the same subject
    pki(tmp_path, "ca", "--ca", "ca", "cmp-secret", "add", "--ref", "1235", "--secret", "lab-secret-1235")
    ossl("req", "-new", "-key", "k1.pem", "-subj", "/CN=r1p/O=Example", "-out", "r1p.csr", cwd=tmp_path)
    ossl(*_cmp_client(cmp_ca, "-cmd", "p10cr", "-ref", "1235", "-secret", "pass:lab-secret-1235", "-recipient",
                      "/O=Example/CN=CMP Lab CA", "-csr", "r1p.csr", "-implicit_confirm", "-certout", "p.pem"),
         cwd=tmp_path)
    ossl("verify", "-CAfile", "ca.pem", "p.pem", cwd=tmp_path)
    assert cmp_ca.wait_log(r"msg=p10cr tid=(\w+) outcome=issued")
    ossl(*_cmp_client(cmp_ca, "-cmd", "cr", "-cert", "p.pem", "-key", "k1.pem", "-trusted", "ca.pem",
                      "-newkey", "k2.pem", "-subject", "/CN=r1p/O=Example", "-certout", "cr.pem"), cwd=tmp_path)
    ossl("verify", "-CAfile", "ca.pem", "cr.pem", cwd=tmp_path)
    # one access line per message, as SCEP has
    assert cmp_ca.wait_log(r"op=cmp msg=kur tid=\w+ outcome=refused failinfo=certRevoked")
    log = cmp_ca.log()
    p10 = re.search(r"msg=p10cr tid=(\w+) outcome=issued", log).group(1)
    assert not re.search(rf"msg=certConf tid={p10}", log)  # implicitly confirmed
    for line in ("msg=cr tid=\\w+ outcome=issued", "msg=ir tid=\\w+ outcome=issued", "msg=certConf tid=\\w+ outcome=confirmed",
                 "msg=kur tid=\\w+ outcome=issued", "msg=rr tid=\\w+ outcome=revoked"):
        assert re.search(line, log), line
    assert "lab-secret-1234" not in log + cmp_ca.stderr()


def test_openssl_cmp_refused_with_wrong_secret_unknown_reference_and_used_reference(cmp_ca, tmp_path):
    pki(tmp_path, "ca", "--ca", "ca", "cmp-secret", "add", "--ref", "77", "--secret", "right-secret-77")
    write_key(tmp_path / "k.pem", KEYS["ecdsa"]())

    def ir(ref: str, secret: str, out: str) -> subprocess.CompletedProcess[str]:
        return ossl(*_cmp_client(cmp_ca, "-cmd", "ir", "-ref", ref, "-secret", f"pass:{secret}", "-recipient",
                                 "/O=Example/CN=CMP Lab CA", "-newkey", "k.pem", "-subject", "/CN=r9",
                                 "-unprotected_errors", "-certout", out), cwd=tmp_path, ok=False)

    wrong = ir("77", "wrong-secret-77", "w.pem")
    assert wrong.returncode != 0 and "badMessageCheck" in wrong.stdout and "MAC does not verify" in wrong.stdout
    unknown = ir("78", "right-secret-77", "u.pem")
    assert unknown.returncode != 0 and "badMessageCheck" in unknown.stdout
    assert "unknown reference number" in unknown.stdout
    assert ir("77", "right-secret-77", "ok.pem").returncode == 0  # the wrong tries did not use it up
    again = ir("77", "right-secret-77", "again.pem")  # a reference enrolls once
    assert again.returncode != 0 and "notAuthorized" in again.stdout
    assert not any((tmp_path / f).exists() for f in ("w.pem", "u.pem", "again.pem"))
    listed = pki(tmp_path, "ca", "--ca", "ca", "cmp-secret", "list").stdout
    assert "77" in listed and "used by transaction" in listed and "right-secret-77" not in listed
    assert cmp_ca.alive()


@pytest.mark.parametrize("body", [b"", b"\x30", b"\x30\x03\x02\x01\x02", b"not DER at all" * 10,
                                  b"\x30\x82\xff\xff" + b"\x00" * 100, bytes(range(256))])
def test_malformed_cmp_bodies_get_a_badDataFormat_error_message_not_a_crash(tmp_path, body):
    """The server answers every POST of application/pkixcmp with a PKIMessage (RFC 6712): here an error with
    failInfo badDataFormat, signed by the CA; it keeps serving and logs no traceback."""
    pki(tmp_path, "ca", "--ca", "ca", "init", "--subject", "CN=CMP Lab CA")
    (tmp_path / "c").write_text("scep-challenge-1\n")
    served = Served(tmp_path, tmp_path / "ca", "--challenge-file", str(tmp_path / "c"))
    try:
        from pki.cmp import messages as m
        from pki.fetch import http_request

        resp = http_request("POST", served.url + CMP_PATH, body, m.CONTENT_TYPE)
        assert resp.status == 200 and resp.content_type == m.CONTENT_TYPE
        answer = m.parse_message(resp.body)
        assert answer.body_type == "error"
        status, fails, text = m.read_status(answer.body["pKIStatusInfo"])
        assert (status, fails) == (2, ["badDataFormat"]) and text
        answer.check_signature(_ca_cert(tmp_path / "ca"))
        assert served.wait_log(r"op=cmp outcome=refused failinfo=badDataFormat")
        assert served.alive()
    finally:
        served.stop()
    assert "Traceback" not in served.stderr()


# -------------------------------------------------------- espresso's client against OpenSSL's mock CMP server


@pytest.fixture
def openssl_ca(tmp_path):
    """A CA made by openssl alone, so nothing of espresso's CA is on the other side."""
    d = tmp_path / "ossl-ca"
    d.mkdir()
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
         "-out", "ca.pem", "-days", "30", "-subj", "/CN=OpenSSL Mock CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=d)
    return d


def _issue_with_openssl(ca_dir: Path, key, cn: str, out: Path) -> Path:
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name.from_rfc4514_string(f"CN={cn}")).sign(key, hashes.SHA256())
    (out.parent / f"{out.stem}.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    ossl("x509", "-req", "-in", str(out.parent / f"{out.stem}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "10", "-out", str(out), cwd=ca_dir)
    return out


class MockServer:
    """``openssl cmp -port``: answers with a fixed certificate, as OpenSSL's own tests use it."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/pkix/"
        self._log = open(cwd / f"mock-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.log_path = cwd / f"mock-{self.port}.log"
        self.proc = subprocess.Popen([_openssl(), "cmp", "-port", str(self.port), *args], cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        for _ in range(100):  # bounded: ~10 s
            if "ACCEPT" in self.log_path.read_text(errors="replace") or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        assert self.proc.poll() is None, self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa"])
def test_espresso_store_enrolls_with_openssl_mock_server(tmp_path, openssl_ca, key_type):
    store = ["--store", "st"]
    pki(tmp_path, *store, "generate-key-pair", "--certificate-id", "r1", "--type", key_type)
    from pki.store import Store

    key = Store(tmp_path / "st").private_key("r1")
    cert_file = _issue_with_openssl(openssl_ca, key, "r1.mock", tmp_path / "r1.crt")
    mock = MockServer(tmp_path, "-srv_secret", "pass:mock-secret-1", "-srv_ref", "4321", "-rsp_cert", str(cert_file),
                      "-rsp_capubs", str(openssl_ca / "ca.pem"), "-max_msgs", "10")
    try:
        pki(tmp_path, *store, "ca-profile", "add", "mock", "--enrollment-url", mock.url)
        (tmp_path / "secret").write_text("mock-secret-1\n")
        out = pki(tmp_path, *store, "local-certificate", "enroll", "--protocol", "cmpv2", "--certificate-id", "r1",
                  "--ca-profile", "mock", "--subject", "CN=r1.mock", "--reference-number", "4321",
                  "--challenge-password-file", "secret").stdout
        assert "CA certificate for profile mock received (caPubs): CN=OpenSSL Mock CA" in out
        assert "Received certificate r1: CN=r1.mock" in out
        stored = Store(tmp_path / "st").local_certificate("r1")
        (tmp_path / "stored.pem").write_bytes(stored.public_bytes(serialization.Encoding.PEM))
        ossl("verify", "-CAfile", str(openssl_ca / "ca.pem"), "stored.pem", cwd=tmp_path)
        # a wrong secret: the mock's answer does not verify, and nothing is stored
        (tmp_path / "bad").write_text("not-the-secret\n")
        pki(tmp_path, *store, "generate-key-pair", "--certificate-id", "r2", "--type", key_type)
        r = pki(tmp_path, *store, "local-certificate", "enroll", "--protocol", "cmpv2", "--certificate-id", "r2",
                "--ca-profile", "mock", "--subject", "CN=r2", "--reference-number", "4321",
                "--challenge-password-file", "bad", ok=False)
        assert r.returncode == 1 and r.stderr.startswith("error: ")
        assert Store(tmp_path / "st").local_certificate("r2") is None
    finally:
        mock.stop()


def test_openssl_mock_server_takes_the_genm_for_ca_certificates(tmp_path, openssl_ca):
    """``ca-certificate enroll --protocol cmpv2`` (genm id-it-caCerts) against OpenSSL's mock server, unprotected:
    OpenSSL parses the genm and answers a genp. The 3.0 mock echoes the request's infoTypes (caCerts without a
    value), which the router reports in one line, storing nothing; a mock that sends its CA certificate gets it
    stored."""
    from pki.store import Store

    mock = MockServer(tmp_path, "-srv_secret", "pass:mock-secret-1", "-srv_ref", "4321", "-rsp_cert",
                      str(openssl_ca / "ca.pem"), "-rsp_capubs", str(openssl_ca / "ca.pem"), "-accept_unprotected",
                      "-max_msgs", "10")
    try:
        pki(tmp_path, "--store", "st", "ca-profile", "add", "mock", "--protocol", "cmpv2", "--enrollment-url",
            mock.url)
        r = pki(tmp_path, "--store", "st", "ca-certificate", "enroll", "--ca-profile", "mock", "--yes", ok=False)
        log = mock.log_path.read_text(errors="replace")
        assert "Received request" in log and "error" not in log.lower(), log
        if r.returncode == 0:  # a mock that answers caCerts (OpenSSL 3.2+)
            assert Store(tmp_path / "st").ca_certificates("mock") == [
                x509.load_pem_x509_certificate((openssl_ca / "ca.pem").read_bytes())]
        else:
            assert r.stderr == "error: the CA has no CA certificates to send (caCerts without a value)\n", r.stderr
            assert Store(tmp_path / "st").ca_certificates("mock") == []
    finally:
        mock.stop()


def test_espresso_key_update_and_revocation_with_openssl_mock_server(tmp_path, openssl_ca):
    """kur and rr signed with the current certificate; the mock checks the signature against its trust store.

    The mock answers a kur with its fixed -rsp_cert and insists that oldCertID names that very certificate, so
    here the "update" keeps the key (key rollover itself is tested with openssl as the client, above)."""
    key = KEYS["ecdsa"]()
    cert_file = _issue_with_openssl(openssl_ca, key, "r1", tmp_path / "r1.crt")
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    ca = x509.load_pem_x509_certificate((openssl_ca / "ca.pem").read_bytes())
    mock = MockServer(tmp_path, "-srv_cert", str(openssl_ca / "ca.pem"), "-srv_key", str(openssl_ca / "ca.key"),
                      "-srv_trusted", str(openssl_ca / "ca.pem"), "-rsp_cert", str(cert_file), "-max_msgs", "10")
    try:
        result = client.key_update(mock.url, cert, key, key, [ca])
        assert result.certificate == cert
        (tmp_path / "got.pem").write_bytes(result.certificate.public_bytes(serialization.Encoding.PEM))
        ossl("verify", "-CAfile", str(openssl_ca / "ca.pem"), "got.pem", cwd=tmp_path)
        client.revoke(mock.url, cert, key, [ca], reason="superseded")
        # the answers are signed by a CA the caller does not trust: refused
        other = KEYS["ecdsa"]()
        stranger = x509.load_pem_x509_certificate(_issue_with_openssl(openssl_ca, other, "x", tmp_path / "x.crt")
                                                  .read_bytes())
        with pytest.raises(CmpError, match="protection does not verify"):
            client.key_update(mock.url, cert, key, key, [stranger])
    finally:
        mock.stop()


# ------------------------------------------------------------------------- espresso against espresso


def test_store_enrolls_updates_and_revokes_against_ca_serve(tmp_path):
    """The JUNOS flow end to end over loopback, with openssl verify on every certificate."""
    _openssl()
    pki(tmp_path, "ca", "--ca", "ca", "init", "--subject", "CN=Lab CA,O=Example", "--allow-dns-suffix",
        "example.net")
    (tmp_path / "c").write_text("scep-challenge-1\n")
    served = Served(tmp_path, tmp_path / "ca", "--challenge-file", str(tmp_path / "c"))
    try:
        secret = pki(tmp_path, "ca", "--ca", "ca", "cmp-secret", "add", "--ref", "9001").stdout
        generated = re.search(r"Secret: (\S+)", secret).group(1)
        (tmp_path / "s").write_text(generated + "\n")
        s = ["--store", "st"]
        pki(tmp_path, *s, "generate-key-pair", "--certificate-id", "r1", "--type", "ecdsa")
        pki(tmp_path, *s, "ca-profile", "add", "lab", "--enrollment-url", served.url + CMP_PATH)
        pki(tmp_path, *s, "local-certificate", "enroll", "--protocol", "cmpv2", "--certificate-id", "r1",
            "--ca-profile", "lab", "--subject", "CN=r1,O=Example", "--domain-name", "r1.example.net",
            "--domain-name", "evil.example.com", "--reference-number", "9001", "--challenge-password-file", "s")
        from pki.store import Store

        st = Store(tmp_path / "st")
        c1 = st.local_certificate("r1")
        # the CA's SAN policy applies to CMP as to SCEP
        assert c1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == ["r1.example.net"]
        pki(tmp_path, *s, "local-certificate", "re-enroll", "--protocol", "cmpv2", "--certificate-id", "r1",
            "--ca-profile", "lab", "--new-key-type", "rsa")
        c2 = st.local_certificate("r1")
        assert isinstance(c2.public_key(), rsa.RSAPublicKey) and c2.subject == c1.subject
        (tmp_path / "c2.pem").write_bytes(c2.public_bytes(serialization.Encoding.PEM))
        ossl("verify", "-CAfile", str(tmp_path / "st" / "ca" / "lab" / "ca.pem"), "c2.pem", cwd=tmp_path)
        assert st.ca_certificates("lab") == [_ca_cert(tmp_path / "ca")]
        pki(tmp_path, *s, "local-certificate", "revoke", "--protocol", "cmpv2", "--certificate-id", "r1",
            "--ca-profile", "lab", "--reason", "key-compromise")
        listed = pki(tmp_path, "ca", "--ca", "ca", "list").stdout
        assert re.search(rf"{c2.serial_number:x}\s+revoked .*key_compromise", listed), listed
        r = pki(tmp_path, *s, "local-certificate", "re-enroll", "--protocol", "cmpv2", "--certificate-id", "r1",
                "--ca-profile", "lab", ok=False)
        assert r.returncode == 1 and "certRevoked" in r.stderr
    finally:
        served.stop()
    assert "Traceback" not in served.stderr()


def test_manual_approval_waits_and_the_client_polls(tmp_path):
    """With --manual-approval the ir is answered 'waiting'; the client polls (pollReq/pollRep) until
    'ca approve' (the same verb as for SCEP) issues the certificate."""
    pki(tmp_path, "ca", "--ca", "ca", "init", "--subject", "CN=Lab CA")
    served = Served(tmp_path, tmp_path / "ca", "--manual-approval")
    try:
        pki(tmp_path, "ca", "--ca", "ca", "cmp-secret", "add", "--ref", "42", "--secret", "approve-me-42")
        key = KEYS["ecdsa"]()
        approved = []

        def sleep(seconds: float) -> None:  # the operator acts while the client waits
            assert seconds >= 1
            if not approved:
                pending = pki(tmp_path, "ca", "--ca", "ca", "pending").stdout
                tid = re.search(r"(cmp-\w+)\s", pending).group(1)
                pki(tmp_path, "ca", "--ca", "ca", "approve", tid)
                approved.append(tid)

        result = client.enroll(served.url + CMP_PATH, key, x509.Name.from_rfc4514_string("CN=r5"), reference="42",
                               secret="approve-me-42", retry_count=3, sleep=sleep)
        assert approved and result.certificate.subject.rfc4514_string() == "CN=r5"
        assert served.wait_log(r"msg=pollReq tid=\w+ outcome=issued")
        assert served.wait_log(r"msg=ir tid=\w+ outcome=pending")
    finally:
        served.stop()


def test_one_ca_serve_answers_cmp_and_est_side_by_side(tmp_path):
    """``ca serve --est-port``: CMPv2 on the HTTP port and EST on the TLS port of one process, each enrolling an
    ECDSA router of the store; the ready lines name both, and a stop leaves no traceback."""
    _openssl()
    pki(tmp_path, "ca", "--ca", "ca", "init", "--subject", "CN=Both CA,O=Example", "--key-type", "ecdsa")
    (tmp_path / "c").write_text("est-challenge-1\n")
    est_port = free_port()
    served = Served(tmp_path, tmp_path / "ca", "--challenge-file", str(tmp_path / "c"), "--est-port", str(est_port))
    try:
        for _ in range(100):  # bounded: the EST line follows the HTTP one
            if "serving EST" in served.stderr():
                break
            time.sleep(0.1)
        ready = served.stderr()
        assert "CMP /.well-known/cmp" in ready and f"serving EST on https://127.0.0.1:{est_port}" in ready, ready
        secret = pki(tmp_path, "ca", "--ca", "ca", "cmp-secret", "add", "--ref", "77").stdout
        (tmp_path / "s").write_text(re.search(r"Secret: (\S+)", secret).group(1) + "\n")
        s = ["--store", "st"]
        for cid in ("r1", "r2"):
            pki(tmp_path, *s, "generate-key-pair", "--certificate-id", cid, "--type", "ecdsa")
        pki(tmp_path, *s, "ca-profile", "add", "cmp", "--protocol", "cmpv2", "--enrollment-url", served.url + CMP_PATH)
        pki(tmp_path, *s, "ca-profile", "add", "est", "--protocol", "est", "--enrollment-url",
            f"https://127.0.0.1:{est_port}/.well-known/est")
        pki(tmp_path, *s, "local-certificate", "enroll", "--certificate-id", "r1", "--ca-profile", "cmp",
            "--subject", "CN=r1,O=Example", "--reference-number", "77", "--challenge-password-file", "s")
        pki(tmp_path, *s, "ca-certificate", "enroll", "--ca-profile", "est", "--yes")
        pki(tmp_path, *s, "local-certificate", "enroll", "--certificate-id", "r2", "--ca-profile", "est",
            "--subject", "CN=r2,O=Example", "--challenge-password-file", "c")
        from pki.store import Store

        st = Store(tmp_path / "st")
        for cid in ("r1", "r2"):
            cert = st.local_certificate(cid)
            assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
            (tmp_path / f"{cid}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            ossl("verify", "-CAfile", str(tmp_path / "st" / "ca" / "est" / "ca.pem"), f"{cid}.pem", cwd=tmp_path)
        assert served.wait_log(r"op=cmp msg=ir tid=\w+ outcome=issued"), served.log()
        assert served.wait_log(r"op=est\S* .*outcome=issued"), served.log()
    finally:
        served.stop()
    assert "Traceback" not in served.stderr()
