"""AUTH payload computation and checking (RFC 7296 2.15, RFC 4754, RFC 7427, RFC 8420).

Methods: shared key (2), RSA signature (1: PKCS#1 v1.5 with SHA-1, as strongSwan sends it), ECDSA (9, 10,
11: raw r||s), and Digital Signature (14: an AlgorithmIdentifier, then RSA-PSS / PKCS#1 v1.5 with SHA-2,
DER ECDSA or Ed25519). Certificates of the peer are checked by the validator the configuration supplies
(pki.validate); this module only proves possession of the key.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .auth_constraints import AuthConstraints, key_type
from .constants import AuthMethod, HashAlgorithm
from .errors import AuthenticationFailedError
from .keymat import prf

__all__ = ["signed_octets", "psk_auth", "sign_auth", "verify_auth", "key_hash", "SUPPORTED_HASHES",
           "verify_auth_scheme", "select_signature", "pki_validator", "auth_method_name", "peer_certificates",
           "MAX_CERT_SIZE", "MAX_PEER_CERTS"]

#: Bounds on what a peer makes us parse in IKE_AUTH: bytes per certificate, and certificates (leaf first).
MAX_CERT_SIZE = 16384
MAX_PEER_CERTS = 17

KEY_PAD = b"Key Pad for IKEv2"
SUPPORTED_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512,
                    HashAlgorithm.IDENTITY)

_HASH: dict[int, Any] = {HashAlgorithm.SHA2_256: hashes.SHA256, HashAlgorithm.SHA2_384: hashes.SHA384,
         HashAlgorithm.SHA2_512: hashes.SHA512}
# RFC 7427 appendix A AlgorithmIdentifier DER, keyed by (scheme, hash)
_ALG_IDS: dict[tuple[str, int], bytes] = {
    ("rsa-pkcs1", HashAlgorithm.SHA2_256): bytes.fromhex("300d06092a864886f70d01010b0500"),
    ("rsa-pkcs1", HashAlgorithm.SHA2_384): bytes.fromhex("300d06092a864886f70d01010c0500"),
    ("rsa-pkcs1", HashAlgorithm.SHA2_512): bytes.fromhex("300d06092a864886f70d01010d0500"),
    ("ecdsa", HashAlgorithm.SHA2_256): bytes.fromhex("300a06082a8648ce3d040302"),
    ("ecdsa", HashAlgorithm.SHA2_384): bytes.fromhex("300a06082a8648ce3d040303"),
    ("ecdsa", HashAlgorithm.SHA2_512): bytes.fromhex("300a06082a8648ce3d040304"),
    ("ed25519", HashAlgorithm.IDENTITY): bytes.fromhex("300506032b6570"),
}
_PSS_OID_PREFIX = bytes.fromhex("06092a864886f70d01010a")
_ECDSA_CLASSIC: dict[str, Any] = {"secp256r1": (AuthMethod.ECDSA_SHA256_P256, hashes.SHA256, 32),
                  "secp384r1": (AuthMethod.ECDSA_SHA384_P384, hashes.SHA384, 48),
                  "secp521r1": (AuthMethod.ECDSA_SHA512_P521, hashes.SHA512, 66)}


def key_hash(cert: Any) -> bytes:
    """SHA-1 of a certificate's SubjectPublicKeyInfo: what CERTREQ carries for its issuer (RFC 7296 3.7)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(spki).digest()  # noqa: S324 - mandated by RFC 7296


def peer_certificates(ders: Sequence[bytes]) -> list[x509.Certificate]:
    """The peer's CERT payloads (X.509 signature encoding, leaf first) as certificates, fully parsed.

    The one place where bytes a peer sent become certificate objects. ``cryptography`` parses lazily (an
    extension or key is decoded at first access and may raise then, anywhere); ``pki.certs`` touches every
    part at load, so after this call nothing about these objects can raise, and anything malformed is
    AUTHENTICATION_FAILED here (RFC 7296 2.21.2) rather than an exception deep in a task."""
    from pki.certs import load_der_certificate
    from pki.errors import PkiError

    if not ders:
        raise AuthenticationFailedError("peer sent no certificate")
    if len(ders) > MAX_PEER_CERTS:
        raise AuthenticationFailedError(f"peer sent {len(ders)} certificates (max {MAX_PEER_CERTS})")
    out = []
    for n, der in enumerate(ders):
        if len(der) > MAX_CERT_SIZE:
            raise AuthenticationFailedError(f"certificate #{n + 1} is larger than {MAX_CERT_SIZE} bytes")
        try:
            out.append(load_der_certificate(der, source=f"certificate #{n + 1}"))
        except PkiError as exc:
            raise AuthenticationFailedError(f"unparsable {exc}") from None
    return out


def signed_octets(message: bytes, peer_nonce: bytes, prf_name: str, sk_p: bytes, id_rest: bytes) -> bytes:
    """<SignedOctets> = RealMessage | NonceData of the peer | prf(SK_p, RestOfIDPayload)."""
    return message + peer_nonce + prf(prf_name, sk_p, id_rest)


def psk_auth(prf_name: str, psk: bytes, octets: bytes) -> bytes:
    return prf(prf_name, prf(prf_name, psk, KEY_PAD), octets)


def _pss_alg_id(h: int) -> bytes:
    from asn1crypto import algos  # type: ignore[import-untyped]

    name = {HashAlgorithm.SHA2_256: "sha256", HashAlgorithm.SHA2_384: "sha384",
            HashAlgorithm.SHA2_512: "sha512"}[HashAlgorithm(h)]
    params = algos.RSASSAPSSParams({
        "hash_algorithm": {"algorithm": name},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": name}},
        "salt_length": _HASH[HashAlgorithm(h)]().digest_size,
    })
    return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params}).dump()


def auth_method_name(method: int, data: bytes = b"") -> str:
    if method == AuthMethod.PSK:
        return "psk"
    if method == AuthMethod.RSA_SIG:
        return "rsa"
    if method in (9, 10, 11):
        return "ecdsa"
    if method == AuthMethod.DIGITAL_SIGNATURE:
        try:
            scheme, h, _, _ = _parse_alg_id(data)
            return f"signature({scheme}-{HashAlgorithm(h).name.lower()})"
        except AuthenticationFailedError:
            return "signature"
    return str(method)


def sign_auth(key: Any, octets: bytes, peer_hashes: Iterable[int] | None, rsa_pss: bool = False,
              constraints: AuthConstraints | None = None) -> tuple[int, bytes]:
    """(AUTH method, AUTH data) signing ``octets`` with our private key. ``peer_hashes`` is the peer's
    SIGNATURE_HASH_ALGORITHMS (None when it sent none: then the classic methods 1 and 9-11).

    ``constraints`` (our ``auth``, e.g. ``rsa/pss-sha384``) choose the scheme and hash: the first allowed one
    the peer announced; none is AuthenticationFailedError rather than a signature the peer would refuse."""
    if constraints is not None and constraints.entries:
        return _sign_constrained(key, octets, peer_hashes, rsa_pss, constraints)
    hs = [h for h in SUPPORTED_HASHES if peer_hashes is not None and h in set(peer_hashes)]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if HashAlgorithm.IDENTITY not in hs:
            raise AuthenticationFailedError("Ed25519 needs RFC 8420 (peer did not announce the Identity hash)")
        alg = _ALG_IDS[("ed25519", HashAlgorithm.IDENTITY)]
        return AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + key.sign(octets)
    sha2 = [h for h in hs if h != HashAlgorithm.IDENTITY]
    if isinstance(key, rsa.RSAPrivateKey):
        if not sha2:
            return AuthMethod.RSA_SIG, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
        h = sha2[0]
        if rsa_pss:
            alg = _pss_alg_id(h)
            pad: Any = padding.PSS(padding.MGF1(_HASH[h]()), _HASH[h]().digest_size)
        else:
            alg = _ALG_IDS[("rsa-pkcs1", h)]
            pad = padding.PKCS1v15()
        return AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + key.sign(octets, pad, _HASH[h]())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        method, halg, size = _ECDSA_CLASSIC.get(key.curve.name, (None, None, 0))  # type: Any, Any, int
        if not sha2:
            if method is None:
                raise AuthenticationFailedError(f"no classic ECDSA method for curve {key.curve.name}")
            r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(halg())))
            return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
        want = {"secp256r1": HashAlgorithm.SHA2_256, "secp384r1": HashAlgorithm.SHA2_384,
                "secp521r1": HashAlgorithm.SHA2_512}.get(key.curve.name, sha2[0])
        h = want if want in sha2 else sha2[0]
        alg = _ALG_IDS[("ecdsa", h)]
        return AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + key.sign(octets, ec.ECDSA(_HASH[h]()))
    raise AuthenticationFailedError(f"unsupported private key type {type(key).__name__}")


_CURVE_HASH = {"secp256r1": HashAlgorithm.SHA2_256, "secp384r1": HashAlgorithm.SHA2_384,
               "secp521r1": HashAlgorithm.SHA2_512}


def select_signature(key: Any, peer_hashes: Iterable[int] | None, rsa_pss: bool,
                     c: AuthConstraints) -> tuple[str, HashAlgorithm | None, bool]:
    """(scheme, hash, classic method) our ``auth`` constraints choose for ``key`` given the peer's
    SIGNATURE_HASH_ALGORITHMS, without signing: a responder checks it before it calls the IKE_SA established.
    Raises AuthenticationFailedError when nothing allowed is possible."""
    kind = key_type(key)
    announced = set(peer_hashes) if peer_hashes is not None else None
    sha2 = [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512]
    if kind == "ecdsa":  # without a stated hash, one as strong as the key first (strongSwan's default)
        first = _CURVE_HASH.get(key.curve.name, HashAlgorithm.SHA2_256)
        sha2 = [first] + [h for h in sha2 if h != first]
    for entry, want in c.hash_preference(kind):
        for h in ([want] if want is not None else (sha2 if kind != "ed25519" else [HashAlgorithm.IDENTITY])):
            if announced is None:  # no RFC 7427: only the classic methods, and only if they fit
                if kind == "rsa" and entry in ("pubkey", "rsa") and want in (None, HashAlgorithm.SHA1):
                    return "rsa-pkcs1", HashAlgorithm.SHA1, True
                if kind == "ecdsa" and h == _CURVE_HASH.get(key.curve.name):
                    return "ecdsa", h, True
                continue
            if h not in announced:
                continue
            if kind == "ed25519" and h == HashAlgorithm.IDENTITY:
                return "ed25519", h, False
            if h not in _HASH or kind not in ("ecdsa", "rsa"):
                continue
            if kind == "ecdsa":
                return "ecdsa", h, False
            return ("rsa-pss" if entry == "rsa/pss" or (entry == "pubkey" and rsa_pss) else "rsa-pkcs1"), h, False
    offered = "none (no RFC 7427)" if announced is None else \
        ", ".join(HashAlgorithm(h).name if h in HashAlgorithm._value2member_map_ else str(h) for h in sorted(announced))
    raise AuthenticationFailedError(f"constraint auth = {c.text} cannot be met with our {kind} key: "
                                    f"peer announced hashes {offered}")


def _sign_constrained(key: Any, octets: bytes, peer_hashes: Iterable[int] | None, rsa_pss: bool,
                      c: AuthConstraints) -> tuple[int, bytes]:
    scheme, h, classic = select_signature(key, peer_hashes, rsa_pss, c)
    if classic and scheme == "rsa-pkcs1":
        return AuthMethod.RSA_SIG, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    if classic:
        method, halg, size = _ECDSA_CLASSIC[key.curve.name]
        r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(halg())))
        return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert h is not None
    if scheme == "ed25519":
        alg = _ALG_IDS[("ed25519", HashAlgorithm.IDENTITY)]
        return AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + key.sign(octets)
    if scheme == "ecdsa":
        alg = _ALG_IDS[("ecdsa", h)]
        return AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + key.sign(octets, ec.ECDSA(_HASH[h]()))
    if scheme == "rsa-pss":
        alg = _pss_alg_id(h)  # salt length = hash length (RFC 8247 3.2)
        pad: Any = padding.PSS(padding.MGF1(_HASH[h]()), _HASH[h]().digest_size)
    else:
        alg = _ALG_IDS[("rsa-pkcs1", h)]
        pad = padding.PKCS1v15()
    return AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + key.sign(octets, pad, _HASH[h]())


def _parse_alg_id(data: bytes) -> tuple[str, int, bytes, int]:
    """(scheme, hash, signature, PSS salt length or -1) from method-14 AUTH data."""
    if not data:
        raise AuthenticationFailedError("empty AUTH data")
    n = data[0]
    alg, sig = data[1:1 + n], data[1 + n:]
    if len(alg) != n or not sig:
        raise AuthenticationFailedError("truncated RFC 7427 AlgorithmIdentifier")
    for (scheme, h), der in _ALG_IDS.items():
        if der == alg:
            return scheme, h, sig, -1
    if _PSS_OID_PREFIX in alg[:16]:
        h, salt = _pss_params(alg)
        return "rsa-pss", h, sig, salt
    raise AuthenticationFailedError(f"unsupported signature algorithm {alg.hex()}")


def _pss_params(alg: bytes) -> tuple[int, int]:
    """Hash and salt length of an RSASSA-PSS AlgorithmIdentifier, however the peer encoded the defaults."""
    from asn1crypto import algos

    try:
        parsed = algos.SignedDigestAlgorithm.load(alg)
        params = parsed["parameters"]
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
        salt = int(params["salt_length"].native)
    except Exception as exc:  # noqa: BLE001 - any malformed encoding
        raise AuthenticationFailedError(f"malformed RSASSA-PSS parameters: {exc}") from None
    by_name = {"sha256": HashAlgorithm.SHA2_256, "sha384": HashAlgorithm.SHA2_384, "sha512": HashAlgorithm.SHA2_512}
    if hash_name not in by_name or mgf_hash != hash_name or not 0 <= salt <= 512:
        raise AuthenticationFailedError(f"unsupported RSASSA-PSS parameters ({hash_name}, MGF1 {mgf_hash}, {salt})")
    return by_name[hash_name], salt


def verify_auth(method: int, data: bytes, cert: Any, octets: bytes) -> str:
    """Check a signature AUTH against the peer's certificate. Returns a method name for the log."""
    return verify_auth_scheme(method, data, cert, octets)[0]


def verify_auth_scheme(method: int, data: bytes, cert: Any, octets: bytes) -> tuple[str, str, int | None]:
    """Check a signature AUTH; (name for the log, scheme, hash) of what the peer signed with, so that
    ``remote_auth`` constraints can judge it (scheme: rsa-pkcs1, rsa-pss, ecdsa, ed25519)."""
    pub = cert.public_key() if isinstance(cert, x509.Certificate) else cert
    try:
        if method == AuthMethod.RSA_SIG:
            if not isinstance(pub, rsa.RSAPublicKey):
                raise AuthenticationFailedError("AUTH method RSA but the certificate key is not RSA")
            try:
                pub.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
                used = HashAlgorithm.SHA1
            except InvalidSignature:
                # some peers send SHA-256 with method 1 (RFC 7296 allows any hash known to both)
                pub.verify(data, octets, padding.PKCS1v15(), hashes.SHA256())
                used = HashAlgorithm.SHA2_256
            return "rsa", "rsa-pkcs1", used
        if method in (9, 10, 11):
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                raise AuthenticationFailedError("AUTH method ECDSA but the certificate key is not EC")
            m, halg, size = _ECDSA_CLASSIC.get(pub.curve.name, (None, None, 0))  # type: Any, Any, int
            if m != method or len(data) != 2 * size:
                raise AuthenticationFailedError("ECDSA AUTH method does not match the certificate curve")
            sig = encode_dss_signature(int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big"))
            pub.verify(sig, octets, ec.ECDSA(halg()))
            return "ecdsa", "ecdsa", _CURVE_HASH[pub.curve.name]
        if method == AuthMethod.DIGITAL_SIGNATURE:
            scheme, h, sig, salt = _parse_alg_id(data)
            if scheme == "ed25519":
                if not isinstance(pub, ed25519.Ed25519PublicKey):
                    raise AuthenticationFailedError("Ed25519 signature but the key is not Ed25519")
                pub.verify(sig, octets)
            elif scheme == "ecdsa":
                if not isinstance(pub, ec.EllipticCurvePublicKey):
                    raise AuthenticationFailedError("ECDSA signature but the key is not EC")
                pub.verify(sig, octets, ec.ECDSA(_HASH[HashAlgorithm(h)]()))
            else:
                if not isinstance(pub, rsa.RSAPublicKey):
                    raise AuthenticationFailedError("RSA signature but the key is not RSA")
                hcls = _HASH[HashAlgorithm(h)]
                pad: Any = (padding.PSS(padding.MGF1(hcls()), salt) if scheme == "rsa-pss"
                            else padding.PKCS1v15())
                pub.verify(sig, octets, pad, hcls())
            return f"signature({scheme}-{HashAlgorithm(h).name.lower()})", scheme, h
    except InvalidSignature:
        raise AuthenticationFailedError("signature does not verify") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # malformed DER signatures and the like
        raise AuthenticationFailedError(f"malformed signature: {exc}") from None
    raise AuthenticationFailedError(f"unsupported AUTH method {method}")


def pki_validator(validator: Any):  # type: ignore[no-untyped-def]
    """``PeerConfig.validator`` from a ``pki.validate.Validator``: its ``verify(leaf, intermediates, at,
    identity)`` takes our ``Identity`` (an object with ``.kind`` and ``.value``) as it is."""
    return validator.verify
