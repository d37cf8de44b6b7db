"""IKE_SA rekeying (RFC 7296 2.18): a CREATE_CHILD_SA with an IKE proposal, new SPIs, KE and nonces;
SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr). The CHILD_SAs move to the new IKE_SA; the rekey
initiator deletes the old one."""
from __future__ import annotations

from ..constants import ExchangeType, ProtocolId, TransformType
from ..dh import DhKeyExchange, create_dh
from ..errors import InvalidKePayloadError, InvalidSyntaxError, NoProposalChosenError
from ..keymat import derive_ike_keys, rekey_skeyseed
from ..message import Message
from ..payloads import KePayload, NoncePayload, Proposal, SaPayload
from ..proposal import check_selected, parse_proposals, select_proposal
from ..sa import retry_delay
from .base import Task, TaskStatus
from .ike_init import NONCE_LEN

__all__ = ["IkeRekey"]


class IkeRekey(Task):
    EXCHANGE = ExchangeType.CREATE_CHILD_SA

    def __init__(self, sa, initiator, conn) -> None:  # type: ignore[no-untyped-def]
        super().__init__(sa, initiator)
        self.conn = conn
        self.spi = 0
        self.nonce = b""
        self.dh: DhKeyExchange | None = None
        self.selected: Proposal | None = None
        self.proposals: tuple[Proposal, ...] = ()

    def _dh(self, group: int) -> DhKeyExchange:
        f = self.sa.config.dh_factory
        return f(group) if f else create_dh(group, self.sa.random)

    def build(self, msg: Message) -> TaskStatus:
        sa = self.sa
        if self.initiator:
            self.spi = int.from_bytes(sa.random(8), "big") or 1
            self.proposals = parse_proposals(sa.peer.ike_proposals, ProtocolId.IKE, self.spi.to_bytes(8, "big"))
            assert sa.proposal is not None
            cur = sa.proposal.first(TransformType.DH)
            assert cur is not None
            self.dh = self._dh(cur.id)
            self.nonce = sa.random(NONCE_LEN)
            msg.add(SaPayload(self.proposals), NoncePayload(self.nonce), KePayload(self.dh.group, self.dh.public))
            return TaskStatus.NEED_MORE
        assert self.selected is not None and self.dh is not None
        msg.add(SaPayload((self.selected,)), NoncePayload(self.nonce), KePayload(self.dh.group, self.dh.public))
        return TaskStatus.SUCCESS

    def failed(self, reason: str, notify: int | None) -> None:
        if self.initiator:
            self.conn.rekey_failed(self.sa)

    def process(self, msg: Message) -> TaskStatus:
        sa = self.sa
        sa_p, nonce, ke = msg.get(SaPayload), msg.get(NoncePayload), msg.get(KePayload)
        if self.initiator:
            n = msg.error_notify()
            if n is not None:

                sa.rekey_at = sa.now + retry_delay(sa)  # try again later; the old IKE_SA stays
                self.conn.rekey_failed(sa)  # unless the peer's own rekey completed meanwhile
                return TaskStatus.SUCCESS
        if sa_p is None or nonce is None or ke is None:
            raise InvalidSyntaxError("IKE rekey without SA, Nonce or KE")
        if self.initiator:
            if len(sa_p.proposals) != 1:
                raise NoProposalChosenError("more than one proposal selected")
            chosen = sa_p.proposals[0]
            check_selected(self.proposals, chosen)
            assert self.dh is not None
            if ke.group != self.dh.group or len(chosen.spi) != 8:
                raise NoProposalChosenError("rekey KE group or SPI mismatch")
            shared = self.dh.shared(ke.data)
            ni, nr = self.nonce, nonce.data
            spi_i, spi_r = self.spi, int.from_bytes(chosen.spi, "big")
        else:
            ours = parse_proposals(sa.peer.ike_proposals, ProtocolId.IKE)
            chosen = select_proposal(ours, sa_p.proposals, ProtocolId.IKE)
            dh_t = chosen.first(TransformType.DH)
            assert dh_t is not None
            if ke.group != dh_t.id:
                raise InvalidKePayloadError("KE group differs", group=dh_t.id)
            if len(chosen.spi) != 8:
                raise InvalidSyntaxError("IKE rekey proposal SPI must be 8 bytes")
            self.spi = int.from_bytes(sa.random(8), "big") or 1
            self.dh = self._dh(dh_t.id)
            shared = self.dh.shared(ke.data)
            self.nonce = sa.random(NONCE_LEN)
            ni, nr = nonce.data, self.nonce
            spi_i, spi_r = int.from_bytes(chosen.spi, "big"), self.spi
            self.selected = Proposal(chosen.number, chosen.protocol, self.spi.to_bytes(8, "big"), chosen.transforms)
        assert sa.keys is not None
        prf_t = chosen.first(TransformType.PRF)
        assert prf_t is not None
        seed = rekey_skeyseed(sa.keys.prf, sa.keys.sk_d, shared, ni, nr)
        keys = derive_ike_keys(chosen, seed, ni, nr, spi_i, spi_r)
        chosen_plain = Proposal(chosen.number, chosen.protocol, b"", chosen.transforms)
        self.conn.adopt_rekeyed(sa, self.initiator, spi_i, spi_r, chosen_plain, keys, ni, nr)
        return TaskStatus.SUCCESS if self.initiator else TaskStatus.NEED_MORE
