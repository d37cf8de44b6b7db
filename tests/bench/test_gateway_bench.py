"""``python -m bench.gateway`` answers --help anywhere and, as root, runs its contenders end to end.

Nothing is timed: the run is tiny and only its shape is checked (every contender measured every workload,
traffic really moved, the summary relates each to veth)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "bench.gateway", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_help_lists_contenders_and_workloads():
    r = _run("--help", timeout=30)
    assert r.returncode == 0, r.stderr
    for word in ("--contenders", "--workloads", "--rounds", "--secs", "veth", "espresso_no_offload",
                 "wireguard_go", "strongswan", "udp64"):
        assert word in r.stdout
    assert _run("--rounds", "0", timeout=30).returncode == 2


def test_tiny_run_measures_every_contender_and_workload(tmp_path):
    require_root()
    require_tool("ip")
    require_tool("iperf3")
    out = tmp_path / "gw.json"
    r = _run("--secs", "1", "--rounds", "1", "--contenders", "veth", "espresso", "espresso_no_offload",
             "--workloads", "tcp1", "udp1400", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    ms = doc["measurements"]
    assert {(m["contender"], m["workload"]) for m in ms} == {
        (c, w) for c in ("veth", "espresso", "espresso_no_offload") for w in ("tcp1", "udp1400")}
    assert all(not m["error"] and m["gbit_s"] > 0 for m in ms), ms
    assert all(m["tunnel_cpu_s"] > 0 for m in ms if m["contender"] != "veth"), ms  # the gateways' processes
    assert {s["ratio_to_veth"] for s in doc["summary"] if s["contender"] == "veth"} == {1.0}
    assert len(doc["machine"]["loadavg_per_round"]) == 2
    assert "| espresso | tcp1 |" in r.stdout
