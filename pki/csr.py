"""PKCS#10 certificate requests: build (subject DN, SANs, optional SCEP challenge password), load and verify.

A request whose signature does not verify is refused at load time with :class:`~pki.errors.CsrSignatureError`:
the CA never sees a request without proof of possession. One signed with an algorithm we will not rely on for
that proof (MD5, MD2, anything we cannot check) is refused before, with :class:`~pki.errors.AlgorithmRefusedError`.
"""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import AttributeOID

from pki.certs import SubjectAltNames, _check_size, _short, parse_subject, sans_of
from pki.errors import AlgorithmRefusedError, CorruptInputError, CsrSignatureError
from pki.keys import PrivateKey

__all__ = ["build_csr", "challenge_password", "csr_to_pem", "load_csr", "parse_csr", "sans_of", "signing_hash", "verify_csr",
           "without_challenge"]


def signing_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    """The digest to sign with for a key: None for Ed25519 (PureEdDSA), SHA-384/512 for big EC curves."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    size = getattr(getattr(key, "curve", None), "key_size", 0)
    if size >= 521:
        return hashes.SHA512()
    if size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def build_csr(
    key: PrivateKey,
    subject: str | x509.Name,
    sans: SubjectAltNames | None = None,
    challenge_password: str | None = None,
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(parse_subject(subject))
    if sans:
        builder = builder.add_extension(sans.to_extension(), critical=False)
    if challenge_password is not None:
        # PrintableString would refuse many characters; UTF8String is what RFC 8894 clients send in practice
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge_password.encode("utf-8"))
    return builder.sign(key, signing_hash(key))  # type: ignore[arg-type]


#: digests too broken to prove possession of a key (SHA-1 is still accepted: older SCEP clients sign with it)
REFUSED_DIGESTS = frozenset({"md5", "md4", "md2"})


def check_signature_algorithm(csr: x509.CertificateSigningRequest, source: str = "certificate request") -> None:
    """Refuse a request signed with an algorithm we will not use, before its signature is looked at."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        h = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise AlgorithmRefusedError(f"{source}: signature algorithm not supported ({_short(exc)})") from None
    except Exception:  # an odd encoding: the signature check that follows reports it
        return
    if h is not None and h.name in REFUSED_DIGESTS:
        raise AlgorithmRefusedError(f"{source}: signed with {h.name.upper()}, which is refused")


def verify_csr(csr: x509.CertificateSigningRequest) -> None:
    check_signature_algorithm(csr)
    try:
        ok = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithm surfaces here
        raise CsrSignatureError(f"certificate request signature cannot be checked ({_short(exc)})") from None
    if not ok:
        raise CsrSignatureError("certificate request signature does not verify")


def load_csr(data: bytes, *, source: str = "certificate request") -> x509.CertificateSigningRequest:
    """Parse PEM or DER and verify the self-signature."""
    _check_size(data, source)
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        # force the lazily parsed parts now, not later in the CA
        csr.subject.rfc4514_string()
        csr.extensions
        csr.public_key()
    except Exception as exc:  # any failure to parse untrusted bytes (ValueError, KeyError, InvalidVersion ...)
        raise CorruptInputError(f"{source}: not a valid PKCS#10 request ({_short(exc)})") from None
    verify_csr(csr)
    return csr


def parse_csr(data: bytes, *, source: str = "certificate request") -> tuple[x509.CertificateSigningRequest, bool]:
    """Like :func:`load_csr`, but also accepts requests whose attribute SET is not in DER order (strongSwan 5.9's
    ``pki --req --password`` writes them; cryptography refuses to parse them).

    Such a request's signature is verified over its ORIGINAL bytes, then it is re-encoded in DER (which breaks the
    signature). Returns ``(csr, reencoded)``; when ``reencoded`` is True, pass ``pop_verified=True`` to
    :meth:`pki.ca.CertificateAuthority.issue`.
    """
    try:
        return load_csr(data, source=source), False
    except CorruptInputError as first:
        try:
            from asn1crypto import csr as asn1_csr  # only for this repair path
        except ImportError:  # pragma: no cover
            raise first from None
        try:
            req = asn1_csr.CertificationRequest.load(bytes(data) if not bytes(data).lstrip().startswith(b"-----")
                                                     else _pem_body(bytes(data)), strict=True)
            tbs = req["certification_request_info"].dump()
            normalized = req.dump(force=True)
            csr = x509.load_der_x509_csr(normalized)
            csr.subject.rfc4514_string()
            csr.extensions
            csr.public_key()
        except Exception:  # any parse failure of the repair path is the original error
            raise first from None
    _verify_over(csr, tbs, source)
    return csr, True


def _pem_body(data: bytes) -> bytes:
    import base64
    import re

    m = re.search(rb"-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----(.*?)-----END", data, re.DOTALL)
    if not m:
        raise ValueError("no CERTIFICATE REQUEST block")
    return base64.b64decode(b"".join(m.group(1).split()), validate=True)


def _verify_over(csr: x509.CertificateSigningRequest, tbs: bytes, source: str) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    check_signature_algorithm(csr, source)
    pub = csr.public_key()
    try:
        params = csr.signature_algorithm_parameters
        h = csr.signature_hash_algorithm
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(csr.signature, tbs, params if params is not None else padding.PKCS1v15(), h)  # type: ignore[arg-type]
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(csr.signature, tbs, ec.ECDSA(h))  # type: ignore[arg-type]
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(csr.signature, tbs)
        else:
            raise CsrSignatureError(f"{source}: unsupported key type {type(pub).__name__}")
    except InvalidSignature:
        raise CsrSignatureError(f"{source}: certificate request signature does not verify") from None
    except (TypeError, ValueError) as exc:
        raise CsrSignatureError(f"{source}: certificate request signature cannot be checked ({_short(exc)})") from None


def challenge_password(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        attr = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
    except x509.AttributeNotFound:
        return None
    except ValueError as exc:
        raise CorruptInputError(f"challengePassword attribute is malformed ({_short(exc)})") from None
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def without_challenge(csr: x509.CertificateSigningRequest) -> bytes:
    """The request's DER with the challengePassword attribute removed, for keeping it at rest.

    The challenge is a shared enrollment secret: once checked it must not be stored. The result's signature no
    longer verifies (the signed part changed), so it is only for requests whose proof of possession was already
    checked (issue them with ``pop_verified=True``). A request without a challenge is returned unchanged.
    """
    der = csr.public_bytes(serialization.Encoding.DER)
    try:
        csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD)
    except x509.AttributeNotFound:
        return der
    except ValueError:
        pass  # malformed attribute: drop it all the same
    from asn1crypto import csr as asn1_csr

    req = asn1_csr.CertificationRequest.load(der)
    info = req["certification_request_info"]
    kept = [a for a in info["attributes"] if a["type"].dotted != AttributeOID.CHALLENGE_PASSWORD.dotted_string]
    info["attributes"] = kept
    return bytes(req.dump(force=True))


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)
