"""The README's ``python -m esp pcap`` blocks, run literally in a directory that holds the files they name.

A user copies these lines; they must run as written: the single-capture commands, the Wireshark key file
handed to tshark, the many-captures commands on a process pool and on a Dask cluster, and ``pcap send`` (in a
network namespace of the test's own that holds the README's addresses, so nothing leaves the machine).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from esp.pcap import encrypt_file
from esp.pcap.sa_files import load_keyfile
from tests.esp.pcap_builders import ipv4, udp
from tests.esp.test_pcap_tool import make_capture, sa_toml
from tests.support import require, require_module, require_root, require_tool, run_shell_block

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


def _run(block: str, d: Path, timeout: float = 240, netns: str | None = None):
    return run_shell_block(block, d, timeout, netns, HOME=str(d / "home"), XDG_CONFIG_HOME=str(d / "home"))


def test_readme_pcap_blocks_run_as_written(tmp_path: Path) -> None:
    blocks = _blocks()
    assert len(blocks) == 4, blocks
    single, key_file, many, _send = blocks
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


def test_readme_pcap_send_block_runs_as_written(tmp_path: Path) -> None:
    """The ``pcap send`` block: sas.toml's tunnel (192.0.2.1 -> 192.0.2.2, raw ESP) and esp_sa's (ESP in UDP)
    from a namespace where both addresses are local, so every line sends for real and nothing leaves."""
    send = _blocks()[3]
    assert "pcap send" in send and "--daemon" not in send, send
    require_root()
    require(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    _prepare(tmp_path)
    # The recorded pacing of _prepare's plain.pcap is a packet a second; the block's --speed 2 line wants a
    # capture of a lab's pacing: the same packets 1 ms apart.
    pk = [ipv4("10.1.0.1", "10.2.0.2", 17, udp(5000 + i, 53, bytes(i % 40)), ident=i) for i in range(80)]
    from tests.esp.pcap_builders import Rec, ether, pcap_file
    (tmp_path / "plain.pcap").write_bytes(pcap_file([Rec(ether(p), 1_700_000_000, i * 1000)
                                                     for i, p in enumerate(pk)]))
    r0 = _run("python -m esp pcap encrypt plain.pcap esp.pcap --sa sas.toml", tmp_path)
    assert r0.returncode == 0, r0.stderr
    ns = f"esp-readme-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "192.0.2.1/24", "dev", "lo"],
                    ["ip", "addr", "add", "192.0.2.2/24", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        r = _run(send, tmp_path, timeout=120, netns=ns)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert r.returncode == 0, (send, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    sent = re.findall(r"^sent (\d+) ESP packets", r.stderr, re.MULTILINE)
    assert len(sent) == 6, r.stderr
    assert [int(x) for i, x in enumerate(sent) if i != 3] == [800, 80, 400, 300, 80], r.stderr  # 3: --duration
