"""Message rules, fragmentation and reassembly bounds, dispatcher routing and counting."""
from __future__ import annotations

import os

import pytest

from ike.errors import InvalidSyntaxError, ParseError, TooLargeError, UnsupportedCriticalPayloadError
from ike.fragment import MAX_FRAGMENTS, Reassembly, fragment_message
from ike.message import Message, check_rules, pull_chain, pull_header
from ike.payloads import AuthPayload, DeletePayload, KePayload, NoncePayload, NotifyPayload, SaPayload
from ike.proposal import parse_proposal, parse_proposals
from ike.protect import Protector

from .helpers import ADDR_I, ADDR_R, pair, psk_peers


def test_rules_reject_unexpected_and_repeated_payloads():
    ok = Message(34, 1, 0, 0, False, True, [SaPayload(parse_proposals(["aes128gcm16-prfsha256-ecp256"])),
                                             KePayload(19, b"x" * 64), NoncePayload(b"n" * 32)])
    check_rules(ok)
    with pytest.raises(InvalidSyntaxError):
        check_rules(Message(34, 1, 0, 0, False, True, ok.payloads + [AuthPayload(2, b"x")]))
    with pytest.raises(InvalidSyntaxError):
        check_rules(Message(34, 1, 0, 0, False, True, ok.payloads + [NoncePayload(b"m" * 32)]))
    with pytest.raises(InvalidSyntaxError):  # IKE_AUTH payloads must be inside SK
        check_rules(Message(35, 1, 2, 1, False, True, [AuthPayload(2, b"x")]))
    with pytest.raises(InvalidSyntaxError):  # an INFORMATIONAL request must be encrypted
        check_rules(Message(37, 1, 2, 1, False, True, [DeletePayload(1)]))
    check_rules(Message(37, 1, 2, 1, False, True, [NotifyPayload(16384)], encrypted=True))


@pytest.mark.parametrize("raw,error", [
    (b"", ParseError),
    (bytes(27), ParseError),
    (bytes(16) + bytes([0, 0x10, 34, 8]) + bytes(4) + (28).to_bytes(4, "big"), ParseError),  # version 1
    (bytes(16) + bytes([0, 0x20, 34, 8]) + bytes(4) + (99).to_bytes(4, "big"), ParseError),  # length lies
])
def test_bad_headers(raw, error):
    with pytest.raises(error):
        pull_header(raw)


def test_payload_length_errors_and_critical_bit():
    with pytest.raises(ParseError):
        pull_chain(40, bytes.fromhex("00000003"))  # length < 4
    with pytest.raises(ParseError):
        pull_chain(40, bytes.fromhex("00000030") + b"x" * 10)  # truncated
    with pytest.raises(ParseError):
        pull_chain(40, bytes.fromhex("00000008") + b"x" * 4)  # nonce too short (verify)
    with pytest.raises(UnsupportedCriticalPayloadError) as info:
        pull_chain(200, bytes.fromhex("00800004"))
    assert info.value.notify == 1 and info.value.notify_data == bytes([200])
    out, _ = pull_chain(200, bytes.fromhex("00000006abcd"))  # non-critical unknown: skipped, kept
    assert out[0].type == 200


def test_fragments_reassemble_in_any_order_and_bounds():
    p = parse_proposal("aes128gcm16-prfsha256-ecp256")
    k = [os.urandom(20), os.urandom(20), b"", b""]
    i = Protector.from_proposal(p, True, *k, os.urandom)
    r = Protector.from_proposal(p, False, *k, os.urandom)
    big = [NotifyPayload(16384, os.urandom(900)), NotifyPayload(16385, os.urandom(900))]
    msg = Message(35, 1, 2, 1, False, True, big)
    frags = fragment_message(msg, i, 576)
    assert len(frags) >= 4 and all(len(f) <= 576 - 28 for f in frags)
    from ike.exchange import decode_message
    from ike.sa import IkeSa

    class _Sa:
        protector = r

    buf: dict = {}
    out = None
    for f in reversed(frags):
        out = decode_message(_Sa(), f, pull_header(f), buf) or out
    assert out is not None and out.payloads == big and buf == {}
    ra = Reassembly(1, 3)
    with pytest.raises(ParseError):
        ra.add(1, 4, b"x", 0)
    with pytest.raises(TooLargeError):
        Reassembly(1, MAX_FRAGMENTS + 1).add(1, MAX_FRAGMENTS + 1, b"x", 0)
    _ = IkeSa


def test_dispatcher_counts_and_drops():
    i, r = psk_peers()
    a, b = pair(i, r)
    b.receive_datagram(b"\x00" * 10, ADDR_I, ADDR_R, 0.0)
    b.receive_datagram(Message(37, 5, 6, 0, False, True, []).encode_plain(), ADDR_I, ADDR_R, 0.0)
    b.receive_datagram(b"\x00" * 70000, ADDR_I, ADDR_R, 0.0)
    assert b.stats["dropped_ParseError"] == 1 and b.stats["dropped_unknown_spi"] == 1
    assert b.stats["dropped_oversized"] == 1
    assert b.datagrams_to_send(0.0) == [] and b.list_sas() == []
