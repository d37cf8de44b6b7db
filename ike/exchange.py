"""The task manager (strongSwan's task_manager_v2): message IDs, retransmits, the response cache, fragments,
and which tasks run for each exchange. The one place where ProtocolErrors become notifies or teardowns.

Window size 1 (RFC 7296 2.3 default): one outstanding request per direction.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from .constants import HEADER_LEN, ExchangeType, NotifyType, PayloadType
from .errors import IntegrityError, ParseError, ProtocolError
from .fragment import Reassembly, datagram_overhead, fragment_message
from .message import Header, Message, check_rules, pull_chain, push_chain, push_header
from .payloads import NotifyPayload, SkfPayload, SkPayload
from .protect import sk_generic_header
from .sa import IkeSa, IkeSaState
from .tasks.base import RetryExchange, Task, TaskStatus

__all__ = ["TaskManager", "encode_message", "decode_message", "SealedError"]

log = logging.getLogger("ike.exchange")


def encode_message(sa: IkeSa, msg: Message) -> list[bytes]:
    """Plain for IKE_SA_INIT, SK otherwise; SKF fragments when too large and the peer supports RFC 7383."""
    if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.encrypted:
        raw = msg.encode_plain()
        msg.raw = raw
        return [raw]
    assert sa.protector is not None
    msg.encrypted = True
    first, chain = push_chain(msg.payloads)

    def header(payload_len: int) -> bytes:
        return push_header(Header(msg.spi_i, msg.spi_r, PayloadType.SK, msg.exchange, msg.flags, msg.message_id,
                                  HEADER_LEN + payload_len))

    whole = sa.protector.seal(header, lambda n: sk_generic_header(first, n), chain)
    overhead = datagram_overhead(sa.remote_addr[0])
    if len(whole) > sa.peer.fragment_size - overhead and msg.exchange != ExchangeType.IKE_SA_INIT:
        if sa.peer.fragmentation == "yes" and sa.peer_fragmentation:
            frags = fragment_message(msg, sa.protector, sa.peer.fragment_size, overhead)
            log.debug("splitting %s (%d bytes) into %d fragments of at most %d bytes (IP datagram)",
                      msg.describe(), len(whole), len(frags), sa.peer.fragment_size)
            return frags
        why = ("fragmentation = " + str(sa.peer.fragmentation)) if sa.peer.fragmentation != "yes" else \
            "the peer did not announce IKE fragmentation"
        log.debug("sending %s whole (%d bytes, over fragment_size %d): %s", msg.describe(), len(whole) + overhead,
                  sa.peer.fragment_size, why)
    msg.raw = whole
    return [whole]


class SealedError(ProtocolError):
    """A ProtocolError in what an SK/SKF payload carried, found after the integrity check passed: the peer
    holding the keys sent it, so it gets the RFC answer (INVALID_SYNTAX and the like, RFC 7296 2.21) where an
    unauthenticated message is only dropped. ``error`` is the original error, whose notify is used."""

    def __init__(self, error: ProtocolError) -> None:
        super().__init__(error.reason, notify_data=error.notify_data)
        self.error = error
        self.notify = error.notify
        self.fatal = error.fatal


def decode_message(sa: IkeSa | None, data: bytes, header: Header,
                   reassembly: dict[int, Reassembly]) -> Message | None:
    """A Message from a datagram, or None while fragments are missing. Raises ProtocolError subclasses:
    :class:`SealedError` for an authenticated SK/SKF payload whose contents do not parse."""
    payloads, sk_at = pull_chain(header.next_payload, data, HEADER_LEN)
    msg = Message(header.exchange, header.spi_i, header.spi_r, header.message_id, header.is_response,
                  header.from_initiator, payloads, False, data)
    if sk_at < 0:
        return msg
    if sa is None or sa.protector is None:
        raise ParseError("encrypted payload before keys exist")
    if len(payloads) != 1:
        raise ParseError("unencrypted payloads beside SK")
    sk = payloads[0]
    if isinstance(sk, SkPayload):
        plain = sa.protector.open(data, sk_at + 4)
        msg.payloads, msg.encrypted = _inner(sk.first_inner, plain), True
        return msg
    assert isinstance(sk, SkfPayload)
    sk.verify()
    plain = sa.protector.open(data, sk_at + 8)
    try:
        r = reassembly.get(header.message_id)
        if r is None:
            if len(reassembly) >= 2:  # one request and one response in flight at most
                reassembly.clear()
            r = reassembly[header.message_id] = Reassembly(header.message_id, sk.total)
        if not r.add(sk.number, sk.total, plain, sk.first_inner):
            log.debug("received fragment %d/%d of %s %s %d", sk.number, sk.total, _exchange_name(header.exchange),
                      "response" if header.is_response else "request", header.message_id)
            return None
    except ProtocolError as exc:
        reassembly.pop(header.message_id, None)
        raise SealedError(exc) from None
    del reassembly[header.message_id]
    log.debug("reassembled %s %s %d from %d fragments (%d bytes)", _exchange_name(header.exchange),
              "response" if header.is_response else "request", header.message_id, sk.total, len(r.data()))
    msg.payloads, msg.encrypted = _inner(r.first_inner, r.data()), True
    msg.raw = b""
    return msg


def _exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return str(exchange)


def _inner(first: int, plain: bytes) -> list:  # type: ignore[type-arg]
    try:
        payloads, _ = pull_chain(first, plain)
    except ProtocolError as exc:
        raise SealedError(exc) from None
    return payloads


_P = PayloadType
#: RFC 7296's exchange diagrams (1.2-1.4; CP as 2.19 places it; CERTREQ in IKE_SA_INIT's response), per exchange
#: and direction: the order payloads leave in. Log readers and tests compare these lines with the RFC's and
#: charon's; a peer would accept any order.
_DIAGRAMS: dict[tuple[int, bool], tuple[int, ...]] = {
    (ExchangeType.IKE_SA_INIT, False): (_P.SA, _P.KE, _P.NONCE, _P.CERTREQ),
    (ExchangeType.IKE_SA_INIT, True): (_P.SA, _P.KE, _P.NONCE, _P.CERTREQ),
    (ExchangeType.IKE_AUTH, False): (_P.IDi, _P.CERT, _P.CERTREQ, _P.IDr, _P.AUTH, _P.CP, _P.SA, _P.TSi, _P.TSr),
    (ExchangeType.IKE_AUTH, True): (_P.IDr, _P.CERT, _P.AUTH, _P.CP, _P.SA, _P.TSi, _P.TSr),
    (ExchangeType.CREATE_CHILD_SA, False): (_P.SA, _P.NONCE, _P.KE, _P.TSi, _P.TSr),
    (ExchangeType.CREATE_CHILD_SA, True): (_P.SA, _P.NONCE, _P.KE, _P.TSi, _P.TSr),
    (ExchangeType.INFORMATIONAL, False): (_P.DELETE, _P.CP),
    (ExchangeType.INFORMATIONAL, True): (_P.DELETE, _P.CP),
}
_LAST = 1000


def _sort(msg: Message) -> None:
    """Put payloads in the diagram's order. Notifies the diagrams place go there: COOKIE first (RFC 7296 2.6),
    REKEY_SA and the others of CREATE_CHILD_SA/INFORMATIONAL before SA/DELETE (1.3.3), INITIAL_CONTACT right
    after IDi (as charon sends it); IKE_SA_INIT's capability notifies and USE_TRANSPORT_MODE after the diagram's
    payloads, vendor IDs last. The sort is stable, so the tasks' order holds within one rank."""
    diagram = _DIAGRAMS.get((msg.exchange, msg.response), ())

    def key(p):  # type: ignore[no-untyped-def]
        if isinstance(p, NotifyPayload):
            if p.type == NotifyType.COOKIE:
                return -2
            if p.type == NotifyType.INITIAL_CONTACT and _P.IDi in diagram:
                return diagram.index(_P.IDi) + 0.5
            if msg.exchange == ExchangeType.IKE_SA_INIT or p.type == NotifyType.USE_TRANSPORT_MODE:
                return _LAST - 1
            return -1
        t = p.payload_type
        return diagram.index(t) if t in diagram else _LAST

    msg.payloads.sort(key=key)


class TaskManager:
    """Drives the tasks of one IKE_SA. ``send(fragments)`` hands datagrams to the connection;
    ``terminate(reason, notify)`` ends the IKE_SA; ``passive_tasks(msg)`` builds the responder's task set."""

    def __init__(self, sa: IkeSa, send: Callable[[list[bytes]], None],
                 terminate: Callable[[str, int | None], None],
                 passive_tasks: Callable[[Message], list[Task]], stats: Counter[str] | None = None) -> None:
        self.sa = sa
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.send = send
        self.terminate = terminate
        self.passive_tasks = passive_tasks
        self.queue: list[list[Task]] = []
        self.active: list[Task] = []
        self.active_exchange = 0
        self.passive: list[Task] = []
        self.mid_out = 0
        self.mid_in = 0
        self.request: list[bytes] | None = None
        self.retransmits = 0
        self.retransmit_at: float | None = None
        self.cached: tuple[int, list[bytes]] | None = None
        self.reassembly: dict[int, Reassembly] = {}
        self.redirect: Callable[[list[Task], float], None] | None = None

    # -- initiator side --------------------------------------------------------------------------------
    def queue_tasks(self, tasks: list[Task], now: float) -> None:
        self.queue.append(tasks)
        self.initiate(now)

    @property
    def busy(self) -> bool:
        return self.request is not None

    def initiate(self, now: float) -> None:
        if self.request is not None or self.sa.state == IkeSaState.DESTROYED:
            return
        if not self.queue:
            return
        if self.sa.state not in (IkeSaState.ESTABLISHED, IkeSaState.CREATED, IkeSaState.CONNECTING,
                                 IkeSaState.REKEYING, IkeSaState.DELETING):
            return
        if self.sa.state == IkeSaState.CONNECTING and self.active:
            return
        self.active = self.queue.pop(0)
        for t in self.active:
            t.migrate(self.sa)  # a task queued on an IKE_SA since rekeyed runs its exchange on this one
        first = self.active[0]
        self.active_exchange = ExchangeType.IKE_SA_INIT if first.EXCHANGE == ExchangeType.IKE_SA_INIT \
            else first.EXCHANGE
        if self.active_exchange == ExchangeType.IKE_SA_INIT:
            self.sa.state = IkeSaState.CONNECTING
        self._send_request(now)

    def _send_request(self, now: float) -> None:
        sa = self.sa
        sa.now = now
        msg = Message(self.active_exchange, sa.spi_i, sa.spi_r, self.mid_out, False, sa.initiator)
        try:
            for t in self.active:
                t.build(msg)
        except ProtocolError as exc:
            self._fail_active(exc.reason, None)
            if self.active_exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH):
                # we cannot make our own IKE_SA_INIT/IKE_AUTH request (e.g. our auth constraint and the peer's
                # hashes have nothing in common): the IKE_SA ends now, with its event, rather than waiting
                self.terminate(exc.reason, None)
            return
        _sort(msg)
        frags = encode_message(sa, msg)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            sa.init_request = frags[0]
        log.debug("sending %s", msg.describe())
        self.request = frags
        self.retransmits = 0
        self.retransmit_at = now + sa.config.retransmit_timeout
        self.send(frags)

    def _fail_active(self, reason: str, notify: int | None) -> None:
        for t in self.active:
            t.failed(reason, notify)
        self.active = []
        self.request = None
        self.retransmit_at = None

    def _on_response(self, msg: Message, now: float) -> None:
        sa = self.sa
        remaining: list[Task] = []
        try:
            check_rules(msg)
            if msg.exchange == ExchangeType.IKE_SA_INIT:
                sa.init_response = msg.raw
            for t in self.active:
                if t.process(msg) == TaskStatus.NEED_MORE:
                    remaining.append(t)
        except RetryExchange as exc:
            log.info("retrying %s: %s", ExchangeType(self.active_exchange).name, exc)
            if self.active_exchange == ExchangeType.IKE_SA_INIT:
                sa.spi_r = 0
            else:
                self.mid_out += 1
            self.request = None
            self._send_request(now)
            return
        except ProtocolError as exc:
            self._response_failed(exc, now)
            return
        self.mid_out += 1
        self.request = None
        self.retransmit_at = None
        if remaining and self.active_exchange == ExchangeType.IKE_SA_INIT:
            self.active = remaining
            self.active_exchange = ExchangeType.IKE_AUTH
            self._send_request(now)
            return
        self.active = []
        self._take_front(now)
        self.initiate(now)

    def _response_failed(self, exc: ProtocolError, now: float) -> None:
        """The response to our request is an error, or is (authenticated and) unacceptable: the exchange ends;
        during IKE_SA_INIT/IKE_AUTH, or for a fatal error, so does the IKE_SA."""
        sa = self.sa
        self.request = None
        self.retransmit_at = None
        self.mid_out += 1
        if exc.fatal or self.active_exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH):
            peer_notify = getattr(exc, "peer_notify", None)
            if (exc.notify is not None and sa.protector is not None
                    and self.active_exchange == ExchangeType.IKE_AUTH):
                # tell the responder (RFC 7296 2.21.2: an INFORMATIONAL with the error, then delete)
                self._send_oneshot_info([NotifyPayload(exc.notify, exc.notify_data)], now)
            self.terminate(exc.reason, exc.notify if peer_notify is None else peer_notify)
        else:
            self._fail_active(exc.reason, exc.notify)

    def _take_front(self, now: float) -> None:
        """Tasks that processing asked to run next (e.g. deleting the SA a rekey replaced)."""
        front = self.sa.scratch.pop("front_tasks", [])
        if front and self.redirect is not None:
            self.redirect(front, now)  # this IKE_SA was rekeyed meanwhile: its successor runs them
        else:
            for t in reversed(front):
                self.queue.insert(0, [t])

    def _send_oneshot_info(self, payloads: list, now: float) -> None:  # type: ignore[type-arg]
        sa = self.sa
        msg = Message(ExchangeType.INFORMATIONAL, sa.spi_i, sa.spi_r, self.mid_out, False, sa.initiator, payloads)
        self.mid_out += 1
        self.send(encode_message(sa, msg))

    # -- responder side --------------------------------------------------------------------------------
    def _on_request(self, msg: Message, now: float) -> None:
        sa = self.sa
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            self.passive = self.passive_tasks(msg)
        elif msg.exchange != ExchangeType.IKE_AUTH or not self.passive:
            self.passive = self.passive_tasks(msg)
        resp = Message(msg.exchange, sa.spi_i, sa.spi_r, msg.message_id, True, sa.initiator)
        fatal_reason: tuple[str, int | None] | None = None
        try:
            check_rules(msg)
            remaining: list[Task] = []
            for t in self.passive:
                if t.process(msg) == TaskStatus.NEED_MORE:
                    remaining.append(t)
            for t in self.passive:
                t.build(resp)
            # the IKE_SA_INIT responder tasks carry on into IKE_AUTH
            self.passive = remaining if msg.exchange == ExchangeType.IKE_SA_INIT else []
        except ProtocolError as exc:
            log.info("%s refused: %s", msg.describe(), exc.reason)
            self.passive = []
            if exc.notify is None:  # dropped unanswered
                if msg.exchange == ExchangeType.IKE_SA_INIT:
                    self.terminate(exc.reason, None)
                return
            resp.payloads = [NotifyPayload(exc.notify, exc.notify_data)]
            if msg.exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH):
                fatal_reason = (exc.reason, exc.notify)
            if msg.exchange == ExchangeType.IKE_SA_INIT:
                resp.spi_r = 0
        _sort(resp)
        frags = encode_message(sa, resp)
        if msg.exchange == ExchangeType.IKE_SA_INIT and fatal_reason is None:
            sa.init_request = msg.raw
            sa.init_response = frags[0]
        self.cached = (msg.message_id, frags)
        self.mid_in += 1
        log.debug("sending %s", resp.describe())
        self.send(frags)
        if fatal_reason is not None:
            self.terminate(*fatal_reason)
            return
        self._take_front(now)
        if sa.state == IkeSaState.ESTABLISHED:
            self.initiate(now)

    def _answer_error(self, header: Header, exc: ProtocolError) -> None:
        """Answer an authenticated request we cannot process with its error notify; in IKE_AUTH the half-made
        IKE_SA then ends (RFC 7296 2.21.2), it is not left half-open."""
        sa = self.sa
        assert exc.notify is not None
        resp = Message(header.exchange, sa.spi_i, sa.spi_r, header.message_id, True, sa.initiator,
                       [NotifyPayload(exc.notify, exc.notify_data)])
        frags = encode_message(sa, resp)
        self.cached = (header.message_id, frags)
        self.mid_in += 1
        self.passive = []
        self.send(frags)
        if header.exchange == ExchangeType.IKE_AUTH or sa.state in (IkeSaState.CREATED, IkeSaState.CONNECTING):
            self.terminate(exc.reason, exc.notify)

    # -- input -------------------------------------------------------------------------------------------
    def receive(self, data: bytes, header: Header, now: float) -> None:
        """One datagram for this IKE_SA. Never raises: ProtocolErrors become notifies, drops or teardowns."""
        sa = self.sa
        sa.now = now
        if header.is_response:
            if self.request is None or header.message_id != self.mid_out:
                self.stats["dropped_unexpected_response"] += 1
                return  # stale or unexpected response
        else:
            if self.cached is not None and header.message_id == self.cached[0]:
                if header.next_payload != PayloadType.SKF or data[HEADER_LEN + 4:HEADER_LEN + 6] == b"\x00\x01":
                    self.stats["duplicates_answered"] += 1
                    self.send(self.cached[1])  # retransmitted request: answer from the cache
                return
            if header.message_id != self.mid_in:
                self.stats["dropped_message_id"] += 1
                return  # outside the window: dropped (RFC 7296 2.3)
        try:
            msg = decode_message(sa, data, header, self.reassembly)
        except IntegrityError:
            self.stats["dropped_integrity"] += 1
            return
        except SealedError as exc:
            # the peer holding the keys sent contents that do not parse: answered as the RFC says
            self.stats["malformed_sealed"] += 1
            log.info("malformed %s from the peer: %s", "response" if header.is_response else "request",
                     exc.reason)
            if header.is_response:
                self._response_failed(exc.error, now)
            elif exc.notify is not None:
                self._answer_error(header, exc.error)
            return
        except ProtocolError as exc:
            self.stats["dropped_malformed"] += 1
            log.info("dropping malformed message: %s", exc.reason)
            if (not header.is_response and header.exchange == ExchangeType.IKE_SA_INIT
                    and exc.notify is not None and header.next_payload not in (PayloadType.SK, PayloadType.SKF)):
                resp = Message(header.exchange, header.spi_i, 0, header.message_id, True, False,
                               [NotifyPayload(exc.notify, exc.notify_data)])
                self.send([resp.encode_plain()])
                self.terminate(exc.reason, exc.notify)
            # anything else did not pass the integrity check: never answered (RFC 7296 2.21.2)
            return
        if msg is None:
            return
        sa.last_inbound = now
        if header.is_response:
            self._on_response(msg, now)
        else:
            self._on_request(msg, now)

    # -- timers ------------------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        return self.retransmit_at

    def handle_timer(self, now: float) -> None:
        if self.retransmit_at is None or now < self.retransmit_at or self.request is None:
            return
        cfg = self.sa.config
        if self.retransmits >= cfg.retransmit_tries:
            self.retransmit_at = None
            self.request = None
            self.terminate("retransmit timeout (peer not responding)", None)
            return
        self.retransmits += 1
        self.stats["retransmits"] += 1
        self.retransmit_at = now + cfg.retransmit_timeout * (cfg.retransmit_base ** self.retransmits)
        self.send(self.request)

