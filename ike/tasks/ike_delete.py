"""Deleting an IKE_SA (RFC 7296 1.4.1): an INFORMATIONAL with Delete(IKE); the SA and its CHILD_SAs go away."""
from __future__ import annotations

from ..constants import ExchangeType, ProtocolId
from ..message import Message
from ..payloads import DeletePayload
from ..sa import IkeSaState
from .base import Task, TaskStatus

__all__ = ["IkeDelete"]


class IkeDelete(Task):
    EXCHANGE = ExchangeType.INFORMATIONAL

    def build(self, msg: Message) -> TaskStatus:
        if self.initiator:
            msg.add(DeletePayload(ProtocolId.IKE))
            self.sa.state = IkeSaState.DELETING
        return TaskStatus.SUCCESS

    def process(self, msg: Message) -> TaskStatus:
        if self.initiator:
            self.sa.scratch["deleted"] = "deleted"
        else:
            self.sa.scratch["deleted"] = "deleted by peer"
            self.sa.state = IkeSaState.DELETING
        return TaskStatus.SUCCESS

    def failed(self, reason: str, notify: int | None) -> None:
        self.sa.scratch["deleted"] = "deleted"
