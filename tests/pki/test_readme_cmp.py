"""The README's CMPv2 example, run as written (as test_readme.py runs the SCEP one): every command of its shell
block in order, in a fresh directory, with only the port changed; then the results are checked with openssl."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from pki.certs import fingerprint
from tests.pki.test_readme import COMMAND_TIMEOUT, REPO, _free_port, _wait_for_port, shell_commands
from tests.support import require_tool

SECTION = "### CMPv2"
README_PORT = "8081"

pytestmark = pytest.mark.interop


def cmp_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start:section.index("```", start)]


def test_the_readme_cmp_example_runs_as_written(tmp_path):
    require_tool("openssl")
    block = cmp_example()
    assert README_PORT in block
    port = str(_free_port())
    commands = shell_commands(re.sub(rf"\b{README_PORT}\b", port, block))
    assert sum(c.endswith("&") for c in commands) == 1
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("ESPRESSO_PKI_PASSPHRASE", None)
    background: list[subprocess.Popen[bytes]] = []
    outputs: list[str] = []
    try:
        for command in commands:
            if command.endswith("&"):
                log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
                proc = subprocess.Popen(["bash", "-c", command[:-1]], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                log.close()
                background.append(proc)
                _wait_for_port(int(port), proc)
                continue
            r = subprocess.run(["bash", "-c", command], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT)
            assert r.returncode == 0, f"{command}\n-> rc {r.returncode}: {r.stdout}{r.stderr}"
            assert "Traceback" not in r.stderr
            outputs.append(r.stdout + r.stderr)
    finally:
        for proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
    assert [p.returncode for p in background] == [0]
    text = "\n".join(outputs)
    assert "Received certificate r2: CN=r2,O=Corp" in text and "Key updated for r2" in text
    assert "Revoked certificate r2" in text and "r3-new.pem: OK" in text
    listed = subprocess.run([sys.executable, "-m", "pki", "ca", "--ca", "branch-ca", "list"], check=False, cwd=tmp_path,
                            env=env,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT).stdout
    assert len(re.findall(r"revoked .*CN=r2,O=Corp", listed)) == 1, listed
    assert len(re.findall(r"valid .*CN=r2,O=Corp", listed)) == 1, listed  # the first one, superseded by kur
    assert len(re.findall(r"valid .*O=Corp,CN=r3|valid .*CN=r3", listed)) == 2, listed
    served = (tmp_path / "serve.log").read_text()
    assert re.search(r"op=cmp msg=kur tid=\w+ outcome=issued", served) and "branch-s3cret" not in served
    # the router's CA certificate came by genm caCerts, fingerprint printed, before its ir
    ca_fp = fingerprint(x509.load_pem_x509_certificate((tmp_path / "branch-ca" / "ca.pem").read_bytes()), "sha256")
    assert ca_fp in text and "CA certificate for profile branch stored." in text
    assert re.search(r"op=cmp msg=genm tid=\w+ outcome=caCerts", served), served
