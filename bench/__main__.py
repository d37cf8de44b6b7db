"""``python -m bench``: espresso against the ceiling and the alternatives, on this machine, in one run.

    python -m bench --quick                  # under a minute: aes128gcm16 at 64 and 1400 B, both backends
    python -m bench                          # the full run (several minutes)
    python -m bench --plot bench/charts --markdown /tmp/results.md

Writes a table to stdout, JSON to --json (default espresso-bench.json), progress to stderr. Parts that cannot
run here (a backend not built, the IKE daemon not present yet ...) are reported as "not available: <reason>".
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable

from bench.harness import Progress
from bench.report import RunResult, format_table, plot, to_markdown, write_json
from bench.workloads import BATCH_SIZES, DEFAULT_BATCH, SIZES

__all__ = ["main", "parse_args", "run"]

#: The suites a full run measures: every cipher family, each with its most common key size.
DEFAULT_SUITES = ("aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256", "aes256-sha256",
                  "aes128ctr-sha256", "aes128ccm16", "aes128gmac", "null-sha256")
QUICK_SUITES = ("aes128gcm16",)
SECTIONS = ("core", "scaling", "batch", "e2e", "control", "pcap")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run in under a minute")
    p.add_argument("--suites", help="comma-separated ESP suites, or 'all' (default: one per cipher family)")
    p.add_argument("--backends", default="openssl,ipsecmb", help="comma-separated: openssl, ipsecmb")
    p.add_argument("--sizes", help=f"comma-separated workloads from {', '.join(SIZES)} (default: all; quick: 64,1400)")
    p.add_argument("--repeats", type=int, help="interleaved repeats per measurement (default 7; quick 3)")
    p.add_argument("--sample-time", type=float, help="seconds per sample (default 0.1; quick 0.05)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="packets per core call")
    p.add_argument("--threads", type=int, help="scale up to this many threads (default: usable cores, min 2)")
    p.add_argument("--only", help=f"comma-separated sections to run, from {', '.join(SECTIONS)}")
    p.add_argument("--skip", default="", help="comma-separated sections to skip")
    p.add_argument("--no-scapy", action="store_true", help="do not measure scapy (it is slow to import and run)")
    p.add_argument("--json", default="espresso-bench.json", help="where to write the JSON result ('' for none)")
    p.add_argument("--markdown", help="also write the result as Markdown (the body of bench/RESULTS.md)")
    p.add_argument("--plot", metavar="DIR", help="write PNG charts into DIR (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress indicator on stderr")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    return p.parse_args(argv)


def _list(text: str | None, default: tuple[str, ...]) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else list(default)


def run(args: argparse.Namespace) -> RunResult:
    """Measure everything ``args`` asks for; never raises for a missing piece (it is reported instead)."""
    from bench import esp as core
    from bench.machine import describe

    quick = args.quick
    repeats = args.repeats or (3 if quick else 7)
    sample_s = args.sample_time or (0.05 if quick else 0.1)
    if args.suites == "all":
        from esp.suites import SUITES

        suites = sorted(SUITES)
    else:
        suites = _list(args.suites, QUICK_SUITES if quick else DEFAULT_SUITES)
    backends = _list(args.backends, ("openssl", "ipsecmb"))
    sizes = _list(args.sizes, ("64", "1400") if quick else SIZES)
    sections = set(_list(args.only, SECTIONS)) - set(_list(args.skip, ()))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    max_threads = args.threads or max(2, cores)
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    t0 = time.monotonic()
    result = RunResult(machine=describe(), started=started, config={
        "quick": quick, "repeats": repeats, "sample_s": sample_s, "batch": args.batch, "suites": suites,
        "backends": backends, "sizes": sizes, "sections": sorted(sections), "max_threads": max_threads,
        "ring": 1024 if quick else 4096})

    scaling_cases = [("aes128gcm16", be, "64" if quick else s) for be in backends for s in (["1400"] if quick else ["64", "1400"])]
    work: list[tuple[str, Callable[[Progress], None]]] = []
    if "core" in sections:
        for suite in suites:
            for size in sizes:
                def job(pr: Progress, suite=suite, size=size) -> None:
                    result.core.extend(core.run_group(
                        suite, size, backends, quick=quick, repeats=repeats, target_s=sample_s, batch=args.batch,
                        scapy=not args.no_scapy and size == "64" and suite in ("aes128gcm16", "chacha20poly1305",
                                                                               "aes128-sha256"),
                        progress=pr))
                work.append((f"core {suite} {size}", job))
    if "scaling" in sections:
        for suite, be, size in scaling_cases:
            def sjob(pr: Progress, suite=suite, be=be, size=size) -> None:
                result.scaling.append(core.run_scaling(suite, be, size, max_threads, quick=quick, repeats=repeats,
                                                       target_s=max(sample_s * 2, 0.05), batch=args.batch,
                                                       progress=pr))
            work.append((f"scaling {suite} {be} {size}", sjob))
    if "batch" in sections and not quick:
        for be in backends:
            def bjob(pr: Progress, be=be) -> None:
                result.batch_sweep.append(core.run_batch_sweep("aes128gcm16", be, "64", list(BATCH_SIZES),
                                                               quick=quick, repeats=repeats, target_s=sample_s,
                                                               progress=pr))
            work.append((f"batch sweep {be}", bjob))
    for name in ("e2e", "control", "pcap"):
        if name in sections:
            def xjob(pr: Progress, name=name) -> None:
                result.sections[name] = _section(name, quick, repeats, pr)
            work.append((name, xjob))

    progress = Progress(sum(repeats if n.startswith(("core", "scaling", "batch")) else 1 for n, _ in work),
                        enabled=not args.no_progress)
    for label, fn in work:
        try:
            fn(progress)
        except Exception as exc:  # noqa: BLE001 - one broken part must not lose the rest of the run
            result.sections.setdefault("errors", {}).setdefault("summary", "")
            result.sections["errors"]["summary"] += f"{label}: {type(exc).__name__}: {exc}; "
    progress.close()
    result.seconds = time.monotonic() - t0
    return result


def _section(name: str, quick: bool, repeats: int, progress: Progress) -> dict:
    """The end-to-end, control-plane and pcap parts: each module decides whether it can run here."""
    try:
        if name == "e2e":
            from bench import tunnel

            out = tunnel.run(quick=quick, repeats=repeats)
        elif name == "control":
            from bench import ike

            out = ike.run(quick=quick, repeats=repeats)
        else:
            from bench import pcap

            out = pcap.run(quick=quick)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        out = {"unavailable": f"{type(exc).__name__}: {exc}"}
    progress.step(name)
    return out


def _check(args: argparse.Namespace) -> str | None:
    """A wrong name in --suites/--backends/--sizes/--only/--skip: the reason, before anything runs."""
    from esp.suites import SUITES

    known = {
        "--suites": set(SUITES) | {"all"}, "--backends": {"openssl", "ipsecmb"}, "--sizes": set(SIZES),
        "--only": set(SECTIONS), "--skip": set(SECTIONS),
    }
    for opt, allowed in known.items():
        bad = [v for v in _list(getattr(args, opt[2:]), ()) if v not in allowed]
        if bad:
            return f"{opt}: unknown {', '.join(bad)}; choose from {', '.join(sorted(allowed))}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = _check(args)
    if problem:
        print(f"python -m bench: error: {problem}", file=sys.stderr)
        return 2
    result = run(args)
    if not args.quiet:
        print(format_table(result))
    if args.json:
        p = write_json(result, args.json)
        print(f"JSON: {p}", file=sys.stderr)
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).write_text(to_markdown(result))
        print(f"Markdown: {args.markdown}", file=sys.stderr)
    if args.plot:
        try:
            for p in plot(result, args.plot):
                print(f"chart: {p}", file=sys.stderr)
        except ImportError as exc:
            print(f"--plot: not available: {exc} (pip install matplotlib)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
