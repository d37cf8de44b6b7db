"""The README's IKEv2 daemon block, run literally: two daemons on loopback driven by the swanctl-like verbs.

The block is what an operator copies; it must run as written (no file it does not create, no root).
"""
from __future__ import annotations

import re
from pathlib import Path

from tests.support import run_shell_block

ROOT = Path(__file__).resolve().parents[2]


def test_readme_daemon_block_runs_as_written(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "python -m ike daemon" in b)
    proc = run_shell_block(block, tmp_path, timeout=90)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, (out, err)
    assert "gw.toml: OK; peers: branch (1 children)" in out
    assert re.search(r"initiate completed successfully: IKE_SA branch\[1\] ESTABLISHED, CHILD_SA lan", out), out
    assert re.search(r"lan: #1, reqid 1, INSTALLED, TUNNEL, ESP:AES_GCM_16-128", out), out
    assert "rekey: rekeying CHILD_SA" in out and "terminate: IKE_SA #1 DELETED" in out, out
    assert "Traceback" not in err, err
    assert "a long enough lab secret" not in out + err  # the PSK never reaches a log or a listing
    assert oct((tmp_path / "gw.toml").stat().st_mode & 0o777) == "0o600"
