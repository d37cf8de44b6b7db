"""Anti-replay (RFC 4303 3.4.3, RFC 6479) against a model, with hypothesis."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from esp import PacketBatch, Verdict

from .helpers import ipv4, sa_pair


def model(order: list[int], window: int) -> list[bool]:
    seen: set[int] = set()
    top = 0
    out = []
    for s in order:
        ok = s > top or (top - s < window and s not in seen)
        if ok:
            seen.add(s)
            top = max(top, s)
        out.append(ok)
    return out


@settings(max_examples=60, deadline=None)
@given(order=st.lists(st.integers(1, 400), min_size=1, max_size=300), window=st.sampled_from([32, 64, 100, 128, 1024]))
def test_window_matches_model(order: list[int], window: int) -> None:
    out, inb = sa_pair("aes128gcm16", window=window)
    src = PacketBatch.from_packets([ipv4(b"r")] * 400)
    wires = PacketBatch.empty(400)
    out.encrypt_batch(src, wires)
    sent = wires.packets()
    delivered = PacketBatch.from_packets([sent[s - 1] for s in order])
    dst = PacketBatch.empty(len(order))
    inb.decrypt_batch(delivered, dst)
    assert [v == Verdict.OK for v in dst.status] == model(order, window)
    assert inb.counters.replayed == sum(not ok for ok in model(order, window))


def test_large_window_65536() -> None:
    out, inb = sa_pair("aes128gcm16", window=65536)
    src = PacketBatch.from_packets([ipv4(b"w")] * 70000)
    wires = PacketBatch.empty(70000, slot_size=128)
    out.encrypt_batch(src, wires)
    sent = wires.packets()
    order = [70000, 5000, 4464, 4465, 4466, 4465, 69999, 5000]
    got = []
    for s in order:
        dst = PacketBatch.empty(1, 128)
        inb.decrypt_batch(PacketBatch.from_packets([sent[s - 1]]), dst)
        got.append(int(dst.status[0]) == Verdict.OK)
    assert got == model(order, 65536) == [True, True, False, True, True, False, True, False]


def test_window_zero_disables_replay_check() -> None:
    out, inb = sa_pair("aes128gcm16", window=0)
    w = out.encrypt(ipv4(b"x"))
    assert inb.decrypt(w) == inb.decrypt(w)
