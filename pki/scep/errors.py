"""SCEP errors.

A refusal the CA states on the wire (a CertRep with pkiStatus FAILURE) and a message we cannot even parse are
different things for the operator, so they are different classes: :class:`ScepFailure` carries the RFC 8894
failInfo, :class:`ScepFormatError` means the bytes are not a SCEP message at all (the server answers HTTP
400).
"""

from __future__ import annotations

from pki.errors import PkiError

from .constants import FailInfo

__all__ = ["ScepError", "ScepFailure", "ScepFormatError", "ScepPendingTimeout"]


class ScepError(PkiError):
    """Anything that went wrong in a SCEP exchange."""


class ScepFormatError(ScepError):
    """The bytes are not a well-formed SCEP message (or are too large)."""


class ScepFailure(ScepError):
    """A SCEP FAILURE: the CA refused, or a message failed its checks (badMessageCheck...)."""

    def __init__(self, fail_info: FailInfo, message: str = "") -> None:
        self.fail_info = FailInfo(fail_info)
        self.text = message
        self.transaction_id: str | None = None  # set when the failing message got that far
        self.sender_nonce: bytes | None = None
        super().__init__(f"SCEP failure {self.fail_info.rfc_name}" + (f": {message}" if message else ""))


class ScepPendingTimeout(ScepError):
    """The CA still answered PENDING after the configured number of polls."""

    def __init__(self, transaction_id: str, polls: int) -> None:
        self.transaction_id = transaction_id
        self.polls = polls
        super().__init__(
            f"SCEP request {transaction_id} still pending after {polls} polls; "
            f"approve it on the CA and enroll again"
        )
