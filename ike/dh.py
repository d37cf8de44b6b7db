"""Diffie-Hellman for IKEv2: MODP 14, 15, 16, 18 (RFC 3526), ECP 19/20/21 (RFC 5903), Curve25519 (RFC 8031).

Private values come from the injected random source, so a test can fix them (strongSwan's mock_dh role).
"""
from __future__ import annotations

from typing import Callable

from cryptography.hazmat.primitives.asymmetric import ec, x25519

from ._modp import ModpKey, group_prime
from .constants import DhId
from .errors import InvalidSyntaxError, NoProposalChosenError

__all__ = ["DhKeyExchange", "ModpDh", "EcpDh", "X25519Dh", "create_dh", "SUPPORTED_GROUPS", "public_len"]

#: RFC 3526 groups by their libcrypto names; the primes come from libcrypto (checked against the RFC's formula in
#: tests/ike/test_dh_modp.py) and the private exponent is twice the group's strength estimate (RFC 3526 sec. 8,
#: upper end), in bytes.
_MODP_NAMES: dict[int, str] = {DhId.MODP_2048: "modp_2048", DhId.MODP_3072: "modp_3072",
                               DhId.MODP_4096: "modp_4096", DhId.MODP_8192: "modp_8192"}
_MODP_EXPONENT: dict[int, int] = {DhId.MODP_2048: 64, DhId.MODP_3072: 64, DhId.MODP_4096: 64, DhId.MODP_8192: 80}
_MODP: dict[int, int] = {g: int.from_bytes(group_prime(name), "big") for g, name in _MODP_NAMES.items()}
_ECP: dict[int, tuple[ec.EllipticCurve, int]] = {DhId.ECP_256: (ec.SECP256R1(), 32), DhId.ECP_384: (ec.SECP384R1(), 48), DhId.ECP_521: (ec.SECP521R1(), 66)}
SUPPORTED_GROUPS = (DhId.MODP_2048, DhId.MODP_3072, DhId.MODP_4096, DhId.MODP_8192, DhId.ECP_256, DhId.ECP_384, DhId.ECP_521, DhId.CURVE25519)


def public_len(group: int) -> int:
    if group in _MODP:
        return (_MODP[group].bit_length() + 7) // 8
    if group in _ECP:
        return 2 * _ECP[group][1]
    if group == DhId.CURVE25519:
        return 32
    raise NoProposalChosenError(f"unsupported DH group {group}")


class DhKeyExchange:
    group: int
    public: bytes

    def shared(self, peer_public: bytes) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError


class ModpDh(DhKeyExchange):
    """MODP groups through libcrypto's EVP API (ike._modp), not cryptography, which deprecates finite-field DH.

    The private exponent comes from the injected random source: 512 bits (640 for group 18), top bit set, twice
    the group's strength (RFC 3526 sec. 8). The peer's value is refused unless 1 < y < p-1 and
    y^q = 1 mod p (RFC 6989 2.2); the secret keeps its leading zeros (RFC 7296 2.14)."""

    def __init__(self, group: int, random: Callable[[int], bytes]) -> None:
        self.group = group
        self._p = _MODP[group]
        self._n = (self._p.bit_length() + 7) // 8
        x = bytearray(random(_MODP_EXPONENT[group]))
        x[0] |= 0x80
        self._key = ModpKey(_MODP_NAMES[group], x)
        x[:] = bytes(len(x))
        self.public = self._key.public

    def shared(self, peer_public: bytes) -> bytes:
        if len(peer_public) != self._n:
            raise InvalidSyntaxError(f"MODP public value of {len(peer_public)} bytes, expected {self._n}")
        y = int.from_bytes(peer_public, "big")
        if not 1 < y < self._p - 1:
            raise InvalidSyntaxError("MODP public value out of range")
        try:
            return self._key.derive(peer_public)
        except ValueError as exc:
            raise InvalidSyntaxError(f"invalid MODP public value: {exc}") from None


class EcpDh(DhKeyExchange):
    def __init__(self, group: int, random: Callable[[int], bytes]) -> None:
        self.group = group
        curve, self._size = _ECP[group]
        self._curve = curve
        # below 2^(bits-1) keeps d under the group order of P-256/384/521 without hard-coding it
        d = int.from_bytes(random(self._size + 8), "big") % ((1 << (curve.key_size - 1)) - 1) + 1
        self._key = ec.derive_private_key(d, curve)
        pt = self._key.public_key().public_bytes(
            __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.X962,
            __import__("cryptography.hazmat.primitives.serialization", fromlist=["PublicFormat"])
            .PublicFormat.UncompressedPoint)
        self.public = pt[1:]  # RFC 5903: x || y, no point-format octet

    def shared(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 2 * self._size:
            raise InvalidSyntaxError(f"ECP public value of {len(peer_public)} bytes, expected {2 * self._size}")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer_public)
            return self._key.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise InvalidSyntaxError(f"invalid ECP public value: {exc}") from None


class X25519Dh(DhKeyExchange):
    def __init__(self, group: int, random: Callable[[int], bytes]) -> None:
        self.group = group
        self._key = x25519.X25519PrivateKey.from_private_bytes(random(32))
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def shared(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 32:
            raise InvalidSyntaxError("Curve25519 public value must be 32 bytes")
        try:
            return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # all-zero result (small-order point), RFC 8031 sec. 2.3
            raise InvalidSyntaxError(f"invalid Curve25519 public value: {exc}") from None


def create_dh(group: int, random: Callable[[int], bytes]) -> DhKeyExchange:
    if group in _MODP:
        return ModpDh(group, random)
    if group in _ECP:
        return EcpDh(group, random)
    if group == DhId.CURVE25519:
        return X25519Dh(group, random)
    raise NoProposalChosenError(f"unsupported DH group {group}")
