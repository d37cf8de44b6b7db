"""CMPv2 in memory: espresso's client and responder joined by a function instead of HTTP (no sockets), for the
rules each side enforces and for hostile input. Interop with OpenSSL is in test_cmp_interop.py.

The fuzz budget is ``FUZZ_CASES``; ``ESPRESSO_FUZZ_EXAMPLES=N`` (and ``ESPRESSO_FUZZ_SEED``) run more by hand."""
from __future__ import annotations

import os
import random
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pki.ca import CertificateAuthority
from pki.cmp import client
from pki.cmp import messages as m
from pki.cmp.messages import CmpError, FailInfo
from pki.cmp.server import CmpResponder, cert_hash
from tests.pki.cmp_helpers import FUZZ_CASES, URL, fuzz_seed, mutate, wire

SEED = fuzz_seed(4210)


@pytest.fixture(params=["ecdsa", "ed25519", "rsa"])
def ca(request, tmp_path):
    ca = CertificateAuthority.init(tmp_path / "ca", "CN=Mem CA,O=espresso", key_type=request.param)
    yield ca
    ca.close()


@pytest.fixture
def responder(ca):
    r = CmpResponder(ca)
    r.secrets.add("1000", "secret-1000", ca.certificate.not_valid_before_utc + timedelta(minutes=1))
    yield r
    r.close()


def enroll(responder, key=None, *, ref="1000", secret="secret-1000", name="CN=r1", **kw):
    key = key or ec.generate_private_key(ec.SECP256R1())
    return key, client.enroll(URL, key, x509.Name.from_rfc4514_string(name), [x509.DNSName("r1.example.net")],
                              reference=ref, secret=secret, transport=wire(responder), **kw)


@pytest.mark.parametrize("make_key", [lambda: rsa.generate_private_key(65537, 2048),
                                      lambda: ec.generate_private_key(ec.SECP384R1()),
                                      ed25519.Ed25519PrivateKey.generate])
def test_ir_kur_rr_round_trip_for_every_key_type(responder, ca, make_key):
    key, got = enroll(responder, make_key())
    assert got.certificate.issuer == ca.certificate.subject and got.ca_pubs == [ca.certificate]
    got.certificate.verify_directly_issued_by(ca.certificate)
    new_key = make_key()
    upd = client.key_update(URL, got.certificate, key, new_key, [ca.certificate], transport=wire(responder))
    assert upd.certificate.subject == got.certificate.subject
    assert upd.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName) == \
        got.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    client.revoke(URL, upd.certificate, new_key, [ca.certificate], reason="key-compromise",
                  transport=wire(responder))
    rec = ca.lookup(upd.certificate.serial_number)
    assert rec.status.value == "revoked" and rec.reason == x509.ReasonFlags.key_compromise
    assert ca.lookup(got.certificate.serial_number).status.value == "valid"


def test_refusals_carry_the_right_failinfo(responder, ca):
    key, got = enroll(responder)
    cases = {
        "wrong secret": (lambda: enroll(responder, ref="1000", secret="wrong-secret"), "badMessageCheck"),
        "unknown reference": (lambda: enroll(responder, ref="9999"), "badMessageCheck"),
        "used reference": (lambda: enroll(responder), "notAuthorized"),
        "kur with the same key": (lambda: client.key_update(URL, got.certificate, key, key, [ca.certificate],
                                                            transport=wire(responder)), "badCertTemplate"),
    }
    for call, fail in cases.values():
        with pytest.raises(CmpError, match=f"failInfo {fail}"):
            call()


def test_rr_may_only_revoke_the_signing_certificate(responder, ca):
    k1, a = enroll(responder)
    responder.secrets.add("1001", "secret-1001", a.certificate.not_valid_before_utc)
    _, b = enroll(responder, ref="1001", secret="secret-1001", name="CN=r2")

    def fill(body):
        d = body.componentType.clone()
        m.set_name(d["certDetails"]["issuer"], ca.certificate.subject.public_bytes())
        d["certDetails"]["serialNumber"] = b.certificate.serial_number
        body.append(d)

    der = m.build_message(body_type="rr", fill_body=fill, sender=None, recipient=None, transaction_id=b"t" * 16,
                          sender_nonce=b"n" * 16, protection=m.SignatureProtection(k1, a.certificate),
                          extra_certs=[a.certificate])
    answer, outcome = responder.respond(der)
    assert outcome.fail_info == "notAuthorized" and m.parse_message(answer).body_type == "error"
    assert ca.lookup(b.certificate.serial_number).status.value == "valid"


def test_certconf_rejection_revokes_and_a_wrong_hash_is_refused(responder, ca):
    key = ec.generate_private_key(ec.SECP256R1())
    prot = m.MacProtection(b"1000", b"secret-1000")
    tid = os.urandom(16)

    def send(body_type, fill):
        return m.parse_message(responder.respond(m.build_message(
            body_type=body_type, fill_body=fill, sender=None, recipient=None, transaction_id=tid,
            sender_nonce=os.urandom(16), protection=prot))[0])

    ip = send("ir", lambda body: client._cert_req_messages(body, key, x509.Name.from_rfc4514_string("CN=r7"), ()))
    assert ip.body_type == "ip"
    cert = m.cert_from_asn1(ip.body["response"][0]["certifiedKeyPair"]["certOrEncCert"]["certificate"])

    def conf(digest, status):
        def fill(body):
            st = body.componentType.clone()
            st["certHash"] = digest
            st["certReqId"] = 0
            st["statusInfo"] = m.status_info(status)
            body.append(st)
        return fill

    bad = send("certConf", conf(b"\x00" * 32, m.PkiStatus.accepted))
    assert bad.body_type == "error" and m.read_status(bad.body["pKIStatusInfo"])[1] == ["badCertId"]
    assert send("certConf", conf(cert_hash(cert), m.PkiStatus.rejection)).body_type == "pkiconf"
    assert ca.lookup(cert.serial_number).status.value == "revoked"


def test_unprotected_and_replayed_messages(responder, ca):
    der = m.build_message(body_type="pkiconf", fill_body=lambda b: None, sender=None, recipient=None,
                          transaction_id=b"x" * 16, sender_nonce=b"y" * 16, protection=None)
    _, outcome = responder.respond(der)
    assert outcome.fail_info == "badMessageCheck"
    # a client given an old answer (another transaction) refuses it before looking any further
    log: list = []
    key = ec.generate_private_key(ec.SECP256R1())
    client.enroll(URL, key, x509.Name.from_rfc4514_string("CN=r1"), reference="1000", secret="secret-1000",
                  transport=wire(responder, log))
    old_answer = responder.respond(log[0][0])[0]  # the ir again: transactionID in use
    with pytest.raises(CmpError, match="transactionID|senderNonce"):
        client.enroll(URL, key, x509.Name.from_rfc4514_string("CN=r1"), reference="1000",
                      secret="secret-1000", transport=lambda url, data: old_answer)


def test_enrollment_under_an_intermediate_ca(tmp_path):
    root = CertificateAuthority.init(tmp_path / "root", "CN=Root")
    sub = CertificateAuthority.init(tmp_path / "sub", "CN=Sub", parent=root)
    r = CmpResponder(sub)
    try:
        r.secrets.add("5", "secret-0005", sub.certificate.not_valid_before_utc)
        _, got = enroll(r, ref="5", secret="secret-0005")
        assert got.ca_pubs == [root.certificate] and sub.certificate in got.extra_certs
        got.certificate.verify_directly_issued_by(sub.certificate)
    finally:
        r.close()
        sub.close()
        root.close()


def _valid_ir(ca_subject: bytes) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return m.build_message(
        body_type="ir", fill_body=lambda body: client._cert_req_messages(
            body, key, x509.Name.from_rfc4514_string("CN=fuzz"), [x509.DNSName("f.example.net")]),
        sender=None, recipient=ca_subject, transaction_id=b"f" * 16, sender_nonce=b"n" * 16,
        protection=m.MacProtection(b"1000", b"secret-1000", iterations=100))


@pytest.mark.parametrize("ca", ["ecdsa"], indirect=True)
def test_fuzzed_messages_always_get_a_pkimessage_answer(responder, ca):
    """Bit flips, truncations, splices and length-byte edits of a valid ir: every one gets a PKIMessage back
    (an error, or an ip when the change did not matter), nothing raises."""
    rng = random.Random(SEED)
    base = _valid_ir(ca.certificate.subject.public_bytes())
    for _ in range(FUZZ_CASES):
        answer, outcome = responder.respond(mutate(rng, base))
        parsed = m.parse_message(answer)
        assert parsed.body_type in ("error", "ip"), parsed.body_type
        assert outcome.outcome in ("refused", "issued")


def test_pbm_iteration_count_is_bounded(responder, ca):
    """A peer cannot make the CA run a million hash iterations for one message."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = m.build_message(
        body_type="ir", fill_body=lambda body: client._cert_req_messages(body, key, None, [x509.DNSName("a.b")]),
        sender=None, recipient=None, transaction_id=b"i" * 16, sender_nonce=b"n" * 16,
        protection=m.MacProtection(b"1000", b"secret-1000", iterations=m.MAX_PBM_ITERATIONS + 1))
    _, outcome = responder.respond(der)
    assert outcome.fail_info == FailInfo.badAlg.name


def test_a_refused_template_does_not_spend_the_reference(responder, ca):
    """The CA refuses a request with neither subject nor acceptable SAN; the router may correct it and send it
    again with the same reference number."""
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CmpError, match="failInfo badCertTemplate"):
        client.enroll(URL, key, x509.Name([]), reference="1000", secret="secret-1000", transport=wire(responder))
    _, got = enroll(responder, key)
    assert got.certificate.subject.rfc4514_string() == "CN=r1"


def test_ca_certificates_may_sign_cmp_messages(tmp_path):
    """RFC 9483 3.2 (and OpenSSL's cmp client) want digitalSignature in the certificate protecting a CMP answer:
    the CA signs them with its own key, so root and intermediate CA certificates carry it."""
    root = CertificateAuthority.init(tmp_path / "root", "CN=Root")
    sub = CertificateAuthority.init(tmp_path / "sub", "CN=Sub", parent=root)
    try:
        for ca in (root, sub):
            ku = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
            assert ku.digital_signature and ku.key_cert_sign and ku.crl_sign
    finally:
        sub.close()
        root.close()


def test_cli_errors_are_one_line(lab, capsys):
    from tests.pki.conftest import run

    assert run(capsys, "ca", "--ca", "ca", "init", "--subject", "CN=R")[0] == 0
    assert run(capsys, "ca", "--ca", "ca", "cmp-secret", "add", "--ref", "1", "--secret", "long-enough-1")[0] == 0
    assert run(capsys, "--store", "st", "ca-profile", "add", "p", "--enrollment-url", "http://127.0.0.1:9/")[0] == 0
    assert run(capsys, "--store", "st", "ca-profile", "add", "c", "--enrollment-url", "http://127.0.0.1:9/",
               "--protocol", "cmpv2")[0] == 0
    for argv, text in [
        (("ca", "--ca", "ca", "cmp-secret", "add", "--ref", "1", "--secret", "long-enough-2"), "exists already"),
        (("ca", "--ca", "ca", "cmp-secret", "add", "--ref", "2", "--secret", "short"), "at least 8"),
        (("ca", "--ca", "ca", "cmp-secret", "delete", "--ref", "3"), "no CMP reference 3"),
        (("ca", "--ca", "ca", "cmp-secret", "add"), "needs --reference-number"),
        (("ca", "--ca", "nowhere", "cmp-secret", "list"), "not a CA directory"),
        (("--store", "st", "local-certificate", "revoke", "--certificate-id", "r1", "--ca-profile", "p"),
         "give --protocol cmpv2 or a ca-profile with --protocol cmpv2 (this one is scep)"),
        (("--store", "st", "local-certificate", "re-enroll", "--certificate-id", "r1", "--ca-profile", "p",
          "--protocol", "est"), "is CMPv2 (kur, rr)"),
        (("--store", "st", "local-certificate", "enroll", "--protocol", "cmpv2", "--certificate-id", "r1",
          "--ca-profile", "p", "--subject", "CN=r1"), "needs --subject, --reference-number"),
        # the profile's protocol decides when --protocol is not given
        (("--store", "st", "local-certificate", "enroll", "--certificate-id", "r1", "--ca-profile", "c",
          "--subject", "CN=r1"), "needs --subject, --reference-number"),
        # the CA certificate over CMP (genm caCerts): nothing listens there
        (("--store", "st", "ca-certificate", "enroll", "--ca-profile", "c", "--yes"), "127.0.0.1:9"),
    ]:
        rc, out, err = run(capsys, *argv)
        assert rc == 1 and text in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    rc, out, _ = run(capsys, "ca", "--ca", "ca", "cmp-secret", "list")
    assert rc == 0 and out.startswith("1  created") and "long-enough-1" not in out
    rc, out, _ = run(capsys, "ca", "--ca", "ca", "cmp-secret", "add", "--ref", "4", "--days", "2")
    assert rc == 0 and "valid 2 days" in out and len(out.split("Secret: ")[1].strip()) >= 16


@pytest.mark.parametrize("ca", ["ecdsa"], indirect=True)
def test_a_cmpv2_profile_renews_by_kur_and_refuses_the_scep_est_paths(responder, ca, tmp_path, monkeypatch):
    """A ca-profile with protocol cmpv2 decides the protocol: auto-re-enrollment renews with a key update (kur)
    signed by the current certificate, and the SCEP/EST paths of the store refuse it in one clear line."""
    from pki import reenroll
    from pki.cmp import enroll as cmp_enroll
    from pki.errors import StoreError
    from pki.profile import AutoReenrollment, CaProfile
    from pki.store import Store

    store = Store(tmp_path / "st")
    store.add_profile(CaProfile("lab", enrollment_url=URL, protocol="cmpv2"))
    store.generate_key_pair("r1", "ecdsa")
    old, _ = cmp_enroll.enroll_local_certificate(store, "r1", "lab", "CN=r1", None, reference="1000",
                                                 secret="secret-1000", transport=wire(responder))
    with pytest.raises(StoreError, match="CMPv2"):
        store.enroll_local_certificate("r1", "lab", "CN=r1", challenge_password="x")
    assert store.enroll_ca_certificate("lab", get_ca_certs=lambda url: client.get_ca_certs(
        url, transport=wire(responder))) == [ca.certificate]  # genm caCerts, as for SCEP's GetCACert
    log: list = []
    monkeypatch.setattr(client, "_http", lambda url, data, timeout=None: wire(responder, log)(url, data))
    store.set_reenrollment(AutoReenrollment("r1", "lab", trigger_percentage=50))
    results = reenroll.run_due(store, old.not_valid_after_utc - timedelta(days=1))
    assert [type(r) for r in results] == [reenroll.ReenrollResult], results
    new = store.local_certificate("r1")
    assert results[0].new_key and new.subject == old.subject and new.serial_number != old.serial_number
    assert new.public_key() == store.private_key("r1").public_key() != old.public_key()
    new.verify_directly_issued_by(ca.certificate)
    assert [o.message_type for _, _, o in log][:1] == ["kur"], log


def test_the_approval_queue_bound_is_the_one_scep_and_est_share(ca, monkeypatch):
    import pki.scep.server as queue_mod

    r = CmpResponder(ca, manual_approval=True)
    r.secrets.add("1000", "secret-1000", ca.certificate.not_valid_before_utc + timedelta(minutes=1))
    monkeypatch.setattr(queue_mod, "MAX_PENDING", 0)
    try:
        with pytest.raises(CmpError, match="systemUnavail.*0 requests already await approval"):
            enroll(r)
        assert r.queue.pending() == []
    finally:
        r.close()
