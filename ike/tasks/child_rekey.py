"""CHILD_SA rekeying (RFC 7296 2.8), make-before-break: the new SA is installed (ChildSaEstablished with
``replaces``), outbound traffic moves (ChildSaRekeyed), and only then is the old SA deleted."""
from __future__ import annotations

from ..constants import NotifyType, ProtocolId
from ..errors import ChildSaNotFoundError
from ..events import ChildSaRekeyed
from ..message import Message
from ..payloads import NotifyPayload
from ..sa import ChildSa, ChildSaState
from .base import TaskStatus
from .child_create import ChildCreate
from .child_delete import ChildDelete

__all__ = ["ChildRekey"]


class ChildRekey(ChildCreate):
    def __init__(self, sa, initiator, old: ChildSa | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(sa, initiator, old.config if old else None)
        self.replaces = old
        self.pfs_group = 0

    def _extra_build(self, msg: Message) -> None:
        assert self.replaces is not None
        msg.add(NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, self.replaces.spi_in.to_bytes(4, "big")))

    def process(self, msg: Message) -> TaskStatus:
        sa = self.sa
        if not self.initiator:
            n = msg.notify(NotifyType.REKEY_SA)
            old = sa.child_by_out(int.from_bytes(n.spi, "big")) if n is not None and len(n.spi) == 4 else None
            if old is None or old.state in (ChildSaState.DELETING, ChildSaState.DELETED):
                raise ChildSaNotFoundError("REKEY_SA for an unknown CHILD_SA")
            self.replaces = old
            self._process_r(msg)
            if self.child is not None:
                old.state = ChildSaState.REKEYED
                sa.scratch["rekeyed_by_" + str(old.spi_in)] = self.child
            return TaskStatus.NEED_MORE
        status = super().process(msg)
        old = self.replaces
        assert old is not None
        if self.child is not None:
            old.state = ChildSaState.REKEYED
            sa.emit(ChildSaRekeyed(sa.ike_id, sa.peer.name, old.name, old.spi_in, old.spi_out, self.child.spi_in,
                                   self.child.spi_out))
            self._tm_front(ChildDelete(sa, True, [old], "rekeyed"))
        elif old.state == ChildSaState.REKEYING:
            old.state = ChildSaState.INSTALLED  # failed: keep the old one, retry at the next deadline
        return status

    def failed(self, reason: str, notify: int | None) -> None:
        if self.replaces is not None and self.replaces.state == ChildSaState.REKEYING:
            self.replaces.state = ChildSaState.INSTALLED

    def _tm_front(self, task) -> None:  # type: ignore[no-untyped-def]
        self.sa.scratch.setdefault("front_tasks", []).append(task)
