"""CHILD_SA rekeying (RFC 7296 2.8), make-before-break: the new SA is installed (ChildSaEstablished with
``replaces``), outbound traffic moves (ChildSaRekeyed), and only then is the old SA deleted.

Simultaneous rekeys (2.8.1): when both ends rekey the same CHILD_SA, the new SA whose exchange holds the lowest
of the four nonces is redundant and is deleted by the end that initiated it; the initiator of the survivor
deletes the old SA.

CHILD_SA_NOT_FOUND in answer to our rekey (2.25): the peer has no such SA; we drop ours silently and create it
afresh with a plain CREATE_CHILD_SA (unless the peer's Delete already removed it: a rekey/delete collision).
A rekey request for an SA we are deleting is answered TEMPORARY_FAILURE (2.25.1), so that the peer waits for our
Delete instead of creating the SA again.
"""
from __future__ import annotations

from ..constants import NotifyType, ProtocolId
from ..errors import ChildSaNotFoundError, TemporaryFailureError
from ..events import ChildSaRekeyed
from ..message import Message
from ..payloads import NotifyPayload
from ..sa import ChildSa, ChildSaState, retry_delay
from .base import TaskStatus
from .child_create import ChildCreate
from .child_delete import ChildDelete, remove_child

__all__ = ["ChildRekey", "resolve_collision"]


def _switch(sa, old: ChildSa, new: ChildSa) -> None:  # type: ignore[no-untyped-def]
    """Move outbound traffic from old (or its current successor) to new."""
    cur = old.successor or old
    if cur is new:
        return
    old.successor = new
    sa.emit(ChildSaRekeyed(sa.ike_id, sa.peer.name, old.name, cur.spi_in, cur.spi_out, new.spi_in, new.spi_out))


def _front(xsa, task) -> None:  # type: ignore[no-untyped-def]
    """Run ``task`` next, on the IKE_SA whose exchange is being processed (``xsa``; its task manager hands it on
    to the successor if that IKE_SA was rekeyed meanwhile)."""
    xsa.scratch.setdefault("front_tasks", []).append(task)


def resolve_collision(sa, old: ChildSa, xsa=None) -> None:  # type: ignore[no-untyped-def]
    assert old.rekey_ours is not None and old.rekey_theirs is not None
    ours, theirs = old.rekey_ours, old.rekey_theirs
    if min(ours[1], ours[2]) < min(theirs[1], theirs[2]):
        # ours is redundant: we delete it, traffic goes to theirs, the peer deletes the old SA
        _switch(sa, old, theirs[0])
        if ours[0].spi_in in sa.children:
            _front(xsa or sa, ChildDelete(sa, True, [ours[0]], "rekey collision"))
    else:
        # theirs is redundant (the peer deletes it): we keep ours and delete the old SA
        if old.successor is None:
            _switch(sa, old, ours[0])
            _front(xsa or sa, ChildDelete(sa, True, [old], "rekeyed"))


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
            if old is None or old.state == ChildSaState.DELETED:
                raise ChildSaNotFoundError("REKEY_SA for an unknown CHILD_SA")
            if old.state == ChildSaState.DELETING:
                # RFC 7296 2.25.1: our Delete is on its way; CHILD_SA_NOT_FOUND would make the peer create the
                # SA afresh (2.25) if this answer overtook the Delete
                raise TemporaryFailureError("REKEY_SA for a CHILD_SA being deleted")
            self.replaces = old
            self._process_r(msg)
            if self.child is not None:
                new = self.child
                if old.state == ChildSaState.REKEYING or old.rekey_ours is not None:
                    old.rekey_theirs = (new, new.nonce_i, new.nonce_r)
                    if old.rekey_ours is not None:
                        resolve_collision(sa, old, self._sa)
                else:
                    old.state = ChildSaState.REKEYED
                    prev = old.rekeyed_by
                    if prev is not None and prev.spi_in in sa.children:
                        # the peer rekeys the same SA again: it never got our answer to the first rekey,
                        # so the SA we created then is unused on its side; remove it
                        _front(self._sa, ChildDelete(sa, True, [prev], "rekey abandoned by peer"))
                    old.rekeyed_by = new
            return TaskStatus.NEED_MORE
        status = super().process(msg)
        old = self.replaces
        assert old is not None
        if self.child is not None and old.spi_in not in sa.children:
            # the peer deleted the SA while we rekeyed it: the replacement is moot
            _front(self._sa, ChildDelete(sa, True, [self.child], "rekeyed SA deleted meanwhile"))
        elif self.child is not None:
            new = self.child
            old.rekey_ours = (new, new.nonce_i, new.nonce_r)
            if old.rekey_theirs is not None:
                old.state = ChildSaState.REKEYED
                resolve_collision(sa, old, self._sa)
            else:
                old.state = ChildSaState.REKEYED
                _switch(sa, old, new)
                _front(self._sa, ChildDelete(sa, True, [old], "rekeyed"))
        elif old.state == ChildSaState.REKEYING and old.spi_in in sa.children and self._not_found(msg):
            self._recreate(old)
        elif old.state == ChildSaState.REKEYING:
            self.failed("rekey refused", None)
        return status

    @staticmethod
    def _not_found(msg: Message) -> bool:
        n = msg.error_notify()
        return n is not None and n.type == NotifyType.CHILD_SA_NOT_FOUND

    def _recreate(self, old: ChildSa) -> None:
        """The peer has no such CHILD_SA (RFC 7296 2.25, 3.10.1: it lost its state, or deleted the SA and its
        Delete never arrived): drop ours without a Delete (nobody to tell) and, if the configuration wants the
        CHILD_SA up, create it afresh (strongSwan's child_rekey does the same). The create is a plain
        CREATE_CHILD_SA: if it fails, it fails once (ChildSaFailed), no retry loop. A rekey that raced the
        peer's Delete (2.25) does not get here: the Delete removed the SA, or the peer, deleting it, answered
        TEMPORARY_FAILURE (2.25.1, as espresso does), or we are deleting it ourselves."""
        sa = self.sa
        remove_child(sa, old, "not found by peer")
        if old.config.start:
            _front(self._sa, ChildCreate(sa, True, old.config))

    def failed(self, reason: str, notify: int | None) -> None:
        """Keep the old SA and try again later (a TEMPORARY_FAILURE after a collision, typically)."""
        if self.replaces is not None and self.replaces.state == ChildSaState.REKEYING:

            self.replaces.state = ChildSaState.INSTALLED
            self.replaces.rekey_at = self.sa.now + retry_delay(self.sa)
