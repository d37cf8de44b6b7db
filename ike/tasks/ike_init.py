"""IKE_SA_INIT: proposals, KE, nonces, COOKIE and INVALID_KE_PAYLOAD retries, SKEYSEED (strongSwan ike_init)."""
from __future__ import annotations

from ..authenticators import SUPPORTED_HASHES
from ..constants import ExchangeType, NotifyType, ProtocolId, TransformType
from ..dh import DhKeyExchange, create_dh
from ..errors import InvalidKePayloadError, InvalidSyntaxError, NoProposalChosenError, ProtocolError
from ..events import IkeKeysDerived
from ..keymat import derive_ike_keys, skeyseed
from ..message import Message
from ..payloads import KePayload, NoncePayload, NotifyPayload, SaPayload
from ..proposal import check_selected, encr_info, integ_info, parse_proposals, select_proposal
from ..protect import Protector
from .base import RetryExchange, Task, TaskStatus

__all__ = ["IkeInit", "NONCE_LEN", "MAX_RETRIES", "peer_error"]

NONCE_LEN = 32
MAX_RETRIES = 5  # COOKIE / INVALID_KE_PAYLOAD rounds before giving up


def peer_error(msg: Message) -> ProtocolError | None:
    """An error notify in a response, as the ProtocolError it stands for (raised by the caller)."""
    n = msg.error_notify()
    if n is None:
        return None
    err = ProtocolError(f"peer answered {n}")
    err.notify = None  # never answer an error with an error
    err.reason = f"peer answered {n}"
    err.peer_notify = n.type  # type: ignore[attr-defined]
    return err


class IkeInit(Task):
    EXCHANGE = ExchangeType.IKE_SA_INIT

    def __init__(self, sa, initiator) -> None:  # type: ignore[no-untyped-def]
        super().__init__(sa, initiator)
        self.proposals = parse_proposals(sa.peer.ike_proposals, ProtocolId.IKE)
        self.group = next(t.id for t in self.proposals[0].transforms if t.type == TransformType.DH)
        self.dh: DhKeyExchange | None = None
        self.cookie: bytes | None = None
        self.retries = 0
        self.done = False

    def _dh(self, group: int) -> DhKeyExchange:
        factory = self.sa.config.dh_factory
        return factory(group) if factory else create_dh(group, self.sa.random)

    def _common(self, msg: Message) -> None:
        if self.sa.peer.fragmentation != "no":  # "accept" announces too: the peer may fragment
            msg.add(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        if self.sa.peer.signature_auth:
            msg.add(NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS,
                                  b"".join(int(h).to_bytes(2, "big") for h in SUPPORTED_HASHES)))

    def build(self, msg: Message) -> TaskStatus:
        if msg.exchange != ExchangeType.IKE_SA_INIT or self.done:
            return TaskStatus.SUCCESS if self.done else TaskStatus.NEED_MORE
        sa = self.sa
        if self.initiator:
            if self.cookie is not None:
                msg.add(NotifyPayload(NotifyType.COOKIE, self.cookie))
            if self.dh is None or self.dh.group != self.group:
                self.dh = self._dh(self.group)
            if not sa.nonce_i:
                sa.nonce_i = sa.random(NONCE_LEN)
            msg.add(SaPayload(self.proposals), KePayload(self.group, self.dh.public), NoncePayload(sa.nonce_i))
            self._common(msg)
            return TaskStatus.NEED_MORE
        assert sa.proposal is not None and self.dh is not None
        msg.add(SaPayload((sa.proposal,)), KePayload(self.dh.group, self.dh.public), NoncePayload(sa.nonce_r))
        self._common(msg)
        self.done = True
        return TaskStatus.SUCCESS

    def _read_peer_caps(self, msg: Message) -> None:
        sa = self.sa
        sa.peer_fragmentation = msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        if n is not None and self.sa.peer.signature_auth:
            data = n.data
            sa.peer_hashes = tuple(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data) - 1, 2))

    def process(self, msg: Message) -> TaskStatus:
        if msg.exchange != ExchangeType.IKE_SA_INIT:
            return TaskStatus.SUCCESS if self.done else TaskStatus.NEED_MORE
        sa = self.sa
        if self.initiator:
            cookie = msg.notify(NotifyType.COOKIE)
            if cookie is not None:
                self._retry()
                if not 1 <= len(cookie.data) <= 64:
                    raise InvalidSyntaxError("COOKIE of bad length")
                self.cookie = cookie.data
                raise RetryExchange("COOKIE")
            ike = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
            if ike is not None:
                self._retry()
                group = int.from_bytes(ike.data[:2], "big") if len(ike.data) >= 2 else 0
                offered = {t.id for p in self.proposals for t in p.transforms if t.type == TransformType.DH}
                if group not in offered or group == self.group:
                    raise NoProposalChosenError(f"responder wants DH group {group}, which we did not offer")
                self.group = group
                raise RetryExchange("INVALID_KE_PAYLOAD")
            err = peer_error(msg)
            if err is not None:
                raise err
            sa_p, ke, nonce = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
            if sa_p is None or ke is None or nonce is None:
                raise InvalidSyntaxError("IKE_SA_INIT response lacks SA, KE or Nonce")
            if len(sa_p.proposals) != 1:
                raise NoProposalChosenError("responder returned more than one proposal")
            chosen = sa_p.proposals[0]
            check_selected(self.proposals, chosen)
            dh_t = chosen.first(TransformType.DH)
            if dh_t is None or dh_t.id != self.group or ke.group != self.group:
                raise NoProposalChosenError("responder's DH group differs from our KE")
            if msg.spi_r == 0:
                raise InvalidSyntaxError("IKE_SA_INIT response with a zero responder SPI")
            sa.spi_r = msg.spi_r
            sa.nonce_r = nonce.data
            sa.proposal = chosen
            assert self.dh is not None
            shared = self.dh.shared(ke.data)
        else:
            sa_p, ke, nonce = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
            if sa_p is None or ke is None or nonce is None:
                raise InvalidSyntaxError("IKE_SA_INIT request lacks SA, KE or Nonce")
            chosen = select_proposal(self.proposals, sa_p.proposals, ProtocolId.IKE)
            dh_t = chosen.first(TransformType.DH)
            assert dh_t is not None
            if ke.group != dh_t.id:
                raise InvalidKePayloadError(f"KE group {ke.group}, selected {dh_t.id}", group=dh_t.id)
            sa.proposal = chosen
            sa.nonce_i = nonce.data
            sa.nonce_r = sa.random(NONCE_LEN)
            self.dh = self._dh(dh_t.id)
            shared = self.dh.shared(ke.data)
        self._read_peer_caps(msg)
        self._derive(shared)
        if self.initiator:
            self.done = True
            return TaskStatus.SUCCESS
        return TaskStatus.NEED_MORE

    def _retry(self) -> None:
        self.retries += 1
        if self.retries > MAX_RETRIES:
            raise NoProposalChosenError("too many IKE_SA_INIT retries")

    def _derive(self, shared: bytes) -> None:
        sa = self.sa
        assert sa.proposal is not None
        prf_t = sa.proposal.first(TransformType.PRF)
        assert prf_t is not None
        from ..proposal import prf_hash

        seed = skeyseed(prf_hash(prf_t.id), sa.nonce_i, sa.nonce_r, shared)
        sa.keys = derive_ike_keys(sa.proposal, seed, sa.nonce_i, sa.nonce_r, sa.spi_i, sa.spi_r)
        install_keys(sa)


def install_keys(sa) -> None:  # type: ignore[no-untyped-def]
    """Build the SK protector from ``sa.keys`` and report them when key logging is on."""
    k = sa.keys
    sa.protector = Protector.from_proposal(sa.proposal, sa.initiator, k.sk_ei, k.sk_er, k.sk_ai, k.sk_ar,
                                           sa.random)
    if sa.config.key_log:
        e = sa.proposal.first(TransformType.ENCR)
        i = sa.proposal.first(TransformType.INTEG)
        info = encr_info(e)
        sa.emit(IkeKeysDerived(sa.ike_id, sa.peer.name, sa.spi_i, sa.spi_r, e.id, info.key_len * 8,
                               i.id if i else 0, info.name, integ_info(i.id)[3] if i else "",
                               k.sk_ei, k.sk_er, k.sk_ai, k.sk_ar))

