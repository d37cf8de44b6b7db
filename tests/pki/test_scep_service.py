"""SCEP end to end over real HTTP on 127.0.0.1: our client against our CA service (pki.service + pki.scep)."""

from __future__ import annotations

import base64
import shutil
import urllib.parse
from pathlib import Path

import pytest
from asn1crypto import algos, cms
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.fetch import FetchError, http_request
from pki.scep import messages as m
from pki.scep.client import enroll, get_ca_caps, get_ca_certs
from pki.scep.constants import FailInfo, MessageType, PkiStatus
from pki.scep.errors import ScepFailure, ScepPendingTimeout
from pki.service import CaService, approve, list_pending, reject

CHALLENGE = "s3cret-Challenge"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def _new_ca(path: Path, svc: CaService | None = None, parent=None) -> None:
    url = svc.url if svc is not None else "http://127.0.0.1:1"
    ca = CertificateAuthority.init(
        path,
        "CN=SCEP Test CA,O=espresso",
        key_type="rsa",
        key_size=2048,
        crl_url=f"{url}/crl",
        ocsp_url=f"{url}/ocsp",
        parent=parent,
    )
    ca.close()


@pytest.fixture(scope="module")
def ca_template(tmp_path_factory) -> Path:
    """One RSA CA per module (RSA key generation is the slow part); each test gets a fresh copy of it."""
    path = tmp_path_factory.mktemp("scep") / "ca"
    _new_ca(path)
    return path


@pytest.fixture(scope="module")
def spare_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(65537, 2048) for _ in range(2)]


def _started(template: Path, dest: Path, **kw) -> CaService:
    shutil.copytree(template, dest)
    svc = CaService(dest, **kw)
    try:
        svc.start()
    except BaseException:
        svc.stop()
        raise
    return svc


@pytest.fixture
def service(tmp_path, ca_template):
    """A started service with auto-approval and a challenge password."""
    svc = _started(ca_template, tmp_path / "ca", challenge=CHALLENGE)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def manual_service(tmp_path, ca_template):
    svc = _started(ca_template, tmp_path / "ca", challenge=CHALLENGE, manual_approval=True)
    try:
        yield svc
    finally:
        svc.stop()


def _self_signed(key, cn: str) -> x509.Certificate:
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import hashes

    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    now = datetime.now(timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _csr(key, cn="router1", challenge: str | None = CHALLENGE):
    return build_csr(
        key,
        f"CN={cn},O=espresso",
        SubjectAltNames.build(dns=[f"{cn}.example.net"], ip=["192.0.2.7"]),
        challenge_password=challenge,
    )


def test_get_ca_caps_and_cert(service):
    caps = get_ca_caps(service.url + "/scep")
    assert {"AES", "SHA-256", "POSTPKIOperation", "SCEPStandard", "Renewal"} <= caps
    certs = get_ca_certs(service.url + "/scep")
    ca_cert = x509.load_pem_x509_certificate((service.ca_dir / "ca.pem").read_bytes())
    assert certs == [ca_cert]


def test_get_ca_cert_chain_is_degenerate_pkcs7(tmp_path):
    root = CertificateAuthority.init(
        tmp_path / "root", "CN=Root,O=espresso", key_type="rsa", key_size=2048, path_length=1
    )
    try:
        svc = CaService(tmp_path / "sub")
        try:
            _new_ca(tmp_path / "sub", svc, parent=root)
            svc.start()
            resp = http_request("GET", svc.url + "/cgi-bin/pkiclient.exe?operation=GetCACert")
            assert resp.content_type == "application/x-x509-ca-ra-cert"
            certs = get_ca_certs(svc.url + "/cgi-bin/pkiclient.exe")
            assert [c.subject.rfc4514_string() for c in certs] == [
                "CN=SCEP Test CA,O=espresso",
                "CN=Root,O=espresso",
            ]
        finally:
            svc.stop()
    finally:
        root.close()


def test_enroll_auto_approval(service, rsa_key):
    ca_certs = get_ca_certs(service.url + "/scep")
    cert = enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs, retry_count=0)
    assert cert.subject.rfc4514_string() == "CN=router1,O=espresso"
    assert cert.issuer == ca_certs[0].subject
    cert.verify_directly_issued_by(ca_certs[0])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["router1.example.net"]
    # the CA recorded it
    rec = service.run(lambda: service.ca.lookup(cert.serial_number))
    assert rec is not None and rec.certificate == cert


def test_enroll_adds_challenge_to_csr(service, rsa_key):
    ca_certs = get_ca_certs(service.url + "/scep")
    cert = enroll(
        service.url + "/scep", rsa_key, _csr(rsa_key, challenge=None), ca_certs, challenge=CHALLENGE
    )
    assert cert.public_key().public_numbers() == rsa_key.public_key().public_numbers()


@pytest.mark.parametrize("challenge", ["wrong", None])
def test_wrong_or_missing_challenge_is_bad_request(service, rsa_key, challenge):
    ca_certs = get_ca_certs(service.url + "/scep")
    with pytest.raises(ScepFailure) as exc:
        enroll(service.url + "/scep", rsa_key, _csr(rsa_key, challenge=challenge), ca_certs)
    assert exc.value.fail_info is FailInfo.badRequest
    assert "challenge" in str(exc.value)
    assert service.run(lambda: service.ca.records()) == []


def test_pending_then_approved_while_polling(manual_service, rsa_key):
    svc = manual_service
    ca_certs = get_ca_certs(svc.url + "/scep")
    polls = []

    def sleep(seconds: float) -> None:  # the operator approves during the client's first wait
        polls.append(seconds)
        if len(polls) == 1:
            pending = list_pending(svc.ca_dir)
            assert [p.subject for p in pending] == ["CN=router1,O=espresso"]
            assert pending[0].transaction_id == m.transaction_id_for(rsa_key.public_key())
            svc.approve(pending[0].transaction_id)

    cert = enroll(
        svc.url + "/scep", rsa_key, _csr(rsa_key), ca_certs, retry_count=5, retry_interval=7, sleep=sleep
    )
    assert polls == [7]
    assert cert.subject.rfc4514_string() == "CN=router1,O=espresso"
    assert list_pending(svc.ca_dir) == []


def test_pending_times_out_bounded(manual_service, rsa_key):
    ca_certs = get_ca_certs(manual_service.url + "/scep")
    polls = []
    with pytest.raises(ScepPendingTimeout) as exc:
        enroll(
            manual_service.url + "/scep",
            rsa_key,
            _csr(rsa_key),
            ca_certs,
            retry_count=3,
            retry_interval=1,
            sleep=polls.append,
        )
    assert polls == [1, 1, 1] and exc.value.polls == 3


def test_rejected_request_fails_at_next_poll(manual_service, rsa_key):
    svc = manual_service
    ca_certs = get_ca_certs(svc.url + "/scep")

    def sleep(_: float) -> None:
        svc.reject(list_pending(svc.ca_dir)[0].transaction_id, "not on the list")

    with pytest.raises(ScepFailure) as exc:
        enroll(
            svc.url + "/scep", rsa_key, _csr(rsa_key), ca_certs, retry_count=2, retry_interval=1, sleep=sleep
        )
    assert exc.value.fail_info is FailInfo.badRequest and "not on the list" in str(exc.value)


def test_state_survives_restart(tmp_path, rsa_key, ca_template):
    """PENDING before a restart, approved offline with approve(ca_dir, tid), picked up after the restart."""
    svc = _started(ca_template, tmp_path / "ca", challenge=CHALLENGE, manual_approval=True)
    csr = _csr(rsa_key)
    try:
        ca_certs = get_ca_certs(svc.url + "/scep")
        with pytest.raises(ScepPendingTimeout):
            enroll(svc.url + "/scep", rsa_key, csr, ca_certs, retry_count=0)
    finally:
        svc.stop()
    tid = m.transaction_id_for(rsa_key.public_key())
    assert [p.transaction_id for p in list_pending(tmp_path / "ca")] == [tid]
    issued = approve(tmp_path / "ca", tid)  # the CLI path: no service running
    with pytest.raises(Exception, match="no pending"):
        approve(tmp_path / "ca", tid)
    svc2 = CaService(tmp_path / "ca", challenge=CHALLENGE, manual_approval=True)
    try:
        svc2.start()
        cert = enroll(svc2.url + "/scep", rsa_key, csr, ca_certs, retry_count=0)  # resend: same transaction
        assert cert == issued
    finally:
        svc2.stop()


def test_reject_offline(tmp_path, rsa_key, ca_template):
    svc = _started(ca_template, tmp_path / "ca", manual_approval=True)
    try:
        ca_certs = get_ca_certs(svc.url + "/scep")
        with pytest.raises(ScepPendingTimeout):
            enroll(svc.url + "/scep", rsa_key, _csr(rsa_key), ca_certs, retry_count=0)
        reject(tmp_path / "ca", m.transaction_id_for(rsa_key.public_key()), "bad subject")
        with pytest.raises(ScepFailure, match="bad subject"):
            enroll(svc.url + "/scep", rsa_key, _csr(rsa_key), ca_certs, retry_count=0)
    finally:
        svc.stop()


def test_renewal_signed_with_current_certificate(service, rsa_key, spare_keys):
    ca_certs = get_ca_certs(service.url + "/scep")
    old = enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs)
    new_key = spare_keys[0]
    new = enroll(
        service.url + "/scep", new_key, _csr(new_key, challenge=None), ca_certs, signer=(old, rsa_key)
    )
    assert new.public_key().public_numbers() == new_key.public_key().public_numbers()
    assert new.serial_number != old.serial_number


def test_renewal_with_foreign_certificate_is_refused(service, rsa_key, spare_keys):
    ca_certs = get_ca_certs(service.url + "/scep")
    outsider_key = spare_keys[1]
    outsider = _self_signed(outsider_key, "not from this CA")
    with pytest.raises(ScepFailure) as exc:
        enroll(
            service.url + "/scep",
            rsa_key,
            _csr(rsa_key, challenge=None),
            ca_certs,
            signer=(outsider, outsider_key),
        )
    assert exc.value.fail_info is FailInfo.badCertId


# --------------------------------------------------------------------------- hostile / malformed input


def _cert_rep(svc: CaService, body: bytes) -> m.PkiMessage:
    resp = http_request("POST", svc.url + "/scep?operation=PKIOperation", body, "application/x-pki-message")
    assert resp.content_type == "application/x-pki-message"
    return m.parse_pki_message(resp.body)


def _signed_request(svc, key, message_type=MessageType.PKCSReq, payload: bytes | None = None, tid="TID-1"):
    ca_cert = get_ca_certs(svc.url + "/scep")[0]
    me = _self_signed(key, "router1")
    if payload is None:
        payload = _csr(key).public_bytes(Encoding.DER)
    return m.sign_pki_message(
        message_type=message_type,
        transaction_id=tid,
        sender_nonce=b"N" * 16,
        signer_cert=me,
        signer_key=key,
        envelope=m.envelope(payload, ca_cert),
    )


def test_bad_signature_gets_failure_bad_message_check(service, rsa_key):
    der = bytearray(_signed_request(service, rsa_key))
    der[-5] ^= 0xFF
    rep = _cert_rep(service, bytes(der))
    assert (rep.pki_status, rep.fail_info) == (PkiStatus.FAILURE, FailInfo.badMessageCheck)
    assert rep.transaction_id == "TID-1" and rep.recipient_nonce == b"N" * 16


def test_unknown_transaction_poll_gets_bad_cert_id(service, rsa_key):
    ca_cert = get_ca_certs(service.url + "/scep")[0]
    body = _signed_request(
        service,
        rsa_key,
        MessageType.CertPoll,
        m.issuer_and_subject(ca_cert.subject, ca_cert.subject),
        tid="NEVER-SEEN",
    )
    rep = _cert_rep(service, body)
    assert (rep.pki_status, rep.fail_info) == (PkiStatus.FAILURE, FailInfo.badCertId)


def test_garbage_envelope_payload_gets_failure(service, rsa_key):
    rep = _cert_rep(service, _signed_request(service, rsa_key, payload=b"\x30\x03not a csr"))
    assert rep.pki_status is PkiStatus.FAILURE and rep.fail_info is FailInfo.badRequest


def test_csr_with_bad_signature_gets_bad_message_check(service, rsa_key):
    csr = bytearray(_csr(rsa_key).public_bytes(Encoding.DER))
    csr[-3] ^= 0x55
    rep = _cert_rep(service, _signed_request(service, rsa_key, payload=bytes(csr)))
    assert (rep.pki_status, rep.fail_info) == (PkiStatus.FAILURE, FailInfo.badMessageCheck)


def test_get_cert_by_serial(service, rsa_key):
    ca_certs = get_ca_certs(service.url + "/scep")
    cert = enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs)
    body = _signed_request(
        service, rsa_key, MessageType.GetCert, m.issuer_and_serial(ca_certs[0].subject, cert.serial_number)
    )
    rep = _cert_rep(service, body)
    assert rep.pki_status is PkiStatus.SUCCESS
    inner = m.open_envelope(rep.envelope, rsa_key)
    assert m.parse_certs_only(inner) == [cert]


@pytest.mark.parametrize("body", [b"", b"garbage", b"\x30\x80\x00\x00", b"\x30\x82\x00\x05hello"])
def test_garbage_post_is_http_400(service, body):
    with pytest.raises(FetchError) as exc:
        http_request("POST", service.url + "/scep?operation=PKIOperation", body, "application/x-pki-message")
    assert exc.value.status == 400


def test_garbage_get_is_http_400(service):
    for message in ["!!!notbase64", base64.b64encode(b"\x30\x03abc").decode(), ""]:
        url = (
            service.url + "/scep?" + urllib.parse.urlencode({"operation": "PKIOperation", "message": message})
        )
        with pytest.raises(FetchError) as exc:
            http_request("GET", url)
        assert exc.value.status == 400


def test_pki_operation_via_get(service, rsa_key):
    body = _signed_request(service, rsa_key)
    url = (
        service.url
        + "/scep?"
        + urllib.parse.urlencode({"operation": "PKIOperation", "message": base64.b64encode(body).decode()})
    )
    rep = m.parse_pki_message(http_request("GET", url).body)
    assert rep.pki_status is PkiStatus.SUCCESS
    # strongSwan's GET encoding: '+' as %2B and a %0A every 64 characters; others send a bare '+' or '/'
    b64 = base64.b64encode(body).decode()
    lines = "%0A".join(b64[i : i + 64] for i in range(0, len(b64), 64)).replace("+", "%2B")
    for message in (lines, b64):
        rep = m.parse_pki_message(
            http_request("GET", f"{service.url}/scep?operation=PKIOperation&message={message}").body
        )
        assert rep.pki_status is PkiStatus.SUCCESS


def test_oversized_body_is_413(service):
    with pytest.raises(FetchError) as exc:
        http_request(
            "POST",
            service.url + "/scep?operation=PKIOperation",
            b"\x30" * (m.MAX_MESSAGE_SIZE + 10),
            "application/x-pki-message",
        )
    assert exc.value.status == 413


def test_unknown_operation_is_400(service):
    with pytest.raises(FetchError) as exc:
        http_request("GET", service.url + "/scep?operation=GetNextCACert")
    assert exc.value.status == 400


def test_service_survives_all_of_the_above(service, rsa_key):
    for body in [b"", b"\x30", b"\xff" * 100]:
        with pytest.raises(FetchError):
            http_request(
                "POST", service.url + "/scep?operation=PKIOperation", body, "application/x-pki-message"
            )
    ca_certs = get_ca_certs(service.url + "/scep")
    assert enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs) is not None


def test_enroll_rejects_non_rsa_key(service):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="RSA"):
        enroll(service.url + "/scep", key, _csr(key), get_ca_certs(service.url + "/scep"))  # type: ignore[arg-type]


def test_enroll_refuses_reply_from_other_ca(service, rsa_key, spare_keys):
    """The client trusts only the CA certificates it was given (checked out of band)."""
    from pki.scep.errors import ScepError

    other_key = spare_keys[1]
    impostor = _self_signed(other_key, "SCEP Test CA")
    with pytest.raises(ScepError):
        enroll(service.url + "/scep", rsa_key, _csr(rsa_key), [impostor])


def test_unreachable_ca_is_fetch_error(rsa_key):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(FetchError, match="unreachable"):
        get_ca_certs(f"http://127.0.0.1:{port}/scep", timeout=2)


def test_same_key_renewal_gets_a_new_certificate(service, rsa_key):
    """JUNOS re-enrollment without re-generate-keypair: same key, signed with the current certificate."""
    ca_certs = get_ca_certs(service.url + "/scep")
    csr = _csr(rsa_key)
    first = enroll(service.url + "/scep", rsa_key, csr, ca_certs)
    assert enroll(service.url + "/scep", rsa_key, csr, ca_certs) == first  # a resend gets the same answer
    renewed = enroll(service.url + "/scep", rsa_key, csr, ca_certs, signer=(first, rsa_key))
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key().public_numbers() == first.public_key().public_numbers()
    # and with a fresh CSR after a decided transaction, with the challenge
    other = enroll(service.url + "/scep", rsa_key, _csr(rsa_key, cn="router1b"), ca_certs)
    assert other.subject.rfc4514_string() == "CN=router1b,O=espresso"


def test_fuzz_responder_answers_or_400s(service, rsa_key):
    """Mutated requests straight into the responder: a CertRep or ScepFormatError (HTTP 400), nothing else."""
    import random

    from pki.scep.errors import ScepFormatError

    seed = _signed_request(service, rsa_key)
    rnd = random.Random(8894)  # fixed: the same cases on every run
    answered = refused = 0
    for _ in range(150):
        data = bytearray(seed)
        for _ in range(rnd.choice([1, 2, 3])):
            data[rnd.randrange(len(data))] ^= rnd.randrange(1, 256)
        try:
            rep = m.parse_pki_message(service.scep_pki_operation(bytes(data)))
            assert rep.message_type is MessageType.CertRep
            answered += 1
        except ScepFormatError:
            refused += 1
    assert answered + refused == 150
    # and the service still works afterwards
    assert (
        enroll(service.url + "/scep", rsa_key, _csr(rsa_key), get_ca_certs(service.url + "/scep")) is not None
    )


def test_pending_table_is_bounded(manual_service, rsa_key, monkeypatch):
    import pki.scep.server as server_mod

    monkeypatch.setattr(server_mod, "MAX_PENDING", 0)
    ca_certs = get_ca_certs(manual_service.url + "/scep")
    with pytest.raises(ScepFailure, match="await approval"):
        enroll(manual_service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs, retry_count=0)


def test_connection_cap_answers_503(service, monkeypatch):
    import socket

    import pki.service as service_mod

    held = []
    try:
        # occupy every slot with connections that send nothing, then one more is refused
        for _ in range(service_mod.MAX_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", service.port), timeout=5))
        extra = socket.create_connection(("127.0.0.1", service.port), timeout=5)
        held.append(extra)
        data = b""
        for _ in range(50):
            chunk = extra.recv(1024)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.0 503")
    finally:
        for s in held:
            s.close()
    # slots are released once those connections are gone: the service answers again (bounded wait)
    for _ in range(100):
        try:
            assert get_ca_caps(service.url + "/scep", timeout=5)
            break
        except FetchError:
            import time

            time.sleep(0.1)
    else:
        pytest.fail("service did not recover after the connection flood")


def test_renewal_cannot_change_subject(service, rsa_key, spare_keys):
    ca_certs = get_ca_certs(service.url + "/scep")
    current = enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs)
    with pytest.raises(ScepFailure, match="keep the subject") as exc:
        enroll(
            service.url + "/scep",
            spare_keys[0],
            _csr(spare_keys[0], cn="someone-else", challenge=None),
            ca_certs,
            signer=(current, rsa_key),
        )
    assert exc.value.fail_info is FailInfo.badRequest


def test_renewal_with_revoked_certificate_is_refused(service, rsa_key, spare_keys):
    ca_certs = get_ca_certs(service.url + "/scep")
    current = enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs)
    service.run(lambda: service.ca.revoke(current.serial_number, "keyCompromise"))
    with pytest.raises(ScepFailure, match="revoked") as exc:
        enroll(
            service.url + "/scep",
            spare_keys[0],
            _csr(spare_keys[0], challenge=None),
            ca_certs,
            signer=(current, rsa_key),
        )
    assert exc.value.fail_info is FailInfo.badCertId


def test_get_crl(service, rsa_key):
    ca_certs = get_ca_certs(service.url + "/scep")
    cert = enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs)
    service.run(lambda: service.ca.revoke(cert.serial_number, "superseded"))
    body = _signed_request(
        service, rsa_key, MessageType.GetCRL, m.issuer_and_serial(ca_certs[0].subject, cert.serial_number)
    )
    rep = _cert_rep(service, body)
    assert rep.pki_status is PkiStatus.SUCCESS
    (crl,) = m.parse_crls_only(m.open_envelope(rep.envelope, rsa_key))
    assert crl.is_signature_valid(ca_certs[0].public_key())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def test_enroll_refuses_certificate_not_signed_by_the_ca(service, rsa_key, spare_keys):
    """A CertRep correctly signed by the CA, but carrying a certificate some other key signed: refused."""
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import hashes

    from pki.scep.errors import ScepError

    ca_certs = get_ca_certs(service.url + "/scep")

    def forged_issue(csr, profile=None, at=None, pop_verified=False):
        now = datetime.now(timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca_certs[0].subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .sign(spare_keys[1], hashes.SHA256())
        )

    service.run(lambda: setattr(service._scep.ca, "issue", forged_issue))  # noqa: SLF001 - a CA gone wrong
    with pytest.raises(ScepError, match="not signed by the CA"):
        enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs)


@pytest.mark.parametrize(
    "caps,cipher",
    [(("AES", "SHA-256"), "aes128_cbc"), (("DES3", "SHA-1"), "tripledes_3key"), ((), "tripledes_3key")],
)
def test_client_follows_ca_capabilities(service, rsa_key, monkeypatch, caps, cipher):
    """A CA without POSTPKIOperation gets GET requests; without AES, 3DES; without SHA-256, SHA-1 (RFC 8894
    3.5.2 defaults), and the enrollment still works."""
    import pki.scep.client as client_mod
    import pki.scep.server as server_mod
    from pki.scep.constants import Capability

    monkeypatch.setattr(server_mod, "CAPABILITIES", tuple(Capability(c) for c in caps))
    seen = []
    real = client_mod.http_request

    def spy(method, url, *args, **kwargs):
        seen.append((method, url.split("operation=")[1].split("&")[0] if "operation=" in url else url))
        return real(method, url, *args, **kwargs)

    monkeypatch.setattr(client_mod, "http_request", spy)
    used = []
    real_envelope = m.envelope
    monkeypatch.setattr(
        m, "envelope", lambda *a, **kw: used.append(kw.get("cipher")) or real_envelope(*a, **kw)
    )
    ca_certs = get_ca_certs(service.url + "/scep")
    cert = enroll(service.url + "/scep", rsa_key, _csr(rsa_key), ca_certs)
    assert cert.public_key().public_numbers() == rsa_key.public_key().public_numbers()
    assert ("GET", "PKIOperation") in seen and ("POST", "PKIOperation") not in seen
    assert used[0] == cipher


# --------------------------------------------------------------------------- badAlg
# SCEP answers failInfo badAlg (RFC 8894 3.2.1.4.5: "unrecognized or unsupported algorithm") when a request
# uses an algorithm the CA will not use: a subject key it refuses to certify, a request signed with MD5, a
# pkiMessage signature it cannot check. badMessageCheck stays for integrity failures (a signature that does not
# verify); badRequest for policy (challenge, subject).


def _fail(rep: m.PkiMessage) -> FailInfo | None:
    assert rep.pki_status is PkiStatus.FAILURE, rep
    return rep.fail_info


def _md5_signed_csr(key: rsa.RSAPrivateKey) -> bytes:
    """A request whose self-signature is valid, but made with MD5."""
    req = asn1_csr.CertificationRequest.load(_csr(key).public_bytes(Encoding.DER))
    tbs = req["certification_request_info"].dump()
    return asn1_csr.CertificationRequest({
        "certification_request_info": req["certification_request_info"],
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "md5_rsa"}),
        "signature": key.sign(tbs, padding.PKCS1v15(), hashes.MD5()),
    }).dump()


def test_weak_rsa_subject_key_is_bad_alg(service):
    weak = rsa.generate_private_key(65537, 1024)
    rep = _cert_rep(service, _signed_request(service, weak, tid="TID-WEAK"))
    assert _fail(rep) is FailInfo.badAlg
    assert rep.transaction_id == "TID-WEAK"


def test_md5_signed_request_is_bad_alg(service, rsa_key):
    rep = _cert_rep(service, _signed_request(service, rsa_key, payload=_md5_signed_csr(rsa_key), tid="TID-MD5"))
    assert _fail(rep) is FailInfo.badAlg


def test_integrity_failures_stay_bad_message_check(service, rsa_key):
    csr = bytearray(_md5_signed_csr(rsa_key))
    csr[-3] ^= 0x55  # MD5 *and* broken: what is wrong first is that it does not verify
    rep = _cert_rep(service, _signed_request(service, rsa_key, payload=bytes(csr), tid="TID-BROKEN"))
    assert _fail(rep) in (FailInfo.badMessageCheck, FailInfo.badAlg)
    good = bytearray(_csr(rsa_key).public_bytes(Encoding.DER))
    good[-3] ^= 0x55
    rep = _cert_rep(service, _signed_request(service, rsa_key, payload=bytes(good), tid="TID-BROKEN2"))
    assert _fail(rep) is FailInfo.badMessageCheck


def test_pki_message_signature_algorithm_it_cannot_check_is_bad_alg(service, rsa_key):
    """A pkiMessage whose SignerInfo names a signature algorithm that does not fit (RSA key, ECDSA algorithm)."""
    body = _signed_request(service, rsa_key, tid="TID-SIGALG")
    info = cms.ContentInfo.load(body)
    si = info["content"]["signer_infos"][0]
    si["signature_algorithm"] = algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})
    rep = _cert_rep(service, info.dump(force=True))
    assert _fail(rep) is FailInfo.badAlg


@pytest.mark.parametrize("manual", [False, True])
def test_refused_key_is_bad_alg_before_it_waits_for_approval(tmp_path, ca_template, manual):
    """With --manual-approval too: the request is refused at once, not held PENDING for an operator who could
    only approve something the CA will not sign."""
    svc = _started(ca_template, tmp_path / "ca", challenge=CHALLENGE, manual_approval=manual)
    try:
        weak = rsa.generate_private_key(65537, 1024)
        rep = _cert_rep(svc, _signed_request(svc, weak, tid="TID-W2"))
        assert _fail(rep) is FailInfo.badAlg
        assert get_ca_certs(svc.url + "/scep")  # still serving
    finally:
        svc.stop()

