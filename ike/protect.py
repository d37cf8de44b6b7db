"""Sealing and opening SK (RFC 7296 3.14, RFC 5282, RFC 7634) and SKF (RFC 7383) payloads.

AEAD: nonce = salt (4, from SK_e) || IV (8); associated data = IKE header || SK generic header (|| SKF fragment
number and total). CBC: IV (16) || ciphertext, then an HMAC over the whole message up to the ICV.
A message that does not authenticate raises IntegrityError (dropped without an answer).
"""
from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .constants import EncrId, TransformType
from .errors import IntegrityError, ParseError
from .payloads.sa import Proposal
from .proposal import encr_info, integ_info

__all__ = ["Protector"]


@dataclass
class Protector:
    """One direction pair of SK keys. ``out`` keys seal what we send, ``in`` keys open what we receive."""

    encr_id: int
    key_bits: int
    integ_id: int
    enc_out: bytes = field(repr=False)
    enc_in: bytes = field(repr=False)
    auth_out: bytes = field(repr=False)
    auth_in: bytes = field(repr=False)
    random: Callable[[int], bytes] = field(repr=False)  # IVs; the core never reads entropy itself

    @classmethod
    def from_proposal(cls, p: Proposal, initiator: bool, sk_ei: bytes, sk_er: bytes, sk_ai: bytes, sk_ar: bytes,
                      random: Callable[[int], bytes]) -> "Protector":
        e = p.first(TransformType.ENCR)
        i = p.first(TransformType.INTEG)
        assert e is not None
        if initiator:
            return cls(e.id, e.key_length or 0, i.id if i else 0, sk_ei, sk_er, sk_ai, sk_ar, random)
        return cls(e.id, e.key_length or 0, i.id if i else 0, sk_er, sk_ei, sk_ar, sk_ai, random)

    def _info(self):  # type: ignore[no-untyped-def]
        from .payloads.sa import Transform

        return encr_info(Transform(TransformType.ENCR, self.encr_id, self.key_bits or None))

    @property
    def overhead(self) -> int:
        """Worst-case bytes an SK payload adds beyond its plaintext (IV, padding, pad length, ICV)."""
        info = self._info()
        icv = info.icv_len if info.aead else integ_info(self.integ_id)[2]
        return info.iv_len + info.block + icv

    def seal(self, header: Callable[[int], bytes], sk_header: Callable[[int], bytes], plaintext: bytes) -> bytes:
        """The whole message: ``header(total_len)`` || ``sk_header(payload_len)`` || IV || ct || ICV."""
        info = self._info()
        pad = (-(len(plaintext) + 1)) % info.block
        padded = plaintext + bytes(pad) + bytes([pad])
        iv = self.random(info.iv_len)
        if info.aead:
            body_len = info.iv_len + len(padded) + info.icv_len
            sk_h = sk_header(body_len)
            hdr = header(len(sk_h) + body_len)
            key, salt = self.enc_out[:info.key_len], self.enc_out[info.key_len:]
            aead = ChaCha20Poly1305(key) if self.encr_id == EncrId.ENCR_CHACHA20_POLY1305 else AESGCM(key)
            ct = aead.encrypt(salt + iv, padded, hdr + sk_h)
            return hdr + sk_h + iv + ct
        _, _, icv_len, _ = integ_info(self.integ_id)
        body_len = info.iv_len + len(padded) + icv_len
        sk_h = sk_header(body_len)
        hdr = header(len(sk_h) + body_len)
        enc = Cipher(algorithms.AES(self.enc_out), modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        signed = hdr + sk_h + iv + ct
        return signed + hmac.new(self.auth_out, signed, integ_info(self.integ_id)[0]).digest()[:icv_len]

    def open(self, message: bytes, body_offset: int) -> bytes:
        """``message`` is the whole datagram; the SK/SKF body (IV onwards) starts at ``body_offset``.
        Returns the plaintext inner payload chain (padding removed)."""
        info = self._info()
        body = message[body_offset:]
        if info.aead:
            if len(body) < info.iv_len + info.icv_len + 1:
                raise IntegrityError("SK payload too short")
            iv, ct = body[:info.iv_len], body[info.iv_len:]
            key, salt = self.enc_in[:info.key_len], self.enc_in[info.key_len:]
            aead = ChaCha20Poly1305(key) if self.encr_id == EncrId.ENCR_CHACHA20_POLY1305 else AESGCM(key)
            try:
                padded = aead.decrypt(salt + iv, ct, message[:body_offset])
            except InvalidTag:
                raise IntegrityError("SK payload failed authentication") from None
        else:
            h, _, icv_len, _ = integ_info(self.integ_id)
            if len(body) < info.iv_len + icv_len + info.block or (len(body) - info.iv_len - icv_len) % info.block:
                raise IntegrityError("SK payload has a bad length")
            expect = hmac.new(self.auth_in, message[:-icv_len], h).digest()[:icv_len]
            if not hmac.compare_digest(expect, message[-icv_len:]):
                raise IntegrityError("SK payload failed integrity check")
            iv, ct = body[:info.iv_len], body[info.iv_len:-icv_len]
            dec = Cipher(algorithms.AES(self.enc_in), modes.CBC(iv)).decryptor()
            padded = dec.update(ct) + dec.finalize()
        pad = padded[-1]
        if pad + 1 > len(padded):
            raise ParseError("SK padding length exceeds the payload")
        return padded[:-(pad + 1)]


def sk_generic_header(first_inner: int, length_body: int) -> bytes:
    return struct.pack("!BBH", first_inner, 0, 4 + length_body)


def skf_generic_header(first_inner: int, number: int, total: int, length_body: int) -> bytes:
    return struct.pack("!BBHHH", first_inner, 0, 8 + length_body, number, total)

