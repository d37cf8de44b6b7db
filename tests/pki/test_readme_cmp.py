"""The README's CMPv2 example, run as written (as test_readme.py runs the SCEP one): every command of its shell
block in order, in a fresh directory, with only the port changed; then the results are checked with openssl."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from cryptography import x509

from pki.certs import fingerprint
from tests.pki.test_readme import (
    COMMAND_TIMEOUT,
    _free_port,
    pki_example,
    readme_env,
    run_commands,
    shell_commands,
)
from tests.support import require_tool

SECTION = "### CMPv2"
README_PORT = "8081"

pytestmark = pytest.mark.interop


def test_the_readme_cmp_example_runs_as_written(tmp_path):
    require_tool("openssl")
    block = pki_example(after=SECTION)
    assert README_PORT in block
    port = str(_free_port())
    commands = shell_commands(re.sub(rf"\b{README_PORT}\b", port, block))
    assert sum(c.endswith("&") for c in commands) == 1
    outputs = [r.stdout + r.stderr for r in run_commands(commands, tmp_path, [int(port)])]
    env = readme_env()
    text = "\n".join(outputs)
    assert "Received certificate r2: CN=r2,O=Corp" in text and "Key updated for r2" in text
    assert "Revoked certificate r2" in text and "r3-new.pem: OK" in text
    listed = subprocess.run([sys.executable, "-m", "pki", "ca", "--ca", "branch-ca", "list"], check=False, cwd=tmp_path,
                            env=env,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT).stdout
    assert len(re.findall(r"revoked .*CN=r2,O=Corp", listed)) == 1, listed
    assert len(re.findall(r"valid .*CN=r2,O=Corp", listed)) == 1, listed  # the first one, superseded by kur
    assert len(re.findall(r"valid .*O=Corp,CN=r3|valid .*CN=r3", listed)) == 2, listed
    served = (tmp_path / "background-0.log").read_text()
    assert re.search(r"op=cmp msg=kur tid=\w+ outcome=issued", served) and "branch-s3cret" not in served
    # the router's CA certificate came by genm caCerts, fingerprint printed, before its ir
    ca_fp = fingerprint(x509.load_pem_x509_certificate((tmp_path / "branch-ca" / "ca.pem").read_bytes()), "sha256")
    assert ca_fp in text and "CA certificate for profile branch stored." in text
    assert re.search(r"op=cmp msg=genm tid=\w+ outcome=caCerts", served), served
