"""The protocol core stays sans-I/O: no esp import, no sockets, no clock, no randomness of its own."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

IKE = Path(__file__).resolve().parents[2] / "ike"
#: modules allowed to do I/O or import esp (the daemon side, owned by the adapter)
EDGE = {"capture.py", "daemon.py", "kernel.py", "ready.py", "demo.py", "aio.py", "__main__.py", "config.py", "keylog.py", "control.py", "gateway.py",
        "metrics.py"}
#: packages on the daemon side as a whole (the configuration loader reads files)
EDGE_PACKAGES = {"config"}
CORE = sorted(p for p in IKE.rglob("*.py")
              if p.name not in EDGE and not EDGE_PACKAGES & set(p.relative_to(IKE).parts[:-1]))
FORBIDDEN_MODULES = {"esp", "socket", "asyncio", "select", "selectors", "time", "random", "secrets", "subprocess"}


@pytest.mark.parametrize("path", CORE, ids=[str(p.relative_to(IKE)) for p in CORE])
def test_core_module_is_sans_io(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN_MODULES, f"{path.name} imports {name}"
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in ("datetime", "time", "os")
                and node.attr in ("now", "utcnow", "urandom", "monotonic", "time", "getrandom")):
            # the one allowed place: core_config's defaults for the wall clock and the random source
            assert path.name == "core_config.py", f"{path.name} reads a clock or entropy ({node.attr})"


def test_os_urandom_only_as_an_injectable_default():
    for path in CORE:
        text = path.read_text()
        if "urandom" in text:
            assert path.name == "core_config.py", path
