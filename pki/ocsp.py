"""OCSP (RFC 6960): the responder's logic, and the client that checks one certificate.

The responder side is pure: :meth:`OcspResponder.respond` takes the request bytes, a lookup of serial numbers
and the time, and returns the signed response bytes; the HTTP service (``pki.service``) only moves bytes. A
request we cannot parse gets a ``malformedRequest`` response, never an exception.

The client side builds a request with a fresh nonce, and :func:`verify_response` accepts an answer only when
the signature verifies against the issuing CA (or a responder certificate that CA delegated with
id-kp-OCSPSigning), the CertID matches, the nonce is echoed, and the answer is current at ``at``.
:class:`OcspChecker` glues these to :func:`pki.fetch.http_post` for the validator; every failure is an
:class:`OcspError`, so the caller decides whether an unreachable responder fails closed.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from pki.errors import PkiError

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_VALIDITY",
    "MAX_REQUEST_SIZE",
    "MAX_RESPONSE_SIZE",
    "NONCE_LENGTH",
    "OcspCertStatus",
    "OcspChecker",
    "OcspError",
    "OcspResponder",
    "OcspResult",
    "SerialStatus",
    "build_request",
    "ocsp_urls",
    "verify_response",
]

#: Largest request the responder parses (a request for one certificate is ~100 bytes).
MAX_REQUEST_SIZE = 16 * 1024
#: Certificates asked about in one request (RFC 6960 allows a list).
MAX_CERTS_PER_REQUEST = 16
#: Largest response the client reads.
MAX_RESPONSE_SIZE = 64 * 1024
#: How long a response is good for (its nextUpdate - thisUpdate).
DEFAULT_VALIDITY = timedelta(hours=1)
#: Tolerance for clocks that disagree between responder and client.
CLOCK_SKEW = timedelta(minutes=5)
#: RFC 8954: a nonce of 1 to 32 octets; we send 16 octets.
NONCE_LENGTH = 16

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class OcspError(PkiError):
    """An OCSP answer could not be obtained or cannot be trusted (the reason says which)."""


class OcspCertStatus(str, enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SerialStatus:
    """What the CA database says about one serial (the responder's lookup returns this, or None)."""

    status: OcspCertStatus
    revocation_time: datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None


@dataclass(frozen=True)
class OcspResult:
    """A verified answer about one certificate."""

    status: OcspCertStatus
    this_update: datetime
    next_update: datetime | None
    produced_at: datetime
    revocation_time: datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None
    responder: x509.Certificate | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- hashing helpers


def _key_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    bits = asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:]  # drop the unused-bits octet
    h = hashes.Hash(algorithm)
    h.update(bits)
    return h.finalize()


def _name_hash(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(cert.subject.public_bytes())
    return h.finalize()


def _signature_hash(key: object) -> hashes.HashAlgorithm | None:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 384:
        return hashes.SHA512()
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _verify_signature(
    pub: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> None:
    if isinstance(pub, rsa.RSAPublicKey):
        assert algorithm is not None
        pub.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        assert algorithm is not None
        pub.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(pub, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        pub.verify(signature, data)
    elif isinstance(pub, dsa.DSAPublicKey):
        assert algorithm is not None
        pub.verify(signature, data, algorithm)
    else:
        raise InvalidSignature


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------- responder


class _Lookup(Protocol):
    def __call__(self, serial: int) -> SerialStatus | None: ...


@dataclass(frozen=True)
class OcspResponder:
    """Answers for the certificates ``issuer`` issued, signing as ``signer`` (the CA itself or a delegate)."""

    issuer: x509.Certificate
    signer: x509.Certificate
    signer_key: object = field(repr=False)
    lookup: _Lookup = field(repr=False)
    validity: timedelta = DEFAULT_VALIDITY

    def respond(self, request: bytes, at: datetime) -> bytes:
        """The DER OCSPResponse for ``request`` (malformedRequest / internalError responses included)."""
        if len(request) > MAX_REQUEST_SIZE or not request:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        try:
            req = ocsp.load_der_ocsp_request(bytes(request))
        except (
            NotImplementedError
        ):  # several certificates in one request: cryptography builds only one answer
            return self._respond_many(bytes(request), at)
        except (ValueError, UnsupportedAlgorithm, TypeError):
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        try:
            algorithm = req.hash_algorithm
            serial = req.serial_number
            name_hash, key_hash = req.issuer_name_hash, req.issuer_key_hash
            nonce = None
            for ext in req.extensions:
                if isinstance(ext.value, x509.OCSPNonce):
                    nonce = ext.value.nonce
        except (ValueError, NotImplementedError, UnsupportedAlgorithm, TypeError):
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if nonce is not None and not 1 <= len(nonce) <= 128:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        info = self._status(name_hash, key_hash, serial, algorithm, at)
        status = {
            OcspCertStatus.GOOD: ocsp.OCSPCertStatus.GOOD,
            OcspCertStatus.REVOKED: ocsp.OCSPCertStatus.REVOKED,
            OcspCertStatus.UNKNOWN: ocsp.OCSPCertStatus.UNKNOWN,
        }[info.status]
        rtime, reason = info.revocation_time, info.revocation_reason
        this_update = at.replace(microsecond=0)
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=name_hash,
                issuer_key_hash=key_hash,
                serial_number=serial,
                algorithm=algorithm,
                cert_status=status,
                this_update=this_update,
                next_update=this_update + self.validity,
                revocation_time=rtime.replace(microsecond=0) if rtime else None,
                revocation_reason=reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.signer)
        )
        if self.signer != self.issuer:
            builder = builder.certificates([self.signer])
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        try:
            return builder.sign(self.signer_key, _signature_hash(self.signer_key)).public_bytes(Encoding.DER)  # type: ignore[arg-type]
        except (ValueError, TypeError):  # pragma: no cover - a broken signer key: answer, do not crash
            return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)

    def _status(
        self, name_hash: bytes, key_hash: bytes, serial: int, algorithm: hashes.HashAlgorithm, at: datetime
    ) -> SerialStatus:
        """What to say about one CertID: unknown unless it names our issuer and a serial we issued."""
        ours = name_hash == _name_hash(self.issuer, algorithm) and key_hash == _key_hash(
            self.issuer, algorithm
        )
        info = self.lookup(serial) if ours else None
        if info is None or info.status not in (OcspCertStatus.GOOD, OcspCertStatus.REVOKED):
            return SerialStatus(OcspCertStatus.UNKNOWN)
        if info.status is OcspCertStatus.GOOD:
            return SerialStatus(OcspCertStatus.GOOD)
        reason = info.revocation_reason
        if reason is x509.ReasonFlags.unspecified:
            reason = None  # RFC 5280: the reason code "unspecified" SHOULD be absent
        return SerialStatus(OcspCertStatus.REVOKED, info.revocation_time or at, reason)

    def _respond_many(self, request: bytes, at: datetime) -> bytes:
        """A response with one SingleResponse per requested certificate, built with asn1crypto."""
        try:
            tbs = asn1_ocsp.OCSPRequest.load(request, strict=True)["tbs_request"]
            requests = list(tbs["request_list"])
            nonce_ext = None
            for ext in tbs["request_extensions"] or []:
                if ext["extn_id"].native == "nonce":
                    nonce_ext = ext["extn_value"].parsed.native
            singles = []
            if not 1 <= len(requests) <= MAX_CERTS_PER_REQUEST:
                return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
            this_update = at.replace(microsecond=0)
            for r in requests:
                cert_id = r["req_cert"]
                hname = cert_id["hash_algorithm"]["algorithm"].native
                if hname not in _HASHES:
                    return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
                info = self._status(
                    cert_id["issuer_name_hash"].native,
                    cert_id["issuer_key_hash"].native,
                    cert_id["serial_number"].native,
                    _HASHES[hname](),
                    at,
                )
                if info.status is OcspCertStatus.REVOKED:
                    assert info.revocation_time is not None
                    revoked: dict[str, object] = {
                        "revocation_time": info.revocation_time.replace(microsecond=0)
                    }
                    if info.revocation_reason is not None:
                        revoked["revocation_reason"] = info.revocation_reason.name
                    status = asn1_ocsp.CertStatus(name="revoked", value=revoked)
                elif info.status is OcspCertStatus.GOOD:
                    status = asn1_ocsp.CertStatus(name="good", value=asn1_core.Null())
                else:
                    status = asn1_ocsp.CertStatus(name="unknown", value=asn1_core.Null())
                singles.append(
                    {
                        "cert_id": cert_id.copy(),
                        "cert_status": status,
                        "this_update": this_update,
                        "next_update": this_update + self.validity,
                    }
                )
            data: dict[str, object] = {
                "responder_id": asn1_ocsp.ResponderId(
                    name="by_key", value=_key_hash(self.signer, hashes.SHA1())
                ),
                "produced_at": this_update,
                "responses": singles,
            }
            if isinstance(nonce_ext, bytes) and 1 <= len(nonce_ext) <= 128:
                data["response_extensions"] = [
                    {"extn_id": "nonce", "critical": False, "extn_value": nonce_ext}
                ]
            response_data = asn1_ocsp.ResponseData(data)
            algorithm, signature = _sign_tbs(self.signer_key, response_data.dump())
            basic: dict[str, object] = {
                "tbs_response_data": response_data,
                "signature_algorithm": algorithm,
                "signature": signature,
            }
            if self.signer != self.issuer:
                basic["certs"] = [asn1_x509.Certificate.load(self.signer.public_bytes(Encoding.DER))]
            return asn1_ocsp.OCSPResponse(
                {
                    "response_status": "successful",
                    "response_bytes": {
                        "response_type": "basic_ocsp_response",
                        "response": asn1_ocsp.BasicOCSPResponse(basic),
                    },
                }
            ).dump()
        except (ValueError, TypeError, KeyError, OverflowError, UnsupportedAlgorithm):
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)


def _sign_tbs(key: object, data: bytes) -> tuple[dict[str, str], bytes]:
    h = _signature_hash(key)
    if isinstance(key, rsa.RSAPrivateKey):
        assert h is not None
        return {"algorithm": f"{h.name}_rsa"}, key.sign(data, padding.PKCS1v15(), h)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert h is not None
        return {"algorithm": f"{h.name}_ecdsa"}, key.sign(data, ec.ECDSA(h))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return {"algorithm": "ed25519"}, key.sign(data)
    raise TypeError(f"cannot sign OCSP responses with {type(key).__name__}")


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)


# --------------------------------------------------------------------------- client


def build_request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A DER OCSPRequest for ``cert`` (CertID with SHA-1 by default, as responders universally accept)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def _authorised_signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime) -> x509.Certificate:
    """The certificate whose key must have signed ``resp``: the issuer, or a delegate it certified."""

    def matches(cert: x509.Certificate) -> bool:
        if resp.responder_name is not None:
            return cert.subject == resp.responder_name
        return resp.responder_key_hash == _key_hash(cert, hashes.SHA1())

    if matches(issuer):
        return issuer
    for cert in resp.certificates:
        if not matches(cert):
            continue
        if cert.issuer != issuer.subject:
            raise OcspError("the OCSP responder certificate was not issued by the certificate's CA")
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise OcspError("the OCSP responder certificate is not signed by the certificate's CA") from None
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise OcspError("the OCSP responder certificate lacks id-kp-OCSPSigning")
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise OcspError("the OCSP responder certificate is not valid now")
        return cert
    raise OcspError("the OCSP response is signed by a responder the CA did not authorise")


def verify_response(
    data: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    at: datetime,
    *,
    nonce: bytes | None = None,
    require_nonce: bool = True,
) -> OcspResult:
    """Check an OCSPResponse about ``cert`` (issued by ``issuer``) and return what it says."""
    if len(data) > MAX_RESPONSE_SIZE:
        raise OcspError(f"OCSP response larger than {MAX_RESPONSE_SIZE} bytes")
    try:
        resp = ocsp.load_der_ocsp_response(bytes(data))
    except (ValueError, TypeError) as exc:
        raise OcspError(f"not an OCSP response: {exc}") from None
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"OCSP responder answered {resp.response_status.name.lower()}")
    try:
        signer = _authorised_signer(resp, issuer, at)
        _verify_signature(
            signer.public_key(), resp.signature, resp.tbs_response_bytes, resp.signature_hash_algorithm
        )
    except InvalidSignature:
        raise OcspError("the OCSP response signature does not verify") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise OcspError(f"cannot verify the OCSP response signature: {exc}") from None

    got_nonce = None
    try:
        for ext in resp.extensions:
            if isinstance(ext.value, x509.OCSPNonce):
                got_nonce = ext.value.nonce
    except ValueError as exc:
        raise OcspError(f"bad OCSP response extensions: {exc}") from None
    if nonce is not None:
        if got_nonce is None and require_nonce:
            raise OcspError("the OCSP responder did not echo our nonce (replay protection)")
        if got_nonce is not None and got_nonce != nonce:
            raise OcspError("the OCSP response nonce does not match the request (replayed response?)")

    single = None
    for r in resp.responses:
        algorithm = r.hash_algorithm
        if (
            r.serial_number == cert.serial_number
            and r.issuer_name_hash == _name_hash(issuer, algorithm)
            and r.issuer_key_hash == _key_hash(issuer, algorithm)
        ):
            single = r
            break
    if single is None:
        raise OcspError("the OCSP response does not cover this certificate")
    this_update = _aware(single.this_update_utc)
    next_update = _aware(single.next_update_utc)
    assert this_update is not None
    if this_update > at + CLOCK_SKEW:
        raise OcspError(f"the OCSP response is from the future (thisUpdate {this_update:%Y-%m-%d %H:%M:%SZ})")
    if next_update is not None and next_update < at - CLOCK_SKEW:
        raise OcspError(f"the OCSP response is stale (nextUpdate {next_update:%Y-%m-%d %H:%M:%SZ})")
    status = {
        ocsp.OCSPCertStatus.GOOD: OcspCertStatus.GOOD,
        ocsp.OCSPCertStatus.REVOKED: OcspCertStatus.REVOKED,
        ocsp.OCSPCertStatus.UNKNOWN: OcspCertStatus.UNKNOWN,
    }[single.certificate_status]
    return OcspResult(
        status=status,
        this_update=this_update,
        next_update=next_update,
        produced_at=_aware(resp.produced_at_utc) or this_update,
        revocation_time=_aware(single.revocation_time_utc) if status is OcspCertStatus.REVOKED else None,
        revocation_reason=single.revocation_reason if status is OcspCertStatus.REVOKED else None,
        responder=signer,
    )


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    """The OCSP responder URLs a certificate names in its Authority Information Access extension."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


Transport = Callable[[str, bytes], bytes]


class OcspChecker:
    """Asks a responder about one certificate; what the validator calls when a ca-profile says ``ocsp``.

    ``url`` overrides the certificate's AIA responder (JUNOS ``revocation-check ocsp url``). ``transport`` is
    injectable for tests; by default it is :func:`pki.fetch.http_post` with this checker's timeout.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 10.0,
        use_nonce: bool = True,
        require_nonce: bool = True,
        transport: Transport | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.use_nonce = use_nonce
        self.require_nonce = require_nonce
        self._transport = transport
        self._random = random

    def _post(self, url: str, body: bytes) -> bytes:
        from pki.fetch import FetchError, http_post  # I/O lives in fetch.py

        try:
            if self._transport is not None:  # an injected transport fails the way sockets do
                return self._transport(url, body)
            return http_post(
                url, body, "application/ocsp-request", timeout=self.timeout, max_size=MAX_RESPONSE_SIZE
            )
        except (FetchError, OSError) as exc:
            raise OcspError(f"OCSP responder unreachable: {exc}") from None

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, at: datetime) -> OcspResult:
        """Query and verify; raises :class:`OcspError` when no trustworthy answer was obtained."""
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        urls = [self.url] if self.url else ocsp_urls(cert)
        if not urls:
            raise OcspError(
                "no OCSP responder: the certificate has no AIA OCSP URL and the profile names none"
            )
        nonce = self._random(NONCE_LENGTH) if self.use_nonce else None
        request = build_request(cert, issuer, nonce=nonce)
        errors = []
        for url in urls:
            try:
                data = self._post(url, request)
                return verify_response(data, cert, issuer, at, nonce=nonce, require_nonce=self.require_nonce)
            except OcspError as exc:
                errors.append(f"{url}: {exc}")
        raise OcspError("; ".join(errors))
