"""One module per IKEv2 payload: frozen dataclasses with ``pull``/``push`` and ``verify``."""
from .auth import AuthPayload
from .cert import CertPayload
from .certreq import CertReqPayload
from .cp import CpPayload
from .delete import DeletePayload
from .ident import IdPayload
from .ke import KePayload
from .nonce import NoncePayload
from .notify import NotifyPayload
from .sa import Proposal, SaPayload, Transform
from .sk import SkfPayload, SkPayload
from .ts import TsPayload
from .vendor import VendorPayload

__all__ = [
    "AuthPayload", "CertPayload", "CertReqPayload", "CpPayload", "DeletePayload", "IdPayload", "KePayload",
    "NoncePayload", "NotifyPayload", "Proposal", "SaPayload", "Transform", "SkPayload", "SkfPayload",
    "TsPayload", "VendorPayload", "UnknownPayload",
]

from dataclasses import dataclass as _dataclass  # noqa: E402


@_dataclass(frozen=True)
class UnknownPayload:
    """A non-critical payload of a type we do not know: kept to be skipped (RFC 7296 2.5)."""

    type: int
    data: bytes
    critical: bool = False

    @property
    def payload_type(self) -> int:
        return self.type

    def push(self) -> bytes:
        return self.data

    def verify(self) -> None:
        return None
