"""The README's ``python -m esp pcap`` blocks, run literally in a directory that holds the files they name.

A user copies these lines; they must run as written: the single-capture commands, the Wireshark key file
handed to tshark, and the many-captures commands on a process pool and on a Dask cluster.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from esp.pcap import encrypt_file
from esp.pcap.sa_files import load_keyfile
from tests.esp.pcap_builders import ipv4, udp
from tests.esp.test_pcap_tool import make_capture, sa_toml
from tests.support import require_module, require_tool

ROOT = Path(__file__).resolve().parents[2]


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "python -m esp pcap" in b]


def _prepare(d: Path) -> None:
    """plain.pcap and sas.toml (the encrypt side), in.pcapng and esp_sa (Wireshark's table) for decrypt,
    captures/ with three ESP captures."""
    sas = d / "sas.toml"
    sas.write_text(sa_toml(spi=0x1001, suite="aes128gcm16", enc_key="0x" + "11" * 20))
    sas.chmod(0o600)
    entries = load_keyfile(sas).entries
    pk = [ipv4("10.1.0.1", "10.2.0.2", 17, udp(5000 + i, 53, bytes(i % 40)), ident=i) for i in range(80)]
    make_capture(d / "plain.pcap", pk)
    plain_ng = d / "plain.pcapng"
    make_capture(plain_ng, pk, kind="pcapng-le")
    r = subprocess.run([sys.executable, "-m", "esp", "pcap", "encrypt", str(plain_ng), str(d / "in.pcapng"),
                        "--sa", str(sas), "--write-esp-sa", str(d / "esp_sa")], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    assert r.returncode == 0, r.stderr
    (d / "captures").mkdir()
    for k in range(3):
        s = encrypt_file(d / "plain.pcap", d / "captures" / f"c{k}.pcap", entries, first_seq=1 + 1000 * k)
        assert s.exit_code == 0, s.format()


def _run(block: str, d: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``block`` with bash; output goes to files, since servers it leaves in the background (dask) hold
    their inherited descriptors open after bash exits."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(d / "home"), XDG_CONFIG_HOME=str(d / "home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with open(d / "block.out", "w+") as out, open(d / "block.err", "w+") as err:
        proc = subprocess.Popen(["bash", "-e", "-c", block], cwd=d, env=env, text=True, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # background servers the block started (dask)
            except ProcessLookupError:
                pass
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(block, proc.returncode, out.read(), err.read())


def test_readme_pcap_blocks_run_as_written(tmp_path: Path) -> None:
    blocks = _blocks()
    assert len(blocks) == 3, blocks
    single, key_file, many = blocks
    require_tool("tshark")
    require_module("distributed")
    _prepare(tmp_path)

    r = _run(single, tmp_path)
    assert r.returncode == 0, (single, r.stdout, r.stderr)
    assert (tmp_path / "out.pcap").stat().st_size > 24 and (tmp_path / "esp.pcap").stat().st_size > 24
    assert "Traceback" not in r.stderr

    r = _run(key_file, tmp_path)
    assert r.returncode == 0, (key_file, r.stdout, r.stderr)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 80 and all("10.1.0.1 → 10.2.0.2" in ln for ln in lines), r.stdout  # the inner packets
    assert (tmp_path / "esp_sa").stat().st_mode & 0o777 == 0o600

    r = _run(many, tmp_path)
    assert r.returncode == 0, (many, r.stdout, r.stderr)
    assert sorted(p.name for p in (tmp_path / "decrypted").iterdir()) == ["c0.pcap", "c1.pcap", "c2.pcap"]
    summaries = [ln for ln in r.stderr.splitlines() if ln.startswith("decrypt 3 captures on ")]
    assert len(summaries) == 2 and "dask" in summaries[1].lower(), r.stderr  # the pool, then the cluster
    assert r.stderr.count("exit 0  captures/c1.pcap -> decrypted/c1.pcap: 80 records") == 2, r.stderr
