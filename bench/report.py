"""Turning a run into what people read: a terminal table, JSON, Markdown for RESULTS.md, PNG charts.

Every number is a spread over repeats (min/median/max); ratios are medians of per-repeat ratios measured next
to each other (bench.harness). The targets of issues 2 and 6 are evaluated here, from one run, and a target
whose measurement is missing says so instead of passing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Series, Spread

__all__ = [
    "RunResult",
    "Target",
    "evaluate_targets",
    "format_table",
    "plot",
    "to_json",
    "to_markdown",
    "validate_json",
    "write_json",
]

SIZE_ORDER = {"64": 0, "512": 1, "1400": 2, "imix": 3}


@dataclass
class RunResult:
    """Everything one ``python -m bench`` run measured."""

    machine: dict
    config: dict
    core: list = field(default_factory=list)  # bench.esp.CaseResult
    scaling: list = field(default_factory=list)  # bench.esp.ScalingResult
    batch_sweep: list = field(default_factory=list)  # bench.esp.BatchSweepResult
    sections: dict[str, dict] = field(default_factory=dict)  # e2e, control, pcap: data or {"unavailable": why}
    started: str = ""
    seconds: float = 0.0

    def case(self, suite: str, backend: str, size: str, direction: str):
        for c in self.core:
            if (c.suite, c.backend, c.size, c.direction) == (suite, backend, size, direction):
                return c
        return None


@dataclass
class Target:
    """One target from the issues, with the measured value and whether it was met (None: not measured)."""

    name: str
    goal: str
    value: str
    met: bool | None
    note: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "goal": self.goal, "value": self.value, "met": self.met, "note": self.note}


def _fmt_spread(s: Spread | None, unit: str = "", digits: int = 2, pct: bool = False) -> str:
    if s is None:
        return "n/a"
    if pct:
        return f"{s.median * 100:.0f}% ({s.min * 100:.0f}-{s.max * 100:.0f})"
    return f"{s.median:.{digits}f}{unit} ({s.min:.{digits}f}-{s.max:.{digits}f})"


def evaluate_targets(run: RunResult) -> list[Target]:
    """The speed targets of issue 2 and issue 6, from this run's numbers."""
    out: list[Target] = []
    gcm = "aes128gcm16"
    for be in ("openssl", "ipsecmb"):
        for size, goal, what in (("1400", 0.85, "of the ceiling's rate"), ("64", 0.60, "of the ceiling's packet rate")):
            c = run.case(gcm, be, size, "encrypt")
            r = c.ratio_ceiling if c else None
            why = "" if r else (c.espresso.error or c.ceiling.error or "not measured") if c else "not measured"
            out.append(Target(f"{gcm} encrypt {size} B vs {be} raw loop", f">= {goal:.0%} {what}",
                              _fmt_spread(r, pct=True), None if r is None else r.median >= goal, why))
        for size in ("64", "1400"):
            c = run.case(gcm, be, size, "decrypt")
            r = c.decrypt_vs_encrypt if c else None
            note = f"decrypt vs its own raw loop: {_fmt_spread(c.ratio_ceiling, pct=True)}" if c else "not measured"
            out.append(Target(f"{gcm} decrypt {size} B on {be} (anti-replay on)", "within 10% of encrypt (>= 90%)",
                              _fmt_spread(r, pct=True), None if r is None else r.median >= 0.90, note))
        goal = 4 if be == "openssl" else 20
        c = run.case(gcm, be, "64", "encrypt")
        r = c.ratio_python if c else None
        out.append(Target(f"{gcm} encrypt 64 B on {be} vs per-packet Python", f">= {goal}x",
                          _fmt_spread(r, "x", 1), None if r is None else r.median >= goal,
                          "" if r else (c.python.error or c.espresso.error) if c else "not measured"))
        r = c.ratio_scapy if c else None
        out.append(Target(f"{gcm} encrypt 64 B on {be} vs scapy", "reported",
                          _fmt_spread(r, "x", 0) + (f"; scapy {c.scapy.pps.median:.0f} pkt/s" if c and c.scapy.ok else ""),
                          None, ""))
    for sc in run.scaling:
        def second(rows: list) -> Spread | None:
            return rows[1] if len(rows) > 1 else None

        r, cr = second(sc.speedup("espresso")), second(sc.speedup("ceiling"))
        ef, cef = second(sc.efficiency("espresso")), second(sc.efficiency("ceiling"))
        met: bool | None = None if r is None else r.median >= 1.7
        note = sc.error or (f"raw loop on the same machine: {_fmt_spread(cr, 'x')}; CPU efficiency at 2 threads: "
                            f"espresso {_fmt_spread(ef)}, raw loop {_fmt_spread(cef)}")
        if met is False and cr is not None and cr.median < 1.7:
            met = None  # the raw loop could not scale either: the machine had no second core free
            note = "not measurable here: the machine had no free second core (" + note + ")"
        out.append(Target(f"2 threads on 2 SAs, {sc.suite} {sc.size} B {sc.backend}", ">= 1.7x one thread",
                          _fmt_spread(r, "x"), met, note))
    c = run.case(gcm, "ipsecmb", "64", "encrypt")
    v = c.espresso.cpu_mpps if c and c.espresso.cpu_ok else (c.espresso.mpps if c and c.espresso.ok else None)
    wall = f"; wall clock {_fmt_spread(c.espresso.mpps, ' Mpps')}" if c and c.espresso.ok else ""
    out.append(Target(f"{gcm} encrypt 64 B with ipsec-mb, one core (per CPU-second)", ">= 8 Mpps",
                      _fmt_spread(v, " Mpps"), None if v is None else v.median >= 8.0,
                      (wall.lstrip("; ") if v else "not measured")))
    e2e = run.sections.get("e2e", {})
    ratio = e2e.get("ratio_to_plain")
    out.append(Target("end to end vs the same I/O path unencrypted", ">= 80% of its packet rate",
                      f"{ratio['median'] * 100:.0f}%" if ratio else "n/a",
                      None if not ratio else ratio["median"] >= 0.80, e2e.get("unavailable", "")))
    out.append(_pcap_target(run.sections.get("pcap", {})))
    return out


def _pcap_target(pcap: dict) -> Target:
    """Issue 5: decrypt_file, capture file to file, at half the core's decrypt_batch rate on the same packets."""
    r = pcap.get("ratio_to_core")
    note = pcap.get("unavailable", "")
    if r:
        note = (f"{pcap['records']:,} IMIX packets {pcap['suite']}: decrypt_file {pcap['pps'] / 1e6:.2f} Mpps, "
                f"core {pcap['core_pps']['median'] / 1e6:.2f} Mpps; {pcap.get('repeats', '?')} alternated pairs")
    return Target("pcap decrypt_file vs the core's decrypt_batch, same packets (issue 5)", ">= 0.5 of its rate",
                  f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]" if r else "n/a",
                  None if not r else r["median"] >= 0.5, note)


# -- terminal table ----------------------------------------------------------------------------------------

def _cell(s: Series, what: str = "mpps") -> str:
    if not s.ok:
        return "-"
    v = getattr(s, what)
    return f"{v.median:.2f}"


def _eff(r: Spread | None) -> str:
    return f"{r.median:.2f}" if r else "  - "


def _cpu_cell(s: Series) -> str:
    return f"{s.cpu_mpps.median:.2f}" if s.cpu_ok else "-"


def _ratio(r: Spread | None, pct: bool = False, digits: int = 1) -> str:
    if r is None:
        return "-"
    if pct:
        return f"{r.median * 100:.0f}% [{r.min * 100:.0f}-{r.max * 100:.0f}]"
    return f"{r.median:.{digits}f}x"


def format_table(run: RunResult) -> str:
    """The terminal report: core table, scaling, batch sweep, other sections, targets."""
    lines: list[str] = []
    m = run.machine
    lines.append(f"espresso {m.get('espresso')}  |  {m.get('cpu_model')} ({m.get('cores')} cores; "
                 f"{' '.join(m.get('crypto_flags', []))})")
    lines.append(f"libcrypto: {m.get('libcrypto')}  |  cryptography {m.get('cryptography')} "
                 f"({m.get('cryptography_openssl')})  |  ipsec-mb: {m.get('ipsecmb')}  |  Python {m.get('python')}")
    lines.append(f"load average at start: {m.get('loadavg')}; repeats: {run.config.get('repeats')}, "
                 f"sample {run.config.get('sample_s')} s, "
                 f"batch {run.config.get('batch')}; values are medians, [min-max] over repeats")
    lines.append("")
    lines.append("Mpps and Gbit/s: wall clock; 'Mpps/CPU-s': packets per CPU-second of the measuring thread (what one")
    lines.append("core does while other work shares the machine); ratios are per CPU-second, repeat by repeat.")
    hdr = (f"{'suite':<17} {'backend':<8} {'size':>5} {'dir':<4} {'Mpps':>6} {'[min-max]':>13} {'Gbit/s':>7} "
           f"{'Mpps/CPU-s':>10} {'ceil':>6} {'vs ceiling':>16} {'vs Python':>9} {'vs scapy':>8}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    core = sorted(run.core, key=lambda c: (c.suite, c.backend, SIZE_ORDER.get(c.size, 9), c.direction))
    for c in core:
        e = c.espresso
        rng = f"[{e.mpps.min:.2f}-{e.mpps.max:.2f}]" if e.ok else ""
        lines.append(f"{c.suite:<17} {c.backend:<8} {c.size:>5} {c.direction[:3]:<4} {_cell(e):>6} {rng:>13} "
                     f"{_cell(e, 'gbps'):>7} {_cpu_cell(e):>10} {_cpu_cell(c.ceiling):>6} "
                     f"{_ratio(c.ratio_ceiling, pct=True):>16} "
                     f"{_ratio(c.ratio_python):>9} {_ratio(c.ratio_scapy, digits=0):>8}")
    missing = sorted({(c.suite, c.backend, k, getattr(c, k).error) for c in core
                      for k in ("espresso", "ceiling") if getattr(c, k).error})
    if missing:
        lines.append("")
        lines.append("not available:")
        for suite, be, k, why in missing:
            lines.append(f"  {k} {suite} {be}: {why}")
    if run.scaling:
        lines.append("")
        lines.append("scaling (encrypt, one SA per thread; aggregate Mpps, wall-clock speed-up over one thread, and")
        lines.append("CPU efficiency = packets per CPU-second against one thread's: 1.00 means the threads do not slow")
        lines.append("each other, so N free cores give N times the rate):")
        for sc in run.scaling:
            if sc.error:
                lines.append(f"  {sc.suite} {sc.backend} {sc.size}: not available: {sc.error}")
                continue
            sp, csp = sc.speedup("espresso"), sc.speedup("ceiling")
            ef, cef = sc.efficiency("espresso"), sc.efficiency("ceiling")
            for i, n in enumerate(sc.threads):
                ce = sc.ceiling[i]
                lines.append(f"  {sc.suite} {sc.backend:<8} {sc.size:>5} B  {n} thread(s): espresso "
                             f"{_cell(sc.espresso[i]):>6} Mpps {_ratio(sp[i], digits=2):>6} eff {_eff(ef[i])}   "
                             f"raw loop {_cell(ce):>6} Mpps {_ratio(csp[i], digits=2):>6} eff {_eff(cef[i])}")
    if run.batch_sweep:
        lines.append("")
        lines.append("batch size (encrypt Mpps per CPU-second; wall clock in the JSON):")
        for b in run.batch_sweep:
            if b.error:
                lines.append(f"  {b.suite} {b.backend} {b.size}: not available: {b.error}")
                continue
            cells = "  ".join(f"{n}: {_cpu_cell(s) if s.cpu_ok else _cell(s)}" for n, s in zip(b.batches, b.espresso))
            lines.append(f"  {b.suite} {b.backend} {b.size} B   {cells}")
    for name, sec in run.sections.items():
        lines.append("")
        if "unavailable" in sec:
            lines.append(f"{name}: not available: {sec['unavailable']}")
        else:
            lines.append(f"{name}: " + sec.get("summary", json.dumps(sec, default=str)[:300]))
    lines.append("")
    lines.append("targets (issues 2 and 6):")
    for t in evaluate_targets(run):
        mark = {True: "MET ", False: "MISS", None: "  - "}[t.met]
        lines.append(f"  [{mark}] {t.name}: {t.value}  (goal {t.goal})" + (f"  -- {t.note}" if t.note else ""))
    lines.append("")
    lines.append(f"run took {run.seconds:.0f} s")
    return "\n".join(lines)


# -- JSON --------------------------------------------------------------------------------------------------

def to_json(run: RunResult) -> dict[str, Any]:
    return {
        "schema": "espresso-bench/1",
        "started": run.started,
        "seconds": run.seconds,
        "machine": run.machine,
        "config": run.config,
        "core": [c.as_dict() for c in run.core],
        "scaling": [s.as_dict() for s in run.scaling],
        "batch_sweep": [b.as_dict() for b in run.batch_sweep],
        "sections": run.sections,
        "targets": [t.as_dict() for t in evaluate_targets(run)],
    }


def write_json(run: RunResult, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(to_json(run), indent=1, default=str))
    return p


def validate_json(doc: dict) -> list[str]:
    """Problems with a result document's shape (empty when well formed); used by the smoke test."""
    problems = []
    for key in ("schema", "machine", "config", "core", "scaling", "sections", "targets"):
        if key not in doc:
            problems.append(f"missing {key}")
    m = doc.get("machine", {})
    for key in ("cpu_model", "cores", "python", "libcrypto", "cryptography_openssl", "espresso"):
        if key not in m:
            problems.append(f"machine lacks {key}")
    for c in doc.get("core", []):
        for key in ("suite", "backend", "size", "direction", "espresso", "ceiling", "python", "scapy"):
            if key not in c:
                problems.append(f"core case lacks {key}")
        for k in ("espresso", "ceiling", "python", "scapy"):
            s = c.get(k, {})
            if "unavailable" not in s:
                mp = s.get("mpps", {})
                if not (0 < mp.get("min", 0) <= mp.get("median", 0) <= mp.get("max", 0)):
                    problems.append(f"{c.get('suite')} {c.get('size')} {k}: bad spread {mp}")
    for t in doc.get("targets", []):
        if t.get("met") not in (True, False, None):
            problems.append(f"target {t.get('name')}: met is {t.get('met')!r}")
    return problems


# -- Markdown (bench/RESULTS.md) ---------------------------------------------------------------------------

def to_markdown(run: RunResult) -> str:
    m = run.machine
    L = [f"## Run of {run.started} ({run.seconds:.0f} s)", "",
         "| machine | |", "|---|---|",
         (f"| CPU | {m.get('cpu_model')} (family/model {m.get('cpu_family_model')}), {m.get('cores')} vCPUs, "
         f"hypervisor: {m.get('hypervisor')} |"),
         f"| crypto flags | {' '.join(m.get('crypto_flags', []))}; absent: {' '.join(m.get('missing_crypto_flags', []))} |",
         f"| OS | {m.get('os')} |",
         f"| load average at start (1/5/15 min) | {m.get('loadavg')} (other work on the shared machine) |",
         f"| libcrypto (espresso core, raw loops) | {m.get('libcrypto')} |",
         f"| cryptography (Python alternative) | {m.get('cryptography')} with {m.get('cryptography_openssl')} |",
         f"| ipsec-mb | {m.get('ipsecmb')} |",
         f"| Python / numpy | {m.get('python')} / {m.get('numpy')} |",
         f"| espresso | {m.get('espresso')} (git {m.get('git_commit', '?')}) |",
         "", (f"Repeats: {run.config.get('repeats')}, sample {run.config.get('sample_s')} s, batch "
         f"{run.config.get('batch')} packets, ring {run.config.get('ring')} distinct packets. Medians with "
         "[min-max] over repeats; ratios are medians of per-repeat ratios of interleaved samples."), "",
         "### Targets", "", "| target | goal | measured | |", "|---|---|---|---|"]
    for t in evaluate_targets(run):
        mark = {True: "met", False: "**missed**", None: "-"}[t.met]
        L.append(f"| {t.name} | {t.goal} | {t.value} | {mark}{' — ' + t.note if t.note else ''} |")
    L += ["", "### Core: espresso against the raw loop (ceiling) and the alternatives", "",
          ("Mpps and Gbit/s are wall clock; *per CPU-s* is packets per CPU-second of the measuring thread (one core's "
          "work, whatever else shares the machine); ratios are per CPU-second, median [min-max] of per-repeat ratios."),
          "",
          ("| suite | backend | size | dir | espresso Mpps [min-max] | Gbit/s | Mpps per CPU-s | ceiling Mpps per CPU-s "
          "| vs ceiling | vs Python | vs scapy |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(run.core, key=lambda c: (c.suite, c.backend, SIZE_ORDER.get(c.size, 9), c.direction)):
        e = c.espresso
        em = f"{e.mpps.median:.2f} [{e.mpps.min:.2f}-{e.mpps.max:.2f}]" if e.ok else f"n/a ({e.error})"
        L.append(f"| {c.suite} | {c.backend} | {c.size} | {c.direction} | {em} | {_cell(e, 'gbps')} | "
                 f"{_cpu_cell(e)} | {_cpu_cell(c.ceiling)} | {_ratio(c.ratio_ceiling, pct=True)} | {_ratio(c.ratio_python)} | "
                 f"{_ratio(c.ratio_scapy, digits=0)} |")
    py = [c for c in run.core if c.python.ok and c.direction == "encrypt"]
    if py:
        L += ["", "Per-packet Python over `cryptography` (encrypt, Mpps): " + ", ".join(
            sorted({f"{c.suite} {c.size} B {c.python.mpps.median:.3f}" for c in py}))]
    sc = [c for c in run.core if c.scapy.ok]
    if sc:
        L += ["", "scapy `SecurityAssociation` (packets/s): " + ", ".join(
            sorted({f"{c.suite} {c.size} B {c.direction} {c.scapy.pps.median:.0f}" for c in sc}))]
    if run.scaling:
        L += ["", "### Scaling: threads on their own SAs (encrypt)", "",
              ("Speed-up is wall clock; CPU efficiency is packets per CPU-second against one thread's (1.00: the "
              "threads do not slow each other, so N free cores give N times the rate)."), "",
              ("| suite | backend | size | threads | espresso Mpps | speed-up | CPU efficiency | raw loop Mpps | "
              "raw loop speed-up | raw loop CPU efficiency |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
        for s in run.scaling:
            if s.error:
                L.append(f"| {s.suite} | {s.backend} | {s.size} | - | not available: {s.error} | | | | | |")
                continue
            sp, csp = s.speedup("espresso"), s.speedup("ceiling")
            ef, cef = s.efficiency("espresso"), s.efficiency("ceiling")
            for i, n in enumerate(s.threads):
                L.append(f"| {s.suite} | {s.backend} | {s.size} | {n} | {_cell(s.espresso[i])} | "
                         f"{_ratio(sp[i], digits=2)} | {_eff(ef[i])} | {_cell(s.ceiling[i])} | "
                         f"{_ratio(csp[i], digits=2)} | {_eff(cef[i])} |")
    if run.batch_sweep:
        L += ["", "### Batch size (encrypt Mpps per CPU-second)", ""]
        for b in run.batch_sweep:
            if b.error:
                L.append(f"- {b.suite} {b.backend} {b.size} B: not available: {b.error}")
            else:
                L.append(f"- {b.suite} {b.backend} {b.size} B: " +
                         ", ".join(f"{n}: {_cpu_cell(s) if s.cpu_ok else _cell(s)}" for n, s in zip(b.batches, b.espresso)))
    for name, sec in run.sections.items():
        L += ["", f"### {name}", ""]
        L.append(f"not available: {sec['unavailable']}" if "unavailable" in sec else sec.get("summary", ""))
    return "\n".join(L) + "\n"


# -- charts ------------------------------------------------------------------------------------------------

def plot(run: RunResult, directory: str | Path) -> list[Path]:
    """PNG charts: Gbit/s against packet size per suite (encrypt and decrypt), and scaling against threads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    suites = sorted({c.suite for c in run.core})
    fixed = [s for s in ("64", "512", "1400") if any(c.size == s for c in run.core)]
    for suite in suites:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, direction in zip(axes, ("encrypt", "decrypt")):
            cases = [c for c in run.core if c.suite == suite and c.direction == direction]
            lines = {}
            for c in cases:
                for label, s in ((f"espresso/{c.backend}", c.espresso), (f"raw loop/{c.backend}", c.ceiling),
                                 ("Python (cryptography)", c.python)):
                    if s.ok and c.size in fixed:
                        lines.setdefault(label, {})[int(c.size)] = s.cpu_gbps if s.cpu_ok else s.gbps
            for label, pts in sorted(lines.items()):
                xs = sorted(pts)
                style = "--" if label.startswith("raw") else (":" if label.startswith("Python") else "-")
                ax.errorbar(xs, [pts[x].median for x in xs],
                            yerr=[[pts[x].median - pts[x].min for x in xs], [pts[x].max - pts[x].median for x in xs]],
                            linestyle=style, marker="o", capsize=3, label=label)
            ax.set_title(f"{suite} {direction}")
            ax.set_xlabel("inner packet size (bytes)")
            ax.set_xscale("log")
            ax.set_xticks([int(s) for s in fixed])
            ax.set_xticklabels(fixed)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("Gbit/s of inner packets per CPU-second")
        axes[1].legend(fontsize=8)
        fig.suptitle(f"{suite}: throughput against packet size ({run.machine.get('cpu_model')})", fontsize=10)
        fig.tight_layout()
        p = d / f"throughput-{suite}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    ok_scaling = [s for s in run.scaling if not s.error]
    if ok_scaling:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        n = max(max(s.threads) for s in ok_scaling)
        for s in ok_scaling:
            for which, style in (("espresso", "-"), ("ceiling", "--")):
                label = f"{'espresso' if which == 'espresso' else 'raw loop'} {s.backend} {s.size} B"
                sp, ef = s.speedup(which), s.efficiency(which)
                if all(sp):
                    axes[0].plot(s.threads, [v.median for v in sp], style, marker="o", label=label)
                if all(ef):
                    axes[1].plot(s.threads, [v.median * t for v, t in zip(ef, s.threads)], style, marker="o",
                                 label=label)
        for ax, title in ((axes[0], "wall-clock speed-up (depends on free cores)"),
                          (axes[1], "threads x CPU efficiency (speed-up with free cores)")):
            ax.plot(range(1, n + 1), range(1, n + 1), ":", color="grey", label="ideal")
            ax.set_xticks(range(1, n + 1))
            ax.set_xlabel("threads (one SA each), aes128gcm16 encrypt")
            ax.set_title(title, fontsize=9)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("x one thread")
        axes[1].legend(fontsize=7)
        fig.suptitle(f"Scaling with threads ({run.machine.get('cores')} vCPUs, load average at start "
                     f"{(run.machine.get('loadavg') or ['?'])[0]:.1f})" if run.machine.get('loadavg') else
                     "Scaling with threads", fontsize=10)
        fig.tight_layout()
        p = d / "scaling.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written
