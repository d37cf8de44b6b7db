"""What one SCEP or CMP message came to, as the responders report it to ``ca serve``'s access log.

Both protocols end a message the same ways (a certificate issued, a request queued for approval, a refusal with
its failInfo), so one record serves both and the service logs them alike."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestOutcome"]


@dataclass(frozen=True)
class RequestOutcome:
    """Never a secret, a challenge password or the request itself: this goes to the log.

    ``outcome`` is e.g. ``issued``, ``pending``, ``ok`` (SCEP GetCert/GetCRL, other CMP messages), ``confirmed``,
    ``revoked``, or ``refused`` (with ``fail_info`` and ``reason``)."""

    message_type: str | None
    transaction_id: str | None
    outcome: str
    serial: int | None = None
    fail_info: str | None = None
    reason: str | None = None

    def log_fields(self) -> dict[str, object]:
        """The access-log fields of this outcome (the serial in hex, as ``ca list`` shows it)."""
        return {"msg": self.message_type, "tid": self.transaction_id, "outcome": self.outcome,
                "serial": None if self.serial is None else f"{self.serial:x}", "failinfo": self.fail_info,
                "reason": self.reason}
