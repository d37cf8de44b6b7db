"""A ``python -m pki ca serve`` child process and raw HTTP over sockets, for the tests that treat the CA
service as deployed (its own process, hostile clients on loopback)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A client socket from ``source`` (any 127/8 address is local on Linux: a second client address)."""
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def exchange(port: int, raw: bytes, source: str = "127.0.0.1", timeout: float = 5.0, half_close: bool = True) -> bytes:
    """Send ``raw``, half-close (unless told not to), read the whole answer (bounded by ``timeout``)."""
    with connect(port, source, timeout) as s:
        try:
            s.sendall(raw)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # the server may answer and close before it read everything
            pass
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
        return data


def status(answer: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(m.group(1)) if m else 0


class Served:
    """A ``ca serve`` child process; its stderr and log file are files, so nothing blocks on a full pipe."""

    def __init__(self, tmp: Path, ca_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = tmp / "access.log"
        self.err_file = tmp / "serve.stderr"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("ESPRESSO_PKI_PASSPHRASE", None)
        self._err = open(self.err_file, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pki", "ca", "--ca", str(ca_dir), "serve", "--port", str(self.port),
             "--log-file", str(self.log_file), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=self._err)
        for _ in range(150):  # bounded: at most ~15 s
            if self.proc.poll() is not None:
                break
            try:
                if status(exchange(self.port, b"GET /crl HTTP/1.0\r\n\r\n", timeout=2)) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"ca serve did not start: {self.stderr()}")

    def stderr(self) -> str:
        return self.err_file.read_text(errors="replace")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str] | None:
        return wait_log(self.log, pattern, timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._err.close()


def wait_log(read: Callable[[], str], pattern: str, timeout: float = 10.0) -> re.Match[str] | None:
    """The first match of ``pattern`` in an access log: a line is written once the answer went out, so a client
    may see the answer first (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, read())
        if m or time.monotonic() > deadline:
            return m
        time.sleep(0.05)
