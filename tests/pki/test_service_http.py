"""``python -m pki ca serve`` as its own process, as deployed: slow and hostile HTTP clients, request framing
(RFC 9112 request smuggling rules), the access log and the start-up check of what the CA key can serve."""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp as x509_ocsp

from pki.ca import CertificateAuthority
from pki.certs import SubjectAltNames
from pki.csr import build_csr
from pki.fetch import http_request
from pki.ocsp import build_request
from pki.scep.client import enroll, get_ca_certs
from pki.scep.errors import ScepFailure
from tests.pki.http_helpers import Served, connect, exchange, status

CHALLENGE = "pw-Zq8Tr4Xv-never-logged"


@pytest.fixture(scope="module")
def rsa_ca(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("httpca") / "ca"
    CertificateAuthority.init(d, "CN=HTTP CA,O=espresso", key_type="rsa", key_size=2048).close()
    return d


@pytest.fixture(scope="module")
def served(tmp_path_factory, rsa_ca):
    """One long-running server for the tests that do not depend on timing (framing, logging)."""
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "challenge").write_text(CHALLENGE + "\n")
    srv = Served(tmp, rsa_ca, "--challenge-file", str(tmp / "challenge"))
    yield srv
    srv.stop()


# ------------------------------------------------------------------------------- slow and idle clients


def test_slowloris_from_one_address_does_not_starve_another(tmp_path, rsa_ca):
    """64 connections from 127.0.0.1 dribbling a byte a second; a CRL download from 127.0.0.2 is answered."""
    srv = Served(tmp_path, rsa_ca, "--no-challenge", "--request-timeout", "30")
    attackers: list[socket.socket] = []
    try:
        for _ in range(64):
            try:
                attackers.append(connect(srv.port, timeout=2))
            except OSError:
                pass
        for s in attackers:
            try:
                s.send(b"G")
            except OSError:
                pass
        answered = []
        for i in range(3):  # three rounds of dribbling, one legitimate request in each
            time.sleep(1.0)
            for s in attackers:
                try:
                    s.send(b"E")
                except OSError:
                    pass
            t0 = time.monotonic()
            answer = exchange(srv.port, b"GET /crl HTTP/1.0\r\nHost: ca\r\n\r\n", source="127.0.0.2", timeout=5)
            answered.append((status(answer), time.monotonic() - t0))
        assert all(code == 200 and took < 2.0 for code, took in answered), answered
        assert srv.alive()
    finally:
        for s in attackers:
            s.close()
        srv.stop()
    log = srv.log()
    assert re.search(r"client=127\.0\.0\.1:\d+ op=connect outcome=refused reason=\"[^\"]*per client", log), log
    assert re.search(r"client=127\.0\.0\.2:\d+ op=crl outcome=ok", log), log


def test_idle_connections_do_not_lock_out_another_client(tmp_path, rsa_ca):
    srv = Served(tmp_path, rsa_ca, "--no-challenge")  # the default (10 s) request deadline
    idle: list[socket.socket] = []
    try:
        for _ in range(70):
            try:
                idle.append(connect(srv.port, timeout=2))
            except OSError:
                pass
        time.sleep(0.3)
        t0 = time.monotonic()
        answer = exchange(srv.port, b"GET /crl HTTP/1.0\r\n\r\n", source="127.0.0.2", timeout=5)
        took = time.monotonic() - t0
        assert status(answer) == 200 and took < 2.0, (answer[:80], took)
        x509.load_der_x509_crl(answer.split(b"\r\n\r\n", 1)[1])
    finally:
        for s in idle:
            s.close()
        srv.stop()


def test_dribbling_connection_is_cut_at_the_request_deadline(tmp_path, rsa_ca):
    """The deadline covers the whole request: a byte every 0.2 s does not extend it (the old timeout was per read)."""
    srv = Served(tmp_path, rsa_ca, "--no-challenge", "--request-timeout", "2")
    try:
        with connect(srv.port, timeout=1) as s:
            t0 = time.monotonic()
            s.sendall(b"GET /crl HTTP/1.0\r\n")
            answer, closed_after = b"", None
            while time.monotonic() - t0 < 8:  # bounded
                try:
                    s.send(b"X")
                except OSError:
                    closed_after = time.monotonic() - t0
                    break
                try:
                    s.settimeout(0.2)
                    chunk = s.recv(4096)
                    if not chunk:
                        closed_after = time.monotonic() - t0
                        break
                    answer += chunk
                except TimeoutError:
                    pass
                except OSError:
                    closed_after = time.monotonic() - t0
                    break
        assert closed_after is not None and 1.5 < closed_after < 3.5, closed_after
        assert answer.startswith(b"HTTP/1.0 408"), answer
        assert srv.alive()
    finally:
        srv.stop()
    assert re.search(r"client=127\.0\.0\.1:\d+ op=- outcome=timeout reason=\"request not complete", srv.log())


# ------------------------------------------------------------------------------- framing (RFC 9112)

_POST = b"POST /ocsp HTTP/1.1\r\nHost: ca\r\nContent-Type: application/ocsp-request\r\n"
FRAMING = [
    # (name, raw request, expected status)
    ("duplicate Content-Length", _POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("conflicting Content-Length", _POST + b"Content-Length: 5\r\nContent-Length: 2\r\n\r\nhello", 400),
    ("Content-Length list", _POST + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("Content-Length with Transfer-Encoding",
     _POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding alone", _POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
    ("negative Content-Length", _POST + b"Content-Length: -1\r\n\r\n", 400),
    ("signed Content-Length", _POST + b"Content-Length: +5\r\n\r\nhello", 400),
    ("hex Content-Length", _POST + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("non-ASCII digit Content-Length", _POST + "Content-Length: \u0665\r\n\r\nhello".encode(), 400),
    ("Content-Length with inner space", _POST + b"Content-Length: 1 2\r\n\r\nhello", 400),
    ("Content-Length on GET", b"GET /crl HTTP/1.0\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    ("space before colon", _POST + b"Content-Length : 5\r\n\r\nhello", 400),
    ("HTTP/0.9 request (an answer without a status line)", b"GET /crl\r\n", 400),
    ("malformed HTTP version (stdlib answered without a status line)", b"GET /crl HTTP/1.0\x05\r\n\r\n", 400),
    ("two Host headers", b"GET /crl HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("oversize body", _POST + b"Content-Length: 100000000\r\n\r\n", 413),
    ("request line too long", b"GET /" + b"a" * 20000 + b" HTTP/1.0\r\n\r\n", 414),
    ("header section too large", b"GET /crl HTTP/1.0\r\n" + (b"X-Pad: " + b"p" * 1000 + b"\r\n") * 40 + b"\r\n",
     431),
    ("too many header lines", b"GET /crl HTTP/1.0\r\n" + b"X: y\r\n" * 150 + b"\r\n", 431),
]


@pytest.mark.parametrize("raw,expected", [(r, e) for _, r, e in FRAMING], ids=[n for n, _, _ in FRAMING])
def test_ambiguous_or_oversize_framing_is_refused(served, raw, expected):
    answer = exchange(served.port, raw)
    assert status(answer) == expected, answer[:200]
    assert served.alive()


def test_well_formed_requests_still_served(served):
    assert status(exchange(served.port, b"GET /crl HTTP/1.1\r\nHost: ca\r\n\r\n")) == 200
    assert status(exchange(served.port, b"GET /crl HTTP/1.0\r\n\r\n")) == 200
    caps = exchange(served.port, b"GET /scep?operation=GetCACaps HTTP/1.0\r\n\r\n")
    assert status(caps) == 200 and b"POSTPKIOperation" in caps


# ------------------------------------------------------------------------------- the access log


def _csr(key, challenge):
    return build_csr(key, "CN=router-log,O=espresso", SubjectAltNames.build(dns=["r.example.net"]), challenge)


def test_access_log_one_greppable_line_per_request_without_secrets(served):
    key = rsa.generate_private_key(65537, 2048)
    url = served.url + "/scep"
    ca_certs = get_ca_certs(url)
    with pytest.raises(ScepFailure):
        enroll(url, key, _csr(key, "wrong-" + CHALLENGE), ca_certs, retry_count=0)
    cert = enroll(url, key, _csr(key, CHALLENGE), ca_certs, retry_count=0)
    req = build_request(cert, ca_certs[0])
    resp = http_request("POST", served.url + "/ocsp", req, "application/ocsp-request")
    assert x509_ocsp.load_der_ocsp_response(resp.body).certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    assert status(exchange(served.port, b"GET /nowhere HTTP/1.0\r\n\r\n")) == 404
    served.wait_log(r"op=- outcome=refused reason=\"not found\"")
    log = served.log()
    lines = log.splitlines()
    ts = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"
    assert all(re.match(ts + r" client=\S+ op=\S+ ", line) for line in lines), log
    tid = r"tid=[0-9A-Fa-f]+"
    assert re.search(r"client=127\.0\.0\.1:\d+ op=scep\.GetCACert outcome=ok", log), log
    assert re.search(r"op=scep\.PKIOperation msg=PKCSReq " + tid + r" outcome=refused failinfo=badRequest "
                     r"reason=\"wrong or missing challenge password\"", log), log
    assert re.search(r"op=scep\.PKIOperation msg=PKCSReq " + tid + f" outcome=issued serial={cert.serial_number:x}",
                     log), log
    assert re.search(f"op=ocsp outcome=ok serial={cert.serial_number:x} status=good", log), log
    assert re.search(r"op=- outcome=refused reason=\"not found\" http=404", log), log
    # never a secret: neither the right nor the wrong challenge password, nor request bodies
    assert CHALLENGE not in log and "never-logged" not in log
    assert "BEGIN" not in log


def test_log_lines_cannot_be_forged_by_a_client(served):
    raw = b"GET /scep?operation=Get%0a2026-01-01T00:00:00Z%20client=evil%20op=crl%20outcome=ok HTTP/1.0\r\n\r\n"
    assert status(exchange(served.port, raw)) == 400
    served.wait_log(r"unsupported SCEP operation")
    assert all(re.match(r"\S+ client=127\.0\.0\.\d:\d+ ", line) for line in served.log().splitlines())


# ------------------------------------------------------------------------------- what the CA key can serve


def test_ecdsa_ca_says_at_start_that_scep_is_off_and_serves_crl_and_ocsp(tmp_path):
    CertificateAuthority.init(tmp_path / "ec", "CN=EC CA", key_type="ecdsa").close()
    ca = CertificateAuthority.open(tmp_path / "ec")
    key = rsa.generate_private_key(65537, 2048)
    leaf = ca.issue(build_csr(key, "CN=r1", SubjectAltNames.build(dns=["r1.example.net"])))
    issuer = ca.certificate
    ca.close()
    srv = Served(tmp_path, tmp_path / "ec", "--no-challenge")
    try:
        caps = exchange(srv.port, b"GET /scep?operation=GetCACaps HTTP/1.0\r\n\r\n")
        assert status(caps) == 501 and b"SCEP needs an RSA CA key" in caps, caps
        assert b"POSTPKIOperation" not in caps
        post = exchange(srv.port, b"POST /scep?operation=PKIOperation HTTP/1.0\r\nContent-Length: 2\r\n\r\n\x30\x00")
        assert status(post) == 501 and b"SCEP needs an RSA CA key" in post
        assert status(exchange(srv.port, b"GET /crl HTTP/1.0\r\n\r\n")) == 200
        resp = http_request("POST", srv.url + "/ocsp", build_request(leaf, issuer), "application/ocsp-request")
        assert x509_ocsp.load_der_ocsp_response(resp.body).certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    finally:
        srv.stop()
    err = srv.stderr()
    scep_lines = [line for line in err.splitlines() if "SCEP" in line and "RSA" in line]
    assert len(scep_lines) == 1 and "ECDSA" in scep_lines[0] and "CRL and OCSP" in scep_lines[0], err
    assert "Traceback" not in err


def test_refusal_and_timeout_lines_are_rate_limited_then_counted(caplog):
    """A flood of refused connections writes ``burst`` lines per window, then one line with the count."""
    import logging

    from pki.service import _AccessLog

    now = [0.0]
    access = _AccessLog(burst=3, window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="pki.service.access"):
        for i in range(100):
            access.write(("192.0.2.1", 1000 + i), {"op": "connect", "outcome": "refused", "reason": "cap"},
                         limited=True)
        access.write(("192.0.2.2", 80), {"op": "crl", "outcome": "ok", "http": 200})  # never limited
        now[0] = 10.5
        access.write(("192.0.2.1", 2000), {"op": "-", "outcome": "timeout", "reason": "late"}, limited=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "pki.service.access"]
    assert lines[:3] == [f'client=192.0.2.1:{1000 + i} op=connect outcome=refused reason="cap"' for i in range(3)]
    assert lines[3] == "client=192.0.2.2:80 op=crl outcome=ok http=200"
    assert lines[4].startswith("client=- op=- outcome=suppressed count=97 ")
    assert lines[5] == 'client=192.0.2.1:2000 op=- outcome=timeout reason="late"'
    assert len(lines) == 6


@pytest.mark.parametrize("value,shown", [
    ("plain-token_1.2", "plain-token_1.2"),
    ("two words", '"two words"'),
    ('quote " and \\ backslash', '"quote \\" and \\\\ backslash"'),
    ("line\nbreak\r\x00", '"line\\x0abreak\\x0d\\x00"'),
    ("\u0665", '"\\u0665"'),
])
def test_log_values_cannot_break_a_line(value, shown):
    from pki.service import _access_line

    assert _access_line(("127.0.0.1", 1), {"op": value}) == f"client=127.0.0.1:1 op={shown}"


def test_access_log_pending_then_issued_after_approval(tmp_path, rsa_ca):
    """--manual-approval: the PKCSReq line says pending, the CertPoll after ``ca approve`` says issued."""
    from pki.scep.errors import ScepPendingTimeout

    srv = Served(tmp_path, rsa_ca, "--manual-approval")
    try:
        key = rsa.generate_private_key(65537, 2048)
        url = srv.url + "/scep"
        ca_certs = get_ca_certs(url)
        with pytest.raises(ScepPendingTimeout):
            enroll(url, key, _csr(key, None), ca_certs, retry_count=0)
        tid = srv.wait_log(r"op=scep\.PKIOperation msg=PKCSReq tid=(\w+) outcome=pending http=200")
        assert tid, srv.log()
        from pki.service import approve  # what 'ca approve' does, beside the running service

        cert = approve(rsa_ca, tid.group(1))
        assert enroll(url, key, _csr(key, None), ca_certs, retry_count=1, retry_interval=0) == cert
        # the client resends its PKCSReq (RFC 8894 4.3: same transaction) or polls: either way, issued
        issued = f"msg=(PKCSReq|CertPoll) tid={tid.group(1)} outcome=issued serial={cert.serial_number:x} "
        assert srv.wait_log(issued), srv.log()
    finally:
        srv.stop()


def test_global_cap_holds_when_several_addresses_fill_it(tmp_path, rsa_ca):
    """Two addresses within their own limit fill the total: a third gets 503, logged with the global reason."""
    srv = Served(tmp_path, rsa_ca, "--no-challenge", "--max-connections", "4", "--max-per-client", "2",
                 "--request-timeout", "60")  # the held connections must outlast a slow, loaded test machine
    # The server admits connections one at a time in accept order and answers a refused one at once, so once the
    # third address has its answer, every held connection was admitted or has a 503 waiting. A slot may still be
    # taken by the start-up probe's connection for a moment after its answer (its thread releases it last): then a
    # held connection is the one refused, and the attempt is repeated (bounded).
    for _attempt in range(10):
        held = []
        try:
            for source in ("127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"):
                held.append(connect(srv.port, source, timeout=2))
            third = status(exchange(srv.port, b"GET /crl HTTP/1.0\r\n\r\n", source="127.0.0.3"))
            refused_held = 0
            for s in held:
                s.setblocking(False)
                try:
                    refused_held += s.recv(64).startswith(b"HTTP/1.0 503")
                except BlockingIOError:
                    pass
        finally:
            for s in held:
                s.close()
        if not refused_held:
            assert third == 503
            break
        time.sleep(0.2)
    else:
        pytest.fail("a held connection was refused in every attempt")
    try:
        for _ in range(50):  # slots come back once those connections are gone (bounded wait)
            if status(exchange(srv.port, b"GET /crl HTTP/1.0\r\n\r\n", source="127.0.0.3")) == 200:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the service did not recover")
        assert srv.wait_log(r"client=127\.0\.0\.3:\d+ op=connect outcome=refused reason=\"4 connections open, "
                            r"the limit for all clients\" http=503")
    finally:
        srv.stop()
