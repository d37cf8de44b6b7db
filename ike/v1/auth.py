"""IKEv1 main mode with signatures (RFC 2409 5.1, RFC 4754): SIG over HASH_I/HASH_R, CERT and CERT_REQ payloads,
identities matched against the peer's certificate and the chain checked by the same validator as IKEv2.

Why a module of its own: the session (session.py/responder.py) only decides *when* to sign and verify; what a
signature is in IKEv1, which identity a certificate proves and which ISAKMP notify answers a failure live here,
beside IKEv2's authenticators, whose certificate parsing and identity rules are reused as they are.

The signature is made over HASH_I/HASH_R itself, as strongSwan does (``SIGN_RSA_EMSA_PKCS1_NULL``: PKCS#1 v1.5
padding with no DigestInfo; ``SIGN_ECDSA_WITH_NULL``: ECDSA with HASH_I as the digest, r||s of the curve's size).
The authentication method of the ISAKMP SA names the key: RSA signatures (3) or ECDSA on P-256/384/521 (9/10/11).
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from ..authenticators import peer_certificates
from ..core_config import Identity
from ..errors import AuthenticationFailedError, IkeError, ParseError
from ..payloads.ident import identity_from_wire, identity_to_wire
from ..tasks.ike_auth import identities_match, identity_matches_cert
from . import keymat as km
from .message import Exchange, Payload, PayloadType, push_chain

__all__ = [
    "AUTH_NOTIFIES",
    "AUTH_PSK",
    "AUTH_RSA_SIG",
    "ECDSA_METHODS",
    "NOTIFY_NAMES",
    "SignatureAuth",
    "V1AuthError",
    "auth_method",
    "cert_payloads",
    "certreq_payloads",
    "id_body",
    "identity_of",
    "method_name",
    "notify_datagram",
    "read_notify",
    "sign",
    "verify_peer",
    "verify_signature",
]

log = logging.getLogger("ike.v1.auth")

AUTH_PSK, AUTH_RSA_SIG = 1, 3
#: RFC 4754: the method names the curve and its hash
ECDSA_METHODS = {"secp256r1": 9, "secp384r1": 10, "secp521r1": 11}
_METHOD_CURVE = {v: k for k, v in ECDSA_METHODS.items()}
CERT_X509_SIGNATURE = 4
#: RFC 2408 3.14.1 notify message types a failed main mode answers with
INVALID_ID_INFORMATION, INVALID_CERT_ENCODING, INVALID_CERTIFICATE = 18, 19, 20
AUTHENTICATION_FAILED, INVALID_SIGNATURE = 24, 25
NOTIFY_NAMES = {14: "NO-PROPOSAL-CHOSEN", 16: "PAYLOAD-MALFORMED", 18: "INVALID-ID-INFORMATION",
                19: "INVALID-CERT-ENCODING", 20: "INVALID-CERTIFICATE", 22: "INVALID-CERT-AUTHORITY",
                23: "INVALID-HASH-INFORMATION", 24: "AUTHENTICATION-FAILED", 25: "INVALID-SIGNATURE"}
#: the notifies that say the peer did not accept our authentication (identity, certificate, hash, signature)
AUTH_NOTIFIES = frozenset({18, 19, 20, 22, 23, 24, 25})
#: a certificate request names at most this many CAs (a bound on what we build from configuration)
MAX_CERTREQ = 16
DOI_IPSEC, PROTO_ISAKMP = 1, 1
_DIGESTS: dict[int, Any] = {20: hashes.SHA1, 32: hashes.SHA256, 48: hashes.SHA384, 64: hashes.SHA512}


class V1AuthError(AuthenticationFailedError):
    """Main mode authentication failed; ``notify`` is the RFC 2408 type that tells the peer why."""

    def __init__(self, reason: str, notify: int = AUTHENTICATION_FAILED) -> None:
        super().__init__(reason)
        self.notify = notify


@dataclass(frozen=True)
class SignatureAuth:
    """Certificate authentication of one IKEv1 connection (``auth = pubkey`` in swanctl terms).

    ``chain``: intermediates sent after our certificate. ``ca_certs``: the CAs our CERT_REQ names (the trust
    anchors of ``validator``). ``validator`` is ``pki.validate.Validator.verify`` or anything with its signature
    (leaf, intermediates, at, identity); ``wall_clock`` turns the core's monotonic ``now`` into the aware UTC
    time certificates are checked at (the core reads no clock)."""

    private_key: Any = field(repr=False)
    certificate: x509.Certificate
    validator: Callable[[Any, Sequence[Any], datetime, Identity], object]
    wall_clock: Callable[[float], datetime]
    chain: tuple[x509.Certificate, ...] = ()
    ca_certs: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        auth_method(self.private_key)  # a key IKEv1 cannot sign with is a configuration error, raised now
        if len(self.ca_certs) > MAX_CERTREQ:
            raise ValueError(f"at most {MAX_CERTREQ} CAs in a certificate request")


def method_name(method: int) -> str:
    """What list-sas and the events say for an ISAKMP authentication method (as strongSwan prints it)."""
    if method == AUTH_PSK:
        return "psk"
    if method == AUTH_RSA_SIG:
        return "rsa"
    return f"ecdsa-{_METHOD_CURVE[method][4:7]}" if method in _METHOD_CURVE else str(method)


def auth_method(key: Any) -> int:
    """The ISAKMP authentication method our private key signs with (both sides must propose the same)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return AUTH_RSA_SIG
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ECDSA_METHODS:
        return ECDSA_METHODS[key.curve.name]
    raise ValueError(f"IKEv1 signs with RSA or ECDSA P-256/384/521 keys, not {type(key).__name__}")


# --- identities ---------------------------------------------------------------------------------------------


def id_body(text: str, certificate: x509.Certificate | None = None) -> bytes:
    """The phase-1 ID payload body (type, protocol 0, port 0, data) of a swanctl identity: ``@fqdn``, an address,
    ``user@host`` or a DN. A DN that names our certificate is sent as exactly its subject's DER."""
    ident = Identity.parse(text)
    id_type, data = identity_to_wire(ident)
    if ident.kind == "dn" and certificate is not None and identity_matches_cert(ident, certificate):
        data = certificate.subject.public_bytes()
    return struct.pack("!BBH", id_type, 0, 0) + data


def identity_of(body: bytes) -> Identity:
    """The identity a peer's phase-1 ID payload names; ParseError when it names none."""
    if len(body) < 5:
        raise ParseError(f"identification payload of {len(body)} bytes")
    if body[0] not in (1, 2, 3, 5, 9, 11):
        raise ParseError(f"identification type {body[0]} cannot name a peer")
    return identity_from_wire(body[0], bytes(body[4:]))


# --- signatures ---------------------------------------------------------------------------------------------


def _emsa_pkcs1_null(digest: bytes, k: int) -> int:
    """EMSA-PKCS1-v1_5 type 1 without a DigestInfo (RFC 2409 signs HASH_I as it is, as strongSwan does)."""
    if len(digest) > k - 11:
        raise ValueError("hash too long for the RSA key")
    return int.from_bytes(b"\x00\x01" + b"\xff" * (k - 3 - len(digest)) + b"\x00" + digest, "big")


def sign(key: Any, digest: bytes, random: Callable[[int], bytes]) -> bytes:
    """SIG payload data for HASH_I/HASH_R ``digest`` with our private key; ``random`` (the core's RandomSource)
    blinds the RSA private operation."""
    if isinstance(key, rsa.RSAPrivateKey):
        # cryptography signs only with a DigestInfo; the raw private operation, blinded and checked
        priv = key.private_numbers()
        pub = priv.public_numbers
        k = (pub.n.bit_length() + 7) // 8
        m = _emsa_pkcs1_null(digest, k)
        while True:
            r = int.from_bytes(random(k), "big") % pub.n
            if r > 1:
                try:
                    r_inv = pow(r, -1, pub.n)
                    break
                except ValueError:
                    continue
        blinded = (m * pow(r, pub.e, pub.n)) % pub.n
        s1 = pow(blinded % priv.p, priv.dmp1, priv.p)
        s2 = pow(blinded % priv.q, priv.dmq1, priv.q)
        s = (s2 + priv.q * ((priv.iqmp * (s1 - s2)) % priv.p)) * r_inv % pub.n
        if pow(s, pub.e, pub.n) != m:  # a fault in the private operation must not leak a bad signature
            raise IkeError("RSA signature self-check failed")
        return s.to_bytes(k, "big")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        r_, s_ = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(_DIGESTS[len(digest)]()))))
        return r_.to_bytes(size, "big") + s_.to_bytes(size, "big")
    raise ValueError(f"cannot sign with {type(key).__name__}")


def verify_signature(method: int, cert: x509.Certificate, digest: bytes, sig: bytes) -> None:
    """Does ``sig`` sign ``digest`` with the key of ``cert`` by ``method``? V1AuthError(INVALID-SIGNATURE) if not."""
    pub = cert.public_key()
    try:
        if method == AUTH_RSA_SIG:
            if not isinstance(pub, rsa.RSAPublicKey):
                raise V1AuthError("RSA signature method but the certificate key is not RSA", INVALID_SIGNATURE)
            if len(sig) != (pub.key_size + 7) // 8 or \
                    pub.recover_data_from_signature(sig, padding.PKCS1v15(), None) != digest:
                raise InvalidSignature()
            return
        if method in _METHOD_CURVE:
            if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != _METHOD_CURVE[method]:
                raise V1AuthError(f"ECDSA method {method} does not match the certificate key", INVALID_SIGNATURE)
            size = (pub.curve.key_size + 7) // 8
            if len(sig) != 2 * size:
                raise InvalidSignature()
            der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
            pub.verify(der, digest, ec.ECDSA(Prehashed(_DIGESTS[len(digest)]())))
            return
    except InvalidSignature:
        raise V1AuthError("signature does not verify", INVALID_SIGNATURE) from None
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm) as exc:
        raise V1AuthError(f"malformed signature: {exc}", INVALID_SIGNATURE) from None
    raise V1AuthError(f"authentication method {method} is not a signature method", INVALID_SIGNATURE)


# --- CERT and CERT_REQ ----------------------------------------------------------------------------------------


def cert_payloads(auth: SignatureAuth) -> list[Payload]:
    """CERT payloads (X.509 signature encoding): our certificate, then the intermediates up to our CA."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return [Payload(PayloadType.CERT, bytes([CERT_X509_SIGNATURE]) + c.public_bytes(Encoding.DER))
            for c in (auth.certificate, *auth.chain)]


def certreq_payloads(auth: SignatureAuth) -> list[Payload]:
    """CERT_REQ payloads naming each CA we trust by its subject DN (RFC 2408 3.10), or one naming none."""
    if not auth.ca_certs:
        return [Payload(PayloadType.CR, bytes([CERT_X509_SIGNATURE]))]
    return [Payload(PayloadType.CR, bytes([CERT_X509_SIGNATURE]) + ca.subject.public_bytes()) for ca in auth.ca_certs]


def verify_peer(auth: SignatureAuth, method: int, payloads: list[Payload], id_payload: bytes, digest: bytes,
                remote_id: str, now: float) -> Identity:
    """Authenticate the peer of main mode message 5 or 6: its ID is the configured one and is in its certificate,
    the chain validates (intermediates, revocation) and SIG signs ``digest`` (its HASH_I/HASH_R). Returns the
    identity; raises V1AuthError carrying the notify to answer with."""
    try:
        identity = identity_of(id_payload)
    except ParseError as exc:
        raise V1AuthError(f"peer identity: {exc.reason}", INVALID_ID_INFORMATION) from None
    want = Identity.parse(remote_id)
    if not identities_match(want, identity):
        raise V1AuthError(f"peer identity {identity} is not the configured {want}", INVALID_ID_INFORMATION)
    ders = []
    for p in payloads:
        if p.type == PayloadType.CERT:
            if not p.body or p.body[0] != CERT_X509_SIGNATURE:
                raise V1AuthError(f"certificate encoding {p.body[:1].hex() or 'none'} is not X.509 signature",
                                  INVALID_CERT_ENCODING)
            ders.append(bytes(p.body[1:]))
    sigs = [p.body for p in payloads if p.type == PayloadType.SIG]
    if len(sigs) != 1:
        raise V1AuthError(f"{len(sigs)} SIG payloads where one is required", INVALID_SIGNATURE)
    try:
        certs = peer_certificates(ders)
    except AuthenticationFailedError as exc:
        raise V1AuthError(exc.reason, INVALID_CERT_ENCODING if ders else INVALID_CERTIFICATE) from None
    leaf, intermediates = certs[0], certs[1:]
    if not identity_matches_cert(identity, leaf):
        raise V1AuthError(f"identity {identity} is not in the certificate {leaf.subject.rfc4514_string()}",
                          INVALID_ID_INFORMATION)
    try:
        auth.validator(leaf, intermediates, auth.wall_clock(now), identity)
    except Exception as exc:  # noqa: BLE001 - the validator's rejection, whatever its class
        reason = getattr(exc, "reason", None)
        detail = getattr(exc, "detail", "")
        text = str(getattr(reason, "value", reason) or exc) + (f" ({detail})" if detail else "")
        raise V1AuthError(f"certificate rejected: {text}", AUTHENTICATION_FAILED) from None
    verify_signature(method, leaf, digest, sigs[0])
    return identity


# --- the notify that tells the peer why ------------------------------------------------------------------------


def notify_datagram(cipher: km.Phase1Cipher, keys: km.Phase1Keys, cky_i: bytes, cky_r: bytes, notify: int,
                    message_id: int) -> bytes:
    """An informational exchange (RFC 2409 5.7: HASH(1), N) carrying ``notify`` about this ISAKMP SA,
    encrypted under its phase-1 keys."""
    n = Payload(PayloadType.N, struct.pack("!IBBH", DOI_IPSEC, PROTO_ISAKMP, 16, notify) + cky_i + cky_r)
    h = km.info_hash(keys, message_id, push_chain([n])[1])
    out = cipher.encrypt(cky_i, cky_r, Exchange.INFORMATIONAL, message_id, [Payload(PayloadType.HASH, h), n])
    cipher.forget(message_id)
    return out


def read_notify(cipher: km.Phase1Cipher, keys: km.Phase1Keys, data: bytes) -> int | None:
    """The notify type of an authenticated informational exchange, or None when ``data`` is not one (or its
    HASH does not verify: an unauthenticated notify must not end a main mode)."""
    import hmac

    try:
        h, payloads = cipher.decrypt(data)
    except ParseError:
        return None
    if h.exchange != Exchange.INFORMATIONAL or not h.message_id or len(payloads) < 2 \
            or payloads[0].type != PayloadType.HASH:
        return None
    if not hmac.compare_digest(km.info_hash(keys, h.message_id, push_chain(payloads[1:])[1]), payloads[0].body):
        return None
    cipher.forget(h.message_id)
    for p in payloads[1:]:
        if p.type == PayloadType.N and len(p.body) >= 8:
            return int(struct.unpack_from("!H", p.body, 6)[0])
    return None
