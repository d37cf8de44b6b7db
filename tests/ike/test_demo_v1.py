"""``python -m ike demo --ikev1``: the same end-to-end demo over IKEv1, in process and as the README writes it."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("esp._core", reason="esp._core is not built")

from ike.demo import run_demo, run_from_args
from tests.ike.test_demo import ROOT, _args


@pytest.mark.slow
def test_demo_over_ikev1_in_process(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run_demo(_args("--ikev1", "--packets", "400", "--size", "600", "--path", "loopback",
                            "--workdir", str(tmp_path)), out)
    text = out.getvalue()
    assert result.ok, text
    assert text.startswith("espresso demo: CA + SCEP + IKEv1 + ESP")
    for d in result.directions:
        assert (d.packets, d.lost, d.altered) == (400, 0, 0) and d.bytes == 400 * 600
    assert result.rekeyed and "CHILD_SA rekey halfway" in text  # a new quick mode under traffic, nothing lost
    assert "IKEv1 SA aes128-sha256-modp2048, pre-shared key (IKEv1 main mode)" in text
    assert re.search(r"--- gw-a: list-sas ---\ngw-b: #1, ESTABLISHED, IKEv1, [0-9a-f]{16}_i\* [0-9a-f]{16}_r\n", text)
    assert re.search(r"lan: #\d+, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-128/HMAC_SHA2_256_128", text)
    (sa,) = result.sas["gw-b"]
    assert sa["version"] == 1 and sa["rekey_in"] is None and sa["remote_id"] == "gw-a.demo"
    # the generated configuration carries the run's PSK: owner-only, and the PSK is in no output
    toml = (tmp_path / "gw-a" / "ike.toml")
    assert oct(toml.stat().st_mode & 0o777) == "0o600" and "version = 1" in toml.read_text()
    psk = re.search(r'psk = "([0-9a-f]+)"', toml.read_text()).group(1)  # type: ignore[union-attr]
    assert psk not in text


def test_ikev1_proposals_are_checked_before_any_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "w"
    assert run_from_args(_args("--ikev1", "--esp-proposal", "chacha20poly1305", "--workdir", str(work))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --esp-proposal: 'chacha20poly1305': IKEv1 supports aes128") and err.count("\n") == 1
    assert not (work / "ca").exists()


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    return next(b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "demo --ikev1" in b)


@pytest.mark.slow
def test_readme_ikev1_demo_runs_as_written() -> None:
    """The README's line, literally (without root, as a reader on a laptop runs it: the loopback path)."""
    block = _readme_block()
    assert block.strip() == "python -m ike demo --ikev1"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = ["bash", "-e", "-c", block]
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv:
        cmd = [setpriv, "--bounding-set=-all", "--inh-caps=-all", *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IKEv1" in proc.stdout and "demo OK" in proc.stdout and "all intact" in proc.stdout, proc.stdout
