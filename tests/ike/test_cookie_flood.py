"""A cookie-answering flood against the responder, in memory with a fake clock (issue 12, RFC 8019).

The attacker owns 300 addresses and answers every COOKIE (it receives at those addresses), so the stateless
check does not stop it: each completed IKE_SA_INIT holds a half-open IKE_SA. Before the fix, ~2,000 such
packets filled the global half-open limit and a legitimate initiator was dropped until the attacker's SAs
timed out (~25 s of retransmits). Required: under the flood the legitimate peer establishes within 2 s.
"""
from __future__ import annotations

import os

import pytest

from ike.constants import HEADER_LEN, ExchangeType, NotifyType
from ike.dh import create_dh
from ike.dispatcher import PREFIX_SHARE, Dispatcher
from ike.events import IkeSaEstablished
from ike.message import Message, pull_chain, pull_header
from ike.payloads import KePayload, NoncePayload, NotifyPayload, SaPayload
from ike.proposal import parse_proposals

from .helpers import ADDR_I, ADDR_R, drain, pair, psk_peers

PROPS = parse_proposals(["aes128gcm16-prfsha256-ecp256"])
KE = create_dh(19, os.urandom).public


class Attacker:
    """Many source addresses, each starting IKE_SA_INITs with fresh SPIs and answering COOKIEs."""

    def __init__(self, sources: list[str]) -> None:
        self.sources = sources
        self.next_spi = 1
        self.packets = 0

    def _init(self, spi: int, cookie: bytes | None) -> bytes:
        pre = [NotifyPayload(NotifyType.COOKIE, cookie)] if cookie is not None else []
        return Message(ExchangeType.IKE_SA_INIT, spi, 0, 0, False, True,
                       [*pre, SaPayload(PROPS), KePayload(19, KE), NoncePayload(spi.to_bytes(32, "big"))]).encode_plain()

    def round(self, b: Dispatcher, now: float, legit: list) -> None:  # type: ignore[type-arg]
        """One IKE_SA_INIT from every source; COOKIEs answered at once. Datagrams for the legitimate
        initiator are set aside in ``legit``."""
        for host in self.sources:
            spi = self.next_spi
            self.next_spi += 1
            b.receive_datagram(self._init(spi, None), (host, 500), ADDR_R, now)
            self.packets += 1
            for dg in b.datagrams_to_send(now):
                if dg.addr[0] != host:
                    legit.append(dg)
                    continue
                h = pull_header(dg.data)
                payloads, _ = pull_chain(h.next_payload, dg.data, HEADER_LEN)
                if h.spi_r == 0 and payloads and isinstance(payloads[0], NotifyPayload) \
                        and payloads[0].type == NotifyType.COOKIE:
                    b.receive_datagram(self._init(spi, payloads[0].data), (host, 500), ADDR_R, now)
                    self.packets += 1
                    legit.extend(d for d in b.datagrams_to_send(now) if d.addr[0] != host)


LAYOUTS = {
    # 300 addresses in 300 different /24s: only fairness between sources helps
    "spread": [f"10.{n // 200}.{n % 200}.7" for n in range(300)],
    # 300 addresses in two /24s: the per-prefix share caps them
    "two-prefixes": [f"198.51.{100 + n // 150}.{n % 150 + 1}" for n in range(300)],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_legitimate_peer_establishes_under_cookie_flood(layout: str) -> None:
    i, r = psk_peers()
    a, b = pair(i, r)
    attacker = Attacker(LAYOUTS[layout])
    legit: list = []  # type: ignore[type-arg]
    t = 0.0
    for _ in range(8):  # the flood is on (2,000 packets) before the legitimate peer starts
        attacker.round(b, t, legit)
        t += 0.25
        if attacker.packets >= 2000:
            break
    assert attacker.packets >= 2000
    if layout == "spread":
        assert b.half_open() == b.config.half_open_limit  # what the flood achieved before the fix, too
    else:
        assert b.half_open() <= 2 * b.config.half_open_limit // PREFIX_SHARE
    start = t
    a.initiate("to-r", start)
    established = None
    for _ in range(200):  # bounded: steps of the legitimate exchange, timers, more flood in between
        moved = 0
        for dg in a.datagrams_to_send(t):
            b.receive_datagram(dg.data, (ADDR_I[0], dg.local_port), (ADDR_R[0], dg.addr[1]), t)
            moved += 1
        attacker.round(b, t, legit)
        legit.extend(d for d in b.datagrams_to_send(t) if d.addr[0] == ADDR_I[0])
        for dg in legit:
            a.receive_datagram(dg.data, (ADDR_R[0], dg.local_port), (ADDR_I[0], dg.addr[1]), t)
            moved += 1
        legit.clear()
        est = [e for e in drain(a) if isinstance(e, IkeSaEstablished)]
        if est:
            established = t
            break
        if not moved:
            nxt = [x for x in (a.get_timer(), b.get_timer()) if x is not None]
            t = max(t + 0.25, min(nxt)) if nxt else t + 0.25
            if t > start + 60:
                break
            a.handle_timer(t)
            b.handle_timer(t)
    assert established is not None and established - start <= 2.0, (established, start, b.stats)
    assert b.half_open() <= b.config.half_open_limit
    assert max(b._half_open_ip.values(), default=0) <= b.config.half_open_limit_ip
    assert any(isinstance(e, IkeSaEstablished) for e in drain(b))


def test_half_open_retention_shortened_under_load() -> None:
    """RFC 8019 4.1: half-open IKE_SAs made while over half the limit is in use expire sooner."""
    i, r = psk_peers()
    _, b = pair(i, r, half_open_limit=8, cookie_threshold=100)
    attacker = Attacker([f"10.0.{n}.1" for n in range(6)])
    attacker.round(b, 0.0, [])
    assert b.half_open() == 6
    b.handle_timer(b.config.half_open_timeout / 3 + 0.1)
    assert b.half_open() == 4  # the two created with four or more already half-open
    b.handle_timer(b.config.half_open_timeout + 0.1)
    assert b.half_open() == 0


def test_source_limits_before_any_work() -> None:
    """Per address and per prefix caps drop a source's requests before a cookie or a DH is computed."""
    i, r = psk_peers()
    _, b = pair(i, r, half_open_limit=40, cookie_threshold=1000)
    attacker = Attacker([f"10.9.9.{n}" for n in range(1, 21)])
    attacker.round(b, 0.0, [])
    assert b.half_open() == 40 // PREFIX_SHARE
    assert b.stats["dropped_half_open_source_limit"] == 20 - 40 // PREFIX_SHARE
    assert b.stats["cookies_sent"] == 0
