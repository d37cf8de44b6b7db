"""Many captures at once (issue 15): a local process pool by default, a Dask cluster given a scheduler, each
capture a task, one summary with every file's exit status. The outputs must be the single-file tool's, byte
for byte, whichever engine ran them; a capture that cannot be read fails alone."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from esp.pcap import CaptureError, decrypt_file, encrypt_file
from esp.pcap.many import expand_inputs, run_many
from esp.pcap.sa_files import load_keyfile
from tests.esp.pcap_builders import ipv4, udp
from tests.esp.test_pcap_tool import make_capture, sa_toml
from tests.support import require_module

GCM = sa_toml(spi=0x4001, suite="aes128gcm16", enc_key="0x" + "11" * 20)
LEGACY = sa_toml(spi=0x4002, suite="3des-md5", enc_key="0x" + "22" * 24, integ_key="0x" + "33" * 16,
                 src="192.0.2.3", dst="192.0.2.4", extra='selector = { proto = "udp", dport = "7000" }\n')


def _corpus(tmp_path):
    """Three ESP captures (one with a corrupted packet: exit 1), one damaged file (exit 2), the SA file."""
    sa = tmp_path / "sas.toml"
    sa.write_text(LEGACY + GCM)
    sa.chmod(0o600)
    entries = load_keyfile(sa).entries
    src = tmp_path / "plain"
    src.mkdir()
    caps = tmp_path / "caps"
    caps.mkdir()
    for k in range(3):
        pk = [ipv4("10.1.0.1", "10.2.0.2", 17, udp(5000 + i, 7000 if i % 2 else 6000, bytes((k + i) % 50)), ident=i)
              for i in range(20 + 5 * k)]
        make_capture(src / f"c{k}.pcap", pk)
        s = encrypt_file(src / f"c{k}.pcap", caps / f"c{k}.pcap", entries)
        assert s.exit_code == 0
    data = bytearray((caps / "c1.pcap").read_bytes())
    data[-1] ^= 0xFF  # the last packet's ICV
    (caps / "c1.pcap").write_bytes(bytes(data))
    (caps / "c3.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 7)  # a header cut short
    return sa, entries, caps, src


def _reference(tmp_path, entries, caps):
    ref = tmp_path / "ref"
    ref.mkdir()
    codes = {}
    for p in sorted(caps.iterdir()):
        try:
            codes[p.name] = decrypt_file(p, ref / p.name, entries, progress=False).exit_code
        except CaptureError:
            codes[p.name] = 2
    return ref, codes


def _same_outputs(out, ref, names):
    for n in names:
        assert (out / n).read_bytes() == (ref / n).read_bytes(), n


def test_expand_inputs_takes_files_directories_and_patterns(tmp_path):
    for n in ("a.pcap", "b.pcapng", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.pcap").write_bytes(b"")
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["a.pcap", "b.pcapng"]
    assert [p.name for p in expand_inputs([str(tmp_path / "**" / "*.pcap")])] == ["a.pcap", "c.pcap"]
    assert [p.name for p in expand_inputs([str(tmp_path / "a.pcap"), str(tmp_path / "*.pcap")])] == ["a.pcap"]
    with pytest.raises(ValueError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.nothing")])


def test_local_pool_gives_the_single_file_outputs_and_statuses(tmp_path):
    _, entries, caps, _ = _corpus(tmp_path)
    ref, codes = _reference(tmp_path, entries, caps)
    assert codes == {"c0.pcap": 0, "c1.pcap": 1, "c2.pcap": 0, "c3.pcap": 2}
    res = run_many("decrypt", [str(caps)], tmp_path / "out", entries, jobs=2)
    assert [r.exit_code for r in res.results] == [0, 1, 0, 2] and res.exit_code == 2
    assert "c3.pcap" in res.results[3].input and res.results[3].error
    assert res.results[1].summary["per_sa"]
    _same_outputs(tmp_path / "out", ref, ["c0.pcap", "c1.pcap", "c2.pcap"])
    assert res.totals()["files"] == 4 and res.totals()["failed"] == 1 and res.totals()["with_drops"] == 1


def test_two_inputs_may_not_write_one_output(tmp_path):
    _, entries, caps, src = _corpus(tmp_path)
    with pytest.raises(ValueError, match="would both be written"):
        run_many("decrypt", [str(caps / "c0.pcap"), str(src / "c0.pcap")], tmp_path / "o", entries)
    with pytest.raises(ValueError, match="is an input capture"):
        run_many("decrypt", [str(caps)], caps, entries)


def test_dask_local_cluster_gives_the_same_outputs(tmp_path):
    require_module("distributed")
    from distributed import LocalCluster

    _, entries, caps, src = _corpus(tmp_path)
    ref, _ = _reference(tmp_path, entries, caps)
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        res = run_many("decrypt", [str(caps / "*.pcap")], tmp_path / "dask", entries,
                       scheduler=cluster.scheduler_address)
        assert "Dask" in res.engine
        assert [r.exit_code for r in res.results] == [0, 1, 0, 2]
        _same_outputs(tmp_path / "dask", ref, ["c0.pcap", "c1.pcap", "c2.pcap"])
        # encrypt too: AES-GCM's IV is the sequence number, so outputs are deterministic
        enc = run_many("encrypt", [str(src)], tmp_path / "enc_dask", entries[1:], scheduler=cluster.scheduler_address)
    pool = run_many("encrypt", [str(src)], tmp_path / "enc_pool", entries[1:], jobs=2)
    assert enc.exit_code == pool.exit_code == 0
    for n in ("c0.pcap", "c1.pcap", "c2.pcap"):
        single = tmp_path / f"single_{n}"
        encrypt_file(src / n, single, entries[1:])
        assert (tmp_path / "enc_dask" / n).read_bytes() == (tmp_path / "enc_pool" / n).read_bytes() \
            == single.read_bytes()


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "esp", "pcap", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_many_captures_one_summary_per_file_statuses(tmp_path):
    sa, entries, caps, _ = _corpus(tmp_path)
    ref, _ = _reference(tmp_path, entries, caps)
    res = _cli("decrypt", str(caps / "*.pcap"), str(tmp_path / "out"), "--sa", str(sa), "--jobs", "2", "--json")
    assert res.returncode == 2, res.stderr
    doc = json.loads(res.stdout)
    assert [f["exit_code"] for f in doc["files"]] == [0, 1, 0, 2] and doc["totals"]["files"] == 4
    _same_outputs(tmp_path / "out", ref, ["c0.pcap", "c1.pcap", "c2.pcap"])
    # the shell's own expansion of a glob: several inputs, the last argument the directory
    res = _cli("decrypt", str(caps / "c0.pcap"), str(caps / "c2.pcap"), str(tmp_path / "out2"), "--sa", str(sa))
    assert res.returncode == 0, res.stderr
    assert "2 captures on a local pool" in res.stderr and "exit 0" in res.stderr
    _same_outputs(tmp_path / "out2", ref, ["c0.pcap", "c2.pcap"])


def test_cli_on_a_dask_scheduler(tmp_path):
    """As a user runs it: a scheduler listening on TCP (here in this process, on loopback), the CLI a client."""
    require_module("distributed")
    from distributed import LocalCluster

    sa, entries, caps, _ = _corpus(tmp_path)
    ref, _ = _reference(tmp_path, entries, caps)
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, host="127.0.0.1", protocol="tcp",
                      dashboard_address=None) as cluster:
        res = _cli("decrypt", str(caps), str(tmp_path / "out"), "--sa", str(sa), "--scheduler",
                   cluster.scheduler_address)
    assert res.returncode == 2, res.stderr
    assert "on the Dask cluster at tcp://127.0.0.1" in res.stderr
    _same_outputs(tmp_path / "out", ref, ["c0.pcap", "c1.pcap", "c2.pcap"])
    res = _cli("decrypt", str(caps), str(tmp_path / "out3"), "--sa", str(sa), "--scheduler", "tcp://127.0.0.1:9",
               timeout=120)
    assert res.returncode == 2 and "cannot reach the Dask scheduler" in res.stderr
