"""The EST responder under hostile input: mutated bodies, Authorization headers and client certificates.

:meth:`pki.est.server.EstResponder.respond` is what a client reaches on the CA worker thread; whatever arrives, it
answers (never raises), with a status from a fixed set, and issues nothing that was not a valid, authenticated
request. The HTTP and TLS layers in front of it are the service's (fuzzed in test_fuzz_http.py). The CI budget
is ``FUZZ_CASES``; ``ESPRESSO_FUZZ_EXAMPLES=N`` runs N cases instead (``ESPRESSO_FUZZ_SEED`` another seed).
"""
from __future__ import annotations

import base64
import os
import random

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.est.server import EstRequest, EstResponder
from pki.keys import generate_private_key, parse_key_spec

FUZZ_CASES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("ESPRESSO_FUZZ_SEED", "7030"))
_SPKI = PublicFormat.SubjectPublicKeyInfo
ALLOWED = {200, 202, 204, 400, 401, 403, 404, 405, 501, 503}
PASSWORD = "fuzz-s3cret"


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.choice([1, 1, 2, 4])):
        op = rnd.randrange(6)
        if op == 0 and b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op == 1 and b:
            del b[rnd.randrange(len(b)):][: rnd.randrange(1, 40)]
        elif op == 2:
            b[rnd.randrange(len(b) + 1):0] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 8)))
        elif op == 3 and b:
            cut = rnd.randrange(len(b))
            b = b[:cut]
        elif op == 4:
            b = b + b[: rnd.randrange(len(b) + 1)]
        else:
            try:
                b = bytearray(base64.b64decode(bytes(b)) if rnd.random() < 0.5 else base64.b64encode(b))
            except ValueError:  # binascii.Error: not base64 after all
                b = bytearray(base64.b64encode(b))
    return bytes(b)


@pytest.mark.parametrize("manual", [False, True])
def test_the_est_responder_answers_everything_and_issues_only_valid_requests(tmp_path, manual):
    ca = CertificateAuthority.init(tmp_path / "ca", "CN=Fuzz CA", key_type="ecdsa")
    responder = EstResponder(ca, challenge=PASSWORD, manual_approval=manual)
    try:
        key = generate_private_key(parse_key_spec("ecdsa", 256))
        csr_der = build_csr(key, "CN=r1,O=espresso", SubjectAltNames.build(dns=["r1.example"])).public_bytes(
            Encoding.DER)
        cert_key = generate_private_key(parse_key_spec("ecdsa", 256))
        client_der = ca.issue(build_csr(cert_key, "CN=r1,O=espresso")).public_bytes(Encoding.DER)
        good_auth = "Basic " + base64.b64encode(f"r1:{PASSWORD}".encode()).decode()
        bodies = [base64.b64encode(csr_der), csr_der, b""]
        auths = [good_auth, "Basic " + base64.b64encode(b"r1:guess").decode(), "Bearer x", "Basic", None]
        rnd = random.Random(SEED)
        issued_before = len(ca.records())
        statuses = set()
        for _ in range(FUZZ_CASES):
            op = rnd.choice(["simpleenroll", "simplereenroll", "cacerts", "csrattrs", "fullcmc", "x"])
            body = rnd.choice(bodies)
            body = _mutate(rnd, body) if rnd.random() < 0.9 else body
            auth = rnd.choice(auths)
            if auth is not None and rnd.random() < 0.3:
                auth = _mutate(rnd, auth.encode()).decode("latin-1")
            peer = rnd.choice([None, client_der, _mutate(rnd, client_der)])
            reply = responder.respond(EstRequest(op, rnd.choice(["POST", "GET"]), body, auth, peer))
            assert reply.status in ALLOWED, (op, reply)
            statuses.add(reply.status)
            if reply.status == 200 and op in ("simpleenroll", "simplereenroll"):
                assert reply.serial is not None and reply.outcome == "issued"
        # whatever was issued came from the one valid request (or a byte-identical re-encoding of it)
        for rec in ca.records()[issued_before:]:
            assert rec.certificate.public_key().public_bytes(Encoding.DER, _SPKI) == \
                key.public_key().public_bytes(Encoding.DER, _SPKI)
        assert {400, 401} <= statuses
    finally:
        responder.close()
        ca.close()
