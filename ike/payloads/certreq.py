"""Certificate Request payload (RFC 7296 3.7): for X.509, concatenated SHA-1 hashes of CA public keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..constants import CertEncoding, PayloadType
from ._base import Payload, Reader, need

__all__ = ["CertReqPayload"]


@dataclass(frozen=True)
class CertReqPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    data: bytes = b""

    def push(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def pull(cls, body: bytes) -> "CertReqPayload":
        r = Reader(body)
        return cls(r.u8("certificate encoding"), r.rest())

    @property
    def key_hashes(self) -> tuple[bytes, ...]:
        if self.encoding != CertEncoding.X509_SIGNATURE:
            return ()
        return tuple(self.data[i:i + 20] for i in range(0, len(self.data) - len(self.data) % 20, 20))

    @classmethod
    def of_hashes(cls, hashes: list[bytes]) -> "CertReqPayload":
        return cls(CertEncoding.X509_SIGNATURE, b"".join(hashes))

    def verify(self) -> None:
        if self.encoding == CertEncoding.X509_SIGNATURE:
            need(len(self.data) % 20 == 0, "CERTREQ data is not a list of SHA-1 hashes")
