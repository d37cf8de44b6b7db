"""Raw HTTP fuzzing of ``python -m pki ca serve`` over a socket: a seeded mutator of well-formed requests.

Whatever arrives, the server stays up, answers within its request deadline with a status line (never 500) or
closes, and still serves every well-formed request afterwards. The CI budget is ``FUZZ_CASES``;
``ESPRESSO_FUZZ_EXAMPLES=N`` runs N cases instead (and ``ESPRESSO_FUZZ_SEED`` another seed) by hand.
"""
from __future__ import annotations

import base64
import collections
import os
import random
import re
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.ocsp import build_request
from tests.pki.http_helpers import Served, exchange, status

FUZZ_CASES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("ESPRESSO_FUZZ_SEED", "9112"))
#: The server's deadline in this test; a case must be over within it plus this slack.
DEADLINE, SLACK = 1.0, 1.5
#: What the server may answer; 500 (an internal error) or anything else is a failure.
ALLOWED = {200, 400, 404, 408, 411, 413, 414, 431, 501, 505}

_NASTY_HEADERS = [
    b"Content-Length: 0", b"Content-Length: 5", b"Content-Length: 99999999", b"Content-Length: -1",
    b"Content-Length: 1, 1", b"Content-Length : 3", b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity",
    b"Host: a", b"Host:", b" folded continuation", b"\tfolded", b"Expect: 100-continue", b"Connection: keep-alive",
    b"X-Long: " + b"L" * 40000, b"Content-Type: application/ocsp-request", b": no name", b"NoColon",
    b"Content-Length: \xd9\xa5", b"X: \x00\x01\x7f\xff",
]


def _seeds(ocsp_request: bytes) -> list[bytes]:
    b64 = urllib.parse.quote(base64.b64encode(ocsp_request).decode(), safe="")
    return [
        b"GET /crl HTTP/1.0\r\n\r\n",
        b"GET /crl HTTP/1.1\r\nHost: ca.example\r\nUser-Agent: fuzz\r\n\r\n",
        b"GET /scep?operation=GetCACaps HTTP/1.0\r\n\r\n",
        b"GET /scep?operation=GetCACert&message=ca HTTP/1.1\r\nHost: ca\r\n\r\n",
        b"POST /ocsp HTTP/1.0\r\nContent-Type: application/ocsp-request\r\nContent-Length: "
        + str(len(ocsp_request)).encode() + b"\r\n\r\n" + ocsp_request,
        f"GET /ocsp/{b64} HTTP/1.0\r\n\r\n".encode(),
        b"POST /scep?operation=PKIOperation HTTP/1.0\r\nContent-Length: 5\r\n\r\n\x30\x03\x02\x01\x00",
        b"GET /scep?operation=PKIOperation&message=MAMCAQA%3D HTTP/1.0\r\n\r\n",
    ]


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.choice([1, 1, 2, 3, 5])):
        op = rnd.randrange(10)
        pos = rnd.randrange(len(b) + 1)
        if op == 0 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op == 1:
            b[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 64)))
        elif op == 2 and b:
            del b[pos:pos + rnd.randint(1, 32)]
        elif op == 3:  # a header line, where the header section is
            end = b.find(b"\r\n")
            at = end + 2 if end >= 0 else len(b)
            b[at:at] = rnd.choice(_NASTY_HEADERS) + b"\r\n"
        elif op == 4:
            lines = bytes(b).split(b"\r\n")
            i = rnd.randrange(len(lines))
            lines.insert(i, lines[i])
            b = bytearray(b"\r\n".join(lines))
        elif op == 5:
            b = b[:pos]
        elif op == 6:
            b = bytearray(bytes(b).replace(b"\r\n", rnd.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"])))
        elif op == 7:
            sp = b.find(b" ")
            b[:max(sp, 0)] = rnd.choice([b"PUT", b"HEAD", b"OPTIONS", b"get", b"CONNECT", b"G\x00T", b"", b"POST"])
        elif op == 8:
            b = b + bytes(b)  # a second request behind the first (pipelining, smuggling)
        else:
            sp = b.find(b" ")
            b[sp + 1:sp + 1] = rnd.choice([b"%", b"%00", b"%zz", b"?operation=", b"\xff\xfe", b"/" * 300, b"../"])
    return bytes(b[:200_000])


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzhttp")
    ca = CertificateAuthority.init(tmp / "ca", "CN=Fuzz HTTP CA", key_type="rsa", key_size=2048)
    key = rsa.generate_private_key(65537, 2048)
    leaf = ca.issue(build_csr(key, "CN=r1", SubjectAltNames.build(dns=["r1.example.net"])))
    request = build_request(leaf, ca.certificate)
    ca.close()
    srv = Served(tmp, tmp / "ca", "--no-challenge", "--request-timeout", str(DEADLINE))
    yield srv, request
    srv.stop()


def test_fuzz_raw_requests_never_kill_or_hang_the_server(fuzz_server):
    srv, ocsp_request = fuzz_server
    seeds = _seeds(ocsp_request)
    rnd = random.Random(SEED)
    seen: collections.Counter[int] = collections.Counter()
    for case in range(FUZZ_CASES):
        raw = _mutate(rnd, rnd.choice(seeds))
        half_close = case % 100 != 99  # now and then the client just stops: the deadline must end it
        t0 = time.monotonic()
        answer = exchange(srv.port, raw, timeout=DEADLINE + SLACK + 1, half_close=half_close)
        took = time.monotonic() - t0
        code = status(answer)
        seen[code] += 1
        assert took < DEADLINE + SLACK, (case, raw[:300], took)
        assert code in ALLOWED or (answer == b"" and raw == b""), (case, raw[:300], answer[:300])
        assert srv.alive(), (case, raw[:300], srv.stderr())
    # afterwards every well-formed request is still answered
    for raw in seeds:
        answer = exchange(srv.port, raw)
        assert status(answer) in (200, 400), (raw[:100], answer[:200])  # the PKIOperation seeds are not pkiMessages
    assert status(exchange(srv.port, seeds[0])) == 200 and status(exchange(srv.port, seeds[4])) == 200
    time.sleep(0.2)
    log, err = srv.log(), srv.stderr()
    assert "http=500" not in log and "internal error" not in err and "Traceback" not in err, err[-2000:]
    assert [line for line in log.splitlines() if not re.match(r"\S+Z client=\S+ op=\S+ ", line)] == []
    print(f"\n{FUZZ_CASES} raw requests (seed {SEED}), HTTP status -> count: {dict(sorted(seen.items()))}")
