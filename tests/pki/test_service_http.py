"""``python -m pki ca serve`` as its own process, as deployed: slow and hostile HTTP clients, request framing
(RFC 9112 request smuggling rules), the access log and the start-up check of what the CA key can serve."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
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

REPO = Path(__file__).resolve().parents[2]
CHALLENGE = "pw-Zq8Tr4Xv-never-logged"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A client socket from ``source`` (any 127/8 address is local on Linux: a second client address)."""
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _exchange(port: int, raw: bytes, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send ``raw``, half-close, read the whole answer (bounded by ``timeout``)."""
    with _connect(port, source, timeout) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server may answer and close before it read everything
            pass
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
        return data


def _status(answer: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(m.group(1)) if m else 0


class Served:
    """A ``ca serve`` child process; its stderr and log file are files, so nothing blocks on a full pipe."""

    def __init__(self, tmp: Path, ca_dir: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = tmp / "access.log"
        self.err_file = tmp / "serve.stderr"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("ESPRESSO_PKI_PASSPHRASE", None)
        self._err = open(self.err_file, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pki", "ca", "--ca", str(ca_dir), "serve", "--port", str(self.port),
             "--log-file", str(self.log_file), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=self._err)
        for _ in range(150):  # bounded: at most ~15 s
            if self.proc.poll() is not None:
                break
            try:
                if _status(_exchange(self.port, b"GET /crl HTTP/1.0\r\n\r\n", timeout=2)) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"ca serve did not start: {self.stderr()}")

    def stderr(self) -> str:
        return self.err_file.read_text(errors="replace")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._err.close()


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
                attackers.append(_connect(srv.port, timeout=2))
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
            answer = _exchange(srv.port, b"GET /crl HTTP/1.0\r\nHost: ca\r\n\r\n", source="127.0.0.2", timeout=5)
            answered.append((_status(answer), time.monotonic() - t0))
        assert all(status == 200 and took < 2.0 for status, took in answered), answered
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
                idle.append(_connect(srv.port, timeout=2))
            except OSError:
                pass
        time.sleep(0.3)
        t0 = time.monotonic()
        answer = _exchange(srv.port, b"GET /crl HTTP/1.0\r\n\r\n", source="127.0.0.2", timeout=5)
        took = time.monotonic() - t0
        assert _status(answer) == 200 and took < 2.0, (answer[:80], took)
        x509.load_der_x509_crl(answer.split(b"\r\n\r\n", 1)[1])
    finally:
        for s in idle:
            s.close()
        srv.stop()


def test_dribbling_connection_is_cut_at_the_request_deadline(tmp_path, rsa_ca):
    """The deadline covers the whole request: a byte every 0.2 s does not extend it (the old timeout was per read)."""
    srv = Served(tmp_path, rsa_ca, "--no-challenge", "--request-timeout", "2")
    try:
        with _connect(srv.port, timeout=1) as s:
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
    ("two Host headers", b"GET /crl HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("oversize body", _POST + b"Content-Length: 100000000\r\n\r\n", 413),
    ("request line too long", b"GET /" + b"a" * 20000 + b" HTTP/1.0\r\n\r\n", 414),
    ("header section too large", b"GET /crl HTTP/1.0\r\n" + (b"X-Pad: " + b"p" * 1000 + b"\r\n") * 40 + b"\r\n",
     431),
    ("too many header lines", b"GET /crl HTTP/1.0\r\n" + b"X: y\r\n" * 150 + b"\r\n", 431),
]


@pytest.mark.parametrize("raw,expected", [(r, e) for _, r, e in FRAMING], ids=[n for n, _, _ in FRAMING])
def test_ambiguous_or_oversize_framing_is_refused(served, raw, expected):
    answer = _exchange(served.port, raw)
    assert _status(answer) == expected, answer[:200]
    assert served.alive()


def test_well_formed_requests_still_served(served):
    assert _status(_exchange(served.port, b"GET /crl HTTP/1.1\r\nHost: ca\r\n\r\n")) == 200
    assert _status(_exchange(served.port, b"GET /crl HTTP/1.0\r\n\r\n")) == 200
    caps = _exchange(served.port, b"GET /scep?operation=GetCACaps HTTP/1.0\r\n\r\n")
    assert _status(caps) == 200 and b"POSTPKIOperation" in caps


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
    assert _status(_exchange(served.port, b"GET /nowhere HTTP/1.0\r\n\r\n")) == 404
    time.sleep(0.2)
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
    assert _status(_exchange(served.port, raw)) == 400
    time.sleep(0.2)
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
        caps = _exchange(srv.port, b"GET /scep?operation=GetCACaps HTTP/1.0\r\n\r\n")
        assert _status(caps) == 501 and b"SCEP needs an RSA CA key" in caps, caps
        assert b"POSTPKIOperation" not in caps
        post = _exchange(srv.port, b"POST /scep?operation=PKIOperation HTTP/1.0\r\nContent-Length: 2\r\n\r\n\x30\x00")
        assert _status(post) == 501 and b"SCEP needs an RSA CA key" in post
        assert _status(_exchange(srv.port, b"GET /crl HTTP/1.0\r\n\r\n")) == 200
        resp = http_request("POST", srv.url + "/ocsp", build_request(leaf, issuer), "application/ocsp-request")
        assert x509_ocsp.load_der_ocsp_response(resp.body).certificate_status is x509_ocsp.OCSPCertStatus.GOOD
    finally:
        srv.stop()
    err = srv.stderr()
    scep_lines = [line for line in err.splitlines() if "SCEP" in line and "RSA" in line]
    assert len(scep_lines) == 1 and "ECDSA" in scep_lines[0] and "CRL and OCSP" in scep_lines[0], err
    assert "Traceback" not in err
