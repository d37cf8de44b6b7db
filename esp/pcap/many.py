"""Decrypting or encrypting many captures at once: each capture a task, on a local process pool or a Dask cluster.

Users with capture corpora larger than one machine run an engine they already have (``dask.distributed``,
the optional extra ``dask``) rather than one we write: :func:`run_many` hands each capture to
``Client.submit`` when given a scheduler address, else to a :class:`concurrent.futures.ProcessPoolExecutor`.
A task is :func:`decrypt_file` or :func:`encrypt_file` on one file, exactly as the single-file tool runs it, so
the outputs are the same whichever runs them. What a task returns is its summary and exit status; one
:class:`ManySummary` gathers them.

A task carries the SAs themselves (keys included), so the workers need no key files: across machines, use a
scheduler address with TLS (``tls://``) so keys do not cross the network in the clear. Inputs and outputs are
paths, which every worker must see (a shared file system).
"""
from __future__ import annotations

import concurrent.futures
import glob
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["FileResult", "ManySummary", "expand_inputs", "is_many", "run_many"]

#: What a directory given as input contributes: capture files by their usual suffixes.
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".ntar")
_GLOB_CHARS = frozenset("*?[")


@dataclass
class FileResult:
    """One capture's outcome: its summary (as :meth:`Summary.as_dict`) or the error that stopped it."""

    input: str
    output: str | None
    exit_code: int
    summary: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        if self.error is not None:
            return f"  exit {self.exit_code}  {self.input}: {self.error}"
        s = self.summary or {}
        return (f"  exit {self.exit_code}  {self.input} -> {self.output or '-'}: {s.get('records', 0)} records, "
                f"{s.get('processed', 0)} through SAs, {s.get('written', 0)} written ({self.seconds:.2f} s)")


@dataclass
class ManySummary:
    """Every capture's outcome, in input order. The exit status is the worst of the files' (0 < 1 < 2)."""

    command: str
    engine: str
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return max((r.exit_code for r in self.results), default=0)

    def totals(self) -> dict[str, int]:
        out = {"files": len(self.results), "failed": sum(r.exit_code == 2 for r in self.results),
               "with_drops": sum(r.exit_code == 1 for r in self.results)}
        for key in ("records", "processed", "written"):
            out[key] = sum(int((r.summary or {}).get(key, 0)) for r in self.results)
        return out

    def format(self) -> str:
        t = self.totals()
        head = (f"{self.command} {t['files']} captures on {self.engine}: {t['records']} records, "
                f"{t['processed']} through SAs, {t['written']} written; {t['failed']} could not run, "
                f"{t['with_drops']} with drops ({self.seconds:.2f} s)")
        return "\n".join([head] + [r.line() for r in self.results])

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "engine": self.engine, "exit_code": self.exit_code,
                "seconds": self.seconds, "totals": self.totals(),
                "files": [{"input": r.input, "output": r.output, "exit_code": r.exit_code, "error": r.error,
                           "seconds": r.seconds, "summary": r.summary} for r in self.results]}


def is_many(inputs: Sequence[str]) -> bool:
    """Several inputs, a directory, or a pattern that is not itself an existing file."""
    if len(inputs) != 1:
        return True
    p = inputs[0]
    return os.path.isdir(p) or (not os.path.exists(p) and bool(_GLOB_CHARS & set(p)))


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """The captures named: files as given, directories' capture files, patterns' matches (``**`` included),
    each once, in the order given (a directory's and a pattern's sorted). ValueError if one names nothing."""
    out: list[Path] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(p for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in CAPTURE_SUFFIXES)
            if not found:
                raise ValueError(f"{spec}: no capture files ({', '.join(CAPTURE_SUFFIXES)}) in this directory")
        elif os.path.exists(spec):
            found = [Path(spec)]
        elif _GLOB_CHARS & set(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise ValueError(f"{spec}: no file matches this pattern")
        else:
            raise ValueError(f"{spec}: no such file or directory")
        out += found
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]  # type: ignore[func-returns-value]


def plan_outputs(inputs: Sequence[Path], out_dir: str | os.PathLike[str] | None) -> list[Path | None]:
    """Each input's output, ``out_dir``/its file name; refused when two inputs would write one file or an output
    would overwrite an input."""
    if out_dir is None:
        return [None] * len(inputs)
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise ValueError(f"{d}: with several captures the output is a directory, and this is a file")
    outs = [d / p.name for p in inputs]
    names: dict[str, Path] = {}
    for i, o in zip(inputs, outs):
        if o.name in names:
            raise ValueError(f"{names[o.name]} and {i} would both be written to {o}")
        names[o.name] = i
    ins = {p.resolve() for p in inputs}
    for o in outs:
        if o.resolve() in ins:
            raise ValueError(f"{o} is an input capture; write the outputs to another directory")
    return list(outs)


def _one(command: str, in_path: str, out_path: str | None, entries: list, kwargs: dict[str, Any]) -> FileResult:
    """One capture through the single-file tool; what went wrong is the result's error, never an exception."""
    from esp.errors import EspError
    from esp.pcap.decrypt import decrypt_file
    from esp.pcap.encrypt import encrypt_file

    t0 = time.monotonic()
    run = decrypt_file if command == "decrypt" else encrypt_file
    try:
        s = run(in_path, out_path, entries, progress=False, **kwargs)
    except (EspError, ValueError, OSError) as exc:
        return FileResult(in_path, out_path, 2, error=str(exc), seconds=time.monotonic() - t0)
    if s.capture_error and not s.records:
        return FileResult(in_path, out_path, 2, error=s.capture_error, seconds=time.monotonic() - t0)
    return FileResult(in_path, out_path, s.exit_code, summary=s.as_dict(), seconds=time.monotonic() - t0)


def run_many(command: str, inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None,
             entries: Sequence[Any], *, jobs: int | None = None, scheduler: str | None = None,
             **kwargs: Any) -> ManySummary:
    """``command`` ("decrypt" or "encrypt") over every capture of ``inputs`` (files, directories, patterns),
    outputs into ``out_dir`` (None: count only, decrypt). ``scheduler``: a Dask scheduler's address (or a
    ``distributed.Client``) to run the tasks on; otherwise a process pool of ``jobs`` processes (default: one
    per CPU). ``kwargs`` go to :func:`decrypt_file`/:func:`encrypt_file` as for one file."""
    if command not in ("decrypt", "encrypt"):
        raise ValueError(f"unknown command {command!r}")
    files = expand_inputs(os.fspath(p) for p in inputs)
    outs = plan_outputs(files, out_dir)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ents = list(entries)
    args = [(command, str(f), str(o) if o is not None else None, ents, kwargs) for f, o in zip(files, outs)]
    t0 = time.monotonic()
    if scheduler is not None:
        results, engine = _on_dask(scheduler, args)
    else:
        workers = max(1, min(jobs or os.cpu_count() or 1, len(args)))
        results, engine = _on_pool(workers, args), f"a local pool of {workers} processes"
    return ManySummary(command, engine, results, time.monotonic() - t0)


def _on_pool(workers: int, args: list[tuple]) -> list[FileResult]:
    if workers == 1:
        return [_one(*a) for a in args]
    # spawn: each worker a fresh interpreter (the caller may hold threads and mappings a fork would copy)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futs = [pool.submit(_one, *a) for a in args]
        out = []
        for a, f in zip(args, futs):
            try:
                out.append(f.result())
            except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory): that file failed, not the run
                out.append(FileResult(a[1], a[2], 2, error=f"worker failed: {exc!r}"))
        return out


def _on_dask(scheduler: Any, args: list[tuple]) -> tuple[list[FileResult], str]:
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--scheduler needs dask.distributed: pip install 'espresso[dask]'") from None
    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout="10s") if own else scheduler
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        addr = client.scheduler.address
        futs = [client.submit(_one, *a, pure=False, key=f"espresso-{a[0]}-{i}-{os.getpid()}-{time.time_ns()}")
                for i, a in enumerate(args)]
        out = []
        for a, f in zip(args, futs):
            try:
                out.append(f.result())
            except Exception as exc:  # noqa: BLE001 - the task was lost (worker died) or could not be unpickled there
                out.append(FileResult(a[1], a[2], 2, error=f"task failed on the cluster: {exc!r}"))
        return out, f"the Dask cluster at {addr}"
    finally:
        if own:
            client.close()
