"""The CA's HTTP service: SCEP, CMPv2, the CRL distribution point and the OCSP responder on one port (EST on a

One :class:`http.server.ThreadingHTTPServer` reads and writes HTTP; everything that touches the CA (its key,
its SQLite database) runs on a single worker thread that owns the :class:`~pki.ca.CertificateAuthority`, so
requests are serialised against the database exactly as the CLI's would be. State (issued certificates,
revocations, PENDING SCEP requests, approvals) lives in the CA directory, so a restart loses nothing.

Routes:
  ``GET|POST <any path>?operation=GetCACaps|GetCACert|PKIOperation[&message=...]``  SCEP (RFC 8894)
  ``GET /crl`` (and the path of the CA's configured CRL distribution point)        the CRL, DER
  ``POST /ocsp`` or ``POST /`` with ``application/ocsp-request``; ``GET /ocsp/<b64>`` OCSP (RFC 6960)
  ``GET|POST /.well-known/est/...`` on the TLS listener (``est_port``): EST (RFC 7030), see :mod:`pki.est.server`
  ``POST <any other path>`` with ``application/pkixcmp`` (e.g. ``/.well-known/cmp``, ``/pkix/``)  CMPv2 (RFC 6712)
A body that is too large gets 413, garbage gets 400 (SCEP) or an OCSP malformedRequest: never a crash.

Hostile clients (:class:`HttpLimits`): each connection carries one request, which must arrive whole (request
line, headers, body) within one deadline, not a timeout per read, so a byte every few seconds does not hold a
slot; connections are capped per client address and in total; framing that two parsers could read differently
(RFC 9112 section 6.3: several Content-Length fields, Content-Length beside Transfer-Encoding, a length that is
not plain digits) is refused with 400 before any body is read.

Every request gives one line on the ``pki.service.access`` logger (``client=ADDR:PORT op=... outcome=...``,
see :class:`_AccessLog`); refused connections and timeouts are rate-limited there, so a flood cannot fill a disk.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import email.utils
import io
import logging
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from pki._httpserver import (
    _access_line,  # noqa: F401 - re-exported: the access-line format is pki.service's
    _AccessLog,
    _BoundedServer,
    _client,
    _DeadlineExceeded,
    _DeadlineReader,
    _HeaderBudget,
    _HttpServer6,
)
from pki.cmp.messages import CONTENT_TYPE as _CMP_CT
from pki.cmp.messages import MAX_MESSAGE_SIZE as MAX_CMP_MESSAGE
from pki.cmp.server import CmpResponder
from pki.errors import PkiError
from pki.est.server import (
    DEFAULT_RETRY_AFTER,
    EstReply,
    EstRequest,
    EstResponder,
    est_operation,
    listener_context,
    tls_accept,
)
from pki.est.server import OPERATIONS as _EST_OPS
from pki.ocsp import DEFAULT_VALIDITY, OcspCertStatus, OcspResponder, SerialStatus
from pki.ocsp import MAX_REQUEST_SIZE as MAX_OCSP_REQUEST
from pki.outcome import RequestOutcome
from pki.scep.constants import MAX_MESSAGE_SIZE
from pki.scep.errors import ScepError, ScepFormatError
from pki.scep.server import ScepResponder, Transaction, TransactionStore

__all__ = [
    "MAX_BODY_SIZE",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "MAX_PER_CLIENT",
    "MAX_REQUEST_LINE",
    "REQUEST_TIMEOUT",
    "CaService",
    "HttpLimits",
    "approve",
    "list_pending",
    "reject",
    "serve",
]

log = logging.getLogger("pki.service")
access_log = logging.getLogger("pki.service.access")

#: Largest request body accepted on any route.
MAX_BODY_SIZE = MAX_MESSAGE_SIZE
#: Seconds a client has to send its whole request (request line, headers, body): one deadline per request.
REQUEST_TIMEOUT = 10.0
#: Seconds a request waits for the CA worker.
WORKER_TIMEOUT = 60.0
#: Connections handled at once; more are refused with 503 instead of spawning threads without bound.
MAX_CONNECTIONS = 64
#: Connections one client address may hold at once, so that one address cannot take every slot.
MAX_PER_CLIENT = 8
#: Longest request line (414 beyond): a SCEP GET carries a base64 pkiMessage in its URL.
MAX_REQUEST_LINE = 16 * 1024
#: Largest header section (431 beyond), all lines together; the standard library alone allows 100 x 64 KiB.
MAX_HEADER_BYTES = 32 * 1024

_SCEP_CT = "application/x-pki-message"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _check_delegate(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """A delegated OCSP signer must be certified by this CA for id-kp-OCSPSigning (RFC 6960 4.2.2.2)."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cert.verify_directly_issued_by(ca_cert)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        raise ValueError(
            "the OCSP signer certificate is not an id-kp-OCSPSigning certificate of this CA"
        ) from None
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise ValueError("the OCSP signer certificate lacks id-kp-OCSPSigning")


@dataclass(frozen=True)
class HttpLimits:
    """What one client may cost the service. The defaults suit a CA that routers reach over a WAN."""

    #: Seconds for the whole request to arrive; also bounds writing the answer to a client that does not read.
    request_timeout: float = REQUEST_TIMEOUT
    #: Connections open at once, all clients together (503 beyond).
    max_connections: int = MAX_CONNECTIONS
    #: Connections open at once from one client address (503 beyond).
    max_per_client: int = MAX_PER_CLIENT

    def __post_init__(self) -> None:
        if not self.request_timeout > 0:
            raise ValueError(f"request timeout must be positive, not {self.request_timeout}")
        if self.max_connections < 1 or self.max_per_client < 1:
            raise ValueError("connection limits must be at least 1")
        if self.max_per_client > self.max_connections:
            raise ValueError(f"the per-client limit ({self.max_per_client}) exceeds the total ({self.max_connections})")


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"ECDSA ({key.curve.name})"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "Ed448"
    return type(key).__name__


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(text)


class CaService:
    """SCEP + CRL + OCSP for a CA (a :class:`~pki.ca.CertificateAuthority` or its directory).

    The listening socket is bound in the constructor (so :attr:`url` is known before the CA exists, which lets
    a test or ``ca init`` put ``f"{svc.url}/crl"`` into the CA's configuration); the CA is opened by
    :meth:`start`, on the worker thread.
    """

    def __init__(
        self,
        ca: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        challenge: str | None = None,
        manual_approval: bool = False,
        passphrase: bytes | None = None,
        profile: object = None,
        ocsp_validity=DEFAULT_VALIDITY,  # type: ignore[no-untyped-def]
        ocsp_signer: tuple[x509.Certificate, Any] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        limits: HttpLimits = HttpLimits(),
        est_port: int | None = None,
        est_tls: tuple[str, str] | None = None,
        retry_after: int = DEFAULT_RETRY_AFTER,
    ) -> None:
        # a CertificateAuthority or its directory: the service opens its own instance on its worker thread
        self.ca_dir = Path(ca.path if hasattr(ca, "path") else ca)
        self.challenge = challenge
        self.manual_approval = manual_approval
        if challenge is None and not manual_approval:
            log.warning("CA service for %s: no challenge password and no manual approval: any client that reaches "
                        "it gets a certificate", self.ca_dir)
        self._passphrase = passphrase
        self._profile = profile
        self._ocsp_validity = ocsp_validity
        self._ocsp_signer = ocsp_signer
        self._clock = clock
        self.limits = limits
        #: Why SCEP is not served (the CA key cannot do it), or None; known once :meth:`start` opened the CA.
        self.scep_off_reason: str | None = None
        server_class = _HttpServer6 if ":" in host else _BoundedServer
        self._httpd = server_class((host, port), _Handler, limits, _AccessLog())
        self._httpd.service = self  # type: ignore[attr-defined]
        # EST: a second listener, TLS from its first byte (its context is made in start(), once the CA is open)
        self._est_tls, self._retry_after = est_tls, retry_after
        self._est_httpd: _BoundedServer | None = None
        if est_port is not None:
            try:
                self._est_httpd = server_class((host, est_port), _Handler, limits, self._httpd.access)
            except BaseException:
                self._httpd.server_close()
                raise
            self._est_httpd.service = self  # type: ignore[attr-defined]
        self._est: EstResponder | None = None
        self._est_thread: threading.Thread | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ca-worker")
        self._thread: threading.Thread | None = None
        self._ca: Any = None
        self._scep: ScepResponder | None = None
        self._ocsp: OcspResponder | None = None
        self._cmp: CmpResponder | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def est_url(self) -> str | None:
        """``https://HOST:PORT/.well-known/est``, or None when EST is not served."""
        if self._est_httpd is None:
            return None
        host, port = str(self._est_httpd.server_address[0]), self._est_httpd.server_address[1]
        return f"https://[{host}]:{port}/.well-known/est" if ":" in host else f"https://{host}:{port}/.well-known/est"

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> CaService:
        try:
            self.run(self._open)
            if self._est_httpd is not None:
                self._est_httpd.ssl_context = self.run(self._est_context)
        except BaseException:
            self._httpd.server_close()
            if self._est_httpd is not None:
                self._est_httpd.server_close()
            try:
                self.run(self._close)
            except Exception:
                log.debug("CA service: closing after a failed start", exc_info=True)
            self._worker.shutdown(wait=True)
            raise
        if self._est_httpd is not None:
            self._est_thread = threading.Thread(
                target=self._est_httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="ca-est", daemon=True
            )
            self._est_thread.start()
            log.info("EST for %s listening on %s", self.ca_dir, self.est_url)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="ca-http", daemon=True
        )
        self._thread.start()
        log.info("CA service for %s listening on %s", self.ca_dir, self.url)
        return self

    def stop(self) -> None:
        if self._est_httpd is not None:
            if self._est_thread is not None:
                self._est_httpd.shutdown()
                self._est_thread.join(timeout=10)
                self._est_thread = None
            self._est_httpd.server_close()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()
        try:
            self.run(self._close)
        except RuntimeError:  # worker already shut down
            pass
        self._worker.shutdown(wait=True)

    def __enter__(self) -> CaService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the CA worker thread and return its result."""
        return self._worker.submit(fn, *args).result(timeout=WORKER_TIMEOUT)

    # -- worker-thread side ------------------------------------------------------------------------------
    def _open(self) -> None:
        from pki.ca import CertificateAuthority  # PKI-core

        self._ca = CertificateAuthority.open(self.ca_dir, self._passphrase)
        if isinstance(self._ca.private_key, rsa.RSAPrivateKey):
            self._scep = ScepResponder(
                self._ca,
                challenge=self.challenge,
                manual_approval=self.manual_approval,
                profile=self._profile,
                clock=self._clock,
            )
        else:  # clients would only fail later, on an envelope this key cannot open: say so now
            self.scep_off_reason = (
                f"SCEP needs an RSA CA key and this CA's key is {_key_kind(self._ca.private_key)}: "
                "SCEP is off, the CRL and OCSP are served"
                + (", and EST (any key type)" if self._est_httpd is not None else " (--est-port adds EST, any key type)")
            )
            log.warning("%s", self.scep_off_reason)
        self._cmp = CmpResponder(self._ca, manual_approval=self.manual_approval, profile=self._profile,
                                 clock=self._clock)
        self._est = EstResponder(self._ca, challenge=self.challenge, manual_approval=self.manual_approval,
                                 profile=self._profile, retry_after=self._retry_after, clock=self._clock)
        signer, signer_key = self._ocsp_signer or (self._ca.certificate, self._ca.private_key)
        if self._ocsp_signer is not None:
            _check_delegate(signer, self._ca.certificate)
        self._ocsp = OcspResponder(
            issuer=self._ca.certificate,
            signer=signer,
            signer_key=signer_key,
            lookup=self._ocsp_lookup,
            validity=self._ocsp_validity,
        )

    def _close(self) -> None:
        if self._scep is not None:
            self._scep.close()
        if self._est is not None:
            self._est.close()
        if self._cmp is not None:
            self._cmp.close()
        if self._ca is not None:
            self._ca.close()
        self._ca = self._scep = self._ocsp = self._est = self._cmp = None

    def _est_context(self) -> ssl.SSLContext:
        host = str(self._est_httpd.server_address[0]) if self._est_httpd is not None else None
        return listener_context(self._ca, self._est_tls, self._passphrase, self._clock(), host)

    def _ocsp_lookup(self, serial: int) -> SerialStatus | None:
        rec = self._ca.lookup(serial)
        if rec is None:
            return None
        if rec.status.value == "revoked":
            return SerialStatus(OcspCertStatus.REVOKED, rec.revoked_at, rec.reason)
        return SerialStatus(OcspCertStatus.GOOD)

    @property
    def ca(self) -> Any:
        """The CA object; use it only through :meth:`run` (it belongs to the worker thread)."""
        return self._ca

    def crl_paths(self) -> set[str]:
        paths = {"/crl", "/crl.der", "/ca.crl"}
        url = self._ca.config.crl_url if self._ca is not None else None
        if url:
            paths.add(urllib.parse.urlsplit(url).path or "/")
        return paths

    def ocsp_paths(self) -> set[str]:
        paths = {"/ocsp"}
        url = self._ca.config.ocsp_url if self._ca is not None else None
        if url:
            paths.add(urllib.parse.urlsplit(url).path.rstrip("/") or "/")
        return paths

    def _responder(self) -> ScepResponder:
        if self._scep is None:
            raise ScepError(self.scep_off_reason or "the CA service is not running")
        return self._scep

    # called from handler threads; each hops to the worker
    def scep_get_ca_caps(self) -> bytes:
        return self.run(lambda: self._responder().ca_caps())  # type: ignore[no-any-return]

    def scep_get_ca_cert(self) -> tuple[str, bytes]:
        return self.run(lambda: self._responder().ca_cert())  # type: ignore[no-any-return]

    def scep_pki_operation(self, body: bytes) -> bytes:
        return self.scep_respond(body)[0]

    def scep_respond(self, body: bytes) -> tuple[bytes, RequestOutcome]:
        """The CertRep, and what it came to for the access log."""
        return self.run(lambda: self._responder().respond(body))  # type: ignore[no-any-return]

    def cmp_respond(self, body: bytes) -> tuple[bytes, RequestOutcome]:
        """The answer to a CMP PKIMessage, and what it came to for the access log."""
        return self.run(lambda: self._cmp.respond(body))  # type: ignore[union-attr]

    def est_respond(self, request: EstRequest) -> EstReply:
        return self.run(lambda: self._est.respond(request))  # type: ignore[union-attr]

    def now(self) -> datetime:
        return self._clock()

    def crl_der(self) -> bytes:
        return self.run(lambda: self._ca.crl(at=self._clock()).public_bytes(Encoding.DER))

    def ocsp_respond(self, body: bytes) -> bytes:
        return self.run(lambda: self._ocsp.respond(body, self._clock()))  # type: ignore[union-attr]

    def approve(self, transaction_id: str) -> x509.Certificate:
        """Approve a PENDING request of a running service (as :func:`approve` does on the directory)."""
        return self.run(lambda: self._responder().approve(transaction_id))  # type: ignore[no-any-return]

    def reject(self, transaction_id: str, reason: str = "rejected by operator") -> None:
        """Reject a PENDING request of a running service."""
        self.run(lambda: self._responder().reject(transaction_id, reason))


_CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")
_SCEP_OPS = frozenset({"GetCACaps", "GetCACert", "PKIOperation"})


class _Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0, ``Connection: close``), read against one deadline, logged once."""

    server_version = "espresso-ca/0.1"
    protocol_version = "HTTP/1.0"
    #: The standard library starts from HTTP/0.9, whose answers have no status line, even for its own refusals.
    default_request_version = "HTTP/1.0"
    server: _BoundedServer

    @property
    def service(self) -> CaService:
        return self.server.service  # type: ignore[attr-defined,no-any-return]

    def setup(self) -> None:
        self._fields: dict[str, object] = {"op": "-"}
        self._tls_error: str | None = None
        timeout = self.server.limits.request_timeout
        deadline = time.monotonic() + timeout  # one deadline for the TLS handshake and the request
        ctx = self.server.ssl_context
        if ctx is not None:
            self.protocol_version = "HTTP/1.1"  # strongSwan's EST client accepts no other status line
            self.wbufsize = 64 * 1024  # the status line, headers and body leave in one write
            try:
                self.request = tls_accept(self.request, ctx, timeout)
            except TimeoutError:
                self._tls_error = f"TLS handshake not complete within {timeout:g} s"
            except (ssl.SSLError, OSError) as exc:
                self._tls_error = f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
            if self._tls_error is not None:
                self.rfile, self.wfile = io.BytesIO(), io.BytesIO()  # type: ignore[assignment]
                return
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def handle(self) -> None:
        if self._tls_error is not None:
            self.server.access.write(self.client_address, {"op": "est", "outcome": "refused",
                                                           "reason": self._tls_error}, limited=True)
            return
        super().handle()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.close()

    def handle_one_request(self) -> None:
        self.close_connection = True
        limited = False
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                self._fields.update(outcome="closed", reason="connection closed before a request")
                limited = True
                return
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, f"request line over {MAX_REQUEST_LINE} bytes")
                return
            rfile, self.rfile = self.rfile, _HeaderBudget(self.rfile, MAX_HEADER_BYTES)  # type: ignore[assignment]
            try:
                parsed = self.parse_request()  # the standard library's parser; it answers what it refuses
            finally:
                self.rfile = rfile
                self.close_connection = True  # one request per connection, whatever HTTP/1.1 would allow
            if not parsed:
                if "http" not in self._fields:  # a blank request line: the standard library closes in silence
                    self.send_error(HTTPStatus.BAD_REQUEST, "empty request line")
                return
            if len(self.requestline.split()) != 3:
                self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not served")
                return
            if self.command not in ("GET", "POST"):
                self.send_error(HTTPStatus.NOT_IMPLEMENTED, "only GET and POST are served")
                return
            self._handle(post=self.command == "POST")
            self.wfile.flush()
        except _DeadlineExceeded:
            limited = True
            self._fields.update(outcome="timeout",
                                reason=f"request not complete within {self.server.limits.request_timeout:g} s")
            try:
                self.connection.settimeout(1.0)
                self.connection.sendall(b"HTTP/1.0 408 Request Timeout\r\nContent-Length: 0\r\n"
                                        b"Connection: close\r\n\r\n")
                self._fields["http"] = 408
            except OSError:
                pass
        except (ConnectionError, TimeoutError) as exc:
            self._fields.update(outcome="aborted", reason=type(exc).__name__)
        finally:
            self._fields.setdefault("outcome", "closed")
            self.server.access.write(self.client_address, self._fields, limited=limited)

    # the standard library's hooks: its refusals and status codes go into the access line, not to stderr
    def _write_timeout(self) -> None:
        """Reads leave the socket with what was left of the deadline; an answer gets the full timeout."""
        self.connection.settimeout(self.server.limits.request_timeout)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self._write_timeout()
        self._fields.setdefault("outcome", "refused")
        self._fields["reason"] = f"{message}: {explain}" if message and explain else message or explain
        super().send_error(code, message, explain)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._fields["http"] = int(code) if str(code).isdigit() or isinstance(code, int) else code

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", _client(self.client_address), format % args)

    def _send(
        self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self._write_timeout()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _content_length(self) -> int | None:
        """The announced body length, or None. Framing two parsers could read differently is refused with 400
        (RFC 9112 sections 5.2, 6.1, 6.3): this service may sit behind a proxy that reads it the other way."""
        h = self.headers
        if h.defects:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed header section (whitespace before a colon?)")
        if any("\n" in value for value in h.values()):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "obsolete line folding in a header field")
        hosts = h.get_all("Host") or []
        if len(hosts) > 1:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "several Host fields")
        if not hosts and self.request_version >= "HTTP/1.1":
            raise _HttpError(HTTPStatus.BAD_REQUEST, "HTTP/1.1 request without Host")
        lengths = h.get_all("Content-Length") or []
        if h.get_all("Transfer-Encoding"):
            if lengths:
                raise _HttpError(HTTPStatus.BAD_REQUEST, "Content-Length with Transfer-Encoding")
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding is not supported: send Content-Length")
        if len(lengths) > 1:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "several Content-Length fields")
        if not lengths:
            return None
        if not _CONTENT_LENGTH.fullmatch(lengths[0].strip(" \t")):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is not a decimal number")
        return int(lengths[0])

    def _body(self, limit: int) -> bytes:
        n = self._length
        if n is None:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if n > limit:
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes")
        data = self.rfile.read(n)
        if len(data) != n:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "truncated body")
        return data

    def _refuse(self, status: int, reason: str, outcome: str = "refused") -> None:
        self._fields.update(outcome=outcome, reason=reason)
        self._send(status, "text/plain", reason.encode() + b"\n")

    def _handle(self, post: bool) -> None:
        try:
            self._length = self._content_length()
            parts = urllib.parse.urlsplit(self.path)
            query = _parse_query(parts.query)
            if "operation" in query:
                self._scep(query, post)
            else:
                self._route(parts.path, post)
        except _HttpError as exc:
            self._refuse(exc.status, exc.text)
        except ScepFormatError as exc:
            self._refuse(HTTPStatus.BAD_REQUEST, f"bad SCEP message: {exc}")
        except ValueError as exc:  # parse_qs field limits and the like
            self._refuse(HTTPStatus.BAD_REQUEST, f"bad request: {exc}")
        except (PkiError, concurrent.futures.TimeoutError) as exc:
            log.warning("CA service: %s", exc)
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, f"CA unavailable: {exc}", outcome="error")
        except _DeadlineExceeded:
            raise
        except (ConnectionError, TimeoutError) as exc:
            self._fields.update(outcome="aborted", reason=type(exc).__name__)
        except Exception:
            log.exception("CA service: internal error on %s %s", self.command, self.path[:200])
            self._fields.update(outcome="error", reason="internal error")
            try:
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"internal error\n")
            except OSError:
                pass

    # -- SCEP -----------------------------------------------------------------------------------------------
    def _scep(self, query: dict[str, list[str]], post: bool) -> None:
        op = query["operation"][0]
        svc = self.service
        self._fields["op"] = f"scep.{op}" if op in _SCEP_OPS else "scep"
        if svc.scep_off_reason is not None:
            raise _HttpError(HTTPStatus.NOT_IMPLEMENTED, svc.scep_off_reason)
        if op == "GetCACaps":
            self._fields["outcome"] = "ok"
            self._send(HTTPStatus.OK, "text/plain", svc.scep_get_ca_caps())
        elif op == "GetCACert":
            ct, body = svc.scep_get_ca_cert()
            self._fields["outcome"] = "ok"
            self._send(HTTPStatus.OK, ct, body)
        elif op == "PKIOperation":
            if post:
                body = self._body(MAX_BODY_SIZE)
                if body[:1] != b"\x30":  # some clients POST base64 (RFC 8894 says binary)
                    body = _b64(body.decode("ascii", "replace"))
            else:
                msg = query.get("message", [""])[0]
                if not msg:
                    raise _HttpError(HTTPStatus.BAD_REQUEST, "PKIOperation without a message")
                body = _b64(msg)
            if len(body) > MAX_BODY_SIZE:
                raise _HttpError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"message larger than {MAX_BODY_SIZE} bytes"
                )
            reply, outcome = svc.scep_respond(body)
            self._fields.update(outcome.log_fields())
            self._send(HTTPStatus.OK, _SCEP_CT, reply)
        else:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"unsupported SCEP operation {op[:40]!r}")

    # -- CMP (RFC 6712: every PKIMessage answer is a 200, errors included) -----------------------------------
    def _cmp(self) -> None:
        self._fields["op"] = "cmp"
        reply, outcome = self.service.cmp_respond(self._body(MAX_CMP_MESSAGE))
        self._fields.update(outcome.log_fields())
        self._send(HTTPStatus.OK, _CMP_CT, reply, {"Cache-Control": "no-cache"})

    # -- CRL and OCSP ---------------------------------------------------------------------------------------
    def _ocsp(self, request: bytes, cache: bool) -> None:
        self._fields["op"] = "ocsp"
        der = self.service.ocsp_respond(request)
        self._fields.update(_ocsp_fields(der))
        headers = _ocsp_cache_headers(der, self.service.now()) if cache else None
        self._send(HTTPStatus.OK, "application/ocsp-response", der, headers)

    def _route(self, path: str, post: bool) -> None:
        svc = self.service
        op = est_operation(path)
        if op is not None:
            self._est(op, post)
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if post and ctype == _CMP_CT:
            self._cmp()
            return
        if post and (path.rstrip("/") in svc.ocsp_paths() or ctype == "application/ocsp-request"):
            self._fields["op"] = "ocsp"
            self._ocsp(self._body(MAX_OCSP_REQUEST), cache=False)
            return
        if not post and path in svc.crl_paths():
            self._fields["op"] = "crl"
            der = svc.crl_der()
            self._fields["outcome"] = "ok"
            self._send(HTTPStatus.OK, "application/pkix-crl", der, _crl_cache_headers(der, svc.now()))
            return
        if not post:
            for prefix in svc.ocsp_paths():
                p = prefix.rstrip("/") + "/"
                if path.startswith(p) and len(path) > len(p):
                    self._fields["op"] = "ocsp"
                    encoded = urllib.parse.unquote(path[len(p) :])
                    if len(encoded) > 2 * MAX_OCSP_REQUEST:
                        raise _HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "OCSP request too long")
                    try:
                        req = base64.b64decode(encoded, validate=False)
                    except (binascii.Error, ValueError):
                        req = b""
                    self._ocsp(req, cache=True)
                    return
        raise _HttpError(HTTPStatus.NOT_FOUND, "not found")


    # -- EST --------------------------------------------------------------------------------------------------
    def _est(self, op: str, post: bool) -> None:
        self._fields["op"] = f"est.{op}" if op in _EST_OPS else "est"
        if self.server.ssl_context is None:
            raise _HttpError(HTTPStatus.FORBIDDEN, "EST is served over HTTPS only (ca serve --est-port)")
        body = self._body(MAX_BODY_SIZE) if post else b""
        peer = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        reply = self.service.est_respond(EstRequest(op, self.command, body, self.headers.get("Authorization"), peer))
        self._fields.update(tid=reply.transaction_id, auth=reply.auth, outcome=reply.outcome, reason=reply.reason,
                            serial=None if reply.serial is None else f"{reply.serial:x}")
        self._send(reply.status, reply.content_type, reply.body, reply.headers)


def _ocsp_fields(der: bytes) -> dict[str, object]:
    """The access-log fields of an OCSP answer: each serial asked about and its status."""
    from cryptography.x509 import ocsp

    resp = ocsp.load_der_ocsp_response(der)
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return {"outcome": resp.response_status.name.lower()}
    singles = list(resp.responses)[:8]
    return {
        "outcome": "ok",
        "serial": ",".join(f"{r.serial_number:x}" for r in singles),
        "status": ",".join(r.certificate_status.name.lower() for r in singles),
    }


def _http_date(at: datetime) -> str:
    return email.utils.format_datetime(at.astimezone(timezone.utc), usegmt=True)


def _crl_cache_headers(der: bytes, now: datetime) -> dict[str, str]:
    """Caches (and HTTP proxies in front of the CA) may keep a CRL until its nextUpdate."""
    crl = x509.load_der_x509_crl(der)
    headers = {"Last-Modified": _http_date(crl.last_update_utc)}
    if crl.next_update_utc is not None:
        max_age = max(0, int((crl.next_update_utc - now).total_seconds()))
        headers["Expires"] = _http_date(crl.next_update_utc)
        headers["Cache-Control"] = f"public, max-age={max_age}, no-transform, must-revalidate"
    return headers


def _ocsp_cache_headers(der: bytes, now: datetime) -> dict[str, str]:
    """RFC 5019 section 6: GET answers may be cached until their nextUpdate."""
    from cryptography.x509 import ocsp

    resp = ocsp.load_der_ocsp_response(der)
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return {"Cache-Control": "no-store"}
    headers = {"Last-Modified": _http_date(resp.produced_at_utc)}
    nxt = resp.next_update_utc
    if nxt is not None:
        headers["Expires"] = _http_date(nxt)
        headers["Cache-Control"] = f"public, max-age={max(0, int((nxt - now).total_seconds()))}, no-transform"
    return headers


def _parse_query(query: str) -> dict[str, list[str]]:
    """Like parse_qs, but percent-decoding only: base64 in ``message`` keeps a literal '+' (clients differ on
    whether they escape it as %2B; a '+' never means a space in base64)."""
    fields = query.split("&") if query else []
    if len(fields) > 8:
        raise ValueError("too many query fields")
    out: dict[str, list[str]] = {}
    for field in fields:
        name, _, value = field.partition("=")
        name = urllib.parse.unquote_plus(name)
        value = urllib.parse.unquote(value) if name == "message" else urllib.parse.unquote_plus(value)
        out.setdefault(name, []).append(value)
    return out


def _b64(text: str) -> bytes:
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ScepFormatError("message is not valid base64") from None
    if not data:
        raise ScepFormatError("empty message")
    return data


# ----------------------------------------------------------------- CLI helpers (``python -m pki ca ...``)


def serve(
    ca_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    challenge: str | None = None,
    manual_approval: bool = False,
    passphrase: bytes | None = None,
    stop: threading.Event | None = None,
    ready: Callable[[CaService], None] | None = None,
    limits: HttpLimits = HttpLimits(),
    est_port: int | None = None,
    est_tls: tuple[str, str] | None = None,
    retry_after: int = DEFAULT_RETRY_AFTER,
) -> None:
    """Run the service until ``stop`` is set (or Ctrl-C). ``ready`` is called once the port is bound and serving,
    so a "serving on ..." line is never printed for a service that failed to start."""
    svc = CaService(
        ca_dir,
        host=host,
        port=port,
        challenge=challenge,
        manual_approval=manual_approval,
        passphrase=passphrase,
        limits=limits,
        est_port=est_port,
        est_tls=est_tls,
        retry_after=retry_after,
    )
    svc.start()
    try:
        if ready is not None:
            ready(svc)
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        svc.stop()


def _with_responder(ca_dir: str | Path, passphrase: bytes | None, fn: Callable[[ScepResponder], Any]) -> Any:
    from pki.ca import CertificateAuthority  # PKI-core

    ca = CertificateAuthority.open(ca_dir, passphrase)
    try:
        responder = ScepResponder(ca)
        try:
            return fn(responder)
        finally:
            responder.close()
    finally:
        ca.close()


def approve(ca_dir: str | Path, transaction_id: str, *, passphrase: bytes | None = None) -> x509.Certificate:
    """Approve a PENDING SCEP request: the certificate is issued now and handed out at the next CertPoll.

    Works whether or not the service runs (the state is in the CA database)."""
    return _with_responder(ca_dir, passphrase, lambda r: r.approve(transaction_id))  # type: ignore[no-any-return]


def reject(
    ca_dir: str | Path,
    transaction_id: str,
    reason: str = "rejected by operator",
    *,
    passphrase: bytes | None = None,
) -> None:
    """Reject a PENDING SCEP request: the next CertPoll gets FAILURE badRequest."""
    _with_responder(ca_dir, passphrase, lambda r: r.reject(transaction_id, reason))


def list_pending(ca_dir: str | Path) -> list[Transaction]:
    """PENDING SCEP requests, oldest first (needs no key)."""
    from pki.ca import DB_FILE  # PKI-core

    path = Path(ca_dir) / DB_FILE
    if not path.exists():
        raise ScepError(f"{ca_dir}: not a CA directory")
    store = TransactionStore(path)
    try:
        return store.pending()
    finally:
        store.close()
