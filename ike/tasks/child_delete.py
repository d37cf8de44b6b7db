"""Deleting CHILD_SAs (RFC 7296 1.4.1): Delete(ESP) carries the SPIs the sender receives on."""
from __future__ import annotations

from ..constants import ExchangeType, ProtocolId
from ..events import ChildSaDeleted, ChildSaRekeyed
from ..message import Message
from ..payloads import DeletePayload
from ..sa import ChildSa, ChildSaState
from .base import ChildTask, TaskStatus

__all__ = ["ChildDelete", "remove_child"]


def remove_child(sa, child: ChildSa, reason: str) -> None:  # type: ignore[no-untyped-def]
    if sa.children.pop(child.spi_in, None) is not None:
        child.state = ChildSaState.DELETED
        sa.emit(ChildSaDeleted(sa.ike_id, sa.peer.name, child.name, child.spi_in, child.spi_out, reason))


class ChildDelete(ChildTask):
    EXCHANGE = ExchangeType.INFORMATIONAL

    def __init__(self, sa, initiator, children: list[ChildSa] | None = None, reason: str = "deleted") -> None:  # type: ignore[no-untyped-def]
        super().__init__(sa, initiator)
        self.children = children or []
        self.reason = reason
        self.response_spis: list[bytes] = []

    def build(self, msg: Message) -> TaskStatus:
        if self.initiator:
            live = [c for c in self.children if c.spi_in in self.sa.children]
            for c in live:
                if c.state != ChildSaState.REKEYED:
                    c.state = ChildSaState.DELETING
            if live:
                msg.add(DeletePayload(ProtocolId.ESP, tuple(c.spi_in.to_bytes(4, "big") for c in live)))
        elif self.response_spis:
            msg.add(DeletePayload(ProtocolId.ESP, tuple(self.response_spis)))
        return TaskStatus.SUCCESS

    def process(self, msg: Message) -> TaskStatus:
        sa = self.sa
        if self.initiator:
            for c in self.children:
                remove_child(sa, c, self.reason)
            return TaskStatus.SUCCESS
        for d in msg.all(DeletePayload):
            if d.protocol != ProtocolId.ESP:
                continue
            for spi in d.spis:
                child = sa.child_by_out(int.from_bytes(spi, "big"))
                if child is None:
                    continue
                successor, child.rekeyed_by = child.rekeyed_by, None
                if child.successor is not None:
                    reason = "rekeyed"  # outbound already moved (collision resolution)
                elif successor is not None and successor.spi_in in sa.children:
                    # make-before-break, responder side: switch outbound to the new SA only now
                    child.successor = successor
                    sa.emit(ChildSaRekeyed(sa.ike_id, sa.peer.name, child.name, child.spi_in, child.spi_out,
                                           successor.spi_in, successor.spi_out))
                    reason = "rekeyed"
                else:
                    reason = "deleted by peer"
                    self._orphaned(child)
                if child.state not in (ChildSaState.DELETING,):
                    self.response_spis.append(child.spi_in.to_bytes(4, "big"))
                remove_child(sa, child, reason)
        return TaskStatus.SUCCESS

    def _orphaned(self, child: ChildSa) -> None:
        """The peer deleted an SA our outbound traffic had moved to (a lost rekey collision on its side):
        move outbound back to the surviving SA of the same lineage, if any."""
        sa = self.sa
        for other in sa.children.values():
            if other.successor is child:
                survivor = other.rekey_theirs[0] if other.rekey_theirs and other.rekey_theirs[0] is not child \
                    else other.rekey_ours[0] if other.rekey_ours and other.rekey_ours[0] is not child else None
                if survivor is not None and survivor.spi_in in sa.children:
                    other.successor = survivor
                    sa.emit(ChildSaRekeyed(sa.ike_id, sa.peer.name, child.name, child.spi_in, child.spi_out,
                                           survivor.spi_in, survivor.spi_out))

    def failed(self, reason: str, notify: int | None) -> None:
        for c in self.children:
            remove_child(self.sa, c, self.reason)
