"""The raw loops each backend's core is measured against (same packets, only the library's crypto calls)."""
from __future__ import annotations

import pytest

from bench.suites.conftest import info
from bench.suites.test_core import BACKENDS, SIZES, SUITES


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("suite", SUITES)
def test_ceiling_encrypt(benchmark, rings, suite, backend, size):
    ring = rings("ceiling", suite, backend, size)
    info(benchmark, ring.workload)
    benchmark.group = f"encrypt {suite} {size}"
    n = benchmark(ring.encrypt, 1)[0]
    assert n == ring.workload.count


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("suite", SUITES)
def test_ceiling_decrypt(benchmark, rings, suite, backend, size):
    ring = rings("ceiling", suite, backend, size)
    info(benchmark, ring.workload)
    benchmark.group = f"decrypt {suite} {size}"
    n = benchmark(ring.decrypt, 1)[0]
    assert n == ring.workload.count
