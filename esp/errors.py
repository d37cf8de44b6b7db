"""The exceptions of the esp package.

The batch path never raises for a bad packet: it gives a verdict. These are for the single-packet API, which
people and tests use, and for configuration mistakes made before any packet moves.
"""
from __future__ import annotations

import enum

__all__ = [
    "EspError", "PacketError", "AuthenticationFailed", "ReplayedPacket", "MalformedPacket", "PaddingError",
    "DummyPacket", "SaExpiredError", "SequenceExhausted", "NoSpace", "UnknownSpi", "UnsupportedPacket",
    "BackendUnavailable", "BackendReason", "error_for_verdict",
]


class EspError(Exception):
    """Base of every esp error."""


class PacketError(EspError):
    """A packet was refused; ``verdict`` is the batch verdict the same packet would have had."""

    verdict: int = -1


class AuthenticationFailed(PacketError):
    """The ICV did not verify: wrong key, tampering, or not this SA's packet. Deliberately without detail."""


class ReplayedPacket(PacketError):
    """Already received, or older than the anti-replay window (RFC 4303 3.4.3)."""


class MalformedPacket(PacketError):
    """Too short, lengths that lie, a header that does not parse, or not ESP at all."""


class PaddingError(PacketError):
    """Authenticated, but the padding bytes are not the ones RFC 4303 2.4 prescribes."""


class DummyPacket(PacketError):
    """A dummy packet (next header 59, RFC 4303 2.6): valid, counted, and dropped."""


class SaExpiredError(PacketError):
    """The SA reached its hard lifetime and processes nothing more."""


class SequenceExhausted(PacketError):
    """The sequence number would wrap (2^32-1 without ESN, RFC 4303 3.3.3): the SA must be rekeyed."""


class NoSpace(PacketError):
    """The output buffer cannot hold the result."""


class UnknownSpi(PacketError):
    """No SA for this SPI (or the packet belongs to another SA)."""


class UnsupportedPacket(PacketError):
    """Valid, but something this data plane does not process (an IP fragment, a crypto library failure)."""


class BackendReason(enum.Enum):
    NOT_BUILT = "espresso was built without this backend"
    NOT_X86_64 = "this backend exists only on x86-64"
    SUITE = "this backend does not implement the suite"


class BackendUnavailable(EspError):
    def __init__(self, backend: str, reason: BackendReason) -> None:
        super().__init__(f"backend {backend!r} unavailable: {reason.value}")
        self.backend = backend
        self.reason = reason


_BY_VERDICT: dict[int, type[PacketError]] = {}


def _register() -> None:
    from esp.batch import Verdict

    table = {
        Verdict.AUTH_FAILED: AuthenticationFailed, Verdict.REPLAYED: ReplayedPacket,
        Verdict.MALFORMED: MalformedPacket, Verdict.PAD_ERROR: PaddingError, Verdict.DUMMY: DummyPacket,
        Verdict.EXPIRED: SaExpiredError, Verdict.SEQ_EXHAUSTED: SequenceExhausted, Verdict.NO_SPACE: NoSpace,
        Verdict.NO_SA: UnknownSpi, Verdict.UNSUPPORTED: UnsupportedPacket,
    }
    for verdict, cls in table.items():
        cls.verdict = int(verdict)
        _BY_VERDICT[int(verdict)] = cls


_MESSAGES = {
    "AUTH_FAILED": "authentication failed",
    "REPLAYED": "replayed or outside the anti-replay window",
    "MALFORMED": "malformed packet",
    "PAD_ERROR": "invalid padding",
    "DUMMY": "dummy packet (next header 59) dropped",
    "EXPIRED": "SA reached its hard lifetime",
    "SEQ_EXHAUSTED": "sequence number space exhausted; rekey the SA",
    "NO_SPACE": "output buffer too small",
    "NO_SA": "SPI does not belong to this SA",
    "UNSUPPORTED": "packet not supported (IP fragment or crypto library failure)",
}


def error_for_verdict(verdict: int, spi: int) -> PacketError:
    """The exception the single-packet API raises for a non-OK verdict."""
    if not _BY_VERDICT:
        _register()
    from esp.batch import Verdict

    name = Verdict(verdict).name
    cls = _BY_VERDICT.get(verdict, PacketError)
    return cls(f"SPI 0x{spi:08x}: {_MESSAGES.get(name, name.lower())}")
