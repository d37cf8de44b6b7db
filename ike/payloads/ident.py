"""Identification payloads IDi/IDr (RFC 7296 3.5), and their mapping to ``core_config.Identity``."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar

from ..constants import IdType, PayloadType
from ..core_config import Identity
from ..errors import InvalidSyntaxError, ParseError
from ._base import Payload, Reader, need

__all__ = ["IdPayload", "identity_to_wire", "identity_from_wire", "dn_to_der", "der_to_dn",
           "dn_variants"]


@dataclass(frozen=True)
class IdPayload(Payload):
    """``initiator`` picks IDi (35) or IDr (36)."""

    TYPE: ClassVar[int] = PayloadType.IDi
    id_type: int
    data: bytes
    initiator: bool = True

    @property
    def payload_type(self) -> int:
        return PayloadType.IDi if self.initiator else PayloadType.IDr

    def push(self) -> bytes:
        return struct.pack("!B3x", self.id_type) + self.data

    @classmethod
    def pull(cls, body: bytes, initiator: bool = True) -> "IdPayload":
        r = Reader(body)
        id_type = r.u8("ID type")
        r.take(3, "ID reserved")
        return cls(id_type, r.rest(), initiator)

    def verify(self) -> None:
        need(len(self.data) > 0, "empty identification")
        if self.id_type == IdType.ID_IPV4_ADDR:
            need(len(self.data) == 4, "ID_IPV4_ADDR must be 4 bytes")
        elif self.id_type == IdType.ID_IPV6_ADDR:
            need(len(self.data) == 16, "ID_IPV6_ADDR must be 16 bytes")

    @property
    def rest_of_payload(self) -> bytes:
        """``RestOfInitIDPayload`` of RFC 7296 2.15: ID type, reserved, data."""
        return self.push()

    def identity(self) -> Identity:
        return identity_from_wire(self.id_type, self.data)


def _tidy_dn(dn: str) -> str:
    """strongSwan writes ``C=CH, O=x, CN=y``: drop the blanks around unescaped separators for RFC 4514."""
    import re

    return re.sub(r"\s*(?<!\\)([,+])\s*", r"\1", dn.strip())


def dn_to_der(dn: str) -> bytes:
    from cryptography import x509

    try:
        name = x509.Name.from_rfc4514_string(_tidy_dn(dn))
    except ValueError as exc:
        raise InvalidSyntaxError(f"bad distinguished name {dn!r}: {exc}") from None
    return name.public_bytes()


def dn_variants(dn: str) -> tuple[bytes, ...]:
    """DER encodings a DN text may mean: RFC 4514 order (most specific first) and strongSwan/OpenSSL order
    (``C=.., O=.., CN=..``, most significant first). Matching accepts either, as strongSwan users expect."""
    from cryptography import x509

    try:
        name = x509.Name.from_rfc4514_string(_tidy_dn(dn))
    except ValueError:
        return ()
    rdns = list(name.rdns)
    forward = name.public_bytes()
    backward = x509.Name(list(reversed(rdns))).public_bytes()
    return (forward,) if forward == backward else (forward, backward)


def der_to_dn(der: bytes) -> str:
    from cryptography import x509

    try:
        # cryptography has no public DER -> Name parser; asn1crypto parses a Name directly
        from asn1crypto.x509 import Name as _Name  # type: ignore[import-untyped]

        parsed = _Name.load(der)
        return _asn1_name_to_rfc4514(parsed, x509)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a ParseError
        raise ParseError(f"bad ID_DER_ASN1_DN: {exc}") from None


def _asn1_name_to_rfc4514(parsed, x509mod) -> str:  # type: ignore[no-untyped-def]
    from cryptography.x509.oid import ObjectIdentifier

    rdns = []
    for rdn in parsed.chosen:
        attrs = []
        for atv in rdn:
            oid = ObjectIdentifier(atv["type"].dotted)
            value = atv["value"].native
            if not isinstance(value, str):
                value = str(value)
            attrs.append(x509mod.NameAttribute(oid, value))
        rdns.append(x509mod.RelativeDistinguishedName(attrs))
    return x509mod.Name(rdns).rfc4514_string()


def identity_to_wire(ident: Identity) -> tuple[int, bytes]:
    k, v = ident.kind, ident.value
    if k == "ipv4":
        return IdType.ID_IPV4_ADDR, ipaddress.IPv4Address(v).packed
    if k == "ipv6":
        return IdType.ID_IPV6_ADDR, ipaddress.IPv6Address(v).packed
    if k == "fqdn":
        return IdType.ID_FQDN, v.encode("ascii")
    if k == "email":
        return IdType.ID_RFC822_ADDR, v.encode("ascii")
    if k == "dn":
        return IdType.ID_DER_ASN1_DN, dn_to_der(v)
    if k == "keyid":
        return IdType.ID_KEY_ID, bytes.fromhex(v)
    raise ValueError(f"unknown identity kind {k!r}")


def identity_from_wire(id_type: int, data: bytes) -> Identity:
    try:
        if id_type == IdType.ID_IPV4_ADDR:
            return Identity("ipv4", str(ipaddress.IPv4Address(data)))
        if id_type == IdType.ID_IPV6_ADDR:
            return Identity("ipv6", str(ipaddress.IPv6Address(data)))
        if id_type == IdType.ID_FQDN:
            return Identity("fqdn", data.decode("ascii"))
        if id_type == IdType.ID_RFC822_ADDR:
            return Identity("email", data.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"bad identification data: {exc}") from None
    if id_type == IdType.ID_DER_ASN1_DN:
        return Identity("dn", der_to_dn(data))
    return Identity("keyid", data.hex())
