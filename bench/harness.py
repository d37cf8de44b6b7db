"""Timing on a noisy shared machine: interleaved samplers, repeats, min/median/max.

A single sample on these virtual machines moves by about 30%, and the whole machine slows in phases. So every
comparison is made inside one group whose samplers run interleaved (A, B, C, A, B, C, ...) for several
repeats, and ratios are taken repeat by repeat (A_r / B_r, measured seconds apart) before their median is
reported. A sampler is ``fn(units) -> (packets, seconds, cpu_seconds)``: it times its own hot section, so set-up that
must happen per pass (a fresh inbound SA for anti-replay) stays out of the number. ``cpu_seconds`` is the
thread CPU time of that section: on a machine shared with other work, packets per CPU-second is what one core
does, while wall-clock rates also carry the time other processes held the CPU.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["Progress", "Sampler", "Series", "Spread", "calibrate", "interleave", "ratio_spread", "spread"]

Sampler = Callable[[int], "tuple[int, float, float]"]


@dataclass(frozen=True)
class Spread:
    """Minimum, median, maximum of a list of numbers."""

    min: float
    median: float
    max: float

    def scaled(self, k: float) -> Spread:
        return Spread(self.min * k, self.median * k, self.max * k)

    def as_dict(self) -> dict[str, float]:
        return {"min": self.min, "median": self.median, "max": self.max}


def spread(values: Iterable[float]) -> Spread:
    v = sorted(values)
    if not v:
        raise ValueError("no samples")
    return Spread(v[0], statistics.median(v), v[-1])


@dataclass
class Series:
    """One sampler's packet rates, one per repeat, or why it could not run."""

    name: str
    bytes_per_packet: float
    rates: list[float] = field(default_factory=list)  # packets per wall-clock second
    cpu_rates: list[float] = field(default_factory=list)  # packets per CPU-second of the measuring thread(s)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.rates)

    @property
    def pps(self) -> Spread:
        return spread(self.rates)

    @property
    def mpps(self) -> Spread:
        return self.pps.scaled(1e-6)

    @property
    def gbps(self) -> Spread:
        return self.pps.scaled(self.bytes_per_packet * 8e-9)

    @property
    def cpu_ok(self) -> bool:
        return self.ok and len(self.cpu_rates) == len(self.rates)

    @property
    def cpu_mpps(self) -> Spread:
        return spread(self.cpu_rates).scaled(1e-6)

    @property
    def cpu_gbps(self) -> Spread:
        return spread(self.cpu_rates).scaled(self.bytes_per_packet * 8e-9)

    def as_dict(self) -> dict:
        if not self.ok:
            return {"name": self.name, "unavailable": self.error or "no samples"}
        d = {"name": self.name, "bytes_per_packet": self.bytes_per_packet, "pps": self.rates,
             "mpps": self.mpps.as_dict(), "gbps": self.gbps.as_dict()}
        if self.cpu_ok:
            d.update(pps_per_cpu_s=self.cpu_rates, mpps_per_cpu_s=self.cpu_mpps.as_dict(),
                     gbps_per_cpu_s=self.cpu_gbps.as_dict())
        return d


def ratio_spread(a: Series, b: Series, cpu: bool = False) -> Spread | None:
    """a/b repeat by repeat (samples taken next to each other), as a spread; None if either is missing.
    ``cpu``: compare packets per CPU-second instead of per wall-clock second."""
    if not (a.ok and b.ok):
        return None
    if cpu:
        if not (a.cpu_ok and b.cpu_ok):
            return None
        x, y = a.cpu_rates, b.cpu_rates
    else:
        x, y = a.rates, b.rates
    n = min(len(x), len(y))
    return spread(x[i] / y[i] for i in range(n))


class Progress:
    """A one-line progress indicator on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()

    def grow(self, n: int) -> None:
        self.total += n

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 24
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        line = f"[{bar}] {self.done:3d}/{self.total} {time.monotonic() - self.t0:6.1f}s  {label}"
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def calibrate(sampler: Sampler, target_s: float, max_units: int = 1 << 20) -> int:
    """Units for one sample of about ``target_s`` seconds (runs the sampler a few times, also warming it)."""
    units = 1
    while True:
        dt = sampler(units)[1]
        if dt >= target_s / 8 or units >= max_units:
            break
        units = min(max_units, units * 8 if dt < target_s / 64 else units * 2)
    if dt <= 0:
        return units
    return max(1, min(max_units, int(units * target_s / dt)))


def interleave(samplers: dict[str, tuple[Sampler, float]], repeats: int, target_s: float,
               progress: Progress | None = None, label: str = "",
               max_units: dict[str, int] | None = None) -> dict[str, Series]:
    """Run samplers A, B, C, A, B, C ... for ``repeats`` rounds. ``samplers`` maps a name to
    (sampler, bytes per packet). A sampler that raises gets its error recorded and is dropped from the rounds."""
    out = {name: Series(name, bpp) for name, (_, bpp) in samplers.items()}
    units: dict[str, int] = {}
    for name, (fn, _) in samplers.items():
        try:
            units[name] = calibrate(fn, target_s, (max_units or {}).get(name, 1 << 20))
        except Exception as exc:  # noqa: BLE001 - reported, never fatal
            out[name].error = f"{type(exc).__name__}: {exc}"
    for r in range(repeats):
        for name, (fn, _) in samplers.items():
            if out[name].error:
                continue
            try:
                sample = fn(units[name])
                n, dt = sample[0], sample[1]
                out[name].rates.append(n / dt if dt > 0 else float("inf"))
                if len(sample) > 2 and sample[2] > 0:
                    out[name].cpu_rates.append(n / sample[2])
            except Exception as exc:  # noqa: BLE001
                out[name].error = f"{type(exc).__name__}: {exc}"
        if progress:
            progress.step(f"{label} repeat {r + 1}/{repeats}")
    return out
