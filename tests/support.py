"""Helpers shared by the test suite.

Tests that need an independent implementation (strongSwan, tshark, openssl, scapy), root or network
namespaces call :func:`require`. Where the requirement is missing they skip with the reason, except under
``ESPRESSO_REQUIRE_INTEROP=1`` (set by ``.ci/run``), where a missing oracle is a failure: CI must never
pass by skipping the evidence.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
REQUIRE_INTEROP = os.environ.get("ESPRESSO_REQUIRE_INTEROP") == "1"


def require(ok: bool, reason: str) -> None:
    """Skip (or, under ESPRESSO_REQUIRE_INTEROP=1, fail) unless ``ok``."""
    if ok:
        return
    if REQUIRE_INTEROP:
        pytest.fail(f"ESPRESSO_REQUIRE_INTEROP=1 but: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The path of an executable, or skip/fail with a clear reason."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    require(path is not None, f"{name} is not installed (Debian: see .ci/install-system)")
    assert path is not None
    return path


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces, TUN devices)")


def require_module(name: str):
    """Import a Python module or skip/fail with the reason."""
    try:
        return __import__(name, fromlist=["_"])
    except ImportError as exc:  # pragma: no cover - depends on the environment
        require(False, f"Python module {name} is not importable: {exc}")


def patch_pcap(monkeypatch, name: str, value) -> None:
    """Set ``name`` in every esp.pcap module that has it (a kernel hook or a tuning constant is imported by
    name into the modules that use it), for the length of the test."""
    import importlib
    import pkgutil

    import esp.pcap
    found = False
    for info in pkgutil.iter_modules(esp.pcap.__path__):
        mod = importlib.import_module(f"esp.pcap.{info.name}")
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, value)
            found = True
    if not found:
        raise AttributeError(f"no esp.pcap module has {name}")


class NotifySocket:
    """A supervisor's end of systemd's notify protocol: a unix datagram socket whose path goes into a daemon's
    ``$NOTIFY_SOCKET``; :meth:`wait_ready` blocks (bounded) until READY=1 arrives instead of polling for files.
    The path is a filesystem path, so it reaches daemons inside other network namespaces too."""

    def __init__(self) -> None:
        import socket
        import tempfile

        # a short directory of its own: unix socket paths end at 108 bytes, pytest's tmp_path can be longer
        self.dir = Path(tempfile.mkdtemp(prefix="espresso-notify-", dir="/tmp"))
        self.path = self.dir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return {**(os.environ if base is None else base), "NOTIFY_SOCKET": str(self.path)}

    def wait_for(self, state: str, proc=None, timeout: float = 20.0) -> str:
        """The first message carrying ``state`` (e.g. ``READY=1``); AssertionError on timeout or if ``proc``
        (a Popen) exits first."""
        import select
        import time

        deadline = time.monotonic() + timeout
        for m in self.messages:
            if state in m.split("\n"):
                return m
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {state} within {timeout:g}s; got {self.messages}"
            if proc is not None and proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"the daemon exited ({proc.returncode}) before {state}: {out}")
            r, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if r:
                msg = self.sock.recv(4096).decode()
                self.messages.append(msg)
                if state in msg.split("\n"):
                    return msg

    def wait_ready(self, proc=None, timeout: float = 20.0) -> str:
        return self.wait_for("READY=1", proc, timeout)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.dir.rmdir()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_shell_block(block: str, cwd: Path, timeout: float = 240, netns: str | None = None, **env: str):
    """Run a README ``sh`` block with bash -e in ``cwd``, as a user pastes it: ``python`` is this interpreter,
    the repository is importable. Output goes to files, since servers the block leaves in the background hold
    their inherited descriptors after bash exits; its process group is killed at the end. ``netns``: run
    it inside that network namespace."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    full_env = dict(os.environ, PYTHONPATH=str(root),
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env)
    full_env.pop("ESPRESSO_IKE_SOCKET", None)
    with open(cwd / "block.out", "w+") as out, open(cwd / "block.err", "w+") as err:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        proc = subprocess.Popen([*prefix, "bash", "-e", "-c", block], cwd=cwd, env=full_env, text=True, stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(block, proc.returncode, out.read(), err.read())
