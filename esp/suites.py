"""ESP suites, named as IKEv2 proposals and strongSwan name them.

A suite fixes everything the data plane needs to size a packet: key and salt lengths, IV and ICV lengths and
the padding alignment. The IKEv2 transform IDs are kept here too, so IKE and the data plane agree on one table.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

__all__ = ["Cipher", "Integ", "Suite", "SUITES", "parse_suite"]


class Cipher(enum.Enum):
    AES_GCM = "aes-gcm"
    AES_CCM = "aes-ccm"
    AES_GMAC = "aes-gmac"  # ENCR_NULL_AUTH_AES_GMAC: integrity only, payload in clear
    CHACHA20_POLY1305 = "chacha20-poly1305"
    AES_CBC = "aes-cbc"
    AES_CTR = "aes-ctr"
    TRIPLEDES_CBC = "3des-cbc"  # RFC 2451: legacy peers only, used where a configuration names it
    NULL = "null"


class Integ(enum.Enum):
    NONE = "none"
    HMAC_SHA1_96 = "sha1_96"
    HMAC_SHA256_128 = "sha256_128"
    HMAC_SHA384_192 = "sha384_192"
    HMAC_SHA512_256 = "sha512_256"


# (key length, ICV length, IKEv2 transform ID) per integrity algorithm (RFC 2404, RFC 4868).
_INTEG = {
    Integ.NONE: (0, 0, None),
    Integ.HMAC_SHA1_96: (20, 12, 2),
    Integ.HMAC_SHA256_128: (32, 16, 12),
    Integ.HMAC_SHA384_192: (48, 24, 13),
    Integ.HMAC_SHA512_256: (64, 32, 14),
}
_INTEG_TOKENS = {
    "sha1": Integ.HMAC_SHA1_96,
    "sha1_96": Integ.HMAC_SHA1_96,
    "sha256": Integ.HMAC_SHA256_128,
    "sha256_128": Integ.HMAC_SHA256_128,
    "sha384": Integ.HMAC_SHA384_192,
    "sha384_192": Integ.HMAC_SHA384_192,
    "sha512": Integ.HMAC_SHA512_256,
    "sha512_256": Integ.HMAC_SHA512_256,
    "none": Integ.NONE,
}


@dataclass(frozen=True)
class Suite:
    """One ESP transform set. ``key_len`` excludes the salt; KEYMAT for the cipher is key || salt."""

    name: str
    cipher: Cipher
    key_len: int
    salt_len: int
    iv_len: int
    icv_len: int
    align: int
    integ: Integ
    ikev2_encr: int
    ikev2_integ: int | None

    @property
    def aead(self) -> bool:
        return self.cipher in (Cipher.AES_GCM, Cipher.AES_CCM, Cipher.AES_GMAC, Cipher.CHACHA20_POLY1305)

    @property
    def enc_keymat_len(self) -> int:
        """Bytes of KEYMAT taken for the cipher (key plus salt), as IKEv2 derives them (RFC 7296 2.17)."""
        return self.key_len + self.salt_len

    @property
    def integ_key_len(self) -> int:
        return _INTEG[self.integ][0]

    @property
    def key_bits(self) -> int:
        return self.key_len * 8

    def __str__(self) -> str:
        return self.name


def _build() -> dict[str, Suite]:
    out: dict[str, Suite] = {}

    def add(s: Suite) -> None:
        out[s.name] = s

    for bits in (128, 192, 256):
        k = bits // 8
        add(Suite(f"aes{bits}gcm16", Cipher.AES_GCM, k, 4, 8, 16, 4, Integ.NONE, 20, None))
        add(Suite(f"aes{bits}gcm12", Cipher.AES_GCM, k, 4, 8, 12, 4, Integ.NONE, 19, None))
        add(Suite(f"aes{bits}gcm8", Cipher.AES_GCM, k, 4, 8, 8, 4, Integ.NONE, 18, None))
        for icv, tid in ((8, 14), (12, 15), (16, 16)):
            add(Suite(f"aes{bits}ccm{icv}", Cipher.AES_CCM, k, 3, 8, icv, 4, Integ.NONE, tid, None))
        add(Suite(f"aes{bits}gmac", Cipher.AES_GMAC, k, 4, 8, 16, 4, Integ.NONE, 21, None))
    add(Suite("chacha20poly1305", Cipher.CHACHA20_POLY1305, 32, 4, 8, 16, 4, Integ.NONE, 28, None))
    for integ, (_, integ_icv, integ_tid) in _INTEG.items():
        token = integ.value.split("_")[0]
        for bits in (128, 192, 256):
            k = bits // 8
            add(Suite(f"aes{bits}-{token}", Cipher.AES_CBC, k, 0, 16, integ_icv, 16, integ, 12, integ_tid))
            if integ is not Integ.NONE:  # counter mode without integrity is malleable bit by bit: not offered
                add(Suite(f"aes{bits}ctr-{token}", Cipher.AES_CTR, k, 4, 8, integ_icv, 4, integ, 13, integ_tid))
        if integ is not Integ.NONE:
            add(Suite(f"3des-{token}", Cipher.TRIPLEDES_CBC, 24, 0, 8, integ_icv, 8, integ, 3, integ_tid))
            add(Suite(f"null-{token}", Cipher.NULL, 0, 0, 0, integ_icv, 4, integ, 11, integ_tid))
    return out


SUITES: Mapping[str, Suite] = MappingProxyType(_build())

_AEAD_ALIASES = {
    "aes128gcm": "aes128gcm16", "aes192gcm": "aes192gcm16", "aes256gcm": "aes256gcm16",
    "aes128gcm128": "aes128gcm16", "aes256gcm128": "aes256gcm16",
    "chacha20poly1305": "chacha20poly1305",
}


def parse_suite(token: str | Suite) -> Suite:
    """A suite from a strongSwan-style ESP proposal token.

    AEADs are one token (``aes128gcm16``, ``chacha20poly1305``, ``aes256ccm8``, ``aes128gmac``); other ciphers
    take an integrity algorithm after a dash (``aes256-sha256``, ``aes128ctr-sha512_256``, ``null-sha256``,
    ``3des-sha1`` for legacy IKEv1 peers).
    ``aes128-none`` (encryption without integrity) exists only to run the RFC 3602 vectors.
    """
    if isinstance(token, Suite):
        return token
    t = token.strip().lower()
    t = _AEAD_ALIASES.get(t, t)
    if t in SUITES:
        return SUITES[t]
    if "-" in t:
        enc, _, integ = t.partition("-")
        enc = {"aes128cbc": "aes128", "aes192cbc": "aes192", "aes256cbc": "aes256", "3descbc": "3des"}.get(enc, enc)
        if integ in _INTEG_TOKENS:
            name = f"{enc}-{_INTEG_TOKENS[integ].value.split('_')[0]}"
            if name in SUITES:
                return SUITES[name]
    if t in ("aes128", "aes192", "aes256", "aes128ctr", "aes192ctr", "aes256ctr", "3des", "null"):
        raise ValueError(f"ESP suite {token!r} needs an integrity algorithm, e.g. {t}-sha256")
    raise ValueError(f"unknown ESP suite {token!r}; known: {', '.join(sorted(SUITES))}")
