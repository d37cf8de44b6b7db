"""ISAKMP codecs and the IKEv1 key schedule: round trips, IV chaining between two ends, negative cases, and a
bounded fuzz (ESPRESSO_FUZZ_EXAMPLES raises the budget, as in tests/ike/test_fuzz.py)."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.errors import ParseError
from ike.v1 import keymat as km
from ike.v1.message import (
    HEADER_LEN,
    Attribute,
    Exchange,
    Payload,
    PayloadType,
    Proposal,
    SaPayload,
    Transform,
    decode_sa,
    encode_sa,
    pull_header,
    pull_message,
    push_message,
)

CKY_I, CKY_R = bytes(range(8)), bytes(range(8, 16))


def _sa() -> SaPayload:
    t1 = Transform(1, 1, (Attribute(1, 7), Attribute(14, 256), Attribute(2, 4), Attribute(4, 14),
                          Attribute(3, 1), Attribute(11, 1), Attribute(12, 0x0001_5180)))
    t2 = Transform(2, 1, (Attribute(1, 7), Attribute(14, 128), Attribute(2, 2)))
    return SaPayload(1, 1, (Proposal(1, 1, b"", (t1, t2)), Proposal(2, 3, b"\x01\x02\x03\x04", (t2,))))


def test_sa_round_trip_with_tv_and_tlv_attributes():
    sa = _sa()
    back = decode_sa(encode_sa(sa))
    # a lifetime above 0xFFFF goes out in TLV form and comes back as bytes with the same number
    assert back.proposals[0].transforms[0].get(12) == 0x0001_5180
    assert back.proposals[0].transforms[0].attributes[6] == Attribute(12, b"\x01\x51\x80")
    assert back.proposals[1].spi == b"\x01\x02\x03\x04"
    assert [t.get(14) for t in back.proposals[0].transforms] == [256, 128]
    assert encode_sa(back) == encode_sa(sa)


def test_message_round_trip():
    payloads = [Payload(PayloadType.SA, encode_sa(_sa())), Payload(PayloadType.VID, b"\xaa" * 16)]
    data = push_message(CKY_I, bytes(8), Exchange.MAIN, 0, 0, payloads)
    h, back = pull_message(data)
    assert (h.cookie_i, h.exchange, h.length, h.version) == (CKY_I, Exchange.MAIN, len(data), 0x10)
    assert back == payloads


@pytest.mark.parametrize("mutate", [
    lambda d: d[:20],                                  # shorter than the header
    lambda d: d[:17] + b"\x20" + d[18:],               # IKEv2 version
    lambda d: d + b"\x00",                             # length mismatch
    lambda d: d[:HEADER_LEN + 2] + b"\x00\x02" + d[HEADER_LEN + 4:],  # payload length below its header
])
def test_malformed_messages_raise_parse_error(mutate):
    data = push_message(CKY_I, CKY_R, Exchange.MAIN, 0, 0, [Payload(PayloadType.NONCE, b"n" * 16)])
    with pytest.raises(ParseError):
        pull_message(mutate(data))


def test_sa_transform_count_must_match():
    body = bytearray(encode_sa(_sa()))
    body[8 + 4 + 3] = 5  # first proposal announces 5 transforms
    with pytest.raises(ParseError):
        decode_sa(bytes(body))


def test_expand_key_appendix_b():
    e = b"\x11" * 20  # SHA-1 SKEYID_e is too short for AES-256
    k1 = km.prf("sha1", e, b"\x00")
    k2 = km.prf("sha1", e, k1)
    assert km.expand_key("sha1", e, 32) == (k1 + k2)[:32]
    assert km.expand_key("sha256", b"\x22" * 32, 16) == b"\x22" * 16


def _keys() -> km.Phase1Keys:
    skeyid = km.skeyid_psk("sha256", b"secret", b"n" * 32, b"m" * 32)
    return km.derive_phase1("sha256", skeyid, b"\x05" * 256, CKY_I, CKY_R, b"\x01" * 256, b"\x02" * 256,
                            km.Phase1Algorithm(km.OAKLEY_AES_CBC, 32))


def test_iv_chaining_between_two_ends():
    a, b = km.Phase1Cipher(_keys()), km.Phase1Cipher(_keys())
    for mid in (0, 0, 0x1234, 0x1234, 0, 0x99):
        msg = [Payload(PayloadType.HASH, os.urandom(32)), Payload(PayloadType.NONCE, os.urandom(20))]
        data = a.encrypt(CKY_I, CKY_R, Exchange.QUICK if mid else Exchange.MAIN, mid, msg)
        assert len(data) % 16 == HEADER_LEN % 16 and pull_header(data).encrypted
        h, back = b.decrypt(data)
        assert back == msg and h.message_id == mid
        b.confirm(data)
        assert a.iv(mid) == b.iv(mid)


def test_unconfirmed_datagram_does_not_advance_the_chain():
    a, b = km.Phase1Cipher(_keys()), km.Phase1Cipher(_keys())
    before = b.iv(0)
    b.decrypt(a.encrypt(CKY_I, CKY_R, Exchange.MAIN, 0, [Payload(PayloadType.ID, b"x" * 8)]))
    assert b.iv(0) == before


def test_phase2_iv_is_hash_of_last_phase1_block_and_mid():
    import hashlib
    c = km.Phase1Cipher(_keys())
    assert c.iv(7) == hashlib.sha256(_keys().iv + b"\x00\x00\x00\x07").digest()[:16]


def test_phase2_ivs_stay_bounded():
    c = km.Phase1Cipher(_keys())
    for mid in range(1, 1000):
        c.iv(mid)
    assert len(c._ivs) == km.MAX_PHASE2_IVS


def _budget(default: int) -> int:
    return int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", default))


@settings(max_examples=_budget(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(0, 399), st.binary(max_size=8))
def test_fuzz_decoders_raise_only_parse_error(blob, cut, splice):
    good = push_message(CKY_I, CKY_R, Exchange.MAIN, 0, 0,
                        [Payload(PayloadType.SA, encode_sa(_sa())), Payload(PayloadType.KE, b"k" * 32)])
    mutated = good[:cut] + splice + good[cut + len(splice):]
    cipher = km.Phase1Cipher(_keys())
    for data in (blob, mutated, mutated[:17] + b"\x10\x02\x01" + mutated[20:]):
        for fn in (pull_message, cipher.decrypt, lambda d: decode_sa(d[HEADER_LEN + 4:])):
            try:
                fn(data)
            except ParseError:
                pass
