"""Fuzz the state machine: random and mutated datagrams into a responder and an initiator in every phase.
Only ike.errors may escape (receive_datagram swallows them), and half-open state stays bounded.

Budget: ``ESPRESSO_FUZZ_EXAMPLES`` overrides the per-test example counts (as in test_fuzz_sealed.py)."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.message import Message
from ike.payloads import KePayload, NoncePayload, SaPayload
from ike.proposal import parse_proposals

from .helpers import ADDR_I, ADDR_R, drain, pair, psk_peers, roundtrip, transfer


def _captured():  # type: ignore[no-untyped-def]
    """The datagrams of one real exchange (INIT, AUTH, both directions)."""
    i, r = psk_peers()
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    out = []
    for _ in range(4):
        da = a.datagrams_to_send(0.0)
        out += [d.data for d in da]
        for d in da:
            b.receive_datagram(d.data, ADDR_I, ADDR_R, 0.0)
        db = b.datagrams_to_send(0.0)
        out += [d.data for d in db]
        for d in db:
            a.receive_datagram(d.data, ADDR_R, ADDR_I, 0.0)
    return out


CAPTURED = _captured()


def _budget(default: int) -> int:
    return int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", default))


@settings(max_examples=_budget(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_datagrams_into_both_roles(data):
    i, r = psk_peers()
    a, b = pair(i, r)
    a.initiate("to-r", 0.0)
    steps = data.draw(st.integers(0, 3))
    for _ in range(steps):  # advance the real exchange a little
        transfer(a, b, 0.0, ADDR_I[0], ADDR_R[0])
        transfer(b, a, 0.0, ADDR_R[0], ADDR_I[0])
    for _ in range(data.draw(st.integers(1, 4))):
        src = bytearray(data.draw(st.sampled_from(CAPTURED)))
        for _ in range(data.draw(st.integers(0, 4))):
            pos = data.draw(st.integers(0, len(src) - 1))
            src[pos] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            src = src[:data.draw(st.integers(0, len(src)))]
        target = data.draw(st.booleans())
        (a if target else b).receive_datagram(bytes(src), ADDR_R if target else ADDR_I,
                                              ADDR_I if target else ADDR_R, 1.0)
        a.handle_timer(2.0)
        b.handle_timer(2.0)
    roundtrip(a, b, 3.0)
    drain(a)
    drain(b)


@settings(max_examples=_budget(300), deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_into_dispatcher(blob):
    i, r = psk_peers()
    a, b = pair(i, r)
    b.receive_datagram(blob, ADDR_I, ADDR_R, 0.0)
    b.datagrams_to_send(0.0)


def test_half_open_memory_is_bounded():
    """Memory measured with tracemalloc: a cap per half-open IKE_SA, and none past half_open_limit."""
    import os
    import tracemalloc

    from ike.dh import create_dh

    i, r = psk_peers()
    _, b = pair(i, r, half_open_limit=100, cookie_threshold=1000)
    props = parse_proposals(["aes128gcm16-prfsha256-ecp256"])
    ke = create_dh(19, os.urandom).public
    msgs = [Message(34, n + 1, 0, 0, False, True, [SaPayload(props), KePayload(19, ke), NoncePayload(b"n" * 32)])
            .encode_plain() for n in range(300)]

    def feed(lo: int, hi: int) -> None:
        for n in range(lo, hi):
            b.receive_datagram(msgs[n], (f"10.{n // 200}.{n % 200}.1", 1000 + n), ADDR_R, 0.0)  # one per /24
            b.datagrams_to_send(0.0)

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        feed(0, 100)
        full = tracemalloc.take_snapshot()
        feed(100, 300)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_sa = sum(d.size_diff for d in full.compare_to(before, "filename")) / 100
    growth = sum(d.size_diff for d in after.compare_to(full, "filename"))
    assert b.half_open() == 100 and b.stats["dropped_half_open_limit"] == 200
    assert per_sa < 16 * 1024, f"{per_sa:.0f} bytes per half-open IKE_SA"
    assert growth < 16 * 1024, f"{growth} bytes allocated past the half-open limit"
    b.handle_timer(31.0)  # half-open SAs expire
    assert b.half_open() == 0 and b.list_sas() == []
