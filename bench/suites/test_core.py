"""The espresso batch core: encrypt, and decrypt with anti-replay on (a fresh inbound SA per round)."""
from __future__ import annotations

import pytest

from bench.suites.conftest import info

SUITES = ["aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256"]
SIZES = ["64", "512", "1400", "imix"]
BACKENDS = ["openssl", "ipsecmb"]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("suite", SUITES)
def test_core_encrypt(benchmark, rings, suite, backend, size):
    ring = rings("core", suite, backend, size)
    info(benchmark, ring.workload)
    benchmark.group = f"encrypt {suite} {size}"
    n = benchmark(ring.encrypt_pass)
    assert n == ring.workload.count


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("suite", SUITES)
def test_core_decrypt(benchmark, rings, suite, backend, size):
    ring = rings("core", suite, backend, size)
    info(benchmark, ring.workload)
    benchmark.group = f"decrypt {suite} {size}"
    n = benchmark.pedantic(ring.decrypt_pass, setup=lambda: ((ring.inbound(),), {}), rounds=30, warmup_rounds=2)
    assert n == ring.workload.count
