"""The router side of EST (RFC 7030): ``/cacerts``, ``/simpleenroll`` and ``/simplereenroll`` over TLS.

What ``ca-certificate enroll --protocol est`` and ``local-certificate enroll --protocol est`` do on the wire.
:func:`get_ca_certs` without ``trust`` is RFC 7030's bootstrap (section 4.1.1): the server is not authenticated
yet, so the answer is only accepted when the server's own TLS certificate was issued by the CA it hands out, and
the caller shows the fingerprint for the operator to check out of band, as for SCEP. Every other request
authenticates the server against the profile's CA certificates (chain and host name). The client authenticates
with the enrollment password as HTTP basic credentials, with a certificate as TLS client credential
(re-enrollment with the current certificate), or both. While the server answers 202 the request is repeated
after Retry-After, at most ``retry_count`` times.

TLS is Python's :mod:`ssl`, HTTP is :mod:`http.client`; nothing here parses either.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import http.client
import logging
import os
import shutil
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7

from .errors import EstError, EstPendingTimeout, EstRefused
from .server import WELL_KNOWN

__all__ = ["DEFAULT_TIMEOUT", "MAX_POLLS", "MAX_RESPONSE_SIZE", "enroll", "est_url", "get_ca_certs"]

log = logging.getLogger("pki.est.client")

DEFAULT_TIMEOUT = 30.0
MAX_RESPONSE_SIZE = 256 * 1024
#: Upper bound on polls whatever the profile says (as for SCEP).
MAX_POLLS = 1080
#: Longest wait between polls that a server's Retry-After can ask for.
MAX_RETRY_AFTER = 3600


def est_url(url: str, operation: str) -> str:
    """The URL of ``operation`` under a profile's enrollment URL: ``https://ca:8443`` and
    ``https://ca:8443/.well-known/est`` (optionally followed by a CA label) both work."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise EstError(f"EST needs an https:// enrollment url, not {url!r}")
    path = parts.path.rstrip("/")
    if WELL_KNOWN not in path:
        path += WELL_KNOWN
    return urllib.parse.urlunsplit(parts._replace(path=f"{path}/{operation}", query="", fragment=""))


@dataclass(frozen=True)
class _Response:
    status: int
    content_type: str
    retry_after: str | None
    body: bytes
    server_cert_der: bytes | None


def _context(trust: Sequence[x509.Certificate] | None, credential: str | None, secret: bytes | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if trust is None:  # bootstrap: the caller checks what it got against the TLS certificate, then the operator
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata="".join(c.public_bytes(Encoding.PEM).decode() for c in trust))
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if credential is not None:
        ctx.load_cert_chain(credential, password=secret)
    return ctx


def _credential_file(cert: x509.Certificate, key: Any) -> tuple[str, str, bytes]:
    """Python's ssl loads a client credential from a file only: a private temporary one, holding the key encrypted
    under a one-time passphrase, so the key is never on disk in clear. (directory, file, passphrase)."""
    d = tempfile.mkdtemp(prefix="espresso-est-")
    secret = base64.b64encode(os.urandom(24))
    pem = key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(secret))
    path = os.path.join(d, "credential.pem")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem + cert.public_bytes(Encoding.PEM))
    return d, path, secret


def _request(
    url: str,
    method: str,
    body: bytes | None = None,
    *,
    trust: Sequence[x509.Certificate] | None,
    client: tuple[x509.Certificate, Any] | None = None,
    basic: tuple[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> _Response:
    parts = urllib.parse.urlsplit(url)
    tmp = None
    try:
        if client is not None:
            tmp, credential, secret = _credential_file(*client)
            ctx = _context(trust, credential, secret)
        else:
            ctx = _context(trust, None, None)
        headers = {"User-Agent": "espresso-pki", "Connection": "close"}
        if basic is not None:
            token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        if body is not None:
            headers["Content-Type"] = "application/pkcs10"
            headers["Content-Transfer-Encoding"] = "base64"
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, context=ctx, timeout=timeout)
        try:
            conn.connect()
            peer = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            conn.request(method, urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")), body, headers)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE_SIZE + 1)
            if len(data) > MAX_RESPONSE_SIZE:
                raise EstError(f"{url}: answer larger than {MAX_RESPONSE_SIZE} bytes")
            return _Response(resp.status, resp.getheader("Content-Type", "") or "", resp.getheader("Retry-After"),
                             data, peer)
        finally:
            conn.close()
    except EstError:
        raise
    except ssl.SSLCertVerificationError as exc:
        raise EstError(f"{url}: the EST server's TLS certificate is not trusted: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise EstError(f"{url}: TLS failed: {exc.reason or exc}") from None
    except TimeoutError:
        raise EstError(f"{url}: timed out after {timeout:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise EstError(f"{url}: {type(exc).__name__}: {exc}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _refused(url: str, r: _Response) -> EstRefused:
    text = r.body[:300].decode("utf-8", "replace").strip() if r.content_type.startswith("text/") else ""
    return EstRefused(url, r.status, " ".join(text.split()))


def _certs_only(url: str, r: _Response) -> list[x509.Certificate]:
    """The certificates of an ``application/pkcs7-mime`` answer: base64 (RFC 8951), or DER/PEM from lax servers."""
    data = r.body
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = pkcs7.load_pem_pkcs7_certificates(data)
        else:
            if not (data[:1] == b"\x30" and len(data) > 1 and data[1] >= 0x80):
                data = base64.b64decode(b"".join(data.split()), validate=True)
            certs = pkcs7.load_der_pkcs7_certificates(data)
    except (ValueError, binascii.Error) as exc:
        raise EstError(f"{url}: the answer ({r.content_type or 'no content type'}) is not a PKCS#7 certs-only: "
                       f"{exc}") from None
    if not certs:
        raise EstError(f"{url}: the answer holds no certificate")
    return certs


def get_ca_certs(url: str, *, trust: Sequence[x509.Certificate] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> list[x509.Certificate]:
    """``/cacerts``: the CA certificate(s), the issuing CA first. Without ``trust`` (bootstrap), the answer is
    accepted only if the server's TLS certificate was issued by one of the certificates it returns."""
    target = est_url(url, "cacerts")
    r = _request(target, "GET", trust=trust, timeout=timeout)
    if r.status != 200:
        raise _refused(target, r)
    certs = _chain_order(_certs_only(target, r))
    if trust is None:
        server = x509.load_der_x509_certificate(r.server_cert_der) if r.server_cert_der else None
        if server is None or not any(_issued_by(server, c) for c in certs):
            raise EstError(f"{target}: the server's TLS certificate was not issued by the CA certificate it hands "
                           "out; refusing it (load the CA certificate with 'ca-certificate load' instead)")
    return certs


def _chain_order(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """The issuing CA first, then its issuers: a PKCS#7 SET OF carries no order (DER sorts it)."""
    by_subject = {c.subject: c for c in certs}
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    heads = [c for c in certs if c.subject not in issuers]
    if len(heads) != 1:
        return certs
    chain = [heads[0]]
    while chain[-1].issuer != chain[-1].subject and chain[-1].issuer in by_subject \
            and by_subject[chain[-1].issuer] not in chain:
        chain.append(by_subject[chain[-1].issuer])
    return chain + [c for c in certs if c not in chain]


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _retry_after(value: str | None, default: float) -> float:
    if value is None:
        return default
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), MAX_RETRY_AFTER))
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return max(0.0, min((at - datetime.now(timezone.utc)).total_seconds(), MAX_RETRY_AFTER))


def enroll(
    url: str,
    key: Any,
    csr: x509.CertificateSigningRequest,
    ca_certs: Sequence[x509.Certificate],
    *,
    username: str | None = None,
    password: str | None = None,
    client: tuple[x509.Certificate, Any] | None = None,
    reenroll: bool = False,
    retry_count: int = 10,
    retry_interval: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = DEFAULT_TIMEOUT,
) -> x509.Certificate:
    """``simpleenroll`` (or ``simplereenroll``) ``csr``; the certificate issued for ``key``.

    ``password``: HTTP basic credentials (``username``, default ``est``). ``client``: (certificate, key) as TLS
    client credential. 202 answers are repeated after their Retry-After (or ``retry_interval``)."""
    if not ca_certs:
        raise EstError("no CA certificate to authenticate the EST server with (ca-certificate enroll/load first)")
    target = est_url(url, "simplereenroll" if reenroll else "simpleenroll")
    body = base64.b64encode(csr.public_bytes(Encoding.DER))
    basic = None if password is None else (username or "est", password)
    polls = min(max(retry_count, 0), MAX_POLLS)
    for attempt in range(polls + 1):
        r = _request(target, "POST", body, trust=ca_certs, client=client, basic=basic, timeout=timeout)
        if r.status == 200:
            return _pick(target, _certs_only(target, r), key)
        if r.status != 202:
            raise _refused(target, r)
        if attempt == polls:
            break
        wait = _retry_after(r.retry_after, retry_interval)
        log.info("EST request pending approval; asking again in %g s (%d/%d)", wait, attempt + 1, polls)
        sleep(wait)
    raise EstPendingTimeout(target, polls)


def _pick(url: str, certs: list[x509.Certificate], key: Any) -> x509.Certificate:
    fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    mine = key.public_key().public_bytes(*fmt)
    for c in certs:
        if c.public_key().public_bytes(*fmt) == mine:
            return c
    raise EstError(f"{url}: the answer holds no certificate for our key")

