"""Hypothesis round trips for every payload codec, byte layouts against RFC 7296, and a parsing fuzz test."""
from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ike.constants import PayloadType
from ike.core_config import TrafficSelector
from ike.errors import IkeError
from ike.message import Message, pull_chain, pull_header, push_chain
from ike.payloads import (AuthPayload, CertPayload, CertReqPayload, CpPayload, DeletePayload, IdPayload, KePayload,
                          NoncePayload, NotifyPayload, Proposal, SaPayload, TsPayload, Transform, VendorPayload)

b = st.binary(max_size=64)
u8, u16 = st.integers(0, 255), st.integers(0, 65535)
transform = st.builds(Transform, st.integers(1, 5), u16, st.one_of(st.none(), u16))
proposal = st.one_of(
    st.builds(lambda spi, ts: Proposal(1, 1, spi, tuple(ts)), st.sampled_from([b"", b"\x02" * 8]),
              st.lists(transform, max_size=6)),
    st.builds(lambda ts: Proposal(1, 3, b"\x01" * 4, tuple(ts)), st.lists(transform, max_size=6)))


@st.composite
def ts(draw):  # type: ignore[no-untyped-def]
    v6 = draw(st.booleans())
    bits = 128 if v6 else 32
    a, c = sorted(draw(st.lists(st.integers(0, 2 ** bits - 1), min_size=2, max_size=2)))
    p1, p2 = sorted(draw(st.lists(u16, min_size=2, max_size=2)))
    mk = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address
    return TrafficSelector(str(mk(a)), str(mk(c)), draw(u8), p1, p2)


payloads = st.one_of(
    st.builds(lambda ps: SaPayload(tuple(Proposal(i + 1, p.protocol, p.spi, p.transforms) for i, p in enumerate(ps))),
              st.lists(proposal, min_size=1, max_size=4)),
    st.builds(KePayload, u16, b),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=256)),
    st.builds(NotifyPayload, u16, b, u8, st.sampled_from([b"", b"abcd", b"12345678"])),
    st.builds(IdPayload, st.sampled_from([2, 3, 9, 11]), st.binary(min_size=1, max_size=40), st.booleans()),
    st.builds(AuthPayload, u8, st.binary(min_size=1, max_size=64)),
    st.builds(CertPayload, u8, st.binary(min_size=1, max_size=64)),
    st.builds(lambda hs: CertReqPayload.of_hashes(hs), st.lists(st.binary(min_size=20, max_size=20), max_size=3)),
    st.builds(lambda s, i: TsPayload(tuple(s), i), st.lists(ts(), min_size=1, max_size=4), st.booleans()),
    st.builds(lambda spis: DeletePayload(3, tuple(spis)), st.lists(st.binary(min_size=4, max_size=4), min_size=1,
                                                                   max_size=4)),
    st.builds(VendorPayload, b),
    st.builds(lambda t, attrs: CpPayload(t, tuple(attrs)), st.integers(1, 4),
              st.lists(st.tuples(st.integers(0, 0x7FFF), st.binary(max_size=16)), max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=6))
def test_payload_chain_round_trip(items):
    first, data = push_chain(items)
    back, sk = pull_chain(first, data)
    assert sk == -1 and back == items


@settings(max_examples=100, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=4), st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 32 - 1))
def test_message_round_trip(items, spi, mid):
    m = Message(34, spi, 0, mid, False, True, list(items))
    raw = m.encode_plain()
    h = pull_header(raw)
    assert (h.spi_i, h.message_id, h.length, h.flags) == (spi, mid, len(raw), 0x08)
    assert pull_chain(h.next_payload, raw, 28)[0] == items


def test_layouts_against_rfc7296():
    # Generic payload header + Nonce: next(1) C/reserved(1) length(2) body
    first, data = push_chain([NoncePayload(b"\xAA" * 16)])
    assert first == PayloadType.NONCE and data == bytes.fromhex("00000014") + b"\xAA" * 16
    # Transform with Key Length attribute (3.3.2, 3.3.5): last=0, len=12, type 1, id 20, AF|14 = 0x800E, 128
    t = Transform(1, 20, 128).push(last=True)
    assert t == bytes.fromhex("0000000c" "01000014" "800e0080")
    # Proposal (3.3.1): last=0 reserved len num proto spisize ntransforms
    p = Proposal(1, 3, b"\x11\x22\x33\x44", (Transform(1, 20, 128), Transform(5, 0))).push(last=True)
    assert p[:12] == bytes.fromhex("00000020" "01030402" "11223344")
    # Notify (3.10): proto spi-size type spi data
    assert NotifyPayload(16393, b"", 3, b"\x01\x02\x03\x04").push() == bytes.fromhex("0304400901020304")
    # Traffic selector (3.13.1): type 7, proto, len 16, ports, addresses
    tsp = TsPayload((TrafficSelector("10.0.0.0", "10.0.0.255", 6, 80, 80),)).push()
    assert tsp == bytes.fromhex("01000000" "07060010" "00500050" "0a000000" "0a0000ff")
    # IKE header (3.1): version 0x20, flags I=0x08 R=0x20
    raw = Message(35, 1, 2, 7, True, False, []).encode_plain()
    assert raw == bytes.fromhex("0000000000000001" "0000000000000002" "00" "20" "23" "20" "00000007" "0000001c")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 47, 46, 53, 99]))
def test_fuzz_chain_only_ike_errors(data, first):
    try:
        pull_chain(first, data)
    except IkeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=4), st.data())
def test_fuzz_mutated_chain(items, data):
    first, raw = push_chain(items)
    pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
    cut = data.draw(st.booleans())
    mutated = raw[:pos] if cut else raw[:pos] + bytes([data.draw(u8)]) + raw[pos + 1:]
    try:
        pull_chain(first, mutated)
    except IkeError:
        pass


#: IANA's IKEv2 Notify Message Error and Status Types (ikev2-parameters, 2025): the registered values.
IANA_NOTIFY_ERRORS = {1, 4, 5, 7, 9, 11, 14, 17, 24, *range(34, 50)}
IANA_NOTIFY_STATUS = set(range(16384, 16448))


def test_every_iana_notify_type_prints_by_name() -> None:
    """A peer's notify shows by name in logs and events for every registered type (USE_PPK, REDIRECT,
    INTERMEDIATE_EXCHANGE_SUPPORTED printed as numbers before); unassigned and private ones stay numbers."""
    from ike.payloads import NotifyPayload

    for value in sorted(IANA_NOTIFY_ERRORS | IANA_NOTIFY_STATUS):
        text = str(NotifyPayload(value))
        assert not text.startswith("NOTIFY("), value
        assert NotifyPayload(value).is_error is (value < 16384)
    known = {
        16435: "USE_PPK", 16407: "REDIRECT", 16438: "INTERMEDIATE_EXCHANGE_SUPPORTED", 16441: "ADDITIONAL_KEY_EXCHANGE",
        16442: "USE_AGGFRAG", 16397: "ADDITIONAL_IP4_ADDRESS", 41: "UNEXPECTED_NAT_DETECTED", 47: "STATE_NOT_FOUND",
        16429: "GROUP_SENDER", 16430: "IKEV2_FRAGMENTATION_SUPPORTED", 16431: "SIGNATURE_HASH_ALGORITHMS",
    }
    for value, name in known.items():
        assert str(NotifyPayload(value)) == name
    for value in (2, 3, 50, 8191, 8192, 16448, 40960, 65535):
        assert str(NotifyPayload(value)) == f"NOTIFY({value})"
