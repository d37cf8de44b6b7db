"""``python -m ike demo``: the README's main job runs end to end without root, and says so when it cannot."""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("esp._core", reason="esp._core is not built")

from ike.demo import add_arguments, run_demo, run_from_args

ROOT = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.slow
def test_demo_in_process(tmp_path: Path) -> None:
    out = io.StringIO()
    argv = ("--packets", "600", "--size", "700", "--path", "loopback", "--workdir", str(tmp_path))
    result = run_demo(_args(*argv), out)
    text = out.getvalue()
    assert result.ok, text
    assert (result.path, result.fallback_reason) == ("loopback", "--path loopback")
    assert "path: in-process data plane on loopback, not the gateway (--path loopback)" in text
    assert [d.name for d in result.directions] == ["gw-a -> gw-b", "gw-b -> gw-a"]
    for d in result.directions:
        assert (d.packets, d.lost, d.altered) == (600, 0, 0) and d.bytes == 600 * 700
    assert result.rekeyed
    # steps in order, SCEP enrollment of both gateways, the SAs as swanctl shows them
    positions = [text.index(f"[{i}/6]") for i in range(1, 7)]
    assert positions == sorted(positions)
    assert "gw-a enrolled over SCEP: CN=gw-a.demo" in text and "gw-b enrolled over SCEP: CN=gw-b.demo" in text
    assert "--- gw-a: list-sas ---\ngw-b: #1, ESTABLISHED, IKEv2" in text
    assert "lan: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128" in text  # #2: rekeyed once
    assert "revocation checked with the CA's CRL (2 download(s)" in text  # both daemons fetched it
    (sa,) = result.sas["gw-b"]
    (child,) = sa["child_sas"]
    assert child["packets_out"] >= 600 and sa["remote_id"] == "gw-a.demo"
    assert "all intact" in text and text.rstrip().endswith("s")
    # everything the demo made is in its work directory: the CA, both stores, both configurations
    assert (tmp_path / "ca").is_dir() and (tmp_path / "gw-a" / "ike.toml").is_file()


def test_demo_reports_a_failed_step(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run_demo(_args("--packets", "10", "--esp-proposal", "aes128gcm99", "--workdir", str(tmp_path)), out)
    assert not result.ok
    assert "aes128gcm99" in result.error
    assert out.getvalue().rstrip().splitlines()[-1].startswith("demo FAILED: ")


def test_demo_argument_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_from_args(_args("--size", "9000")) == 2
    assert "error: --size must be within 64..1400" in capsys.readouterr().err
    assert run_from_args(_args("--timeout", "0")) == 2
    assert "error: --timeout must be > 0 seconds" in capsys.readouterr().err


def test_demo_gives_up_at_its_deadline(tmp_path: Path) -> None:
    """The whole demo is bounded in time: a deadline it cannot meet is a clear failure, not a hang."""
    out = io.StringIO()
    result = run_demo(_args("--packets", "10", "--timeout", "0.2", "--workdir", str(tmp_path)), out)
    assert not result.ok
    assert result.error == "the demo did not finish within 0.2 s (--timeout)"
    assert out.getvalue().rstrip().splitlines()[-1] == "demo FAILED: the demo did not finish within 0.2 s (--timeout)"


def test_demo_refuses_bad_arguments_before_any_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: proposals are checked before the CA and SCEP steps; workdir problems are one-line errors."""
    cases = [
        (("--ike-proposal", "aes128-sha256-modp1024"),
         "error: --ike-proposal: proposal 'aes128-sha256-modp1024': modp1024 is weak and not supported"),
        (("--esp-proposal", "aes128gcm99"), "error: --esp-proposal: proposal 'aes128gcm99': unknown algorithm"),
        (("--workdir", "/proc/version/sub"), "error: --workdir /proc/version/sub: "),
    ]
    for argv, msg in cases:
        work = tmp_path / "w"
        extra = () if "--workdir" in argv else ("--workdir", str(work))
        assert run_from_args(_args(*argv, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith(msg) and err.count("\n") == 1, err
        assert not (work / "ca").exists()
    (tmp_path / "used" / "ca").mkdir(parents=True)
    assert run_from_args(_args("--workdir", str(tmp_path / "used"))) == 2
    assert capsys.readouterr().err == (f"error: --workdir {tmp_path / 'used'}: a previous demo is there (remove it); "
                                       "give a new or empty directory\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert "64..1400" in p.format_help()


@pytest.mark.slow
def test_demo_relative_workdir(tmp_path: Path) -> None:
    """A relative --workdir is made absolute once (it was resolved twice: against the cwd and the TOML's dir)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "ike", "demo", "--packets", "64", "--no-rekey", "--workdir", "rel/demo"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"work directory {tmp_path / 'rel' / 'demo'})" in proc.stdout
    assert (tmp_path / "rel" / "demo" / "gw-a" / "ike.toml").is_file()


@pytest.mark.slow
def test_demo_command_line_without_privileges() -> None:
    """The demo needs no root: when the tests run as root, it runs with every capability dropped."""
    cmd = [sys.executable, "-m", "ike", "demo", "--packets", "200", "--no-rekey"]
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv:
        cmd = [setpriv, "--bounding-set=-all", "--inh-caps=-all", *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo OK" in proc.stdout and "Mbit/s" in proc.stdout
    # without the privileges of the gateway path it says plainly which path the traffic took
    assert "path: in-process data plane on loopback, not the gateway (" in proc.stdout, proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no_offload"])
def test_demo_traffic_goes_through_the_gateways(tmp_path: Path, offload: bool) -> None:
    """As root (the README's demo on a router's lab box) the traffic is TCP between two namespaces through
    both daemons' [gateway]s: the bytes match by hash across the CHILD_SA rekey, and the gateways' own counters
    show that they carried it (with the probed offloads, or none with --no-offload)."""
    from tests.support import require, require_root

    require_root()
    require(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing")
    require(shutil.which("ip") is not None, "iproute2's ip is missing")
    out = io.StringIO()
    argv = ["--path", "gateway", "--megabytes", "16", "--workdir", str(tmp_path)]
    argv += [] if offload else ["--no-offload"]
    result = run_demo(_args(*argv), out)
    text = out.getvalue()
    assert result.ok, text
    assert result.path == "gateway" and result.rekeyed
    assert "lan: #2, reqid 1, INSTALLED, TUNNEL-in-UDP" in text
    for d in result.directions:
        assert (d.bytes, d.lost, d.altered) == (16 << 20, 0, 0) and d.packets >= (16 << 20) // 1438
    assert text.count("SHA-256 match") == 2
    assert set(result.gateway_stats) == {"gw-a", "gw-b"}
    for name, st in result.gateway_stats.items():
        # both transfers' data went out through this gateway's ESP socket and came in through it
        assert st["esp_sent"] >= (16 << 20) // 1438 and st["esp_received"] >= (16 << 20) // 1438, st
        assert st["tun_mtu"] == 1438 and st["too_big"] == 0 and st["fragmented"] == 0
        if offload:
            assert "udp_gso" in st["offloads"] and 0 < st["gso_trains"] < st["gso_datagrams"]
            assert f"{name} gateway: offloads {', '.join(st['offloads'])};" in text
        else:
            assert st["offloads"] == [] and st["gso_trains"] == 0 and st["tun_read"] >= (16 << 20) // 1438
            assert f"{name} gateway: offloads none;" in text
    # the namespaces are gone again
    assert "espdemo-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_demo_path_gateway_refused_without_namespaces(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--path gateway where it cannot run is a one-line failure naming why (auto would fall back)."""
    import ike.demo

    monkeypatch.setattr(ike.demo, "gateway_path_problem", lambda: "not root (test)")
    out = io.StringIO()
    result = run_demo(_args("--path", "gateway", "--workdir", str(tmp_path)), out)
    assert not result.ok and result.error == "--path gateway: not root (test)"
    assert run_from_args(_args("--megabytes", "0")) == 2
