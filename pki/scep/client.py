"""The router side of SCEP: GetCACaps, GetCACert and enrollment with polling (RFC 8894).

What JUNOS's ``request security pki ca-certificate enroll`` and ``local-certificate enroll`` do on the wire.
:func:`get_ca_certs` returns the CA's certificates unverified: the caller shows their fingerprints so an
operator can check them out of band before trusting them. :func:`enroll` encrypts the request to the CA, signs
it with the new key (a transient self-signed certificate, or the current certificate for a renewal), and
accepts only a CertRep signed by one of the CA certificates it was given, echoing our nonce and transactionID.
While the CA answers PENDING it polls (CertPoll) at most ``retry_count`` times, ``retry_interval`` seconds
apart.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import AttributeOID

from pki.fetch import DEFAULT_TIMEOUT, FetchError, http_request

from . import messages as m
from .constants import MAX_MESSAGE_SIZE, Capability, MessageType, PkiStatus
from .errors import ScepError, ScepFailure, ScepFormatError, ScepPendingTimeout

__all__ = ["MAX_POLLS", "enroll", "get_ca_caps", "get_ca_certs"]

log = logging.getLogger("pki.scep.client")

#: Upper bound on polls whatever the profile says (JUNOS caps retry at 1080).
MAX_POLLS = 1080


def _op_url(url: str, operation: str, message: str | None = None) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in ("operation", "message")]
    query.append(("operation", operation))
    if message is not None:
        query.append(("message", message))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def get_ca_caps(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> frozenset[str]:
    """The CA's capability keywords; an empty set when the CA does not implement GetCACaps."""
    try:
        resp = http_request("GET", _op_url(url, "GetCACaps"), timeout=timeout, max_size=64 * 1024)
    except FetchError as exc:
        if exc.status is not None and 400 <= exc.status < 500:
            return frozenset()
        raise
    return frozenset(
        line.strip() for line in resp.body.decode("ascii", "replace").splitlines() if line.strip()
    )


def get_ca_certs(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> list[x509.Certificate]:
    """GetCACert: the CA certificate first, then any RA/intermediate certificates (not verified here)."""
    resp = http_request("GET", _op_url(url, "GetCACert"), timeout=timeout, max_size=MAX_MESSAGE_SIZE)
    body = resp.body
    try:
        if resp.content_type == "application/x-x509-ca-cert" or body.lstrip().startswith(b"-----BEGIN"):
            certs = (
                x509.load_pem_x509_certificates(body)
                if body.lstrip().startswith(b"-----BEGIN")
                else [x509.load_der_x509_certificate(body)]
            )
        else:
            certs = m.parse_certs_only(body)
    except (ValueError, x509.InvalidVersion, ScepFormatError) as exc:
        raise ScepError(
            f"{url}: GetCACert answer ({resp.content_type}) holds no certificate: {exc}"
        ) from None
    if not certs:
        raise ScepError(f"{url}: GetCACert returned no certificate")
    for cert in certs:  # parse what we will use now, so a malformed certificate fails here, clearly
        try:
            cert.public_key()
            list(cert.extensions)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ScepError(f"{url}: GetCACert returned an unusable certificate: {exc}") from None
    return _order_chain(certs)


def _order_chain(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """The issuing CA first, then its parents; RA certificates (not CAs) after them."""
    cas = [c for c in certs if _is_ca(c)]
    others = [c for c in certs if not _is_ca(c)]
    if not cas:
        return certs
    issuers_of_others = {c.issuer for c in cas if c.issuer != c.subject}
    leafmost = [c for c in cas if c.subject not in issuers_of_others] or cas
    # prefer the CA that issued the RA certificate, when there is one
    ra_issuers = {c.issuer for c in others}
    leafmost.sort(key=lambda c: c.subject not in ra_issuers)
    chain = [leafmost[0]]
    while len(chain) < len(cas):
        nxt = next((c for c in cas if c.subject == chain[-1].issuer and c not in chain), None)
        if nxt is None:
            break
        chain.append(nxt)
    return chain + [c for c in cas if c not in chain] + others


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _recipient(ca_certs: Sequence[x509.Certificate]) -> x509.Certificate:
    """The certificate to encrypt to: an RA with keyEncipherment if the CA has one, else the CA itself."""
    rsa_certs = [c for c in ca_certs if isinstance(c.public_key(), rsa.RSAPublicKey)]
    if not rsa_certs:
        raise ScepError("none of the CA certificates has an RSA key: SCEP cannot encrypt to it")
    for c in rsa_certs:
        if not _is_ca(c):
            try:
                ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
                if ku.key_encipherment:
                    return c
            except x509.ExtensionNotFound:
                return c
    return rsa_certs[0]


def _transient_cert(key: rsa.RSAPrivateKey, subject: x509.Name, now: datetime) -> x509.Certificate:
    """The self-signed certificate that carries our key in the request (RFC 8894 2.3)."""
    name = (
        subject
        if list(subject)
        else x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "SCEP requester")])
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _with_challenge(
    csr: x509.CertificateSigningRequest, key: rsa.RSAPrivateKey, challenge: str
) -> x509.CertificateSigningRequest:
    """``csr`` re-signed with a challengePassword attribute (when it lacks one)."""
    try:
        existing = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
    except x509.AttributeNotFound:
        existing = None
    if existing is not None:
        value = (
            existing.value.decode("utf-8", "replace")
            if isinstance(existing.value, bytes)
            else str(existing.value)
        )
        if value != challenge:
            raise ValueError("the CSR carries a different challengePassword than the one given")
        return csr
    builder = x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
    for ext in csr.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(key, hashes.SHA256())


def enroll(
    url: str,
    key: rsa.RSAPrivateKey,
    csr: x509.CertificateSigningRequest,
    ca_certs: Sequence[x509.Certificate],
    *,
    challenge: str | None = None,
    retry_count: int = 10,
    retry_interval: float = 5.0,
    timeout: float = DEFAULT_TIMEOUT,
    signer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    random: Callable[[int], bytes] = os.urandom,
) -> x509.Certificate:
    """Enroll ``csr`` (for ``key``) with the SCEP CA at ``url``; the issued certificate.

    ``challenge`` is added to the CSR as challengePassword if it is not there already. ``signer`` (the current
    certificate and its key) makes this a renewal (RenewalReq when the CA advertises Renewal). Raises
    :class:`ScepFailure` when the CA refuses, :class:`ScepPendingTimeout` when it is still PENDING after
    ``retry_count`` polls, :class:`ScepError`/:class:`~pki.fetch.FetchError` otherwise.
    """
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("SCEP enrollment needs an RSA key pair (the CA encrypts its answer to it)")
    if _spki(csr.public_key()) != _spki(key.public_key()):
        raise ValueError("the certificate request is not for this key")
    if not ca_certs:
        raise ValueError("no CA certificate: run GetCACert (ca-certificate enroll) first")
    if retry_count < 0 or retry_interval < 0:
        raise ValueError("retry_count and retry_interval must be >= 0")
    retry_count = min(retry_count, MAX_POLLS)
    if challenge:
        csr = _with_challenge(csr, key, challenge)

    caps = get_ca_caps(url, timeout=timeout)
    post = Capability.POSTPKIOperation.value in caps or Capability.SCEPStandard.value in caps
    cipher = (
        "aes128_cbc"
        if (Capability.AES.value in caps or Capability.SCEPStandard.value in caps)
        else "tripledes_3key"
    )
    if cipher not in m.CIPHERS:
        raise ScepError("the CA offers neither AES nor a cipher this system still supports")
    digest = (
        "sha256"
        if (
            Capability.SHA256.value in caps
            or Capability.SCEPStandard.value in caps
            or Capability.SHA512.value in caps
        )
        else "sha1"
    )
    recipient = _recipient(ca_certs)
    ca = next((c for c in ca_certs if _is_ca(c)), ca_certs[0])
    if signer is not None:
        sign_cert, sign_key = signer
        message_type = MessageType.RenewalReq if Capability.Renewal.value in caps else MessageType.PKCSReq
    else:
        sign_cert, sign_key = _transient_cert(key, csr.subject, now()), key
        message_type = MessageType.PKCSReq
    tid = m.transaction_id_for(key.public_key())

    def exchange(mtype: MessageType, payload: bytes) -> m.PkiMessage:
        nonce = random(16)
        request = m.sign_pki_message(
            message_type=mtype,
            transaction_id=tid,
            sender_nonce=nonce,
            signer_cert=sign_cert,
            signer_key=sign_key,
            envelope=m.envelope(payload, recipient, cipher=cipher, random=random),
            digest=digest,
            signing_time=now(),
        )
        if post:
            resp = http_request(
                "POST",
                _op_url(url, "PKIOperation"),
                request,
                "application/x-pki-message",
                timeout=timeout,
                max_size=MAX_MESSAGE_SIZE,
            )
        else:
            import base64

            resp = http_request(
                "GET",
                _op_url(url, "PKIOperation", base64.b64encode(request).decode()),
                timeout=timeout,
                max_size=MAX_MESSAGE_SIZE,
            )
        try:
            reply = m.parse_pki_message(resp.body, extra_signers=ca_certs)
        except ScepFailure as exc:
            raise ScepError(f"{url}: the CA's reply does not verify: {exc}") from None
        except ScepFormatError as exc:
            raise ScepError(f"{url}: the CA's reply is not a SCEP message: {exc}") from None
        if not any(reply.signer == c for c in ca_certs):
            raise ScepError(
                f"{url}: the reply is signed by {reply.signer.subject.rfc4514_string()}, "
                f"not by the CA certificate we trust"
            )
        if reply.message_type is not MessageType.CertRep:
            raise ScepError(f"{url}: expected a CertRep, got {reply.message_type.name}")
        if reply.transaction_id != tid:
            raise ScepError(f"{url}: the reply is for transaction {reply.transaction_id}, not {tid}")
        if reply.recipient_nonce != nonce:
            raise ScepError(f"{url}: the reply does not echo our nonce (replayed answer?)")
        if reply.pki_status is None:
            raise ScepError(f"{url}: the CertRep carries no pkiStatus")
        return reply

    reply = exchange(message_type, csr.public_bytes(Encoding.DER))
    polls = 0
    while reply.pki_status is PkiStatus.PENDING:
        if polls >= retry_count:
            raise ScepPendingTimeout(tid, polls)
        polls += 1
        log.info("SCEP %s pending at %s; poll %d/%d in %.0f s", tid, url, polls, retry_count, retry_interval)
        sleep(retry_interval)
        reply = exchange(MessageType.CertPoll, m.issuer_and_subject(ca.subject, csr.subject))
    if reply.pki_status is PkiStatus.FAILURE:
        from .constants import FailInfo

        raise ScepFailure(
            reply.fail_info if reply.fail_info is not None else FailInfo.badRequest,
            reply.fail_info_text or "the CA refused the request",
        )
    if reply.envelope is None:
        raise ScepError(f"{url}: SUCCESS without a certificate")
    try:
        inner = m.open_envelope(reply.envelope, sign_key if signer is not None else key, sign_cert)
    except ScepFailure as exc:
        raise ScepError(f"{url}: cannot open the CA's answer: {exc}") from None
    certs = m.parse_certs_only(inner)
    ours = _spki(key.public_key())
    for cert in certs:
        try:
            if _spki(cert.public_key()) != ours:
                continue
        except (ValueError, UnsupportedAlgorithm):
            continue
        if not any(_issued_by(cert, ca_cert) for ca_cert in ca_certs):
            raise ScepError(f"{url}: the certificate we got is not signed by the CA we trust")
        return cert
    raise ScepError(f"{url}: the CA's answer holds no certificate for our key")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _spki(key: object) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
