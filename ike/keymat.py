"""Key derivation (RFC 7296 2.13, 2.14, 2.17, 2.18): prf, prf+, SKEYSEED, SK_*, CHILD_SA KEYMAT.

For AEAD transforms the salt is part of each encryption key (RFC 5282 7.1, RFC 7634 3): SK_e* and the cipher
part of KEYMAT are key || salt. strongSwan and Wireshark use the same layout.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from .constants import TransformType
from .errors import InvalidSyntaxError
from .payloads.sa import Proposal
from .proposal import encr_info, integ_info, prf_hash

__all__ = ["prf", "prf_plus", "IkeKeys", "derive_ike_keys", "ChildKeys", "derive_child_keys", "skeyseed",
           "rekey_skeyseed"]


def prf(hash_name: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hash_name).digest()


def prf_plus(hash_name: str, key: bytes, seed: bytes, length: int) -> bytes:
    """T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); at most 255 blocks (RFC 7296 2.13)."""
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        if n > 255:
            raise InvalidSyntaxError("prf+ asked for more than 255 blocks")
        t = prf(hash_name, key, t + seed + bytes([n]))
        out += t
        n += 1
    return out[:length]


def skeyseed(hash_name: str, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    return prf(hash_name, ni + nr, shared)


def rekey_skeyseed(hash_name: str, old_sk_d: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (RFC 7296 2.18); keyed with the *old* PRF."""
    return prf(hash_name, old_sk_d, shared + ni + nr)


@dataclass(frozen=True)
class IkeKeys:
    prf: str  # hash name of the negotiated PRF
    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def derive_ike_keys(proposal: Proposal, seed: bytes, ni: bytes, nr: bytes, spi_i: int, spi_r: int) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    prf_t, encr_t, integ_t = (proposal.first(TransformType.PRF), proposal.first(TransformType.ENCR),
                              proposal.first(TransformType.INTEG))
    assert prf_t is not None and encr_t is not None
    h = prf_hash(prf_t.id)
    plen = hashlib.new(h).digest_size
    e = encr_info(encr_t)
    elen = e.key_len + e.salt_len
    alen = 0 if e.aead or integ_t is None else integ_info(integ_t.id)[1]
    stream = prf_plus(h, seed, ni + nr + spi_i.to_bytes(8, "big") + spi_r.to_bytes(8, "big"),
                      3 * plen + 2 * alen + 2 * elen)
    cuts = [plen, alen, alen, elen, elen, plen, plen]
    parts = []
    pos = 0
    for c in cuts:
        parts.append(stream[pos:pos + c])
        pos += c
    return IkeKeys(h, *parts)


@dataclass(frozen=True)
class ChildKeys:
    """KEYMAT split per direction: ``*_i`` protects initiator -> responder traffic."""

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)


def derive_child_keys(prf_name: str, sk_d: bytes, proposal: Proposal, ni: bytes, nr: bytes,
                      shared: bytes | None = None) -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); order: encr i->r, integ i->r, encr r->i, integ r->i."""
    encr_t, integ_t = proposal.first(TransformType.ENCR), proposal.first(TransformType.INTEG)
    assert encr_t is not None
    e = encr_info(encr_t)
    elen = e.key_len + e.salt_len
    alen = 0 if e.aead or integ_t is None else integ_info(integ_t.id)[1]
    stream = prf_plus(prf_name, sk_d, (shared or b"") + ni + nr, 2 * (elen + alen))
    return ChildKeys(stream[:elen], stream[elen:elen + alen], stream[elen + alen:2 * elen + alen],
                     stream[2 * elen + alen:])
