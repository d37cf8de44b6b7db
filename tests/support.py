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
