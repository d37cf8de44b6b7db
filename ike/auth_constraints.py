"""Authentication constraints in swanctl's ``auth`` syntax: which signature we make, which we accept.

Why: a peer's administrator states policy as strongSwan does (``remote.auth = ike:rsa/pss-sha384``,
``ecdsa-384``, ``rsa-3072-sha256``); espresso must sign the way such a peer requires, and refuse a peer that
signs (or whose trust chain is) weaker than our own policy, naming the constraint that failed.

Syntax (swanctl.conf(5), ``connections.<conn>.local|remote.auth``): an optional ``ike:`` prefix, then ``-``
separated tokens. A key type (``pubkey`` any, ``rsa``, ``rsa/pss``, ``ecdsa``, ``ed25519``) starts an entry;
a number after it is the minimum key size in bits; hash names (``sha1``, ``sha256``, ``sha384``, ``sha512``,
``identity``) that follow are the hashes that entry allows, in order of preference. ``pubkey`` alone (or
``psk``) is no constraint at all.

Meaning, as strongSwan's: locally the entries choose the RFC 7427 scheme and hash we sign with (the first the
peer announced; RSASSA-PSS with salt length = hash length, RFC 8247 section 3.2). Remotely the peer's AUTH
must match one entry (key type, size of the key in its certificate, hash); without the ``ike:`` prefix the
entries also constrain the trust chain: every key in it has an allowed type and size, and every certificate
signature an allowed hash. One difference: ``rsa`` and ``pubkey`` accept RSASSA-PSS too (strongSwan only with
``charon.rsa_pss = yes``): it is the stronger RSA scheme, and ``rsa/pss`` is there to require it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .constants import HashAlgorithm
from .errors import AuthenticationFailedError

__all__ = [
    "AuthConstraints",
    "KeyConstraint",
    "check_chain",
    "check_signature",
    "key_bits",
    "key_type",
    "parse_auth",
    "scheme_name",
]

KEY_TYPES = ("pubkey", "rsa", "rsa/pss", "ecdsa", "ed25519")
HASH_NAMES: dict[str, HashAlgorithm] = {"sha1": HashAlgorithm.SHA1, "sha256": HashAlgorithm.SHA2_256,
                                        "sha384": HashAlgorithm.SHA2_384, "sha512": HashAlgorithm.SHA2_512,
                                        "identity": HashAlgorithm.IDENTITY}
_HASH_TEXT = {v: k for k, v in HASH_NAMES.items()}
#: cryptography's hash names (certificate signatures) -> ours
_X509_HASHES = {"sha1": HashAlgorithm.SHA1, "sha256": HashAlgorithm.SHA2_256, "sha384": HashAlgorithm.SHA2_384,
                "sha512": HashAlgorithm.SHA2_512}
MAX_TOKENS = 32


@dataclass(frozen=True)
class KeyConstraint:
    """One entry: a key type, its minimum size in bits (0: any) and the hashes allowed (empty: any)."""

    key: str
    min_bits: int = 0
    hashes: tuple[HashAlgorithm, ...] = ()

    def text(self) -> str:
        return "-".join([self.key] + ([str(self.min_bits)] if self.min_bits else [])
                        + [_HASH_TEXT[h] for h in self.hashes])

    def allows_key(self, kind: str, bits: int) -> bool:
        if self.key != "pubkey" and self.key.split("/")[0] != kind:
            return False
        return bits >= self.min_bits

    def allows_scheme(self, scheme: str, h: int | None) -> bool:
        """``scheme`` is a signature scheme: rsa-pkcs1, rsa-pss, ecdsa, ed25519."""
        if self.key == "rsa/pss" and scheme != "rsa-pss":
            return False
        if self.key not in ("pubkey", "rsa/pss") and scheme.split("-")[0] != self.key:
            return False
        return not self.hashes or h in self.hashes


@dataclass(frozen=True)
class AuthConstraints:
    """A parsed ``auth`` value: the method and the signature constraints (empty: none)."""

    method: str  # "pubkey" or "psk"
    entries: tuple[KeyConstraint, ...] = ()
    ike_only: bool = False  # the ``ike:`` prefix: the trust chain is not constrained
    text: str = "pubkey"

    @property
    def constrains(self) -> bool:
        return bool(self.entries)

    def hash_preference(self, kind: str) -> list[tuple[str, HashAlgorithm | None]]:
        """(entry key, hash or None for 'any') in the order the entries list them, for a key of ``kind``."""
        out: list[tuple[str, HashAlgorithm | None]] = []
        for e in self.entries:
            if e.key != "pubkey" and e.key.split("/")[0] != kind:
                continue
            for h in e.hashes or (None,):
                out.append((e.key, h))
        return out


def parse_auth(value: str) -> AuthConstraints:
    """``pubkey``, ``psk``, ``pubkey-sha384-sha256``, ``ike:rsa/pss-sha384``, ``rsa-2048-sha256-ecdsa-256``.

    Raises ValueError naming the token it cannot read (the configuration loader adds the key path)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    text = value.strip()
    if text == "psk":
        return AuthConstraints("psk", text="psk")
    ike_only = text.startswith("ike:")
    body = text[4:] if ike_only else text
    tokens = body.split("-")
    if not body or len(tokens) > MAX_TOKENS:
        raise ValueError(f"expected pubkey, psk or a signature constraint such as rsa/pss-sha384, got {value!r}")
    entries: list[KeyConstraint] = []
    for tok in tokens:
        t = tok.strip().lower()
        if t in KEY_TYPES:
            entries.append(KeyConstraint(t))
        elif t.isdigit():
            if not entries or entries[-1].min_bits or entries[-1].hashes or entries[-1].key == "pubkey":
                raise ValueError(f"key size {t} must follow a key type (rsa-3072, ecdsa-384) in {value!r}")
            bits = int(t)
            if not 1 <= bits <= 16384:
                raise ValueError(f"key size {t} out of range in {value!r}")
            entries[-1] = KeyConstraint(entries[-1].key, bits)
        elif t in HASH_NAMES:
            if not entries:
                raise ValueError(f"hash {t} must follow a key type in {value!r}")
            e = entries[-1]
            if HASH_NAMES[t] not in e.hashes:
                entries[-1] = KeyConstraint(e.key, e.min_bits, e.hashes + (HASH_NAMES[t],))
        else:
            raise ValueError(f"unknown key type or hash {tok!r} in {value!r} (key types: {', '.join(KEY_TYPES)}; "
                             f"hashes: {', '.join(HASH_NAMES)})")
    for e in entries:
        if e.key == "ed25519" and any(h != HashAlgorithm.IDENTITY for h in e.hashes):
            raise ValueError(f"ed25519 signs with the identity hash only (RFC 8420), not {e.text()!r}")
    if entries == [KeyConstraint("pubkey")] and not ike_only:
        return AuthConstraints("pubkey", text=text)
    return AuthConstraints("pubkey", tuple(entries), ike_only, text)


def key_type(pub: Any) -> str:
    """rsa, ecdsa, ed25519 (or the class name for others) of a public or private key."""
    if isinstance(pub, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return "rsa"
    if isinstance(pub, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return "ecdsa"
    if isinstance(pub, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "ed25519"
    if isinstance(pub, (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)):
        return "ed448"
    return type(pub).__name__


def key_bits(pub: Any) -> int:
    if isinstance(pub, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return int(pub.key_size)
    if isinstance(pub, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return int(pub.curve.key_size)
    if isinstance(pub, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return 256
    if isinstance(pub, (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)):
        return 456
    return 0


def scheme_name(scheme: str, h: int | None) -> str:
    return f"{scheme}-{_HASH_TEXT.get(h, str(h)) if h is not None else 'any'}" if scheme != "ed25519" else scheme


def check_signature(c: AuthConstraints, scheme: str, h: int | None, pub: Any) -> None:
    """Does the peer's AUTH (``scheme`` with hash ``h``, made with ``pub``) meet ``c``? Raises
    AuthenticationFailedError saying which constraint failed."""
    if not c.entries:
        return
    kind, bits = key_type(pub), key_bits(pub)
    if not any(e.allows_key(kind, bits) for e in c.entries):
        raise AuthenticationFailedError(f"constraint remote_auth = {c.text} failed: peer key is {kind}-{bits}")
    if not any(e.allows_key(kind, bits) and e.allows_scheme(scheme, h) for e in c.entries):
        raise AuthenticationFailedError(f"constraint remote_auth = {c.text} failed: peer signed with "
                                        f"{scheme_name(scheme, h)} ({kind}-{bits} key)")


def _cert_scheme(cert: Any, issuer_pub: Any) -> tuple[str, int | None]:
    from cryptography.x509.oid import SignatureAlgorithmOID

    kind = key_type(issuer_pub)
    if kind == "rsa":
        kind = "rsa-pss" if cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS else "rsa-pkcs1"
    try:
        alg = cert.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - unsupported or absent (Ed25519): no hash to constrain
        alg = None
    h = HashAlgorithm.IDENTITY if alg is None else _X509_HASHES.get(alg.name)
    return kind, h


def check_chain(c: AuthConstraints, chain: Sequence[Any]) -> None:
    """Without ``ike:``, the constraints also bind the trust chain (leaf first, anchor last): the type and size
    of every key, and the hash of every signature below the anchor."""
    if not c.entries or c.ike_only or not chain:
        return
    for cert in chain:
        pub = cert.public_key()
        kind, bits = key_type(pub), key_bits(pub)
        if not any(e.allows_key(kind, bits) for e in c.entries):
            raise AuthenticationFailedError(f"constraint remote_auth = {c.text} failed: {kind}-{bits} key of "
                                            f"{cert.subject.rfc4514_string()} in the trust chain")
    for cert, issuer in pairwise(chain):
        scheme, h = _cert_scheme(cert, issuer.public_key())
        if not any(e.allows_scheme(scheme, h) for e in c.entries if e.key == "pubkey"
                   or e.key.split("/")[0] == key_type(issuer.public_key())):
            raise AuthenticationFailedError(f"constraint remote_auth = {c.text} failed: certificate "
                                            f"{cert.subject.rfc4514_string()} signed with {scheme_name(scheme, h)}")


def local_problem(c: AuthConstraints, keys: Iterable[Any]) -> str | None:
    """Why our own keys cannot ever meet the local constraints (a configuration error), or None."""
    if not c.entries:
        return None
    for key in keys:
        kind = key_type(key)
        if not c.hash_preference(kind):
            return f"no entry of {c.text!r} signs with a {kind} key"
    return None
