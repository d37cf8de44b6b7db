"""IKEv1 key schedule (RFC 2409 5, 5.5, Appendix B) and phase-1/phase-2 encryption with its IV chaining.

The PRF is HMAC with the negotiated hash; every secret is derived from SKEYID. ISAKMP encryption is CBC with an
IV that is chained across messages (the last ciphertext block of the previous message of the same exchange), so
the cipher object below is stateful. Receiving does not advance the chain: a core calls ``confirm`` only after the
message authenticated (its HASH verified), so a forged datagram cannot desynchronise the session, the same rule
strongSwan's keymat_v1 follows.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import ParseError
from .message import (
    HEADER_LEN,
    Flags,
    IsakmpHeader,
    Payload,
    pull_chain,
    pull_header,
    push_chain,
    push_header,
)

__all__ = [
    "HASHES",
    "OAKLEY_3DES_CBC",
    "OAKLEY_AES_CBC",
    "Phase1Algorithm",
    "Phase1Cipher",
    "Phase1Keys",
    "derive_phase1",
    "expand_key",
    "hash_i",
    "hash_r",
    "info_hash",
    "prf",
    "qm_hash1",
    "qm_hash2",
    "qm_hash3",
    "qm_keymat",
    "skeyid_psk",
    "skeyid_sig",
]

#: IKEv1 Hash Algorithm attribute values (RFC 2409 Appendix A, RFC 4868 for SHA-2) -> hashlib names
HASHES = {1: "md5", 2: "sha1", 4: "sha256", 5: "sha384", 6: "sha512"}
#: OAKLEY encryption algorithms (RFC 2409 Appendix A; AES by RFC 3602's registration) -> block bytes
OAKLEY_3DES_CBC, OAKLEY_AES_CBC = 5, 7
_BLOCK = {OAKLEY_3DES_CBC: 8, OAKLEY_AES_CBC: 16}
#: phase-2 exchanges whose IV is kept at once (a peer opening many message IDs evicts the oldest)
MAX_PHASE2_IVS = 32


def prf(hash_name: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hash_name).digest()


def skeyid_psk(hash_name: str, psk: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYID = prf(pre-shared-key, Ni_b | Nr_b)."""
    return prf(hash_name, psk, ni + nr)


def skeyid_sig(hash_name: str, ni: bytes, nr: bytes, gxy: bytes) -> bytes:
    """SKEYID = prf(Ni_b | Nr_b, g^xy), for signature authentication."""
    return prf(hash_name, ni + nr, gxy)


def expand_key(hash_name: str, skeyid_e: bytes, length: int) -> bytes:
    """The encryption key from SKEYID_e; when SKEYID_e is too short, Appendix B's K1 = prf(SKEYID_e, 0),
    Kn = prf(SKEYID_e, Kn-1) (0 is one zero byte, as strongSwan and Wireshark read it)."""
    if len(skeyid_e) >= length:
        return skeyid_e[:length]
    out = b""
    k = b"\x00"
    while len(out) < length:
        k = prf(hash_name, skeyid_e, k)
        out += k
    return out[:length]


@dataclass(frozen=True)
class Phase1Algorithm:
    """The ISAKMP SA's negotiated cipher: its OAKLEY id and key bytes. Its block size sets the padding and the
    length of every IV (RFC 2409 5.3 and Appendix B: IVs are hashes cut to the cipher's block), so AES and 3DES
    SAs differ in more than the key."""
    oakley_id: int = OAKLEY_AES_CBC
    key_len: int = 16

    def __post_init__(self) -> None:
        lengths = {OAKLEY_3DES_CBC: (24,), OAKLEY_AES_CBC: (16, 24, 32)}.get(self.oakley_id)
        if lengths is None:
            raise ValueError(f"OAKLEY encryption algorithm {self.oakley_id} is not supported (AES-CBC 7, 3DES 5)")
        if self.key_len not in lengths:
            raise ValueError(f"a key of {self.key_len} bytes for OAKLEY encryption algorithm {self.oakley_id}")

    @property
    def block(self) -> int:
        return _BLOCK[self.oakley_id]

    def cbc(self, key: bytes, iv: bytes) -> Cipher[modes.CBC]:
        alg = TripleDES(key) if self.oakley_id == OAKLEY_3DES_CBC else algorithms.AES(key)
        return Cipher(alg, modes.CBC(iv))


@dataclass(frozen=True)
class Phase1Keys:
    hash_name: str
    skeyid: bytes = field(repr=False)
    skeyid_d: bytes = field(repr=False)
    skeyid_a: bytes = field(repr=False)
    skeyid_e: bytes = field(repr=False)
    enc_key: bytes = field(repr=False)
    iv: bytes = field(repr=False)  # the IV of the first encrypted phase-1 message
    algorithm: Phase1Algorithm = Phase1Algorithm()


def derive_phase1(hash_name: str, skeyid: bytes, gxy: bytes, cky_i: bytes, cky_r: bytes, gxi: bytes, gxr: bytes,
                  algorithm: Phase1Algorithm) -> Phase1Keys:
    """SKEYID_d/a/e (RFC 2409 5), the cipher key (Appendix B: SHA-1's 20-byte SKEYID_e is expanded for
    AES-192/256 and 3DES alike) and the phase-1 IV = hash(g^xi | g^xr), cut to the cipher's block."""
    if hash_name not in HASHES.values():
        raise ValueError(f"unknown IKEv1 hash {hash_name!r}")
    d = prf(hash_name, skeyid, gxy + cky_i + cky_r + b"\x00")
    a = prf(hash_name, skeyid, d + gxy + cky_i + cky_r + b"\x01")
    e = prf(hash_name, skeyid, a + gxy + cky_i + cky_r + b"\x02")
    iv = hashlib.new(hash_name, gxi + gxr).digest()[:algorithm.block]
    return Phase1Keys(hash_name, skeyid, d, a, e, expand_key(hash_name, e, algorithm.key_len), iv, algorithm)


def hash_i(k: Phase1Keys, gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes, idii_b: bytes) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b); the SA and ID are payload bodies."""
    return prf(k.hash_name, k.skeyid, gxi + gxr + cky_i + cky_r + sai_b + idii_b)


def hash_r(k: Phase1Keys, gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes, sai_b: bytes, idir_b: bytes) -> bytes:
    """HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)."""
    return prf(k.hash_name, k.skeyid, gxr + gxi + cky_r + cky_i + sai_b + idir_b)


def _mid(message_id: int) -> bytes:
    return struct.pack("!I", message_id)


def qm_hash1(k: Phase1Keys, message_id: int, after_hash: bytes) -> bytes:
    """HASH(1) = prf(SKEYID_a, M-ID | the message after the HASH payload, generic headers included)."""
    return prf(k.hash_name, k.skeyid_a, _mid(message_id) + after_hash)


def qm_hash2(k: Phase1Keys, message_id: int, ni_b: bytes, after_hash: bytes) -> bytes:
    """HASH(2) = prf(SKEYID_a, M-ID | Ni_b | the message after the HASH payload)."""
    return prf(k.hash_name, k.skeyid_a, _mid(message_id) + ni_b + after_hash)


def qm_hash3(k: Phase1Keys, message_id: int, ni_b: bytes, nr_b: bytes) -> bytes:
    """HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)."""
    return prf(k.hash_name, k.skeyid_a, b"\x00" + _mid(message_id) + ni_b + nr_b)


def info_hash(k: Phase1Keys, message_id: int, after_hash: bytes) -> bytes:
    """The HASH(1) of an informational exchange (RFC 2409 5.7), the same form as quick mode's."""
    return qm_hash1(k, message_id, after_hash)


def qm_keymat(k: Phase1Keys, protocol: int, spi: bytes, ni_b: bytes, nr_b: bytes, length: int,
              gxy: bytes = b"") -> bytes:
    """KEYMAT = K1 | K2 | ..., K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b),
    Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b); ``gxy`` is the PFS secret or empty.
    ``spi`` is the SPI of the receiving side of the SA being keyed."""
    seed = gxy + bytes([protocol]) + spi + ni_b + nr_b
    out = b""
    last = b""
    while len(out) < length:
        last = prf(k.hash_name, k.skeyid_d, last + seed)
        out += last
    return out[:length]


class Phase1Cipher:
    """CBC (AES or 3DES, as negotiated) of ISAKMP messages under one ISAKMP SA with RFC 2409's IV rules (5.3,
    Appendix B): phase 1 (message ID 0) chains from hash(g^xi | g^xr); each phase-2/informational exchange
    starts from hash(last phase-1 CBC block | M-ID) and chains within itself; every IV is one block."""

    def __init__(self, keys: Phase1Keys) -> None:
        self._key = keys.enc_key
        self._alg = keys.algorithm
        self._block = keys.algorithm.block
        self._hash = keys.hash_name
        self._p1_iv = keys.iv
        self._ivs: OrderedDict[int, bytes] = OrderedDict()

    def iv(self, message_id: int) -> bytes:
        if message_id == 0:
            return self._p1_iv
        iv = self._ivs.get(message_id)
        if iv is None:
            iv = hashlib.new(self._hash, self._p1_iv + _mid(message_id)).digest()[:self._block]
            self._ivs[message_id] = iv
            while len(self._ivs) > MAX_PHASE2_IVS:
                self._ivs.popitem(last=False)
        return iv

    def _advance(self, message_id: int, ciphertext: bytes) -> None:
        if message_id == 0:
            self._p1_iv = ciphertext[-self._block:]
        else:
            self.iv(message_id)
            self._ivs[message_id] = ciphertext[-self._block:]

    def forget(self, message_id: int) -> None:
        """Drop a finished exchange's IV."""
        self._ivs.pop(message_id, None)

    def encrypt(self, cky_i: bytes, cky_r: bytes, exchange: int, message_id: int, payloads: list[Payload],
                flags: int = 0) -> bytes:
        """The whole encrypted datagram; advances the chain (our own message is final)."""
        first, body = push_chain(payloads)
        pad = -(len(body) + 1) % self._block
        body += b"\x00" * pad + bytes([pad])  # RFC 2409 5.3: zeros, then the pad count
        enc = self._alg.cbc(self._key, self.iv(message_id)).encryptor()
        ct = enc.update(body) + enc.finalize()
        h = IsakmpHeader(cky_i, cky_r, first, exchange, flags | Flags.ENCRYPTION, message_id, HEADER_LEN + len(ct))
        self._advance(message_id, ct)
        return push_header(h) + ct

    def decrypt(self, data: bytes) -> tuple[IsakmpHeader, list[Payload]]:
        """Header and payloads of an encrypted datagram. Does not advance the chain: call ``confirm`` once the
        message's HASH verified. Raises ParseError on anything malformed."""
        h = pull_header(data)
        if not h.encrypted:
            raise ParseError("message is not encrypted")
        ct = data[HEADER_LEN:]
        if not ct or len(ct) % self._block:
            raise ParseError(f"encrypted body of {len(ct)} bytes is not whole blocks")
        dec = self._alg.cbc(self._key, self.iv(h.message_id)).decryptor()
        plain = dec.update(ct) + dec.finalize()
        return h, pull_chain(h.next_payload, plain)

    def confirm(self, data: bytes) -> None:
        """Advance the chain past a received datagram that authenticated."""
        h = pull_header(data)
        self._advance(h.message_id, data[HEADER_LEN:])
