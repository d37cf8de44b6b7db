"""The README's PKI example, run as written: every command of its shell block, in order, in a fresh directory.

Only the ports are changed (8080 and 8443 may be taken); the command the block starts in the background (``ca serve ... &``)
runs in its own process group, which the test waits for (as a user waits for its "serving" line) and stops.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Certificates the JUNOS way"
README_PORT = "8080"
README_EST_PORT = "8443"
COMMAND_TIMEOUT = 120


def pki_example(after: str = SECTION) -> str:
    """The first ``sh`` block of the README's PKI section (or the first after the text ``after`` in it)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    start = section.index("```sh\n", section.index(after)) + len("```sh\n")
    return section[start:section.index("```", start)]


def shell_commands(block: str) -> list[str]:
    """One string per command: continuation lines joined, comment-only and blank lines left out."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):  # bounded: at most ~30 s on a loaded machine
        assert proc.poll() is None, f"the background command exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


def readme_env() -> dict[str, str]:
    """The environment a user's shell has: ``python`` is this interpreter, the repository importable, and no
    passphrase exported beforehand."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("ESPRESSO_PKI_PASSPHRASE", None)
    return env


def run_commands(commands: list[str], cwd: Path, ports: list[int]) -> list[subprocess.CompletedProcess[str]]:
    """Run README commands one at a time, as a user types them, and return what each foreground one printed.

    A command ending in ``&`` starts in its own process group, its output in ``background-N.log``, and the next
    command runs once something listens on every port of ``ports`` (as a user waits for the "serving" line); at
    the end each is stopped with Ctrl-C and must exit 0. (tests.support.run_shell_block runs a block as one bash
    script and kills what it left behind, so it can neither wait for a port in between nor check a clean stop.)"""
    env = readme_env()
    background: list[subprocess.Popen[bytes]] = []
    results: list[subprocess.CompletedProcess[str]] = []
    try:
        for command in commands:
            if command.endswith("&"):
                log = open(cwd / f"background-{len(background)}.log", "wb")  # noqa: SIM115 - closed below
                proc = subprocess.Popen(["bash", "-c", command[:-1]], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                log.close()
                background.append(proc)
                for port in ports:
                    _wait_for_port(port, proc)
                continue
            r = subprocess.run(["bash", "-c", command], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT)
            assert r.returncode == 0, f"{command}\n-> rc {r.returncode}: {r.stdout}{r.stderr}"
            assert "Traceback" not in r.stderr
            results.append(r)
    finally:
        for proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the user stops it
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
    assert [p.returncode for p in background] == [0] * len(background)
    return results


def test_the_readme_pki_example_runs_as_written(tmp_path):
    block = pki_example()
    assert README_PORT in block and README_EST_PORT in block
    port, est_port = str(_free_port()), str(_free_port())
    commands = shell_commands(re.sub(rf"\b{README_EST_PORT}\b", est_port, re.sub(rf"\b{README_PORT}\b", port, block)))
    assert any(c.endswith("&") for c in commands) and len(commands) >= 6
    verbs = shell_commands(pki_example(after="More of JUNOS's"))  # run next, with the store the first block made
    assert len(verbs) >= 8
    assert sum(c.endswith("&") for c in commands + verbs) == 1
    results = run_commands(commands + verbs, tmp_path, [int(port), int(est_port)])
    env = readme_env()
    outputs = [r.stdout for r in results]
    # the ECDSA router holds a certificate from the CA, enrolled over EST, and the CA lists it
    shown = outputs[len(commands) - 2]  # the output of the first block's last command (one command is "&")
    assert "CN=r1" in shown and "ECDSA" in shown
    # the JUNOS verbs block: the PKCS#12 export loaded into a second store, a group profile per CA
    assert (tmp_path / "r1.p12").stat().st_mode & 0o077 == 0
    assert "Local certificate r1 loaded: CN=r1,O=Corp" in "".join(outputs)
    assert re.search(r"partners-[0-9a-f]{8}: CN=Corp Root CA", "".join(outputs))
    assert "local-certificate lab cleared" in outputs[-1]
    listed = subprocess.run([sys.executable, "-m", "pki", "ca", "--ca", "ca", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert listed.returncode == 0 and re.search(r"valid .*CN=r1,O=Corp", listed.stdout), listed.stdout
