"""The espresso core under load: every suite on every backend, against the ceilings and the alternatives.

One *group* is one suite and one workload. Inside it, interleaved, run: the core's encrypt and decrypt
(decrypt with anti-replay on, a fresh inbound SA per pass over the ring so no packet is a replay) on each
backend, each backend's raw loop (the ceiling) both ways, and the Python and scapy alternatives. Ratios are
taken repeat by repeat inside the group. Nothing here prints; results are dataclasses for bench.report.

Note: this module is ``bench.esp``; ``import esp`` below is the top-level espresso package (absolute imports).
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field

from bench.harness import Progress, Series, Spread, interleave, ratio_spread
from bench.workloads import DEFAULT_BATCH, Workload, key_material, make_workload

__all__ = [
    "BatchSweepResult",
    "CaseResult",
    "CoreRing",
    "CoreUnavailable",
    "ScalingResult",
    "backends_for",
    "core_available",
    "run_batch_sweep",
    "run_group",
    "run_scaling",
]

OUTER_SRC, OUTER_DST = "192.0.2.1", "192.0.2.2"


class CoreUnavailable(Exception):
    """The espresso core cannot run this case here; the message says why."""


def core_available() -> str | None:
    """None when esp._core imports, else the reason."""
    try:
        import esp._core  # noqa: F401

        from esp import PacketBatch, Sa, SaParams  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return f"esp._core is not importable ({type(exc).__name__}: {exc}); build with python setup.py build_ext --inplace"
    return None


def backends_for(suite_name: str) -> dict[str, str | None]:
    """{backend: None if the core runs the suite on it, else the reason}, for openssl and ipsecmb."""
    reason = core_available()
    if reason:
        return {"openssl": reason, "ipsecmb": reason}
    from esp import available_backends

    have = available_backends(suite_name)
    return {b: None if b in have else f"the core has no {b} backend for {suite_name} in this build"
            for b in ("openssl", "ipsecmb")}


class CoreRing:
    """One outbound and (per pass) one inbound SA over a workload, cut into batches, ready to time."""

    def __init__(self, suite_name: str, backend: str, workload: Workload, batch: int = DEFAULT_BATCH,
                 sa_index: int = 0, replay_window: int = 1024):
        reason = core_available()
        if reason:
            raise CoreUnavailable(reason)
        from esp import Direction, Mode, PacketBatch, Sa, SaParams, Verdict

        self.suite_name, self.backend, self.workload, self.batch = suite_name, backend, workload, batch
        km = key_material(suite_name, sa_index)
        self.spi = 0x1000 + sa_index
        self.km = km
        self._in_params = SaParams(spi=self.spi, direction=Direction.IN, suite=suite_name, enc_key=km.enc_key,
                                   integ_key=km.integ_key, mode=Mode.TUNNEL, replay_window=replay_window,
                                   backend=backend)
        self.out_sa = Sa(SaParams(spi=self.spi, direction=Direction.OUT, suite=suite_name, enc_key=km.enc_key,
                                  integ_key=km.integ_key, mode=Mode.TUNNEL, src=OUTER_SRC, dst=OUTER_DST,
                                  backend=backend))
        chunks = workload.batches(batch)
        slot = (max(len(p) for p in workload.packets) + 128 + 63) // 64 * 64
        self.src = [PacketBatch.from_packets(c) for c in chunks]
        self.dst = [PacketBatch.empty(len(c), slot) for c in chunks]
        for s, d in zip(self.src, self.dst):
            n = self.out_sa.encrypt_batch(s, d)
            if n != s.count:
                bad = {Verdict(int(v)).name for v in d.status if v != 0}
                raise CoreUnavailable(f"encrypt_batch returned {n} of {s.count} OK ({', '.join(sorted(bad))})")
        self.esp = [PacketBatch.from_packets(d.packets()[: s.count]) for s, d in zip(self.src, self.dst)]
        self.plain = [PacketBatch.empty(len(c), slot) for c in chunks]
        sa_in = self.inbound()
        for e, p, c in zip(self.esp, self.plain, chunks):
            n = sa_in.decrypt_batch(e, p)
            if n != e.count:
                bad = {Verdict(int(v)).name for v in p.status if v != 0}
                raise CoreUnavailable(f"decrypt_batch returned {n} of {e.count} OK ({', '.join(sorted(bad))})")
        if self.plain[0].packet(0) != chunks[0][0] or self.plain[-1].packet(len(chunks[-1]) - 1) != chunks[-1][-1]:
            raise CoreUnavailable("the core's decrypt did not give back the packets it encrypted")

    def inbound(self):
        from esp import Sa

        return Sa(self._in_params)

    def esp_packet(self, i: int) -> bytes:
        return self.esp[i // self.batch].packet(i % self.batch)

    def encrypt_pass(self) -> int:
        """One untimed pass over the ring (for pytest-benchmark, which times the call itself)."""
        enc = self.out_sa.encrypt_batch
        return sum(enc(s, d) for s, d in zip(self.src, self.dst))

    def decrypt_pass(self, sa) -> int:
        """One pass of ``sa`` (a fresh inbound SA from :meth:`inbound`) over the ESP ring."""
        dec = sa.decrypt_batch
        return sum(dec(e, p) for e, p in zip(self.esp, self.plain))

    def encrypt(self, reps: int) -> tuple[int, float, float]:
        """``reps`` passes over the ring; (packets, seconds, thread CPU seconds)."""
        enc = self.out_sa.encrypt_batch
        pairs = list(zip(self.src, self.dst))
        n = 0
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(reps):
            for s, d in pairs:
                n += enc(s, d)
        return n, time.perf_counter() - t0, time.thread_time() - c0

    def decrypt(self, reps: int) -> tuple[int, float, float]:
        pairs = list(zip(self.esp, self.plain))
        n, total, cpu = 0, 0.0, 0.0
        for _ in range(reps):
            dec = self.inbound().decrypt_batch  # fresh window: every pass is new traffic, anti-replay on
            t0, c0 = time.perf_counter(), time.thread_time()
            for e, p in pairs:
                n += dec(e, p)
            total += time.perf_counter() - t0
            cpu += time.thread_time() - c0
        if n != reps * self.workload.count:
            raise RuntimeError(f"decrypt_batch accepted {n} of {reps * self.workload.count} packets")
        return n, total, cpu


@dataclass
class CaseResult:
    """One suite x backend x workload x direction."""

    suite: str
    backend: str
    size: str
    direction: str
    mean_bytes: float
    espresso: Series
    ceiling: Series
    python: Series
    scapy: Series
    ratio_ceiling: Spread | None = None  # per CPU-second where measured (see bench.harness), else wall clock
    ratio_python: Spread | None = None
    ratio_scapy: Spread | None = None
    decrypt_vs_encrypt: Spread | None = None  # decrypt cases only: core decrypt / core encrypt
    ratio_ceiling_wall: Spread | None = None
    decrypt_vs_encrypt_wall: Spread | None = None

    def as_dict(self) -> dict:
        d: dict = {"suite": self.suite, "backend": self.backend, "size": self.size, "direction": self.direction,
                   "mean_bytes": self.mean_bytes}
        for k in ("espresso", "ceiling", "python", "scapy"):
            d[k] = getattr(self, k).as_dict()
        for k in ("ratio_ceiling", "ratio_python", "ratio_scapy", "decrypt_vs_encrypt", "ratio_ceiling_wall",
                  "decrypt_vs_encrypt_wall"):
            v = getattr(self, k)
            d[k] = v.as_dict() if v else None
        return d


def _unavailable(name: str, bpp: float, reason: str) -> Series:
    return Series(name, bpp, error=reason)


def run_group(suite_name: str, size: str, backends: list[str], *, quick: bool = False, repeats: int = 5,
              target_s: float = 0.1, alternatives: bool = True, scapy: bool = True, batch: int = DEFAULT_BATCH,
              progress: Progress | None = None) -> list[CaseResult]:
    """Measure one suite on one workload: the core on each backend, ceilings, alternatives; interleaved."""
    from bench.alternatives import PythonRing, ScapyRing
    from bench.ceilings import CeilingRing

    workload = make_workload(size, quick=quick)
    bpp = workload.mean_size
    samplers: dict = {}
    missing: dict[str, str] = {}
    avail = backends_for(suite_name)
    for be in backends:
        if avail.get(be):
            missing[f"espresso/{be}"] = avail[be] or ""
        else:
            try:
                ring = CoreRing(suite_name, be, workload, batch)
                samplers[f"espresso/{be}/encrypt"] = (ring.encrypt, bpp)
                samplers[f"espresso/{be}/decrypt"] = (ring.decrypt, bpp)
            except Exception as exc:  # noqa: BLE001 - reported as "not available"
                missing[f"espresso/{be}"] = f"{type(exc).__name__}: {exc}"
        try:
            ceil = CeilingRing(be, suite_name, workload)
            samplers[f"ceiling/{be}/encrypt"] = (ceil.encrypt, bpp)
            samplers[f"ceiling/{be}/decrypt"] = (ceil.decrypt, bpp)
        except Exception as exc:  # noqa: BLE001
            missing[f"ceiling/{be}"] = str(exc)
    alt_units: dict[str, int] = {}
    if alternatives:
        try:
            py = PythonRing(suite_name, workload, max_packets=512 if quick else 2048)
            samplers["python/encrypt"] = (py.encrypt, bpp)
            samplers["python/decrypt"] = (py.decrypt, bpp)
        except Exception as exc:  # noqa: BLE001
            missing["python"] = str(exc)
    else:
        missing["python"] = "not measured for this workload (see --alternatives)"
    if scapy:
        try:
            sc = ScapyRing(suite_name, workload, max_packets=32)
            samplers["scapy/encrypt"] = (sc.encrypt, bpp)
            samplers["scapy/decrypt"] = (sc.decrypt, bpp)
            alt_units["scapy/encrypt"] = alt_units["scapy/decrypt"] = 40 if quick else 200
        except Exception as exc:  # noqa: BLE001
            missing["scapy"] = str(exc)
    else:
        missing["scapy"] = "not measured for this workload (scapy runs only at 64 bytes; it is ~500 packets/s)"
    series = interleave(samplers, repeats, target_s, progress, label=f"core {suite_name} {size}",
                        max_units=alt_units)

    def get(name: str, key: str) -> Series:
        if name in series:
            return series[name]
        return _unavailable(name, bpp, missing.get(key, "not measured"))

    results = []
    for be in backends:
        enc = get(f"espresso/{be}/encrypt", f"espresso/{be}")
        for direction in ("encrypt", "decrypt"):
            core = get(f"espresso/{be}/{direction}", f"espresso/{be}")
            res = CaseResult(suite_name, be, size, direction, bpp, core,
                             get(f"ceiling/{be}/{direction}", f"ceiling/{be}"),
                             get(f"python/{direction}", "python"), get(f"scapy/{direction}", "scapy"))
            def both(a: Series, b: Series) -> tuple[Spread | None, Spread | None]:
                wall = ratio_spread(a, b)
                return ratio_spread(a, b, cpu=True) or wall, wall

            res.ratio_ceiling, res.ratio_ceiling_wall = both(res.espresso, res.ceiling)
            res.ratio_python = both(res.espresso, res.python)[0]
            res.ratio_scapy = both(res.espresso, res.scapy)[0]
            if direction == "decrypt":
                res.decrypt_vs_encrypt, res.decrypt_vs_encrypt_wall = both(core, enc)
            results.append(res)
    return results


@dataclass
class ScalingResult:
    """Aggregate encrypt rate for 1..N threads, each on its own SA; the ceiling's scaling for comparison."""

    suite: str
    backend: str
    size: str
    threads: list[int]
    espresso: list[Series] = field(default_factory=list)
    ceiling: list[Series] = field(default_factory=list)
    error: str | None = None

    def speedup(self, which: str = "espresso") -> list[Spread | None]:
        """Aggregate wall-clock rate at N threads over one thread's."""
        rows = getattr(self, which)
        if not rows or not rows[0].ok:
            return [None for _ in rows]
        return [ratio_spread(s, rows[0]) for s in rows]

    def efficiency(self, which: str = "espresso") -> list[Spread | None]:
        """Packets per CPU-second at N threads over one thread's: 1.0 means the threads do not slow each other
        (no lock, no shared cache line), so N free cores would give N times the rate."""
        rows = getattr(self, which)
        if not rows or not rows[0].cpu_ok:
            return [None for _ in rows]
        return [ratio_spread(s, rows[0], cpu=True) for s in rows]

    def as_dict(self) -> dict:
        if self.error:
            return {"suite": self.suite, "backend": self.backend, "size": self.size, "unavailable": self.error}
        return {"suite": self.suite, "backend": self.backend, "size": self.size, "threads": self.threads,
                "espresso": [s.as_dict() for s in self.espresso],
                "espresso_speedup": [v.as_dict() if v else None for v in self.speedup("espresso")],
                "espresso_cpu_efficiency": [v.as_dict() if v else None for v in self.efficiency("espresso")],
                "ceiling": [s.as_dict() for s in self.ceiling],
                "ceiling_speedup": [v.as_dict() if v else None for v in self.speedup("ceiling")],
                "ceiling_cpu_efficiency": [v.as_dict() if v else None for v in self.efficiency("ceiling")]}


def _threaded(workers: list, units: int) -> tuple[int, float, float]:
    """Run ``w(units)`` on every worker at once, each in its own thread; (packets, wall seconds, CPU seconds
    summed over the threads)."""
    barrier = threading.Barrier(len(workers) + 1)
    counts = [0] * len(workers)
    cpus = [0.0] * len(workers)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            r = workers[i](units)
            counts[i], cpus[i] = r[0], r[2]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(workers))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts), dt, sum(cpus)


def _threaded_units(workers: list, units: int) -> tuple[int, float, float]:
    return _threaded(workers, units)


def run_scaling(suite_name: str, backend: str, size: str, max_threads: int, *, quick: bool = False,
                repeats: int = 5, target_s: float = 0.2, batch: int = DEFAULT_BATCH,
                progress: Progress | None = None) -> ScalingResult:
    """1..max_threads threads, each encrypting its own ring on its own SA (GIL released in the core), and the
    same for the raw loop, interleaved by repeat."""
    from bench.ceilings import CeilingRing

    threads = list(range(1, max_threads + 1))
    res = ScalingResult(suite_name, backend, size, threads)
    reason = core_available() or backends_for(suite_name).get(backend)
    if reason:
        res.error = reason
        return res
    workload = make_workload(size, quick=quick)
    bpp = workload.mean_size
    try:
        rings = [CoreRing(suite_name, backend, workload, batch, sa_index=i) for i in range(max_threads)]
    except Exception as exc:  # noqa: BLE001
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    try:
        ceils = [CeilingRing(backend, suite_name, workload, sa_index=i) for i in range(max_threads)]
    except Exception as exc:  # noqa: BLE001
        ceils = []
        ceil_error = str(exc)
    samplers: dict = {}
    for n in threads:
        samplers[f"espresso/{n}"] = (functools.partial(_threaded_units, [r.encrypt for r in rings[:n]]), bpp)
        if ceils:
            samplers[f"ceiling/{n}"] = (functools.partial(_threaded_units, [c.encrypt for c in ceils[:n]]), bpp)
    series = interleave(samplers, repeats, target_s, progress, label=f"scaling {suite_name} {backend} {size}")
    res.espresso = [series[f"espresso/{n}"] for n in threads]
    res.ceiling = [series[f"ceiling/{n}"] if ceils else Series(f"ceiling/{n}", bpp, error=ceil_error)
                   for n in threads]
    return res


@dataclass
class BatchSweepResult:
    """Core encrypt rate against the batch size (the per-call cost of crossing into the core)."""

    suite: str
    backend: str
    size: str
    batches: list[int]
    espresso: list[Series] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        if self.error:
            return {"suite": self.suite, "backend": self.backend, "size": self.size, "unavailable": self.error}
        return {"suite": self.suite, "backend": self.backend, "size": self.size, "batches": self.batches,
                "espresso": [s.as_dict() for s in self.espresso]}


def run_batch_sweep(suite_name: str, backend: str, size: str, batches: list[int], *, quick: bool = False,
                    repeats: int = 5, target_s: float = 0.1, progress: Progress | None = None) -> BatchSweepResult:
    res = BatchSweepResult(suite_name, backend, size, batches)
    reason = core_available() or backends_for(suite_name).get(backend)
    if reason:
        res.error = reason
        return res
    workload = make_workload(size, quick=quick)
    try:
        rings = {b: CoreRing(suite_name, backend, workload, b) for b in batches}
    except Exception as exc:  # noqa: BLE001
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    series = interleave({f"batch/{b}": (rings[b].encrypt, workload.mean_size) for b in batches}, repeats,
                        target_s, progress, label=f"batch sweep {suite_name} {backend} {size}")
    res.espresso = [series[f"batch/{b}"] for b in batches]
    return res

