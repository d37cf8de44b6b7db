"""Task protocol (strongSwan's task.h): ``build`` adds a concern's payloads, ``process`` reads them.

The exchange initiator builds then processes; the responder processes then builds. A task never sends, never
reads a clock and never touches message IDs: exchange.py does.
"""
from __future__ import annotations

import enum
from typing import ClassVar

from ..constants import ExchangeType
from ..message import Message
from ..sa import IkeSa

__all__ = ["Task", "ChildTask", "TaskStatus", "RetryExchange"]


class TaskStatus(enum.Enum):
    SUCCESS = "success"
    NEED_MORE = "need_more"


class RetryExchange(Exception):
    """Raised by the initiator's IkeInit on COOKIE or INVALID_KE_PAYLOAD: send IKE_SA_INIT again."""


class Task:
    #: the exchange this task starts when it is queued as initiator
    EXCHANGE: ClassVar[int] = ExchangeType.INFORMATIONAL

    def __init__(self, sa: IkeSa, initiator: bool) -> None:
        self._sa = sa  # the IKE_SA the exchange runs on
        self.initiator = initiator  # initiator of the exchange (not necessarily of the IKE_SA)

    @property
    def sa(self) -> IkeSa:
        return self._sa

    def build(self, msg: Message) -> TaskStatus:
        return TaskStatus.SUCCESS

    def process(self, msg: Message) -> TaskStatus:
        return TaskStatus.SUCCESS

    def failed(self, reason: str, notify: int | None) -> None:
        """The exchange failed (error response, retransmit give-up); default: nothing to undo."""

    def migrate(self, sa: IkeSa) -> None:
        """The task will run its exchange on ``sa`` (strongSwan's task migrate()): it was queued on an IKE_SA
        that an IKE rekey replaced before the exchange started. Default: nothing is bound to the IKE_SA."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'i' if self.initiator else 'r'})"


class ChildTask(Task):
    """A task about CHILD_SAs: ``sa`` is the IKE_SA that holds them *now* (an IKE rekey may complete while the
    exchange runs on the old IKE_SA); ``_sa`` is the one the exchange runs on (its SK_d derives the keys)."""

    @property
    def sa(self) -> IkeSa:
        return self._sa.live()

    def migrate(self, sa: IkeSa) -> None:
        # the exchange runs on ``sa`` now: its SK_d derives the keys, and follow-up tasks (front_tasks) go to
        # its task manager; ``self.sa`` (the holder of the CHILD_SAs) is unchanged by this
        self._sa = sa
