"""pytest-benchmark suites for the ESP core, its raw loops and the Python alternative.

    pytest bench/suites --benchmark-autosave                 # store a run under .benchmarks/
    pytest bench/suites --benchmark-compare                  # compare against the last stored run
    pytest bench/suites --benchmark-json out.json            # feed regression tracking

One round is one pass over a ring of distinct packets (bench.workloads); ``extra_info`` carries the packet
and byte counts of a round, so a tracker can turn seconds per round into Mpps and Gbit/s. These suites live
outside tests/ on purpose: they time, and tests never do.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_cache: dict = {}


def _get(key, make):
    if key not in _cache:
        try:
            _cache[key] = make()
        except Exception as exc:  # noqa: BLE001 - becomes a skip with the reason
            _cache[key] = exc
    v = _cache[key]
    if isinstance(v, Exception):
        pytest.skip(f"not available: {type(v).__name__}: {v}")
    return v


@pytest.fixture
def rings():
    """A getter for cached rings: rings(kind, suite, backend, size)."""
    from bench.alternatives import PythonRing
    from bench.ceilings import CeilingRing
    from bench.esp import CoreRing
    from bench.workloads import make_workload

    def get(kind: str, suite: str, backend: str, size: str):
        workload = _get(("w", size), lambda: make_workload(size, count=1024))
        if kind == "core":
            return _get((kind, suite, backend, size), lambda: CoreRing(suite, backend, workload))
        if kind == "ceiling":
            return _get((kind, suite, backend, size), lambda: CeilingRing(backend, suite, workload))
        return _get((kind, suite, size), lambda: PythonRing(suite, workload, max_packets=256))

    return get


def info(benchmark, workload, packets: int | None = None) -> None:
    n = packets if packets is not None else workload.count
    benchmark.extra_info.update(packets_per_round=n, bytes_per_round=int(workload.mean_size * n),
                                mean_packet_bytes=workload.mean_size)
