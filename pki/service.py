"""The CA's HTTP service: SCEP, the CRL distribution point and the OCSP responder on one port.

One :class:`http.server.ThreadingHTTPServer` reads and writes HTTP; everything that touches the CA (its key,
its SQLite database) runs on a single worker thread that owns the :class:`~pki.ca.CertificateAuthority`, so
requests are serialised against the database exactly as the CLI's would be. State (issued certificates,
revocations, PENDING SCEP requests, approvals) lives in the CA directory, so a restart loses nothing.

Routes:
  ``GET|POST <any path>?operation=GetCACaps|GetCACert|PKIOperation[&message=...]``  SCEP (RFC 8894)
  ``GET /crl`` (and the path of the CA's configured CRL distribution point)        the CRL, DER
  ``POST /ocsp`` or ``POST /`` with ``application/ocsp-request``; ``GET /ocsp/<b64>`` OCSP (RFC 6960)
A body that is too large gets 413, garbage gets 400 (SCEP) or an OCSP malformedRequest: never a crash.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import email.utils
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from pki.errors import PkiError
from pki.ocsp import DEFAULT_VALIDITY, OcspCertStatus, OcspResponder, SerialStatus
from pki.ocsp import MAX_REQUEST_SIZE as MAX_OCSP_REQUEST
from pki.scep.constants import MAX_MESSAGE_SIZE
from pki.scep.errors import ScepError, ScepFormatError
from pki.scep.server import ScepResponder, Transaction, TransactionStore

__all__ = [
    "MAX_BODY_SIZE",
    "MAX_CONNECTIONS",
    "REQUEST_TIMEOUT",
    "CaService",
    "approve",
    "list_pending",
    "reject",
    "serve",
]

log = logging.getLogger("pki.service")

#: Largest request body accepted on any route.
MAX_BODY_SIZE = MAX_MESSAGE_SIZE
#: Seconds a client may take to send its request before the connection is dropped.
REQUEST_TIMEOUT = 10.0
#: Seconds a request waits for the CA worker.
WORKER_TIMEOUT = 60.0
#: Connections handled at once; more are refused with 503 instead of spawning threads without bound.
MAX_CONNECTIONS = 64

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
        server_class = _HttpServer6 if ":" in host else _BoundedServer
        self._httpd = server_class((host, port), _Handler, bind_and_activate=True)
        self._httpd.daemon_threads = True
        self._httpd.service = self  # type: ignore[attr-defined]
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ca-worker")
        self._thread: threading.Thread | None = None
        self._ca: Any = None
        self._scep: ScepResponder | None = None
        self._ocsp: OcspResponder | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> CaService:
        try:
            self.run(self._open)
        except BaseException:
            self._httpd.server_close()
            self._worker.shutdown(wait=True)
            raise
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="ca-http", daemon=True
        )
        self._thread.start()
        log.info("CA service for %s listening on %s", self.ca_dir, self.url)
        return self

    def stop(self) -> None:
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
        self._scep = ScepResponder(
            self._ca,
            challenge=self.challenge,
            manual_approval=self.manual_approval,
            profile=self._profile,
            clock=self._clock,
        )
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
        if self._ca is not None:
            self._ca.close()
        self._ca = self._scep = self._ocsp = None

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

    # called from handler threads; each hops to the worker
    def scep_get_ca_caps(self) -> bytes:
        return self.run(lambda: self._scep.ca_caps())  # type: ignore[union-attr]

    def scep_get_ca_cert(self) -> tuple[str, bytes]:
        return self.run(lambda: self._scep.ca_cert())  # type: ignore[union-attr]

    def scep_pki_operation(self, body: bytes) -> bytes:
        return self.run(lambda: self._scep.pki_operation(body))  # type: ignore[union-attr]

    def now(self) -> datetime:
        return self._clock()

    def crl_der(self) -> bytes:
        return self.run(lambda: self._ca.crl(at=self._clock()).public_bytes(Encoding.DER))

    def ocsp_respond(self, body: bytes) -> bytes:
        return self.run(lambda: self._ocsp.respond(body, self._clock()))  # type: ignore[union-attr]

    def approve(self, transaction_id: str) -> x509.Certificate:
        """Approve a PENDING request of a running service (as :func:`approve` does on the directory)."""
        return self.run(lambda: self._scep.approve(transaction_id))  # type: ignore[union-attr]

    def reject(self, transaction_id: str, reason: str = "rejected by operator") -> None:
        """Reject a PENDING request of a running service."""
        self.run(lambda: self._scep.reject(transaction_id, reason))  # type: ignore[union-attr]


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most MAX_CONNECTIONS handler threads."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: socketserver's default of 5 drops SYNs under a burst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _HttpServer6(_BoundedServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "espresso-ca/0.1"
    protocol_version = "HTTP/1.0"
    timeout = REQUEST_TIMEOUT

    @property
    def service(self) -> CaService:
        return self.server.service  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(
        self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        try:
            n = int(length)
        except ValueError:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if n < 0:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        if n > limit:
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {limit} bytes")
        data = self.rfile.read(n)
        if len(data) != n:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "truncated body")
        return data

    def do_GET(self) -> None:
        self._handle(post=False)

    def do_POST(self) -> None:
        self._handle(post=True)

    def _handle(self, post: bool) -> None:
        try:
            if len(self.path) > 2 * MAX_BODY_SIZE:
                raise _HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "request URI too long")
            parts = urllib.parse.urlsplit(self.path)
            query = _parse_query(parts.query)
            if "operation" in query:
                self._scep(query, post)
            else:
                self._route(parts.path, post)
        except _HttpError as exc:
            self._send(exc.status, "text/plain", exc.text.encode() + b"\n")
        except ScepFormatError as exc:
            log.info("SCEP: bad request from %s: %s", self.address_string(), exc)
            self._send(HTTPStatus.BAD_REQUEST, "text/plain", f"bad SCEP message: {exc}\n".encode())
        except ValueError as exc:  # parse_qs field limits and the like
            self._send(HTTPStatus.BAD_REQUEST, "text/plain", f"bad request: {exc}\n".encode())
        except (PkiError, concurrent.futures.TimeoutError) as exc:
            log.warning("CA service: %s", exc)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", f"CA unavailable: {exc}\n".encode())
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        except Exception:
            log.exception("CA service: internal error on %s %s", self.command, self.path[:200])
            try:
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"internal error\n")
            except OSError:
                pass

    # -- SCEP -----------------------------------------------------------------------------------------------
    def _scep(self, query: dict[str, list[str]], post: bool) -> None:
        op = query["operation"][0]
        svc = self.service
        if op == "GetCACaps":
            self._send(HTTPStatus.OK, "text/plain", svc.scep_get_ca_caps())
        elif op == "GetCACert":
            ct, body = svc.scep_get_ca_cert()
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
            self._send(HTTPStatus.OK, _SCEP_CT, svc.scep_pki_operation(body))
        else:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"unsupported SCEP operation {op[:40]!r}")

    # -- CRL and OCSP ---------------------------------------------------------------------------------------
    def _route(self, path: str, post: bool) -> None:
        svc = self.service
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if post and (path.rstrip("/") in svc.ocsp_paths() or ctype == "application/ocsp-request"):
            body = self._body(MAX_OCSP_REQUEST)
            self._send(HTTPStatus.OK, "application/ocsp-response", svc.ocsp_respond(body))
            return
        if not post and path in svc.crl_paths():
            der = svc.crl_der()
            self._send(HTTPStatus.OK, "application/pkix-crl", der, _crl_cache_headers(der, svc.now()))
            return
        if not post:
            for prefix in svc.ocsp_paths():
                p = prefix.rstrip("/") + "/"
                if path.startswith(p) and len(path) > len(p):
                    encoded = urllib.parse.unquote(path[len(p) :])
                    if len(encoded) > 2 * MAX_OCSP_REQUEST:
                        raise _HttpError(HTTPStatus.REQUEST_URI_TOO_LONG, "OCSP request too long")
                    try:
                        req = base64.b64decode(encoded, validate=False)
                    except (binascii.Error, ValueError):
                        req = b""
                    der = svc.ocsp_respond(req)
                    self._send(
                        HTTPStatus.OK, "application/ocsp-response", der, _ocsp_cache_headers(der, svc.now())
                    )
                    return
        raise _HttpError(HTTPStatus.NOT_FOUND, "not found")


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
