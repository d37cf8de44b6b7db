"""pki.fetch against a scripted HTTP server on 127.0.0.1: limits, timeouts, errors, CRL parsing."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pki.fetch import FetchError, fetch_crl, http_get, http_post, http_request

ROUTES: dict[str, tuple[int, str, bytes]] = {}
HANG = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path == "/hang":
            HANG.wait(10)  # bounded: released by the fixture
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        if self.path == "/liar":  # announces a small body, sends a big one
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 5000)
            return
        status, ctype, body = ROUTES.get(self.path.split("?")[0], (404, "text/plain", b"missing"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        reply = self.headers.get("Content-Type", "").encode() + b"|" + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        HANG.set()
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=10)


def _crl() -> x509.CertificateRevocationList:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CRL CA")]))
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_get_and_post(server):
    ROUTES["/hello"] = (200, "text/plain", b"hello")
    assert http_get(server + "/hello") == b"hello"
    resp = http_request("GET", server + "/hello")
    assert (resp.status, resp.content_type) == (200, "text/plain")
    assert http_post(server + "/echo", b"body", "application/x-test") == b"application/x-test|body"


def test_http_error_status(server):
    with pytest.raises(FetchError) as exc:
        http_get(server + "/absent")
    assert exc.value.status == 404 and "HTTP 404" in str(exc.value) and exc.value.url.endswith("/absent")


def test_size_limit_by_content_length(server):
    ROUTES["/big"] = (200, "application/octet-stream", b"a" * 2000)
    with pytest.raises(FetchError, match="exceeds the 1000-byte limit"):
        http_get(server + "/big", max_size=1000)
    assert len(http_get(server + "/big", max_size=2000)) == 2000


def test_size_limit_without_content_length(server):
    with pytest.raises(FetchError, match="exceeds"):
        http_get(server + "/liar", max_size=1000)


def test_timeout(server):
    with pytest.raises(FetchError, match="timed out|unreachable"):
        http_get(server + "/hang", timeout=0.5)


def test_redirect_refused(server):
    with pytest.raises(FetchError, match="redirect"):
        http_get(server + "/redirect")


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.net/x.crl", "http:///nohost", "ldap://x/y"]
)
def test_only_http_urls(url):
    with pytest.raises(FetchError, match="only http"):
        http_get(url)


def test_unreachable():
    with pytest.raises(FetchError, match="unreachable"):
        http_get("http://127.0.0.1:1/x", timeout=2)


def test_fetch_crl_der_and_pem(server):
    crl = _crl()
    ROUTES["/ca.crl"] = (200, "application/pkix-crl", crl.public_bytes(Encoding.DER))
    ROUTES["/ca.pem.crl"] = (200, "application/x-pem-file", crl.public_bytes(Encoding.PEM))
    assert fetch_crl(server + "/ca.crl") == crl
    assert fetch_crl(server + "/ca.pem.crl") == crl


def test_fetch_crl_garbage(server):
    ROUTES["/bad.crl"] = (200, "application/pkix-crl", b"\x30\x03\x02\x01\x01")
    with pytest.raises(FetchError, match="not a CRL"):
        fetch_crl(server + "/bad.crl")


def test_get_ca_certs_garbage_answers(server):
    """A SCEP 'CA' answering GetCACert with junk: a ScepError naming the URL, never a stray exception."""
    from pki.scep.client import get_ca_certs
    from pki.scep.errors import ScepError

    cases = {
        "/junk1": (200, "application/x-x509-ca-cert", b"\x30\x03\x02\x01\x01"),
        "/junk2": (200, "application/x-x509-ca-ra-cert", b"\x30\x80garbage"),
        "/junk3": (200, "text/html", b"<html>login</html>"),
        "/junk4": (200, "application/x-x509-ca-ra-cert", b""),
    }
    for path, answer in cases.items():
        ROUTES[path] = answer
        with pytest.raises(ScepError, match="GetCACert"):
            get_ca_certs(server + path)
