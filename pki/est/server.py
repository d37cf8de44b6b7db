"""The CA side of EST (RFC 7030): what each ``/.well-known/est/<operation>`` request comes to.

:class:`EstResponder` holds no HTTP and no TLS: ``pki.service`` reads the request on its TLS listener, hands an
:class:`EstRequest` (operation, body, the Authorization header, the client's certificate as TLS verified it) to
the CA worker thread and writes back the :class:`EstReply`. Authentication, per RFC 7030 section 3.2.3 and 3.3.2:

* ``simpleenroll``: the service's challenge password as the HTTP basic password (any user name), or a TLS client
  certificate this CA issued, still valid and not revoked, for the same subject. With neither configured
  (``--no-challenge``/``--manual-approval``) anyone may ask.
* ``simplereenroll``: the current certificate as TLS client certificate (issued here, valid, not revoked); the
  request keeps its subject and subjectAltNames (RFC 7030 section 4.2.2). A password, if also sent, must be right.
* A wrong password is 401 whatever else the client presented.

Requests go through the same :class:`~pki.scep.server.TransactionStore` as SCEP (same table of the CA database),
so ``ca pending``/``ca approve``/``ca reject`` decide EST requests too: with manual approval the answer is 202 with
Retry-After, and the client repeating the same request (same key, subject and SANs: the transaction ID hashes them)
gets 202 again, then its certificate once approved. The CA's SAN policy applies as for every issuance path.

The TLS service certificate (``est.pem``/``est.key`` in the CA directory) is issued by the CA itself at ``ca
init`` (serverAuth, ECDSA P-256, the names of :data:`DEFAULT_SERVICE_NAMES` or the operator's), or given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.errors import CsrSignatureError, PkiError

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "DEFAULT_SERVICE_NAMES",
    "SERVICE_CERT",
    "SERVICE_KEY",
    "WELL_KNOWN",
    "EstReply",
    "EstRequest",
    "EstResponder",
    "certs_only",
    "ensure_service_certificate",
    "est_operation",
    "issue_service_certificate",
    "listener_context",
    "server_context",
    "tls_accept",
]

log = logging.getLogger("pki.est.server")

WELL_KNOWN = "/.well-known/est"
#: Operations served, with the method each takes; fullcmc and serverkeygen (optional in RFC 7030) are not.
OPERATIONS = {"cacerts": "GET", "csrattrs": "GET", "simpleenroll": "POST", "simplereenroll": "POST"}
_UNSUPPORTED = frozenset({"fullcmc", "serverkeygen"})
#: Seconds a client is asked to wait before repeating a request that awaits approval.
DEFAULT_RETRY_AFTER = 60
SERVICE_CERT, SERVICE_KEY = "est.pem", "est.key"
#: Names the service certificate carries unless ``ca init --service-name`` says otherwise.
DEFAULT_SERVICE_NAMES = ("localhost", "127.0.0.1", "::1")
#: ``application/pkcs7-mime`` as RFC 7030 section 4.1.3/4.2.3 label a certs-only answer.
CERTS_ONLY_CT = "application/pkcs7-mime; smime-type=certs-only"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# == wire helpers (pure) =======================================================================================
def est_operation(path: str) -> str | None:
    """The operation of an EST path (``/.well-known/est/[label/]op``), or None when the path is not EST."""
    if not (path == WELL_KNOWN or path.startswith(WELL_KNOWN + "/")):
        return None
    parts = [p for p in path[len(WELL_KNOWN):].split("/") if p]
    if not parts or len(parts) > 2:  # RFC 7030 3.2.2: an optional CA label, then the operation
        return ""
    return parts[-1]


def certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """A degenerate PKCS#7 SignedData holding ``certs``, base64 without line breaks (RFC 8951 section 3.1)."""
    return base64.b64encode(pkcs7.serialize_certificates(list(certs), Encoding.DER))


def decode_body(body: bytes) -> bytes:
    """The DER of a request body: base64 as RFC 7030/8951 say (whitespace allowed), or DER from lax clients."""
    if body[:1] == b"\x30" and len(body) > 1 and body[1] >= 0x80:  # base64 never starts with 0x30 0x8x
        return body
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _Refusal(HTTPStatus.BAD_REQUEST, "the body is neither base64 nor DER") from None


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an HTTP Basic Authorization header (RFC 7617), None when there is none."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _Refusal(HTTPStatus.UNAUTHORIZED, f"authorization scheme {scheme[:20]!r} is not Basic")
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        raise _Refusal(HTTPStatus.BAD_REQUEST, "malformed Basic credentials") from None
    if not sep:
        raise _Refusal(HTTPStatus.BAD_REQUEST, "malformed Basic credentials (no ':')")
    return user, password


class _Refusal(Exception):
    def __init__(self, status: HTTPStatus, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(text)


@dataclass(frozen=True)
class EstRequest:
    """One EST request as the service read it. ``client_cert_der``: the certificate the client authenticated
    with in the TLS handshake (already verified to chain to this CA by TLS), or None."""

    operation: str
    method: str
    body: bytes = field(default=b"", repr=False)
    authorization: str | None = field(default=None, repr=False)
    client_cert_der: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EstReply:
    """The HTTP answer, and what it came to for the access log (never the password or the request)."""

    status: int
    content_type: str
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str = "ok"
    reason: str | None = None
    transaction_id: str | None = None
    serial: int | None = None
    auth: str | None = None


def _text(status: HTTPStatus, text: str, outcome: str = "refused", **kw: Any) -> EstReply:
    headers = {"WWW-Authenticate": 'Basic realm="est"'} if status == HTTPStatus.UNAUTHORIZED else {}
    return EstReply(int(status), "text/plain", text.encode() + b"\n", headers, outcome, text, **kw)


def _spki(key: Any) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def _san_ext(obj: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    try:
        return obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.public_bytes()
    except x509.ExtensionNotFound:
        return b""


def transaction_id(csr: x509.CertificateSigningRequest) -> str:
    """The same request (key, subject, subjectAltNames) repeated while it awaits approval maps to one ID."""
    h = hashlib.sha256()
    for part in (_spki(csr.public_key()), csr.subject.public_bytes(), _san_ext(csr)):
        h.update(len(part).to_bytes(4, "big") + part)
    return "est-" + h.hexdigest()[:32]


# == the responder =============================================================================================
class EstResponder:
    """EST for one CA. Not thread-safe: the service calls it from its CA worker thread."""

    def __init__(
        self,
        ca: Any,
        *,
        challenge: str | None = None,
        manual_approval: bool = False,
        profile: object = None,
        retry_after: int = DEFAULT_RETRY_AFTER,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        from pki.scep.server import TransactionStore  # the table SCEP and 'ca approve' use

        self.ca = ca
        self.challenge = challenge
        self.manual_approval = manual_approval
        self.profile = profile
        self.retry_after = retry_after
        self._clock = clock
        self.store = TransactionStore(ca.db)

    def close(self) -> None:
        self.store.close()

    def respond(self, request: EstRequest) -> EstReply:
        """The answer to one request; a request a client can get wrong never raises."""
        op = request.operation
        try:
            if op in _UNSUPPORTED:
                return _text(HTTPStatus.NOT_IMPLEMENTED, f"EST {op} is not offered by this CA")
            if op not in OPERATIONS:
                return _text(HTTPStatus.NOT_FOUND, "unknown EST operation")
            if request.method != OPERATIONS[op]:
                return EstReply(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", f"{op} takes {OPERATIONS[op]}\n".encode(),
                                {"Allow": OPERATIONS[op]}, "refused", f"{op} takes {OPERATIONS[op]}")
            if op == "cacerts":
                return EstReply(HTTPStatus.OK, CERTS_ONLY_CT, certs_only(self.ca.chain),
                                {"Content-Transfer-Encoding": "base64"})
            if op == "csrattrs":  # RFC 7030 4.5.2: nothing asked beyond a signed PKCS#10
                return EstReply(HTTPStatus.NO_CONTENT, "application/csrattrs", b"")
            return self._enroll(request, reenroll=op == "simplereenroll")
        except _Refusal as exc:
            return _text(exc.status, exc.text)

    # -- enrollment ---------------------------------------------------------------------------------------------
    def _client_certificate(self, der: bytes | None) -> x509.Certificate | None:
        """The TLS client certificate when this CA issued it and it is valid now; refused otherwise."""
        if der is None:
            return None
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise _Refusal(HTTPStatus.FORBIDDEN, "unreadable TLS client certificate") from None
        rec = self.ca.lookup(cert.serial_number) if cert.issuer == self.ca.certificate.subject else None
        if rec is None or rec.certificate != cert:
            raise _Refusal(HTTPStatus.FORBIDDEN, "the TLS client certificate was not issued by this CA")
        status = rec.status_at(self._clock()).value
        if status != "valid":
            raise _Refusal(HTTPStatus.FORBIDDEN, f"the TLS client certificate is {status}")
        return cert

    def _password_ok(self, authorization: str | None) -> bool | None:
        """True when a password was sent and is right (or no challenge is set), None when none was sent; a wrong
        one is refused with 401 whatever else the client presented."""
        creds = basic_credentials(authorization)
        if creds is None:
            return None
        if self.challenge is None:
            return True  # nothing to check against: the password plays no role
        if not hmac.compare_digest(creds[1].encode(), self.challenge.encode()):
            raise _Refusal(HTTPStatus.UNAUTHORIZED, "wrong user name or password")
        return True

    def _enroll(self, request: EstRequest, reenroll: bool) -> EstReply:
        from pki.csr import parse_csr

        password = self._password_ok(request.authorization)
        client = self._client_certificate(request.client_cert_der)
        auth = "+".join(a for a, on in (("basic", password), ("cert", client is not None)) if on) or "none"
        if not request.body:
            raise _Refusal(HTTPStatus.BAD_REQUEST, "empty request body")
        try:
            csr, reencoded = parse_csr(decode_body(request.body), source="EST request")
        except CsrSignatureError as exc:
            raise _Refusal(HTTPStatus.BAD_REQUEST, str(exc)) from None
        except PkiError as exc:
            raise _Refusal(HTTPStatus.BAD_REQUEST, str(exc)) from None
        tid = transaction_id(csr)
        if reenroll:
            if client is None:
                return _text(HTTPStatus.FORBIDDEN, "simplereenroll needs the current certificate as TLS client "
                             "certificate", transaction_id=tid, auth=auth)
            if csr.subject != client.subject or _san_ext(csr) != _san_ext(client):
                return _text(HTTPStatus.BAD_REQUEST, "a re-enrollment must keep the subject and subjectAltNames "
                             "of the current certificate", transaction_id=tid, auth=auth)
        elif self.challenge is not None and not (password or (client is not None and client.subject == csr.subject)):
            return _text(HTTPStatus.UNAUTHORIZED, "authentication required: the enrollment password as HTTP basic "
                         "password, or a certificate of this CA for this subject", transaction_id=tid, auth=auth)
        existing = self.store.get(tid)
        if existing is not None and not (existing.certificate_der is not None and client is not None
                                         and client.public_bytes(Encoding.DER) == existing.certificate_der):
            if existing.state == "pending":
                return self._pending(tid, auth)
            if existing.state == "issued" and existing.certificate is not None:
                return self._issued(existing.certificate, tid, auth)  # the same request again: the same answer
            return _text(HTTPStatus.FORBIDDEN, f"request rejected by the CA operator: {existing.reason or 'no reason'}",
                         transaction_id=tid, auth=auth)
        now = self._clock()
        if self.manual_approval:
            from pki.scep.server import QueueFullError

            try:
                self.store.add_pending(tid, csr, client, now)
            except QueueFullError as exc:
                return _text(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), transaction_id=tid, auth=auth)
            log.info("EST transaction %s (%s): PENDING approval", tid, csr.subject.rfc4514_string())
            return self._pending(tid, auth)
        try:
            cert = self.ca.issue(csr, self.profile, at=now, pop_verified=reencoded)
        except PkiError as exc:
            return _text(HTTPStatus.BAD_REQUEST, f"the CA refused the request: {exc}", transaction_id=tid, auth=auth)
        self.store.add_issued(tid, csr, client, cert, now)
        log.info("EST transaction %s: issued %x to %s", tid, cert.serial_number, cert.subject.rfc4514_string())
        return self._issued(cert, tid, auth)

    def _pending(self, tid: str, auth: str) -> EstReply:
        text = f"awaiting approval by the CA operator (transaction {tid}); repeat the request later"
        return EstReply(HTTPStatus.ACCEPTED, "text/plain", text.encode() + b"\n",
                        {"Retry-After": str(self.retry_after)}, "pending", None, tid, auth=auth)

    def _issued(self, cert: x509.Certificate, tid: str, auth: str) -> EstReply:
        return EstReply(HTTPStatus.OK, CERTS_ONLY_CT, certs_only([cert]), {"Content-Transfer-Encoding": "base64"},
                        "issued", None, tid, cert.serial_number, auth)


# == TLS =======================================================================================================
def _name(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


def issue_service_certificate(ca: Any, names: Sequence[str] = DEFAULT_SERVICE_NAMES, *,
                              passphrase: bytes | None = None, at: datetime | None = None) -> x509.Certificate:
    """Issue the EST listener's certificate from ``ca`` and write ``est.pem`` (with the CA chain) and ``est.key``
    (0600, encrypted with the CA's passphrase when it has one) into the CA directory."""
    from pki._files import PUBLIC_MODE, write_atomic
    from pki.ca import IssueProfile
    from pki.keys import generate_private_key, parse_key_spec, save_private_key

    if not names:
        raise ValueError("the EST service certificate needs at least one name")
    gns = [_name(n) for n in names]
    key = generate_private_key(parse_key_spec("ecdsa", 256))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[0][:64])]))
           .add_extension(x509.SubjectAlternativeName(gns), critical=False)
           .sign(key, hashes.SHA256()))
    dns = tuple(g.value for g in gns if isinstance(g, x509.DNSName))
    ips = tuple(f"{g.value}/{g.value.max_prefixlen}" for g in gns if isinstance(g, x509.IPAddress))
    # the service's own names, whatever the CA's SAN policy for routers is
    profile = IssueProfile(name="est-server", validity=timedelta(days=825), key_usage=frozenset({"digital_signature"}),
                           extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH,), san_types=frozenset({"dns", "ip"}),
                           dns_suffixes=dns or ("invalid.",), ip_networks=ips or ("255.255.255.255/32",))
    cert = ca.issue(csr, profile, at=at)
    path = Path(ca.path)
    save_private_key(path / SERVICE_KEY, key, passphrase, overwrite=True)
    write_atomic(path / SERVICE_CERT, b"".join(c.public_bytes(Encoding.PEM) for c in [cert, *ca.chain]), PUBLIC_MODE)
    return cert


def ensure_service_certificate(ca: Any, *, passphrase: bytes | None = None, at: datetime | None = None
                               ) -> tuple[Path, Path, str | None]:
    """The service certificate and key files of ``ca``; a missing one, or one about to expire or from another CA
    key, is issued anew (with the names of the old one). The third item says what was done, or None."""
    from pki.certs import load_certificates

    path = Path(ca.path)
    cert_file, key_file = path / SERVICE_CERT, path / SERVICE_KEY
    now = at or _utcnow()
    names: list[str] = list(DEFAULT_SERVICE_NAMES)
    why = None
    if not cert_file.exists() or not key_file.exists():
        why = "no EST service certificate in the CA directory: issued one"
    else:
        try:
            old = load_certificates(cert_file.read_bytes(), source=str(cert_file))[0]
            names = [str(g.value) for g in old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
            old.verify_directly_issued_by(ca.certificate)
            if old.not_valid_after_utc - now < timedelta(days=7):
                why = "the EST service certificate expires within 7 days: issued a new one"
        except Exception:  # noqa: BLE001 - any flaw in our own file means: issue again
            why = "the EST service certificate is unusable or from another CA key: issued a new one"
    if why is not None:
        issue_service_certificate(ca, names, passphrase=passphrase, at=at)
    return cert_file, key_file, why


def server_context(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str],
                   client_cas: Sequence[x509.Certificate], passphrase: bytes | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context: our certificate, and client certificates asked for (not required) and verified
    against ``client_cas`` (the CA's chain; an intermediate CA is an anchor of its own)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file, password=passphrase)
    except (ssl.SSLError, OSError) as exc:
        raise PkiError(f"cannot use the EST TLS certificate {cert_file} / key {key_file}: {exc}") from None
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata="".join(c.public_bytes(Encoding.PEM).decode() for c in client_cas))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def listener_context(ca: Any, given: tuple[str, str] | None, passphrase: bytes | None, at: datetime,
                     host: str | None = None) -> ssl.SSLContext:
    """The EST listener's TLS: the certificate and key files ``given``, or the CA's own service certificate
    (issued now when missing, expiring or from another CA key; said in a warning). A listening address the
    certificate does not name is warned about: clients that check host names (all should) would refuse it."""
    if given is not None:
        cert_file, key_file = Path(given[0]), Path(given[1])
    else:
        cert_file, key_file, why = ensure_service_certificate(ca, passphrase=passphrase, at=at)
        if why:
            log.warning("%s", why)
    ctx = server_context(cert_file, key_file, ca.chain, passphrase)
    if host and host not in ("0.0.0.0", "::", ""):
        try:
            cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
            names = {str(g.value) for g in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
        except (ValueError, OSError, x509.ExtensionNotFound):
            names = set()
        if host not in names:
            log.warning("the EST TLS certificate names %s, not %s, the address EST listens on: clients reaching "
                        "it by that address will refuse it (ca init --service-name, or --est-cert)",
                        ", ".join(sorted(names)) or "nothing", host)
    return ctx


def tls_accept(sock: socket.socket, ctx: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """The server side of the handshake within ``timeout`` seconds; :class:`ssl.SSLError`/:class:`OSError`
    (a refused client certificate, a client that is not TLS, a timeout) are the caller's to log."""
    sock.settimeout(timeout)
    tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls
