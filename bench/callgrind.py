"""Instructions per packet, core against raw loop, from valgrind's callgrind: a cost model that does not move.

Timings on a shared virtual machine drift by tens of percent; instruction counts do not. For one suite, size,
backend and direction this runs the espresso core and the raw loop under callgrind, collecting only inside the
compiled calls (``process_into`` for the core, ``_run`` for the raw loop), once with 1 pass and once with 6 passes
over a ring of 1024 packets, and reports the difference per packet, function by function::

    python -m bench.callgrind --backend ipsecmb --size 64 --direction encrypt

The per-function split shows where the core spends what the raw loop does not (framing, checks, copies).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["instructions_per_packet", "main"]

RING = 1024
PASSES = (1, 6)
TOGGLE = {"core": "*process_into*", "ceiling": "*__run"}


def _child(kind: str, suite: str, backend: str, direction: str, size: str, passes: int) -> None:
    """Runs inside valgrind: set up, then ``passes`` passes of the compiled call."""
    from bench.workloads import make_workload

    w = make_workload(size, count=RING)
    if kind == "core":
        from bench.esp import CoreRing

        r = CoreRing(suite, backend, w)
        if direction == "encrypt":
            for _ in range(passes):
                r.encrypt_pass()
        else:
            for sa in [r.inbound() for _ in range(passes)]:
                r.decrypt_pass(sa)
    else:
        from bench.ceilings import CeilingRing

        c = CeilingRing(backend, suite, w)
        for _ in range(passes):
            getattr(c, direction)(1)


def _functions(path: Path) -> dict[str, int]:
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", str(path)],
                         capture_output=True, text=True, check=True).stdout
    funcs: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)$", line)
        if not m or ":" not in m.group(2) or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r" \[.*\]$", "", m.group(2))
        lib = re.search(r"\[(?:.*/)?([^/\]]+)\]$", m.group(2))
        name = name.split(":", 1)[1] if not name.startswith("???") else name.replace("???:", "")
        name = re.sub(r"__pyx_[fp][wf]?_\d*(?:\w+?_)?\d+SaContext_\d*", "SaContext.", name)
        if name.startswith("0x") and lib:
            name = f"{lib.group(1).split('.so')[0]}:{name}"
        funcs[name] = funcs.get(name, 0) + int(m.group(1).replace(",", ""))
    return funcs


def instructions_per_packet(kind: str, suite: str, backend: str, direction: str, size: str) -> dict[str, float]:
    """{function: instructions per packet} inside the compiled call (callgrind, difference of 6 and 1 passes)."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (Debian: valgrind)")
    runs = []
    with tempfile.TemporaryDirectory(prefix="espresso-callgrind-") as tmp:
        procs = []
        for p in PASSES:
            out = Path(tmp) / f"{kind}.{p}.out"
            cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={TOGGLE[kind]}",
                   f"--callgrind-out-file={out}", sys.executable, "-m", "bench.callgrind", "--child", kind,
                   "--suite", suite, "--backend", backend, "--direction", direction, "--size", size,
                   "--passes", str(p)]
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env), out))
        for proc, out in procs:
            _, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"valgrind failed: {err.decode()[-500:]}")
            runs.append(_functions(out))
    a, b = runs
    n = (PASSES[1] - PASSES[0]) * RING
    return {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="aes128gcm16")
    p.add_argument("--backend", default="ipsecmb")
    p.add_argument("--direction", default="encrypt", choices=("encrypt", "decrypt"))
    p.add_argument("--size", default="64")
    p.add_argument("--child", choices=("core", "ceiling"), help=argparse.SUPPRESS)
    p.add_argument("--passes", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(a.child, a.suite, a.backend, a.direction, a.size, a.passes)
        return 0
    totals = {}
    for kind in ("core", "ceiling"):
        per = instructions_per_packet(kind, a.suite, a.backend, a.direction, a.size)
        totals[kind] = sum(per.values())
        print(f"{'espresso core' if kind == 'core' else 'raw loop'}: {totals[kind]:.0f} instructions/packet "
              f"({a.suite} {a.backend} {a.direction} {a.size} B)")
        for name, v in sorted(per.items(), key=lambda kv: -kv[1]):
            if v >= 3:
                print(f"  {v:8.0f}  {name[:100]}")
    print(f"core / raw loop: {totals['core'] / totals['ceiling']:.2f}x the instructions "
          f"(raw loop / core = {totals['ceiling'] / totals['core']:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
