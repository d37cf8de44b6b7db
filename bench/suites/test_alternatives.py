"""The per-packet Python ESP over `cryptography` (what a user writes without a compiled core), 64 B and IMIX."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("size", ["64", "imix"])
@pytest.mark.parametrize("suite", ["aes128gcm16", "chacha20poly1305", "aes128-sha256"])
def test_python_encrypt(benchmark, rings, suite, size):
    ring = rings("python", suite, "", size)
    benchmark.extra_info.update(packets_per_round=len(ring.packets),
                                bytes_per_round=sum(len(p) for p in ring.packets))
    benchmark.group = f"encrypt {suite} {size}"
    n = benchmark.pedantic(ring.encrypt, args=(1,), rounds=10, warmup_rounds=1)[0]
    assert n == len(ring.packets)
