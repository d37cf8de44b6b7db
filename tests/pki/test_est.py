"""EST (RFC 7030) between espresso's router store and espresso's CA service, in one process over loopback TLS.

The server is :class:`pki.service.CaService` with its EST listener; the client is the store's
``enroll_ca_certificate``/``enroll_local_certificate`` with ``protocol="est"``, :func:`pki.reenroll.reenroll`, or
raw :mod:`http.client` requests for what a well-behaved client never sends. strongSwan's client and the CLI as
separate processes are in test_est_interop.py.
"""
from __future__ import annotations

import base64
import http.client
import logging
import socket
import ssl
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames, sans_of
from pki.csr import build_csr
from pki.est.client import enroll, est_url, get_ca_certs
from pki.est.errors import EstError, EstPendingTimeout, EstRefused
from pki.est.server import est_operation, issue_service_certificate
from pki.keys import generate_private_key, parse_key_spec
from pki.profile import AutoReenrollment, CaProfile
from pki.reenroll import reenroll
from pki.service import CaService, approve, list_pending
from pki.store import Store

PASSWORD = "est-s3cret"
KEY_TYPES = [("rsa", 2048), ("ecdsa", 256), ("ecdsa", 384), ("ed25519", None)]


def _ca(path, **kw) -> None:
    ca = CertificateAuthority.init(path, "CN=EST Test CA,O=espresso", key_type="ecdsa", **kw)
    issue_service_certificate(ca)  # what 'ca init' does
    ca.close()


@pytest.fixture
def service(tmp_path, request):
    """A running CA service with EST; ``request.param`` may hold CaService/CA options."""
    opts = dict(getattr(request, "param", {}))
    ca_kw = opts.pop("ca", {})
    svc = CaService(tmp_path / "ca", challenge=opts.pop("challenge", PASSWORD), est_port=0, retry_after=1, **opts)
    _ca(tmp_path / "ca", crl_url=f"{svc.url}/crl", **ca_kw)
    svc.start()
    yield svc
    svc.stop()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access():
    """The service's access lines, read from its logger itself (an in-process ``ca serve`` of another test may
    have stopped its propagation to the root logger, which caplog relies on)."""
    logger = logging.getLogger("pki.service.access")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def lines(until: str | None = None) -> list[str]:
        """The lines so far; with ``until``, once a line holds that text (bounded wait: a line is written after
        its answer went out, so the client can be faster than the log)."""
        deadline = time.monotonic() + 10
        while until is not None and not any(until in x for x in handler.lines) and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(handler.lines)

    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _store(tmp_path, svc: CaService, name: str = "r1") -> Store:
    store = Store(tmp_path / f"store-{name}")
    store.add_profile(CaProfile("corp", enrollment_url=svc.est_url, protocol="est", retry=3, retry_interval=1))
    store.enroll_ca_certificate("corp")
    return store


def _ca_chain(svc: CaService) -> list[x509.Certificate]:
    return svc.run(lambda: svc.ca.chain)


def _raw(svc: CaService, method: str, op: str, body: bytes | None = None, headers: dict | None = None,
         credential: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A request a well-behaved client would not send, over TLS that trusts the CA."""
    ctx = ssl.create_default_context(cadata="".join(c.public_bytes(Encoding.PEM).decode() for c in _ca_chain(svc)))
    if credential:
        ctx.load_cert_chain(credential)
    host, port = svc.est_url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=20)
    try:
        conn.request(method, f"/.well-known/est/{op}", body, headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _basic(password: str, user: str = "r1") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _csr_b64(key_type="ecdsa", size=256, subject="CN=raw,O=espresso", dns=()):
    key = generate_private_key(parse_key_spec(key_type, size))
    return key, base64.b64encode(build_csr(key, subject, SubjectAltNames.build(dns=list(dns)) if dns else None)
                                 .public_bytes(Encoding.DER))


# == the happy paths ===========================================================================================
@pytest.mark.parametrize(("key_type", "size"), KEY_TYPES, ids=["rsa2048", "p256", "p384", "ed25519"])
def test_a_router_enrolls_any_key_type_over_est(tmp_path, service, access, key_type, size):
    store = _store(tmp_path, service)
    store.generate_key_pair("r1", key_type, size)
    cert = store.enroll_local_certificate("r1", "corp", "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example"]),
                                          PASSWORD)
    ca = store.ca_certificates("corp")[0]
    cert.verify_directly_issued_by(ca)
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert cert.public_key().public_bytes(*spki) == store.public_key("r1").public_bytes(*spki)
    assert list(sans_of(cert).dns) == ["r1.example"]
    assert store.local_certificate("r1") == cert
    # the request carried no challenge password: EST sends it as HTTP basic credentials
    with pytest.raises(x509.AttributeNotFound):
        store.request("r1").attributes.get_attribute_for_oid(x509.oid.AttributeOID.CHALLENGE_PASSWORD)
    lines = access(until="op=est.simpleenroll")
    assert any("op=est.cacerts outcome=ok http=200" in line for line in lines)
    issued = [line for line in lines if "op=est.simpleenroll" in line]
    assert issued and "auth=basic outcome=issued" in issued[0] and f"serial={cert.serial_number:x}" in issued[0]
    assert PASSWORD not in "\n".join(lines)


def test_cacerts_is_base64_certs_only_and_csrattrs_asks_nothing(service):
    status, headers, body = _raw(service, "GET", "cacerts")
    assert status == 200 and headers["content-type"].startswith("application/pkcs7-mime")
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body, validate=True))  # no line breaks (RFC 8951)
    assert certs == _ca_chain(service)
    assert _raw(service, "GET", "csrattrs")[0] == 204
    assert _raw(service, "GET", "fullcmc")[0] == 501
    assert _raw(service, "GET", "simpleenroll")[0] == 405
    assert _raw(service, "GET", "nonsense")[0] == 404
    assert _raw(service, "GET", "a/b/c/cacerts")[0] == 404
    assert _raw(service, "GET", "label1/cacerts")[0] == 200  # RFC 7030 3.2.2: an optional CA label


def test_est_url_shapes():
    assert est_url("https://ca:8443", "cacerts") == "https://ca:8443/.well-known/est/cacerts"
    assert est_url("https://ca:8443/.well-known/est/", "simpleenroll") == \
        "https://ca:8443/.well-known/est/simpleenroll"
    assert est_url("https://ca/.well-known/est/lab", "cacerts") == "https://ca/.well-known/est/lab/cacerts"
    with pytest.raises(EstError, match="https"):
        est_url("http://ca:8080/.well-known/est", "cacerts")
    assert est_operation("/.well-known/est/simpleenroll") == "simpleenroll"
    assert est_operation("/.well-known/est") == "" and est_operation("/scep") is None


# == authentication ============================================================================================
def test_a_wrong_or_missing_password_is_401(tmp_path, service, access):
    store = _store(tmp_path, service)
    store.generate_key_pair("r1", "ecdsa")
    with pytest.raises(EstRefused) as wrong:
        store.enroll_local_certificate("r1", "corp", "CN=r1,O=espresso", challenge_password="guess")
    assert wrong.value.status == 401
    with pytest.raises(EstRefused) as missing:
        store.enroll_local_certificate("r1", "corp", "CN=r1,O=espresso")
    assert missing.value.status == 401 and "authentication required" in str(missing.value)
    status, headers, _ = _raw(service, "POST", "simpleenroll", _csr_b64()[1], _basic("guess"))
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    assert store.local_certificate("r1") is None
    refused = [line for line in access(until="op=est.simpleenroll") if "op=est.simpleenroll" in line]
    assert refused and all("outcome=refused" in line and "http=401" in line for line in refused)
    assert "guess" not in "\n".join(access())


def test_a_client_certificate_of_another_ca_fails_the_tls_handshake(tmp_path, service, access):
    other = CertificateAuthority.init(tmp_path / "other", "CN=Other CA", key_type="ecdsa")
    key = generate_private_key(parse_key_spec("ecdsa", 256))
    cert = other.issue(build_csr(key, "CN=r1,O=espresso"))
    other.close()
    with pytest.raises(EstError, match="TLS|EOF|reset|closed"):
        enroll(service.est_url, key, build_csr(key, "CN=r1,O=espresso"), _ca_chain(service), client=(cert, key),
               reenroll=True, retry_count=0)
    _wait_for(lambda: any("op=est outcome=refused" in line and "TLS handshake failed" in line for line in access()))


def test_simplereenroll_needs_a_current_certificate_of_this_ca(tmp_path, service, access):
    store = _store(tmp_path, service)
    store.generate_key_pair("r1", "ecdsa")
    old = store.enroll_local_certificate("r1", "corp", "CN=r1,O=espresso", challenge_password=PASSWORD)
    old_key = store.private_key("r1")
    ca = _ca_chain(service)
    new_key = generate_private_key(parse_key_spec("ecdsa", 384))
    # no client certificate at all: 403, even with the right password
    with pytest.raises(EstRefused) as no_cert:
        enroll(service.est_url, new_key, build_csr(new_key, "CN=r1,O=espresso"), ca, password=PASSWORD,
               reenroll=True, retry_count=0)
    assert no_cert.value.status == 403
    # another subject than the current certificate's: 400
    with pytest.raises(EstRefused) as other_subject:
        enroll(service.est_url, new_key, build_csr(new_key, "CN=r2,O=espresso"), ca, client=(old, old_key),
               reenroll=True, retry_count=0)
    assert other_subject.value.status == 400
    # the current certificate and a wrong password: the password is checked too
    with pytest.raises(EstRefused) as both_wrong:
        enroll(service.est_url, new_key, build_csr(new_key, "CN=r1,O=espresso"), ca, client=(old, old_key),
               password="guess", reenroll=True, retry_count=0)
    assert both_wrong.value.status == 401
    new = enroll(service.est_url, new_key, build_csr(new_key, "CN=r1,O=espresso"), ca, client=(old, old_key),
                 password=PASSWORD, reenroll=True, retry_count=0)
    assert new.subject == old.subject and new.serial_number != old.serial_number
    assert any("op=est.simplereenroll" in line and "auth=basic+cert outcome=issued" in line
               for line in access(until="op=est.simplereenroll"))
    # a revoked certificate no longer authenticates
    service.run(lambda: service.ca.revoke(old.serial_number, "superseded"))
    with pytest.raises(EstRefused) as revoked:
        enroll(service.est_url, new_key, build_csr(new_key, "CN=r1,O=espresso"), ca, client=(old, old_key),
               reenroll=True, retry_count=0)
    assert revoked.value.status == 403 and "revoked" in str(revoked.value)


def test_auto_re_enrollment_over_est_uses_the_current_certificate(tmp_path, service, access):
    store = _store(tmp_path, service)
    store.generate_key_pair("r1", "ed25519")
    old = store.enroll_local_certificate("r1", "corp", "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example"]),
                                         PASSWORD)
    setting = AutoReenrollment("r1", "corp", 50, regenerate_keypair=True)  # no password: the certificate alone
    result = reenroll(store, setting, datetime.now(timezone.utc))
    assert result.new_key and result.new.subject == old.subject and sans_of(result.new) == sans_of(old)
    assert store.local_certificate("r1") == result.new
    line = [x for x in access(until="op=est.simplereenroll") if "op=est.simplereenroll" in x][-1]
    assert "auth=cert outcome=issued" in line


# == what the request may hold =================================================================================
def test_malformed_requests_are_400_and_nothing_is_issued(service, access):
    auth = _basic(PASSWORD)
    _, good = _csr_b64()
    der = bytearray(base64.b64decode(good))
    der[-5] ^= 0x55  # the signature no longer verifies
    cases = {
        "not base64": b"%%% not base64 %%%",
        "not a CSR": base64.b64encode(b"\x30\x03\x02\x01\x00"),
        "bad signature": base64.b64encode(bytes(der)),
        "empty": b"",
    }
    for name, body in cases.items():
        status, _, text = _raw(service, "POST", "simpleenroll", body, {**auth, "Content-Length": str(len(body))})
        assert status == 400, (name, status, text)
    assert service.run(lambda: len(service.ca.records())) == 1  # the service certificate only
    # DER instead of base64 (lax clients) is accepted
    status, _, body = _raw(service, "POST", "simpleenroll", base64.b64decode(good), auth)
    assert status == 200


@pytest.mark.parametrize("service", [{"ca": {"dns_suffixes": ("corp.example",)}}], indirect=True)
def test_the_san_policy_applies_to_est(service):
    ca = _ca_chain(service)
    key = generate_private_key(parse_key_spec("ecdsa", 256))
    csr = build_csr(key, "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.corp.example", "evil.example"]))
    cert = enroll(service.est_url, key, csr, ca, password=PASSWORD, retry_count=0)
    assert list(sans_of(cert).dns) == ["r1.corp.example"]  # the name the policy refuses is not certified
    key2 = generate_private_key(parse_key_spec("ecdsa", 256))
    only_refused = build_csr(key2, x509.Name([]), SubjectAltNames.build(dns=["evil.example"]))
    with pytest.raises(EstRefused) as refused:
        enroll(service.est_url, key2, only_refused, ca, password=PASSWORD, retry_count=0)
    assert refused.value.status == 400 and "subjectAltName" in str(refused.value)


# == manual approval ===========================================================================================
@pytest.mark.parametrize("service", [{"manual_approval": True}], indirect=True)
def test_pending_is_202_with_retry_after_until_approved(tmp_path, service, access):
    store = _store(tmp_path, service)
    store.generate_key_pair("r1", "ecdsa", 384)
    slept: list[float] = []
    with pytest.raises(EstPendingTimeout):
        store.enroll_local_certificate("r1", "corp", "CN=r1,O=espresso", challenge_password=PASSWORD,
                                       sleep=slept.append)
    assert slept == [1.0, 1.0, 1.0]  # the server's Retry-After, three polls as the profile says
    pending = list_pending(service.ca_dir)
    assert len(pending) == 1 and pending[0].transaction_id.startswith("est-")
    assert all("outcome=pending" in x and "http=202" in x for x in access(until="op=est.simpleenroll") if "op=est.simpleenroll" in x)
    approve(service.ca_dir, pending[0].transaction_id)  # as 'ca approve' does, beside the running service
    # the same request again (same key, subject, SANs) gets the certificate
    csr = store.request("r1")
    cert = enroll(service.est_url, store.private_key("r1"), csr, store.ca_certificates("corp"), password=PASSWORD,
                  retry_count=0)
    assert cert.subject == csr.subject and list_pending(service.ca_dir) == []


@pytest.mark.parametrize("service", [{"manual_approval": True}], indirect=True)
def test_the_approval_queue_bound_is_the_one_scep_and_cmp_share(service, access, monkeypatch):
    import pki.scep.server as queue_mod

    monkeypatch.setattr(queue_mod, "MAX_PENDING", 0)  # the queue is full: a 503, nothing queued
    _, body = _csr_b64(subject="CN=r9,O=espresso")
    status, _, text = _raw(service, "POST", "simpleenroll", body,
                           {"Content-Type": "application/pkcs10", **_basic(PASSWORD)})
    assert status == 503 and b"0 requests already await approval" in text, (status, text)
    assert list_pending(service.ca_dir) == []


# == transport =================================================================================================
def test_est_is_not_served_over_plain_http(service):
    host, port = service.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/.well-known/est/cacerts")
    r = conn.getresponse()
    assert r.status == 403 and b"HTTPS" in r.read()
    conn.close()


@pytest.mark.parametrize("service", [{"limits": __import__("pki.service", fromlist=["HttpLimits"])
                                      .HttpLimits(request_timeout=1.0)}], indirect=True)
def test_slow_or_plain_clients_on_the_tls_port_are_dropped_and_logged(service, access):
    host, port = service.est_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:  # says nothing: the handshake deadline
        t = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - t < 8
    with socket.create_connection((host, int(port)), timeout=10) as s:  # plain HTTP on the TLS port
        s.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert not s.recv(100).startswith(b"HTTP")  # a TLS alert at most, then the connection is closed
        except ConnectionResetError:
            pass
    _wait_for(lambda: any("TLS handshake not complete within 1 s" in x for x in access())
              and sum("op=est outcome=refused" in x for x in access()) >= 2)


def test_bootstrap_refuses_a_server_whose_tls_certificate_the_ca_did_not_issue(tmp_path):
    other = CertificateAuthority.init(tmp_path / "other", "CN=Other CA", key_type="ecdsa")
    issue_service_certificate(other)
    other.close()
    svc = CaService(tmp_path / "ca", challenge=PASSWORD, est_port=0,
                    est_tls=(str(tmp_path / "other" / "est.pem"), str(tmp_path / "other" / "est.key")))
    _ca(tmp_path / "ca")
    with svc:
        with pytest.raises(EstError, match="not issued by the CA"):
            get_ca_certs(svc.est_url)
        # with the CA loaded out of band, the server's certificate does not verify either
        with pytest.raises(EstError, match="not trusted"):
            get_ca_certs(svc.est_url, trust=_ca_chain(svc))


def test_the_client_checks_the_service_certificate_names_the_host(tmp_path, service):
    ca = _ca_chain(service)
    assert get_ca_certs(service.est_url.replace("127.0.0.1", "localhost"), trust=ca) == ca
    named = CertificateAuthority.init(tmp_path / "named", "CN=Named CA", key_type="ecdsa")
    issue_service_certificate(named, ["ca.example.net"])
    named.close()
    svc = CaService(tmp_path / "named", challenge=PASSWORD, est_port=0)
    with svc:
        chain = svc.run(lambda: svc.ca.chain)
        with pytest.raises(EstError, match="not trusted"):  # 127.0.0.1 is not ca.example.net
            get_ca_certs(svc.est_url, trust=chain)


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    assert condition()


def test_service_certificate_is_reissued_when_about_to_expire(tmp_path):
    from pki.est.server import ensure_service_certificate

    then = datetime.now(timezone.utc) - timedelta(days=820)
    ca = CertificateAuthority.init(tmp_path / "ca", "CN=EST Test CA", key_type="ecdsa", at=then)
    first = issue_service_certificate(ca, ["ca.example.net", "192.0.2.1"], at=then)
    _, _, why = ensure_service_certificate(ca)
    assert why and "expires" in why
    pem = (tmp_path / "ca" / "est.pem").read_bytes()
    again = x509.load_pem_x509_certificates(pem)[0]
    assert again.serial_number != first.serial_number
    assert [str(g.value) for g in again.extensions.get_extension_for_class(x509.SubjectAlternativeName).value] == \
        ["ca.example.net", "192.0.2.1"]
    assert again.fingerprint(hashes.SHA256()) != first.fingerprint(hashes.SHA256())
    assert ensure_service_certificate(ca)[2] is None
    assert (tmp_path / "ca" / "est.key").stat().st_mode & 0o777 == 0o600
    ca.close()


def test_a_ca_made_before_est_gets_its_service_certificate_when_served(tmp_path, caplog):
    CertificateAuthority.init(tmp_path / "ca", "CN=Old CA", key_type="ecdsa", passphrase=b"ca-pass").close()
    assert not (tmp_path / "ca" / "est.pem").exists()
    with caplog.at_level(logging.WARNING, logger="pki.service"), \
            CaService(tmp_path / "ca", challenge=PASSWORD, est_port=0, passphrase=b"ca-pass") as svc:
        chain = _ca_chain(svc)
        assert get_ca_certs(svc.est_url, trust=chain) == chain
    assert any("no EST service certificate" in r.getMessage() for r in caplog.records)
    key_file = tmp_path / "ca" / "est.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in key_file.read_bytes()  # under the CA's passphrase, like ca.key


def test_an_intermediate_ca_serves_est_and_authenticates_its_own_certificates(tmp_path):
    root = CertificateAuthority.init(tmp_path / "root", "CN=Root", key_type="ecdsa", path_length=1)
    sub = CertificateAuthority.init(tmp_path / "sub", "CN=Sub", key_type="ecdsa", parent=root)
    issue_service_certificate(sub)
    sub.close()
    root.close()
    with CaService(tmp_path / "sub", challenge=PASSWORD, est_port=0) as svc:
        store = _store(tmp_path, svc)
        assert [c.subject.rfc4514_string() for c in store.ca_certificates("corp")] == ["CN=Sub", "CN=Root"]
        store.generate_key_pair("r1", "ecdsa", 384)
        old = store.enroll_local_certificate("r1", "corp", "CN=r1,O=espresso", challenge_password=PASSWORD)
        result = reenroll(store, AutoReenrollment("r1", "corp", 50), datetime.now(timezone.utc))
        assert result.new.issuer == old.issuer and result.new.serial_number != old.serial_number
