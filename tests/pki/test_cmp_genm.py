"""CMP genm for the CA certificates (RFC 9483 4.3.1, id-it-caCerts): JUNOS ``ca-certificate enroll`` over CMPv2.

In memory (client and responder joined by a function) for the rules each side enforces and for hostile
answers; then the CLI against ``ca serve`` as its own process. OpenSSL 3.0's ``cmp -infotype`` knows no
caCerts (it takes short names only, and caCerts came with 3.2), so there is no oracle here.

The fuzz budget is ``FUZZ_CASES``; ``ESPRESSO_FUZZ_EXAMPLES=N`` (and ``ESPRESSO_FUZZ_SEED``) run more by hand."""
from __future__ import annotations

import random
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pki.ca import CertificateAuthority
from pki.certs import fingerprint
from pki.cmp import client
from pki.cmp import messages as m
from pki.cmp.messages import CmpError
from pki.cmp.server import CmpResponder
from pki.store import Store
from tests.pki.cmp_helpers import FUZZ_CASES, URL, fuzz_seed, mutate, wire
from tests.pki.conftest import raw_cert
from tests.pki.test_verbs import pki, served_ca  # noqa: F401 - fixtures

SEED = fuzz_seed(9483)


@pytest.fixture(params=["ecdsa", "ed25519", "rsa"])
def cas(request, tmp_path):
    """A root and an intermediate CA of one key type; the intermediate answers CMP."""
    root = CertificateAuthority.init(tmp_path / "root", "CN=Genm Root", key_type=request.param)
    sub = CertificateAuthority.init(tmp_path / "sub", "CN=Genm Sub", parent=root, key_type=request.param)
    r = CmpResponder(sub)
    r.secrets.add("77", "secret-0077", sub.certificate.not_valid_before_utc + timedelta(minutes=1))
    yield root, sub, r
    r.close()
    sub.close()
    root.close()


def _genm(*oids: str, protection=None, extra=()) -> bytes:
    def fill(body):
        for oid in oids:
            m.append_itav(body, oid)
    return m.build_message(body_type="genm", fill_body=fill, sender=None, recipient=None, transaction_id=b"g" * 16,
                           sender_nonce=b"n" * 16, protection=protection, extra_certs=list(extra))


def test_unprotected_and_pbm_genm_get_the_chain_in_a_signed_genp(cas):
    root, sub, r = cas
    log: list = []
    assert client.get_ca_certs(URL, transport=wire(r, log)) == [sub.certificate, root.certificate]
    assert client.get_ca_certs(URL, reference="77", secret="secret-0077", transport=wire(r, log)) \
        == [sub.certificate, root.certificate]
    for request, answer, outcome in log:
        genp = m.parse_message(answer)
        # signed by the CA key whatever protected the genm, the CA's chain first in extraCerts
        assert genp.body_type == "genp" and genp.protection_oid != m.OID_PBM
        genp.check_signature(sub.certificate)
        assert genp.extra_certs[:2] == [sub.certificate, root.certificate]
        assert (outcome.message_type, outcome.outcome) == ("genm", "caCerts")
    assert m.parse_message(log[0][0]).protection is None and m.parse_message(log[1][0]).protection_oid == m.OID_PBM
    # a genm does not spend the reference: it still enrolls
    key = ec.generate_private_key(ec.SECP256R1())
    got = client.enroll(URL, key, x509.Name.from_rfc4514_string("CN=r1"), reference="77", secret="secret-0077",
                        transport=wire(r))
    # a genm signed by a certificate the CA issued is answered too; one with a wrong MAC is refused
    answer, outcome = r.respond(_genm(m.OID_IT_CA_CERTS, protection=m.SignatureProtection(key, got.certificate),
                                      extra=[got.certificate]))
    assert m.parse_message(answer).body_type == "genp" and outcome.outcome == "caCerts"
    with pytest.raises(CmpError, match="refused the genm.*badMessageCheck.*MAC does not verify"):
        client.get_ca_certs(URL, reference="77", secret="wrong-secret", transport=wire(r))


@pytest.mark.parametrize("cas", ["ecdsa"], indirect=True)
def test_other_infotypes_get_a_genp_without_them(cas):
    r = cas[2]
    answer, outcome = r.respond(_genm("1.3.6.1.5.5.7.4.99", str(m.rfc9480.id_it_signKeyPairTypes)))
    genp = m.parse_message(answer)
    assert genp.body_type == "genp" and len(genp.body) == 0 and outcome.outcome == "empty"
    assert "1.3.6.1.5.5.7.4.99" in outcome.reason
    answer, outcome = r.respond(_genm("1.3.6.1.5.5.7.4.99", m.OID_IT_CA_CERTS))
    assert [str(i["infoType"]) for i in m.parse_message(answer).body] == [m.OID_IT_CA_CERTS]
    # a client asking a CA that does not offer caCerts gets a clear error
    with pytest.raises(CmpError, match="carries no caCerts"):
        client.get_ca_certs(URL, transport=lambda url, data: r.respond(_strip_itavs(data))[0])


def _strip_itavs(der: bytes) -> bytes:
    msg = m.parse_message(der)
    return m.build_message(body_type="genm", fill_body=lambda b: None, sender=None, recipient=None,
                           transaction_id=msg.transaction_id, sender_nonce=msg.sender_nonce, protection=None)


def _genp(request: bytes, certs, key, signer, extra) -> bytes:
    """A genp as a hostile or broken server would write it: ``certs`` as caCerts, signed by ``key``."""
    req = m.parse_message(request)

    def fill(rep):
        m.append_itav(rep, m.OID_IT_CA_CERTS, m.ca_certs_value(certs))
    return m.build_message(body_type="genp", fill_body=fill, sender=signer.subject.public_bytes(), recipient=None,
                           transaction_id=req.transaction_id, sender_nonce=b"s" * 16, recip_nonce=req.sender_nonce,
                           protection=m.SignatureProtection(key, signer), extra_certs=list(extra))


@pytest.mark.parametrize("cas", ["ecdsa"], indirect=True)
def test_a_genp_that_does_not_prove_itself_is_refused(cas, tmp_path):
    root, sub, r = cas
    # a flipped bit in the signature
    def tampered(url, data):
        answer = bytearray(r.respond(data)[0])
        sig = m.parse_message(bytes(answer)).protection
        i = bytes(answer).index(sig) + len(sig) - 1
        answer[i] ^= 1
        return bytes(answer)
    with pytest.raises(CmpError, match="protection does not verify"):
        client.get_ca_certs(URL, transport=tampered)
    # the real chain, signed by another CA (with or without its certificate in extraCerts)
    evil = CertificateAuthority.init(tmp_path / "evil", "CN=Genm Sub", key_type="ecdsa")
    try:
        for extra in ([evil.certificate], []):
            with pytest.raises(CmpError, match="protection does not verify"):
                client.get_ca_certs(URL, transport=lambda url, data, extra=extra: _genp(
                    data, [sub.certificate, root.certificate], evil.private_key, evil.certificate, extra))
        # a chain without its root, or with a "root" whose subject is its issuer but another key signed it
        with pytest.raises(CmpError, match="no self-signed root"):
            client.get_ca_certs(URL, transport=lambda url, data: _genp(
                data, [sub.certificate], sub.private_key, sub.certificate, [sub.certificate]))
        fake_key = ec.generate_private_key(ec.SECP256R1())
        fake_root = raw_cert("CN=Genm Root", fake_key, issuer_key=ec.generate_private_key(ec.SECP256R1()))
        with pytest.raises(CmpError, match="no self-signed root"):
            client.get_ca_certs(URL, transport=lambda url, data: _genp(
                data, [fake_root], fake_key, fake_root, [fake_root]))
        # a set with a root and a CA that does not chain to it
        other_root = raw_cert("CN=Other Root", fake_key)
        with pytest.raises(CmpError, match="CN=Genm Sub in the CA certificates does not chain to a self-signed"):
            client.get_ca_certs(URL, transport=lambda url, data: _genp(
                data, [sub.certificate, other_root], fake_key, other_root, [other_root]))
    finally:
        evil.close()
    # a self-signed certificate that is not a CA certificate
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = raw_cert("CN=Not A CA", leaf_key, ca=False)
    with pytest.raises(CmpError, match="CN=Not A CA in the CA certificates is not a CA certificate"):
        client.get_ca_certs(URL, transport=lambda url, data: _genp(data, [leaf], leaf_key, leaf, [leaf]))


@pytest.mark.parametrize("cas", ["ecdsa"], indirect=True)
def test_fuzzed_genm_always_gets_a_pkimessage_answer(cas):
    """Bit flips, truncations, insertions and length-byte edits of a genm (unprotected and PBM): every one gets a
    PKIMessage back (a genp when the change did not matter, else an error); nothing raises."""
    _, _, r = cas
    rng = random.Random(SEED)
    bases = [_genm(m.OID_IT_CA_CERTS),
             _genm(m.OID_IT_CA_CERTS, protection=m.MacProtection(b"77", b"secret-0077", iterations=100))]
    for _ in range(FUZZ_CASES):
        answer, outcome = r.respond(mutate(rng, rng.choice(bases)))
        assert m.parse_message(answer).body_type in ("error", "genp")
        assert outcome.outcome in ("refused", "caCerts", "empty")


def test_ca_certificate_enroll_over_cmpv2_asks_then_stores(pki, served_ca, tmp_path):  # noqa: F811
    """The router's verb against ``ca serve`` in its own process: fingerprint shown, "no" stores nothing, "yes"
    and --yes store the CA certificate."""
    S = ("--store", "st")
    pki(*S, "ca-profile", "add", "lab", "--protocol", "cmpv2", "--enrollment-url", f"{served_ca}/.well-known/cmp")
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.pem").read_bytes())
    ca_fp = fingerprint(ca_cert, "sha256")
    r = pki(*S, "ca-certificate", "enroll", "--ca-profile", "lab", answer="no", ok=False)
    assert r.returncode == 1 and ca_fp in r.stdout and "Do you want to load the above CA certificate?" in r.stdout
    assert "not stored (fingerprint not confirmed)" in r.stderr and r.stderr.count("\n") == 1
    assert Store(tmp_path / "st").ca_certificates("lab") == []
    r = pki(*S, "ca-certificate", "enroll", "--ca-profile", "lab", answer="yes")
    assert "CA certificate for profile lab stored." in r.stdout
    assert Store(tmp_path / "st").ca_certificates("lab") == [ca_cert]
    # a scep profile, cmpv2 for this one verb
    pki("--store", "st2", "ca-profile", "add", "lab", "--enrollment-url", f"{served_ca}/.well-known/cmp")
    r = pki("--store", "st2", "ca-certificate", "enroll", "--ca-profile", "lab", "--protocol", "cmpv2", "--yes")
    assert ca_fp in r.stdout and "Do you want" not in r.stdout and "out of band" in r.stdout
    assert Store(tmp_path / "st2").ca_certificates("lab") == [ca_cert]
    # no server there: one clear line
    pki("--store", "st3", "ca-profile", "add", "lab", "--protocol", "cmpv2", "--enrollment-url",
        "http://127.0.0.1:9/.well-known/cmp")
    r = pki("--store", "st3", "ca-certificate", "enroll", "--ca-profile", "lab", "--yes", ok=False)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
