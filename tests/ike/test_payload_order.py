"""Payloads leave in the order RFC 7296's exchange diagrams show them.

Peers accept any order, but log-based tools, tests and operators compare ``[ SA No KE TSi TSr ]`` lines with the
RFC and with charon's. Every message each side parsed from the wire (requests and responses of IKE_SA_INIT,
IKE_AUTH with PSK and with certificates, CREATE_CHILD_SA for a new CHILD_SA, a CHILD_SA rekey with PFS and an
IKE_SA rekey, INFORMATIONAL deletes) is checked: its payloads other than notifies and vendor IDs must appear as the
diagram lists them; COOKIE, when present, comes first (RFC 7296 2.6) and REKEY_SA before SA (1.3.3).
"""
from __future__ import annotations

from dataclasses import replace

import pytest

import ike.exchange as exchange_mod
from ike.constants import ExchangeType, NotifyType, PayloadType
from ike.events import ChildSaEstablished, IkeSaEstablished
from ike.message import Message
from ike.payloads import NotifyPayload, VendorPayload

from .helpers import cert_peers, child, drain, pair, psk_peers, roundtrip

P = PayloadType
#: RFC 7296 1.2-1.4, 2.19 (CP) and 2.6 (CERTREQ in IKE_SA_INIT's response), per exchange and direction
DIAGRAMS: dict[tuple[int, bool], list[int]] = {
    (ExchangeType.IKE_SA_INIT, False): [P.SA, P.KE, P.NONCE],
    (ExchangeType.IKE_SA_INIT, True): [P.SA, P.KE, P.NONCE, P.CERTREQ],
    (ExchangeType.IKE_AUTH, False): [P.IDi, P.CERT, P.CERTREQ, P.IDr, P.AUTH, P.CP, P.SA, P.TSi, P.TSr],
    (ExchangeType.IKE_AUTH, True): [P.IDr, P.CERT, P.AUTH, P.CP, P.SA, P.TSi, P.TSr],
    (ExchangeType.CREATE_CHILD_SA, False): [P.SA, P.NONCE, P.KE, P.TSi, P.TSr],
    (ExchangeType.CREATE_CHILD_SA, True): [P.SA, P.NONCE, P.KE, P.TSi, P.TSr],
    (ExchangeType.INFORMATIONAL, False): [P.DELETE, P.CP],
    (ExchangeType.INFORMATIONAL, True): [P.DELETE, P.CP],
}


def _check(msg: Message) -> None:
    key = (msg.exchange, msg.response)
    order = DIAGRAMS[key]
    got = [p.payload_type for p in msg.payloads if not isinstance(p, (NotifyPayload, VendorPayload))]
    assert got == [t for t in order if t in got], msg.describe()
    assert len(got) == len(set(got)) or msg.exchange == ExchangeType.IKE_AUTH, msg.describe()  # CERT may repeat
    notifies = [p.type for p in msg.payloads if isinstance(p, NotifyPayload)]
    if NotifyType.COOKIE in notifies:
        assert isinstance(msg.payloads[0], NotifyPayload) and msg.payloads[0].type == NotifyType.COOKIE
    if NotifyType.REKEY_SA in notifies:
        kinds = [p.payload_type for p in msg.payloads]
        assert notifies.index(NotifyType.REKEY_SA) >= 0 and kinds.index(P.NOTIFY) < kinds.index(P.SA)


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[Message]:
    """Every message the cores parsed from the wire (check_rules runs on each before any task)."""
    seen: list[Message] = []
    original = exchange_mod.check_rules

    def record(msg: Message) -> None:
        seen.append(msg)
        original(msg)

    monkeypatch.setattr(exchange_mod, "check_rules", record)
    return seen


def _covered(seen: list[Message]) -> set[tuple[int, bool, frozenset[int]]]:
    return {(m.exchange, m.response, frozenset(p.payload_type for p in m.payloads)) for m in seen}


def test_psk_exchanges_follow_the_diagrams(parsed: list[Message]) -> None:
    pfs = ("aes128gcm16-ecp256",)
    pi, pr = psk_peers()
    pi = replace(pi, children=(child(esp_proposals=pfs), child("second", "10.1.1.0/24", "10.2.1.0/24",
                                                                esp_proposals=pfs, start=False)))
    pr = replace(pr, children=(child(local="10.2.0.0/16", remote="10.1.0.0/16", esp_proposals=pfs),))
    a, b = pair(pi, pr)
    a.initiate(pi.name, 0.0)
    roundtrip(a, b, 0.0)
    evs = drain(a)
    first = next(e for e in evs if isinstance(e, ChildSaEstablished))
    ike_id = next(e for e in evs if isinstance(e, IkeSaEstablished)).ike_id
    drain(b)
    a.initiate(pi.name, 1.0, child="second")  # CREATE_CHILD_SA for a new CHILD_SA, with KE (PFS)
    roundtrip(a, b, 1.0)
    a.rekey_child(first.spi_in, 2.0)  # CREATE_CHILD_SA with N(REKEY_SA), KE
    roundtrip(a, b, 2.0)
    a.rekey_ike(ike_id, 3.0)  # CREATE_CHILD_SA: SA, Ni, KEi
    roundtrip(a, b, 3.0)
    later = [e for e in drain(a) if isinstance(e, ChildSaEstablished)]
    a.delete_child(later[-1].spi_in, 4.0)  # INFORMATIONAL with DELETE
    roundtrip(a, b, 4.0)
    for msg in parsed:
        _check(msg)
    covered = _covered(parsed)
    kinds = {(ex, resp) for ex, resp, _ in covered}
    assert kinds == set(DIAGRAMS), kinds  # every exchange, both directions, was seen
    child_with_ke = {P.SA, P.NONCE, P.KE, P.TSi, P.TSr}
    assert any(ex == ExchangeType.CREATE_CHILD_SA and resp and child_with_ke <= kinds_
               for ex, resp, kinds_ in covered)
    assert any(ex == ExchangeType.CREATE_CHILD_SA and resp and P.TSi not in kinds_ and P.KE in kinds_
               for ex, resp, kinds_ in covered)  # the IKE_SA rekey


def test_certificate_exchanges_follow_the_diagrams(parsed: list[Message]) -> None:
    pi, pr, _ca = cert_peers()
    a, b = pair(pi, pr)
    a.initiate(pi.name, 0.0)
    roundtrip(a, b, 0.0)
    assert any(isinstance(e, ChildSaEstablished) for e in drain(a))
    for msg in parsed:
        _check(msg)
    auth_response = next(m for m in parsed if m.exchange == ExchangeType.IKE_AUTH and m.response)
    assert P.CERT in {p.payload_type for p in auth_response.payloads}
    assert P.CERTREQ in {p.payload_type for m in parsed if m.exchange == ExchangeType.IKE_SA_INIT and m.response
                         for p in m.payloads}


def test_cookie_comes_first(parsed: list[Message]) -> None:
    pi, pr = psk_peers()
    a, b = pair(pi, pr, cookie_threshold=0)
    a.initiate(pi.name, 0.0)
    roundtrip(a, b, 0.0)
    assert any(isinstance(e, ChildSaEstablished) for e in drain(a))
    retried = [m for m in parsed if m.exchange == ExchangeType.IKE_SA_INIT and not m.response
               and m.notify(NotifyType.COOKIE) is not None]
    assert retried
    for msg in parsed:
        _check(msg)
