"""SCEP (RFC 8894): messages (pure), the client (router side) and the responder (CA side)."""

from .constants import MAX_MESSAGE_SIZE, Capability, FailInfo, MessageType, PkiStatus
from .errors import ScepError, ScepFailure, ScepFormatError, ScepPendingTimeout
from .messages import PkiMessage, parse_pki_message, sign_pki_message, transaction_id_for

__all__ = [
    "MAX_MESSAGE_SIZE",
    "Capability",
    "FailInfo",
    "MessageType",
    "PkiMessage",
    "PkiStatus",
    "ScepError",
    "ScepFailure",
    "ScepFormatError",
    "ScepPendingTimeout",
    "parse_pki_message",
    "sign_pki_message",
    "transaction_id_for",
]
