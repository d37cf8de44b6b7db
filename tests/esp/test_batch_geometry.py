"""Batch geometry: a slot whose offset, length or capacity lies outside its arena is MALFORMED, whatever the
numbers (near 2**63, 2**64 - 1, the 2**31 and 2**32 boundaries, sums that wrap), and the Python side refuses
arrays the core cannot take (wrong dtype, shape, values out of range) with ValueError.

The overflow cases ran wild in the core before its checks were made overflow-proof (a segfault in
``encrypt_batch``/``decrypt_batch``), so they run in a child process: a regression is a failed test with the
signal named, not a crashed test run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esp import PacketBatch, Verdict

from .helpers import ipv4, sa_pair, udp

ROOT = Path(__file__).resolve().parents[2]

I64 = (1 << 63) - 1
#: offsets that must be refused: near 2**63 (where off + len wraps), the 2**31/2**32 boundaries, just past the arena
BAD_OFFSETS = [I64, I64 - 1, I64 - 5, I64 - 2047, I64 - (1 << 31), 1 << 62, (1 << 32) + 1, 1 << 32, (1 << 32) - 1,
               1 << 31, (1 << 31) - 1, -1, -(1 << 63), -2048]
#: lengths/capacities that run past the arena from a valid offset, or are negative
BAD_SIZES = [(1 << 31) - 1, (1 << 31) - 2048, 1 << 30, -1, -(1 << 31)]

# The child: every case on a fresh 4-slot batch, slot 1 carrying the bad geometry; prints the verdicts as JSON.
_CHILD = r"""
import json, sys
import numpy as np
from esp import PacketBatch
from tests.esp.helpers import ipv4, sa_pair, udp
cases = json.loads(sys.argv[1])
out, inb = sa_pair("aes128gcm16", backend=sys.argv[2])
pkts = [ipv4(udp(bytes([i]) * 60)) for i in range(4)]
res = []
for direction, side, field, value in cases:
    if direction == "dec":
        wire = PacketBatch.empty(4, 256)
        out.encrypt_batch(PacketBatch.from_packets(pkts), wire)
        src, sa = PacketBatch.from_packets(wire.packets()), inb
    else:
        src, sa = PacketBatch.from_packets(pkts), out
    dst = PacketBatch.empty(4, 256)
    arr = getattr(src if side == "src" else dst, field)
    arr[1] = value  # written after construction, as a caller can: the core is the guard
    fn = sa.decrypt_batch if direction == "dec" else sa.encrypt_batch
    n = fn(src, dst)
    res.append([n, [int(v) for v in dst.status]])
print(json.dumps(res))
"""


def _cases() -> list[tuple[str, str, str, int]]:
    cases = []
    for direction in ("enc", "dec"):
        for off in BAD_OFFSETS:
            cases += [(direction, "src", "offsets", off), (direction, "dst", "offsets", off)]
        for size in BAD_SIZES:
            cases += [(direction, "src", "lengths", size), (direction, "dst", "capacity", size)]
    return cases


def _backends() -> list[str]:
    from esp.sa import available_backends
    return available_backends("aes128gcm16")


@pytest.mark.parametrize("backend", _backends())
def test_slots_outside_the_arena_are_malformed_in_a_child(backend: str) -> None:
    cases = _cases()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases), backend], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the core crashed or raised (status {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout)
    want = [Verdict.OK, Verdict.MALFORMED, Verdict.OK, Verdict.OK]
    wrong = [(case, r) for case, r in zip(cases, results) if r != [3, want]]
    assert not wrong, wrong[:5]


def test_offset_plus_length_that_wraps_is_malformed_in_process() -> None:
    """After the fix the same cases are safe in this process too, with the counters showing each refusal."""
    out, _ = sa_pair("aes128gcm16")
    src = PacketBatch.from_packets([ipv4(udp(b"x" * 40))] * 3)
    dst = PacketBatch.empty(3, 256)
    src.offsets[0] = I64 - 10
    src.lengths[0] = 100          # off + len wraps past 2**63 to a negative number
    dst.offsets[1] = I64 - (1 << 30)
    dst.capacity[1] = (1 << 31) - 1
    assert out.encrypt_batch(src, dst) == 1
    assert list(dst.status) == [Verdict.MALFORMED, Verdict.MALFORMED, Verdict.OK]
    assert out.counters.malformed == 2
    assert list(dst.lengths[:2]) == [0, 0]


def test_slot_at_the_very_end_of_the_arena_is_fine_and_one_past_is_not() -> None:
    out, inb = sa_pair("aes128gcm16")
    pkt = ipv4(udp(b"y" * 33))
    src = PacketBatch.from_packets([pkt, pkt])
    dst = PacketBatch.empty(2, 256)
    assert out.encrypt_batch(src, dst) == 2
    last = int(dst.lengths[1])
    # the second output's slot shrunk to exactly what it needs, at the arena's end
    wire = PacketBatch(np.zeros(256 + last, np.uint8), np.array([0, 256]), np.zeros(2, np.int32),
                       np.array([256, last], np.int32))
    assert out.encrypt_batch(src, wire) == 2
    wire2 = PacketBatch(np.zeros(256 + last, np.uint8), np.array([0, 257]), np.zeros(2, np.int32),
                        np.array([256, last], np.int32))
    assert out.encrypt_batch(src, wire2) == 1
    assert list(wire2.status) == [Verdict.OK, Verdict.MALFORMED]
    back = PacketBatch.empty(2, 256)
    assert inb.decrypt_batch(wire, back) == 2
    assert back.packets() == [pkt, pkt]


# ---- what the Python side refuses before anything reaches the core ----------------------------------------
def _arrays(n: int = 2):
    return np.zeros(n * 64, np.uint8), np.arange(n, dtype=np.int64) * 64, np.zeros(n, np.int32), np.full(n, 64, np.int32)


BAD_ARRAYS = [
    ("offsets", np.array([0, 2**64 - 1], dtype=np.uint64), "offsets"),      # 2**64 - 1 would wrap to -1
    ("offsets", np.array([0, 2**63], dtype=np.uint64), "offsets"),
    ("offsets", np.array([0.0, 64.0]), "integer"),
    ("offsets", np.array([0, -64]), "offsets"),
    ("offsets", np.array([[0, 64]]), "1-D"),
    ("offsets", np.array([True, False]), "integer"),
    ("lengths", np.array([0, 2**31], dtype=np.int64), "lengths"),         # does not fit int32
    ("lengths", np.array([0, -1], dtype=np.int64), "lengths"),
    ("lengths", np.array([0]), "same length"),                             # shorter than the count
    ("capacity", np.array([64, 2**32 + 64], dtype=np.int64), "capacity"),  # would wrap to 64
    ("capacity", np.array([64, -1], dtype=np.int32), "capacity"),
    ("capacity", np.array([64, 64, 64]), "same length"),
]


@pytest.mark.parametrize("field,value,message", BAD_ARRAYS, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_ARRAYS)])
def test_bad_slot_arrays_are_refused(field: str, value: np.ndarray, message: str) -> None:
    buf, offsets, lengths, capacity = _arrays()
    args = dict(buf=buf, offsets=offsets, lengths=lengths, capacity=capacity)
    args[field] = value
    with pytest.raises(ValueError, match=message):
        PacketBatch(**args)


def test_bad_arena_is_refused() -> None:
    buf, offsets, lengths, capacity = _arrays()
    with pytest.raises(TypeError):
        PacketBatch(buf.astype(np.int16), offsets, lengths, capacity)
    with pytest.raises(ValueError, match="contiguous"):
        # a strided view: the core would write into a copy and the caller would never see the output
        PacketBatch(np.zeros(256, np.uint8)[::2], offsets, lengths, capacity)


def test_non_contiguous_slot_arrays_are_copied_and_the_batch_keeps_its_own() -> None:
    buf, offsets, lengths, capacity = _arrays(4)
    b = PacketBatch(buf, np.repeat(offsets, 2)[::2], lengths, capacity)
    assert b.offsets.flags.c_contiguous and list(b.offsets) == list(offsets)


def test_packet_accessors_refuse_slots_outside_the_arena() -> None:
    b = PacketBatch.from_packets([b"abcd", b"efgh"])
    b.offsets[1] = -2
    with pytest.raises(ValueError, match="outside"):
        b.packet(1)
    b.offsets[1] = I64 - 1
    with pytest.raises(ValueError, match="outside"):
        b.packet(1)
    with pytest.raises(ValueError, match="outside"):
        b.set_packets([b"ab", b"cd"])


# ---- the sizes an SA context is built with: every per-packet bound rests on them -----------------------------
def _ctx(**over):
    from esp import _core
    kw = dict(cipher="aes-gcm", integ="none", outbound=True, key=bytes(16), salt=bytes(4), integ_key=b"",
              iv_len=8, icv_len=16, align=4, spi=1, framing="tunnel", outer_src=bytes(4), outer_dst=bytes(4))
    kw.update(over)
    return _core.SaContext(**kw)


@pytest.mark.parametrize("over", [
    dict(key=bytes(5)),                         # the library would read 32 key bytes from a 5-byte buffer
    dict(cipher="chacha20-poly1305", key=bytes(16)),
    dict(cipher="null", key=bytes(16), icv_len=16, integ="sha256_128", iv_len=0),
    dict(icv_len=32),                           # an AEAD tag written into a 16-byte buffer
    dict(icv_len=-1),
    dict(cipher="aes-cbc", integ="sha1_96", icv_len=32, iv_len=16, align=16),   # more than SHA-1 gives
    dict(iv_len=4),                             # the nonce would read 8 IV bytes
    dict(cipher="aes-cbc", integ="none", icv_len=0, iv_len=8, align=16),
    dict(tfc_pad=1 << 30),                      # lengths near an int's range
    dict(tfc_pad=-1),
    dict(align=0), dict(align=3), dict(align=1 << 20),
], ids=lambda d: ",".join(f"{k}={v if not isinstance(v, bytes) else len(v)}" for k, v in d.items()))
def test_context_sizes_out_of_range_are_refused(over: dict) -> None:
    with pytest.raises(ValueError):
        _ctx(**over)


def test_context_sizes_of_every_suite_are_accepted() -> None:
    from esp.suites import SUITES
    for name in SUITES:
        out, inb = sa_pair(name)
        assert inb.decrypt(out.encrypt(ipv4(udp(b"z")))) == ipv4(udp(b"z"))
