"""CHILD_SA creation in IKE_AUTH or CREATE_CHILD_SA (strongSwan child_create): ESP proposals, traffic selector
narrowing, optional PFS, KEYMAT, and the ChildSaEstablished event."""
from __future__ import annotations

import ipaddress
import logging

from ..constants import EsnId, ExchangeType, NotifyType, ProtocolId, TransformType
from ..core_config import ChildConfig, TrafficSelector
from ..dh import DhKeyExchange, create_dh
from ..errors import (
    InvalidKePayloadError,
    InvalidSyntaxError,
    NoAdditionalSasError,
    NoProposalChosenError,
    ProtocolError,
    TsUnacceptableError,
)
from ..events import ChildSaEstablished, ChildSaFailed
from ..keymat import derive_child_keys
from ..message import Message
from ..payloads import KePayload, NoncePayload, NotifyPayload, Proposal, SaPayload, TsPayload
from ..proposal import check_selected, esp_suite_name, parse_proposals, select_proposal, strip_dh
from ..sa import ChildSa
from .base import ChildTask, TaskStatus
from .ike_init import NONCE_LEN

__all__ = ["ChildCreate", "narrow", "ts_subset"]

log = logging.getLogger("ike.child")


def _intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    if a.version != b.version:
        return None
    if a.protocol and b.protocol and a.protocol != b.protocol:
        return None
    lo = max(int(ipaddress.ip_address(a.start)), int(ipaddress.ip_address(b.start)))
    hi = min(int(ipaddress.ip_address(a.end)), int(ipaddress.ip_address(b.end)))
    sp, ep = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if lo > hi or sp > ep:
        return None
    mk = ipaddress.IPv4Address if a.version == 4 else ipaddress.IPv6Address
    return TrafficSelector(str(mk(lo)), str(mk(hi)), a.protocol or b.protocol, sp, ep)


def narrow(theirs: tuple[TrafficSelector, ...], ours: tuple[TrafficSelector, ...]) -> tuple[TrafficSelector, ...]:
    """The responder's narrowing (RFC 7296 2.9): every non-empty intersection, deduplicated, in their order."""
    out = []
    for t in theirs:
        for o in ours:
            x = _intersect(t, o)
            if x is not None and x not in out:
                out.append(x)
    return tuple(out)


def ts_subset(inner: tuple[TrafficSelector, ...], outer: tuple[TrafficSelector, ...]) -> bool:
    return all(any(_intersect(i, o) == i for o in outer) for i in inner)


class ChildCreate(ChildTask):
    """``config`` is set for the initiator; the responder finds it from the traffic selectors."""

    EXCHANGE = ExchangeType.CREATE_CHILD_SA

    def __init__(self, sa, initiator, config: ChildConfig | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(sa, initiator)
        self.config = config
        self.spi_in = 0
        self.nonce = b""
        self.dh: DhKeyExchange | None = None
        self.proposals: tuple[Proposal, ...] = ()
        self.selected: Proposal | None = None
        self.error: ProtocolError | None = None  # responder: refused, answered with a notify
        self.their: tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]] = ((), ())
        self.child: ChildSa | None = None
        self.replaces: ChildSa | None = None  # set by ChildRekey
        self.pfs_group = 0

    # -- helpers -------------------------------------------------------------------------------------------
    def _in_auth(self, msg: Message) -> bool:
        return msg.exchange == ExchangeType.IKE_AUTH

    def _our_proposals(self, cfg: ChildConfig, msg: Message) -> tuple[Proposal, ...]:
        props = parse_proposals(cfg.esp_proposals, ProtocolId.ESP, self.spi_in.to_bytes(4, "big"))
        return strip_dh(props) if self._in_auth(msg) else props

    def _dh(self, group: int) -> DhKeyExchange:
        f = self.sa.config.dh_factory
        return f(group) if f else create_dh(group, self.sa.random)

    # -- initiator -----------------------------------------------------------------------------------------
    def build(self, msg: Message) -> TaskStatus:
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            return TaskStatus.NEED_MORE
        if self.initiator:
            return self._build_i(msg)
        return self._build_r(msg)

    def _build_i(self, msg: Message) -> TaskStatus:
        sa, cfg = self.sa, self.config
        assert cfg is not None
        if not self.spi_in:
            self.spi_in = sa.new_child_spi()
        self.proposals = self._our_proposals(cfg, msg)
        msg.add(SaPayload(self.proposals))
        if not self._in_auth(msg):
            self.nonce = sa.random(NONCE_LEN)
            msg.add(NoncePayload(self.nonce))
            dh = self.proposals[0].first(TransformType.DH)
            if dh is not None and dh.id:
                self.pfs_group = self.pfs_group or dh.id
                if self.dh is None or self.dh.group != self.pfs_group:
                    self.dh = self._dh(self.pfs_group)
                msg.add(KePayload(self.pfs_group, self.dh.public))
        msg.add(TsPayload(cfg.local_ts, True), TsPayload(cfg.remote_ts, False))
        if cfg.mode == "transport":
            msg.add(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        self._extra_build(msg)
        return TaskStatus.NEED_MORE

    def _extra_build(self, msg: Message) -> None:
        """Hook for ChildRekey (REKEY_SA notify)."""

    def process(self, msg: Message) -> TaskStatus:
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            return TaskStatus.NEED_MORE
        if self.initiator:
            return self._process_i(msg)
        try:
            self._process_r(msg)
        except (NoProposalChosenError, TsUnacceptableError, InvalidKePayloadError, NoAdditionalSasError) as exc:
            if not self._in_auth(msg):
                raise
            self.error = exc  # IKE_AUTH: the IKE_SA still comes up, the CHILD_SA is refused
        return TaskStatus.NEED_MORE

    def _process_i(self, msg: Message) -> TaskStatus:
        sa, cfg = self.sa, self.config
        assert cfg is not None
        n = msg.error_notify()
        if n is not None:
            if n.type == NotifyType.INVALID_KE_PAYLOAD and not self._in_auth(msg) and len(n.data) >= 2:
                self.pfs_group = int.from_bytes(n.data[:2], "big")
                from .base import RetryExchange

                if self.pfs_group not in {t.id for p in self.proposals for t in p.of_type(TransformType.DH)}:
                    raise NoProposalChosenError("peer wants a PFS group we did not offer")
                raise RetryExchange("child INVALID_KE_PAYLOAD")
            self._fail(f"peer answered {n}", n.type)
            return TaskStatus.SUCCESS
        sa_p, tsi, tsr = msg.get(SaPayload), msg.get_ts(True), msg.get_ts(False)
        if sa_p is None or tsi is None or tsr is None:
            self._fail("response without SA or TS", None)
            return TaskStatus.SUCCESS
        try:
            if len(sa_p.proposals) != 1:
                raise NoProposalChosenError("more than one proposal selected")
            chosen = sa_p.proposals[0]
            check_selected(self.proposals, chosen)
            if not (ts_subset(tsi.selectors, cfg.local_ts) and ts_subset(tsr.selectors, cfg.remote_ts)):
                raise TsUnacceptableError("responder widened the traffic selectors")
            shared = None
            if not self._in_auth(msg):
                nonce = msg.get(NoncePayload)
                if nonce is None:
                    raise InvalidSyntaxError("CREATE_CHILD_SA response without nonce")
                nr = nonce.data
                if self.dh is not None and chosen.first(TransformType.DH) is not None:
                    ke = msg.get(KePayload)
                    if ke is None or ke.group != self.dh.group:
                        raise NoProposalChosenError("PFS KE missing or of another group")
                    shared = self.dh.shared(ke.data)
                ni = self.nonce
            else:
                ni, nr = self._sa.nonce_i, self._sa.nonce_r
        except ProtocolError as exc:
            self._fail(exc.reason, None)
            return TaskStatus.SUCCESS
        transport = msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        self._install(chosen, ni, nr, shared, tsi.selectors, tsr.selectors, transport)
        return TaskStatus.SUCCESS

    def _fail(self, reason: str, notify: int | None) -> None:
        log.debug("CHILD_SA %s failed: %s", self.config.name if self.config else "?", reason)
        self.sa.emit(ChildSaFailed(self.sa.ike_id, self.sa.peer.name, self.config.name if self.config else "",
                                   reason, notify))

    # -- responder -----------------------------------------------------------------------------------------
    def _find_config(self, tsi: tuple[TrafficSelector, ...], tsr: tuple[TrafficSelector, ...]) -> ChildConfig:
        for cfg in self.sa.peer.children:
            if narrow(tsi, cfg.remote_ts) and narrow(tsr, cfg.local_ts):
                return cfg
        raise TsUnacceptableError("no CHILD_SA configuration matches the traffic selectors")

    def _process_r(self, msg: Message) -> None:
        sa = self.sa
        sa_p, tsi, tsr = msg.get(SaPayload), msg.get_ts(True), msg.get_ts(False)
        if sa_p is None or tsi is None or tsr is None:
            if self._in_auth(msg):
                self.error = None
                self.config = None
                return  # IKE_AUTH without a CHILD_SA (childless, RFC 6023 style)
            raise InvalidSyntaxError("CREATE_CHILD_SA request without SA or TS")
        self.their = (tsi.selectors, tsr.selectors)
        if len(sa.children) >= sa.config.max_child_sas:
            raise NoAdditionalSasError(f"already {len(sa.children)} CHILD_SAs in this IKE_SA")
        cfg = self.replaces.config if self.replaces is not None else self._find_config(tsi.selectors, tsr.selectors)
        self.config = cfg
        self.spi_in = sa.new_child_spi()
        chosen = select_proposal(self._our_proposals(cfg, msg), sa_p.proposals, ProtocolId.ESP)
        if len(chosen.spi) != 4:
            raise InvalidSyntaxError("ESP proposal SPI must be 4 bytes")
        local = narrow(tsr.selectors, cfg.local_ts)
        remote = narrow(tsi.selectors, cfg.remote_ts)
        if not local or not remote:
            raise TsUnacceptableError("traffic selectors do not overlap ours")
        shared = None
        if self._in_auth(msg):
            ni, nr = self._sa.nonce_i, self._sa.nonce_r
        else:
            nonce = msg.get(NoncePayload)
            if nonce is None:
                raise InvalidSyntaxError("CREATE_CHILD_SA request without nonce")
            ni = nonce.data
            self.nonce = nr = sa.random(NONCE_LEN)
            dh_t = chosen.first(TransformType.DH)
            if dh_t is not None and dh_t.id:
                ke = msg.get(KePayload)
                if ke is None or ke.group != dh_t.id:
                    raise InvalidKePayloadError("PFS group mismatch", group=dh_t.id)
                self.dh = self._dh(dh_t.id)
                shared = self.dh.shared(ke.data)
        transport = cfg.mode == "transport" and msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        self.selected = Proposal(chosen.number, chosen.protocol, self.spi_in.to_bytes(4, "big"), chosen.transforms)
        self._install(chosen, ni, nr, shared, remote, local, transport)

    def _build_r(self, msg: Message) -> TaskStatus:
        if self.error is not None:
            msg.add(NotifyPayload(self.error.notify or NotifyType.NO_PROPOSAL_CHOSEN, self.error.notify_data))
            self._fail(self.error.reason, self.error.notify)
            return TaskStatus.SUCCESS
        if self.child is None:
            return TaskStatus.SUCCESS
        assert self.selected is not None
        msg.add(SaPayload((self.selected,)))
        if not self._in_auth(msg):
            msg.add(NoncePayload(self.nonce))
            if self.dh is not None:
                msg.add(KePayload(self.dh.group, self.dh.public))
        msg.add(TsPayload(self.child.remote_ts, True), TsPayload(self.child.local_ts, False))
        if self.child.mode == "transport":
            msg.add(NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        return TaskStatus.SUCCESS

    # -- both ----------------------------------------------------------------------------------------------
    def _install(self, chosen: Proposal, ni: bytes, nr: bytes, shared: bytes | None,
                 tsi: tuple[TrafficSelector, ...], tsr: tuple[TrafficSelector, ...], transport: bool) -> None:
        """``tsi``/``tsr`` are the initiator's/responder's selectors of the exchange."""
        sa, cfg = self.sa, self.config
        xkeys = self._sa.keys  # the IKE_SA this exchange ran on
        assert cfg is not None and xkeys is not None
        spi_out = int.from_bytes(chosen.spi, "big")
        keys = derive_child_keys(xkeys.prf, xkeys.sk_d, chosen, ni, nr, shared)
        esn_t = chosen.first(TransformType.ESN)
        esn = esn_t is not None and esn_t.id == EsnId.ESN
        local_ts, remote_ts = (tsi, tsr) if self.initiator else (tsr, tsi)
        if not self.initiator:  # _process_r passes (remote, local)
            local_ts, remote_ts = tsr, tsi
        child = ChildSa(cfg.name, cfg, self.spi_in, spi_out, chosen, esp_suite_name(chosen), keys, local_ts,
                        remote_ts, self.initiator, sa.now, esn, nonce_i=ni, nonce_r=nr)
        if cfg.rekey_time:
            jitter = (int.from_bytes(sa.random(2), "big") / 65535.0) * 0.1 * cfg.rekey_time
            child.rekey_at = sa.now + cfg.rekey_time - jitter
        if cfg.life_time:
            child.expire_at = sa.now + cfg.life_time
        child.mode = "transport" if transport else "tunnel"
        sa.children[child.spi_in] = child
        self.child = child
        sa.emit(child_event(sa, child, transport, self.replaces.spi_in if self.replaces else None))


def child_event(sa, child: ChildSa, transport: bool, replaces: int | None) -> ChildSaEstablished:  # type: ignore[no-untyped-def]
    k = child.keys
    ours_i = child.initiator
    cfg = child.config
    encap = sa.nat_local or sa.nat_remote or sa.peer.encap
    return ChildSaEstablished(
        sa.ike_id, sa.peer.name, child.name, child.spi_in, child.spi_out, child.suite, child.esn,
        "transport" if transport else "tunnel", child.local_ts, child.remote_ts, sa.local_addr, sa.remote_addr,
        encap, ours_i, (child.rekey_at - sa.now) if child.rekey_at else 0.0, cfg.life_time, cfg.rekey_bytes,
        cfg.life_bytes, cfg.rekey_packets, cfg.life_packets, replaces,
        enc_key_in=k.encr_r if ours_i else k.encr_i, enc_key_out=k.encr_i if ours_i else k.encr_r,
        integ_key_in=k.integ_r if ours_i else k.integ_i, integ_key_out=k.integ_i if ours_i else k.integ_r)
