"""Liveness check (RFC 7296 2.4): an empty INFORMATIONAL; no answer within the retransmits ends the IKE_SA.
Also the responder's handling of other INFORMATIONAL requests (notifies are logged)."""
from __future__ import annotations

import logging

from ..constants import ExchangeType, NotifyType
from ..events import AuthenticationFailed
from ..message import Message
from ..payloads import NotifyPayload
from .base import Task, TaskStatus

__all__ = ["Dpd", "Informational"]

log = logging.getLogger("ike.info")


class Dpd(Task):
    EXCHANGE = ExchangeType.INFORMATIONAL


class Informational(Task):
    """Responder of an INFORMATIONAL without Delete: logs notifies, answers empty."""

    EXCHANGE = ExchangeType.INFORMATIONAL

    def process(self, msg: Message) -> TaskStatus:
        for n in msg.all(NotifyPayload):
            log.info("peer notifies %s", n)
            if n.type == NotifyType.AUTHENTICATION_FAILED:
                sa = self.sa
                sa.emit(AuthenticationFailed(sa.ike_id, sa.peer.name, sa.remote_addr,
                                             "peer refused our authentication", False))
                sa.scratch["deleted"] = "authentication failed (peer)"
        return TaskStatus.SUCCESS
