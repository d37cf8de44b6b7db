"""Fuzzing the ESP core's batch geometry: arbitrary offsets, lengths, capacities, arena sizes and aliasing.

What must hold for any input: no crash and no exception but the documented ValueError for memory shared other
than slot for slot (and then nothing processed); a slot outside its arena is MALFORMED; an OK slot's length fits
its capacity; and a batch processed in place (or over one arena) gives exactly the verdicts and bytes the same
call gives on separate copies.

CI runs a fixed budget of a few seconds; ``ESPRESSO_FUZZ_EXAMPLES=20000 python -m pytest tests/esp/test_fuzz_geometry.py``
runs a longer one by hand. ``.ci/asan`` runs this module against a core built with AddressSanitizer.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp import PacketBatch, Sa, Verdict
from esp.sa import available_backends

from .helpers import ipv4, ipv6, sa_pair, udp

EXAMPLES = int(os.environ.get("ESPRESSO_FUZZ_EXAMPLES", "0"))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SUITES = ["aes128gcm16", "chacha20poly1305", "aes128-sha256", "aes128ctr-sha1", "aes128ccm8", "aes128gmac",
          "null-sha256"]
CASES = [(s, b) for s in SUITES for b in available_backends(s)]

I64 = (1 << 63) - 1
I32 = (1 << 31) - 1
#: values where a sum or a cast wraps, mixed with small ones that land inside a small arena
EDGE64 = [I64, I64 - 1, I64 - 64, I64 - I32, 1 << 62, 1 << 32, (1 << 32) - 1, 1 << 31, I32, -1, -I64 - 1, -64]
EDGE32 = [I32, I32 - 1, I32 - 64, 1 << 30, 1 << 16, 65535, -1, -(1 << 31)]
offsets64 = st.one_of(st.integers(0, 4096), st.sampled_from(EDGE64), st.integers(I64 - 4096, I64),
                      st.integers(-I64 - 1, I64))
sizes32 = st.one_of(st.integers(0, 2048), st.sampled_from(EDGE32), st.integers(I32 - 4096, I32),
                    st.integers(-(1 << 31), I32))


def _wire(suite: str, backend: str, n: int) -> tuple:
    out, inb = sa_pair(suite, backend=backend, window=0)
    pkts = [ipv4(udp(bytes([i]) * (i * 37 % 300))) if i % 3 else ipv6(udp(bytes([i]) * 90)) for i in range(n)]
    wire = PacketBatch.empty(n, 512)
    out.encrypt_batch(PacketBatch.from_packets(pkts), wire)
    return pkts, wire.packets(), out, inb


def _inside(off: int, n: int, size: int) -> bool:
    return off >= 0 and n >= 0 and off + n <= size


@settings(max_examples=EXAMPLES or 150, **SETTINGS)
@given(case=st.sampled_from(CASES), outbound=st.booleans(), data=st.data())
def test_arbitrary_slot_geometry_gets_verdicts(case, outbound: bool, data) -> None:
    suite, backend = case
    n = data.draw(st.integers(1, 6), label="slots")
    pkts, wire, out, inb = _wire(suite, backend, n)
    items = pkts if outbound else wire
    src = PacketBatch.from_packets(items)
    slot = data.draw(st.sampled_from([0, 1, 40, 512]), label="slot")
    dst = PacketBatch.empty(n, slot) if slot else PacketBatch(np.zeros(0, np.uint8), np.zeros(n, np.int64),
                                                              np.zeros(n, np.int32), np.zeros(n, np.int32))
    fields = {"src.offsets": (src.offsets, offsets64), "src.lengths": (src.lengths, sizes32),
              "dst.offsets": (dst.offsets, offsets64), "dst.capacity": (dst.capacity, sizes32)}
    for name in data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=4), label="fields"):
        arr, strat = fields[name]
        i = data.draw(st.integers(0, n - 1), label="slot changed")
        arr[i] = data.draw(strat, label=name)
    sa = out if outbound else inb
    ok = (sa.encrypt_batch if outbound else sa.decrypt_batch)(src, dst)
    status = [Verdict(v) for v in dst.status]
    assert ok == status.count(Verdict.OK)
    # Output slots that overlap each other (the caller's choice, not the core's concern) overwrite each other.
    spans = [(int(dst.offsets[i]), int(dst.offsets[i]) + int(dst.capacity[i])) for i in range(n)]
    apart = all(a[1] <= b[0] or b[1] <= a[0] for x, a in enumerate(spans) for b in spans[x + 1:])
    for i in range(n):
        if not (_inside(int(src.offsets[i]), int(src.lengths[i]), len(src.buf)) and
                _inside(int(dst.offsets[i]), int(dst.capacity[i]), len(dst.buf))):
            assert status[i] == Verdict.MALFORMED
        elif status[i] == Verdict.OK:
            assert 0 < dst.lengths[i] <= dst.capacity[i]
            if not outbound and apart:
                assert dst.packet(i) in pkts


def _conflict(src: PacketBatch, dst: PacketBatch, work: list[int]) -> bool:
    """The model of the core's aliasing rule, over one arena: a slot's write region may share no byte with any
    other region, except its own input when both start at one offset (in place)."""
    regs = []
    for i in dict.fromkeys(work):
        so, sl, do, dc = int(src.offsets[i]), int(src.lengths[i]), int(dst.offsets[i]), int(dst.capacity[i])
        if not (_inside(so, sl, len(src.buf)) and _inside(do, dc, len(dst.buf))):
            continue
        if so == do:
            regs.append((so, so + max(sl, dc), True, i))
        else:
            regs += [(so, so + sl, False, i), (do, do + dc, True, i)]
    regs = [r for r in regs if r[1] > r[0]]
    for a in regs:
        for b in regs:
            if a is not b and (a[2] or b[2]) and a[0] < b[1] and b[0] < a[1]:
                return True
    return False


@settings(max_examples=EXAMPLES or 80, **SETTINGS)
@given(case=st.sampled_from(CASES), outbound=st.booleans(), data=st.data())
def test_one_arena_in_place_or_refused_and_equal_to_separate_copies(case, outbound: bool, data) -> None:
    suite, backend = case
    n = data.draw(st.integers(1, 6), label="slots")
    pkts, wire, out, inb = _wire(suite, backend, n)
    items = pkts if outbound else wire
    size = data.draw(st.integers(0, 8 * 512), label="arena")
    arena = np.zeros(size, np.uint8)
    in_place = data.draw(st.booleans(), label="in place")
    soff = np.array(data.draw(st.lists(st.integers(0, size + 8), min_size=n, max_size=n)), np.int64)
    doff = soff.copy() if in_place else np.array(
        data.draw(st.lists(st.integers(0, size + 8), min_size=n, max_size=n)), np.int64)
    cap = np.array(data.draw(st.lists(st.integers(0, 600), min_size=n, max_size=n)), np.int32)
    lens = np.array([len(p) for p in items], np.int32)
    for i, p in enumerate(items):          # later packets may overwrite earlier ones: fine, they get verdicts
        if soff[i] + len(p) <= size:
            arena[soff[i]:soff[i] + len(p)] = np.frombuffer(p, np.uint8)
    # each slot once: a slot selected twice in place would see its own output the second time, by design
    select = data.draw(st.none() | st.lists(st.integers(0, n - 1), max_size=n, unique=True), label="select")
    sel = None if select is None else np.array(select, np.int32)
    src = PacketBatch(arena, soff, lens, lens)
    dst = PacketBatch(arena, doff, np.zeros(n, np.int32), cap)
    # the reference: the same call on copies that share nothing, with an identical SA
    ref_src = PacketBatch(arena.copy(), soff, lens, lens)
    ref_dst = PacketBatch(arena.copy(), doff, np.zeros(n, np.int32), cap)
    params = (out if outbound else inb).params
    sa, ref = Sa(params), Sa(params)
    if outbound:
        for s in (sa, ref):
            s._ctx.predictable_ivs_for_tests()
    call = (lambda s, x, y: s.encrypt_batch(x, y, sel)) if outbound else (lambda s, x, y: s.decrypt_batch(x, y, sel))
    work = list(range(n)) if select is None else select
    if _conflict(src, dst, work):
        before = arena.copy()
        with pytest.raises(ValueError, match="overlap"):
            call(sa, src, dst)
        assert (arena == before).all() and sa.counters.packets == 0
        return
    ok = call(sa, src, dst)
    assert ok == call(ref, ref_src, ref_dst)
    for i in dict.fromkeys(work):
        assert dst.status[i] == ref_dst.status[i], (i, Verdict(dst.status[i]), Verdict(ref_dst.status[i]))
        if dst.status[i] == Verdict.OK:
            assert dst.packet(i) == ref_dst.packet(i)
