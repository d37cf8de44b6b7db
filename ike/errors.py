"""IKE errors. Protocol errors carry the notify type they turn into (as h2's error codes do).

``exchange.py`` is the one place that turns a :class:`ProtocolError` into a notify or a teardown: they never
escape ``receive_datagram``. Misuse of the API raises ``ValueError``/``TypeError`` or :class:`InvalidStateError`.
"""
from __future__ import annotations

__all__ = [
    "IkeError", "ProtocolError", "ParseError", "UnsupportedCriticalPayloadError", "InvalidSyntaxError",
    "InvalidMessageIdError", "NoProposalChosenError", "InvalidKePayloadError", "AuthenticationFailedError",
    "TsUnacceptableError", "SingleSaOnlyError", "TemporaryFailureError", "InvalidSpiError", "IntegrityError",
    "InvalidStateError", "ConfigError", "CookieRequiredError", "ChildSaNotFoundError", "InvalidCookieError",
    "TooLargeError", "NoAdditionalSasError",
]


class IkeError(Exception):
    """Base of every error raised by the ike package."""


class InvalidStateError(IkeError):
    """An API call made in a state that does not allow it (e.g. rekeying a CHILD_SA that does not exist)."""


class ConfigError(IkeError, ValueError):
    """A configuration value is invalid; the message names it."""


class ProtocolError(IkeError):
    """The peer broke the protocol, or a negotiation failed. ``notify`` is the Notify type to answer with
    (None: drop silently), ``fatal`` whether the IKE_SA is torn down."""

    notify: int | None = 7  # INVALID_SYNTAX
    fatal: bool = True

    def __init__(self, reason: str = "", *, notify_data: bytes = b"") -> None:
        super().__init__(reason or type(self).__name__)
        self.reason = reason or type(self).__name__
        self.notify_data = notify_data


class ParseError(ProtocolError):
    """Bytes that do not decode as an IKE message or payload (truncated, bad lengths, oversized)."""

    notify = 7


class TooLargeError(ParseError):
    """A message or a reassembly that exceeds a named bound."""


class InvalidSyntaxError(ProtocolError):
    notify = 7


class UnsupportedCriticalPayloadError(ProtocolError):
    notify = 1

    def __init__(self, reason: str = "", *, payload_type: int = 0) -> None:
        super().__init__(reason, notify_data=bytes([payload_type & 0xFF]))
        self.payload_type = payload_type


class InvalidSpiError(ProtocolError):
    notify = 11
    fatal = False


class InvalidMessageIdError(ProtocolError):
    notify = None  # RFC 7296 2.3: silently dropped (a notify only when state is kept, which we do not)


class IntegrityError(ProtocolError):
    """An SK payload that does not authenticate: dropped silently, never answered (RFC 7296 2.21.2)."""

    notify = None
    fatal = False


class NoProposalChosenError(ProtocolError):
    notify = 14


class InvalidKePayloadError(ProtocolError):
    """Our KE used the wrong group; ``group`` is the one the responder wants."""

    notify = 17
    fatal = False

    def __init__(self, reason: str = "", *, group: int) -> None:
        super().__init__(reason, notify_data=group.to_bytes(2, "big"))
        self.group = group


class AuthenticationFailedError(ProtocolError):
    notify = 24


class SingleSaOnlyError(ProtocolError):
    notify = 34


class NoAdditionalSasError(ProtocolError):
    """The peer asked for more CHILD_SAs than we keep per IKE_SA."""

    notify = 35
    fatal = False


class TsUnacceptableError(ProtocolError):
    notify = 38
    fatal = False


class TemporaryFailureError(ProtocolError):
    notify = 43
    fatal = False


class ChildSaNotFoundError(ProtocolError):
    notify = 44
    fatal = False


class CookieRequiredError(ProtocolError):
    """Raised by the stateless check: answer with a COOKIE notify and keep no state."""

    notify = 16390
    fatal = False


class InvalidCookieError(ProtocolError):
    notify = None
