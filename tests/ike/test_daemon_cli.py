"""``python -m ike``: two daemon processes on loopback driven through their control sockets by the CLI.

Everything goes through the real entry points (argv, config file, unix socket, signals), as an operator would
use them; every process is bounded by a timeout and killed if it outlives the test.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ike.listing import format_sas
from tests.support import NotifySocket

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _ike(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ike", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


CONF = """
[daemon]
addresses = ["127.0.0.1"]
port = {port}
nat_port = {nat}
control_socket = "{sock}"

[peers.{peer}]
local_addr = "127.0.0.1"
remote_addr = "127.0.0.1"
remote_port = {remote}
remote_nat_port = {remote_nat}
auth = "psk"
psk = "a long enough lab secret"
local_id = "{me}.test"
remote_id = "{peer}.test"
encap = true

[peers.{peer}.children.net]
local_ts = "{local}"
remote_ts = "{remote_ts}"
esp_proposals = "aes128gcm16"
"""


def _conf(**kw: object) -> str:
    """CONF with the peer's NAT-T port: the other daemon's nat_port (the IKE_SA floats there; encap = true)."""
    kw.setdefault("remote_nat", int(kw["remote"]) + 1)  # type: ignore[call-overload]
    return CONF.format(**kw)


def test_check_config(tmp_path: Path) -> None:
    port, nat = _free_ports(2)
    good = tmp_path / "good.toml"
    good.write_text(_conf(port=port, nat=nat, sock=tmp_path / "s", peer="b", remote=port + 1, me="a",
                                local="10.1.0.0/24", remote_ts="10.2.0.0/24"))
    r = _ike("check-config", "--config", str(good))
    assert r.returncode == 0 and "OK; peers: b (1 children)" in r.stdout, r.stderr
    # the ports it binds and floats to (daemon.nat_port, the peer's remote_nat_port), auth, fragmentation
    assert f"  peer b: 127.0.0.1[{port}, NAT-T {nat}] -> 127.0.0.1[{port + 1}, NAT-T {port + 2}]; auth psk, " \
           "remote_auth psk; fragmentation yes (fragments of at most 1280-byte IP datagrams)" in r.stdout.splitlines()
    frag = tmp_path / "frag.toml"
    frag.write_text(good.read_text().replace("encap = true", 'encap = true\nfragmentation = "no"'))
    r = _ike("check-config", "--config", str(frag))
    assert r.returncode == 0 and "remote_auth psk; fragmentation no" in r.stdout, r.stdout + r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('esp_proposals = "aes128gcm16"', 'esp_proposals = "aes128gcm99"'))
    r = _ike("check-config", "--config", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {bad}: peers.b.children.net.esp_proposals[0]: proposal 'aes128gcm99': "
                                "unknown algorithm 'aes128gcm99'")
    r = _ike("daemon", "--config", str(bad))  # refused before binding anything
    assert r.returncode == 2 and "esp_proposals[0]" in r.stderr


def test_key_log_path_that_is_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    """QA: `daemon --key-log <existing file>` crashed with a FileExistsError traceback; check-config missed it."""
    port, nat = _free_ports(2)
    conf = tmp_path / "a.toml"
    conf.write_text(_conf(port=port, nat=nat, sock=tmp_path / "s", peer="b", remote=port + 1, me="a",
                                local="10.1.0.0/24", remote_ts="10.2.0.0/24"))
    afile = tmp_path / "keys.txt"
    afile.write_text("not a directory\n")
    for cmd in ("check-config", "daemon"):
        r = _ike(cmd, "--config", str(conf), "--key-log", str(afile))
        assert r.returncode == 2, (cmd, r.stderr)
        assert r.stderr.strip() == (f"error: {conf}: daemon.key_log: {afile} exists and is not a directory "
                                    "(the key log is a directory for Wireshark's tables)"), r.stderr
        assert not (tmp_path / "s").exists()
    in_toml = tmp_path / "b.toml"
    in_toml.write_text(conf.read_text().replace("[daemon]\n", '[daemon]\nkey_log = "keys.txt"\n'))
    r = _ike("check-config", "--config", str(in_toml))
    assert r.returncode == 2 and "daemon.key_log:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _ike("check-config", "--config", str(conf), "--key-log", str(tmp_path / "new" / "dir"))
    assert r.returncode == 0, r.stderr


def test_client_without_daemon(tmp_path: Path) -> None:
    r = _ike("list-sas", "--socket", str(tmp_path / "nothing.sock"))
    assert r.returncode == 1 and "cannot reach the daemon" in r.stderr


def test_second_daemon_on_the_same_ports_fails_port_in_use(tmp_path: Path) -> None:
    """Without SO_REUSEADDR a second daemon cannot share (and steal half of) the IKE / NAT-T ports."""
    port, nat = _free_ports(2)
    confs = []
    for n in ("one", "two"):
        c = tmp_path / f"{n}.toml"
        c.write_text(_conf(port=port, nat=nat, sock=tmp_path / f"{n}.sock", peer="b", remote=port + 1,
                                 me="a", local="10.1.0.0/24", remote_ts="10.2.0.0/24"))
        confs.append(c)
    notify = NotifySocket()
    first = subprocess.Popen([sys.executable, "-m", "ike", "daemon", "--config", str(confs[0])], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=notify.env())
    try:
        notify.wait_ready(first, TIMEOUT)  # READY=1: configuration loaded, every socket bound
        assert (tmp_path / "one.sock").exists()
        r = _ike("daemon", "--config", str(confs[1]))
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip() in {f"error: cannot start: UDP 127.0.0.1[{p}]: port in use (another IKE daemon?)"
                                    for p in (port, nat)}, r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "two.sock").exists()
        # the NAT-T port alone is refused too
        nat_only = tmp_path / "three.toml"
        nat_only.write_text(_conf(port=_free_ports(1)[0], nat=nat, sock=tmp_path / "three.sock", peer="b",
                                        remote=port + 1, me="a", local="10.1.0.0/24", remote_ts="10.2.0.0/24"))
        r = _ike("daemon", "--config", str(nat_only))
        assert r.returncode == 1 and f"UDP 127.0.0.1[{nat}]: port in use" in r.stderr, r.stderr
        assert first.poll() is None
        # QA (list-sas): a CONNECTING IKE_SA shows our SPI, with the `*` on our side
        sock = str(tmp_path / "one.sock")
        r = _ike("initiate", "--ike", "b", "--timeout", "1", "--socket", sock)  # nobody answers
        assert r.returncode == 1
        head = _ike("list-sas", "--socket", sock).stdout.splitlines()[0]
        assert re.fullmatch(r"b: #1, CONNECTING, IKEv2, [0-9a-f]{16}_i\* 0{16}_r", head), head
        assert not head.startswith("b: #1, CONNECTING, IKEv2, 0000000000000000_i"), head
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait(timeout=5)
        notify.close()


@pytest.mark.slow
def test_two_daemon_processes(tmp_path: Path) -> None:
    pytest.importorskip("esp._core")
    pa, na, pb, nb = _free_ports(4)
    notifies = {"a": NotifySocket(), "b": NotifySocket()}
    socks = {"a": tmp_path / "a.sock", "b": tmp_path / "b.sock"}
    confs = {}
    for me, peer, port, nat, remote, local, rts in (("a", "b", pa, na, pb, "10.1.0.0/24", "10.2.0.0/24"),
                                                     ("b", "a", pb, nb, pa, "10.2.0.0/24", "10.1.0.0/24")):
        confs[me] = tmp_path / f"{me}.toml"
        confs[me].write_text(_conf(port=port, nat=nat, sock=socks[me], peer=peer, remote=remote, me=me,
                                   remote_nat=nb if me == "a" else na, local=local, remote_ts=rts))
    ready = {n: tmp_path / f"{n}.ready" for n in confs}
    procs = {n: subprocess.Popen([sys.executable, "-m", "ike", "daemon", "--config", str(c), "--ready-file",
                                  str(ready[n])], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=notifies[n].env())
             for n, c in confs.items()}
    try:
        for n, p in procs.items():
            notifies[n].wait_ready(p, TIMEOUT)
            # the ready file is there by then, whole, with the status the control socket reports
            st = json.loads(ready[n].read_text())
            assert st["ready"] is True and st["pid"] == p.pid and st["control_socket"] == str(socks[n])
            assert sorted(tuple(a) for a in st["listening"]) == sorted(
                ("127.0.0.1", port) for port in ((pa, na) if n == "a" else (pb, nb)))
        assert oct(socks["a"].stat().st_mode & 0o777) == "0o600"

        r = _ike("status", "--socket", str(socks["a"]))
        assert r.returncode == 0 and r.stdout.startswith("ready, pid "), r.stdout + r.stderr
        assert "listening " + ", ".join(f"127.0.0.1[{x}]" for x in sorted((pa, na))) in r.stdout and "0 IKE_SAs, 0 CHILD_SAs" in r.stdout
        r = _ike("list-conns", "--socket", str(socks["a"]))
        assert r.returncode == 0 and "b: IKEv2, remote 127.0.0.1" in r.stdout, r.stderr
        r = _ike("initiate", "--ike", "b", "--timeout", "10", "--socket", str(socks["a"]))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("initiate completed successfully: IKE_SA b[1] ESTABLISHED, CHILD_SA net ")
        # QA: initiating again (either side) reuses that IKE_SA instead of piling up duplicates
        r = _ike("initiate", "--ike", "b", "--timeout", "10", "--socket", str(socks["a"]))
        assert r.returncode == 0 and "IKE_SA b[1] ESTABLISHED, CHILD_SA net " in r.stdout, r.stderr
        r = _ike("initiate", "--ike", "a", "--timeout", "10", "--socket", str(socks["b"]))
        assert r.returncode == 0 and "IKE_SA a[1] ESTABLISHED, CHILD_SA net " in r.stdout, r.stderr
        for n in ("a", "b"):
            assert len(json.loads(_ike("list-sas", "--raw", "--socket", str(socks[n])).stdout)["ike_sas"]) == 1

        r = _ike("list-sas", "--socket", str(socks["b"]))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("a: #1, ESTABLISHED, IKEv2, ") and lines[0].endswith("_r*")
        assert "  local  'b.test' @ 127.0.0.1" in r.stdout and "  AES_GCM_16-128/PRF_HMAC_SHA2_256/ECP_256" in r.stdout
        assert "  net: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128" in r.stdout
        assert "[NAT]" not in r.stdout.split("net:")[0].split("remote")[0]  # encap forced, no NAT on loopback
        assert "    local  10.2.0.0/24" in r.stdout and "    remote 10.1.0.0/24" in r.stdout
        raw = json.loads(_ike("list-sas", "--raw", "--socket", str(socks["a"])).stdout)
        (sa,) = raw["ike_sas"]
        # encap = true floated the IKE_SA from the IKE ports to the configured, non-default NAT-T ports
        assert (sa["local_port"], sa["remote_port"]) == (na, nb), sa
        old_spi = sa["child_sas"][0]["spi_in"]

        r = _ike("rekey", "--child", "net", "--socket", str(socks["a"]))
        assert r.returncode == 0 and r.stdout.strip() == f"rekey: rekeying CHILD_SA {old_spi}", r.stdout + r.stderr
        for _ in range(100):
            sa = json.loads(_ike("list-sas", "--raw", "--socket", str(socks["a"])).stdout)["ike_sas"][0]
            if [c["spi_in"] for c in sa["child_sas"]] not in ([old_spi], []) and len(sa["child_sas"]) == 1:
                break
            time.sleep(0.05)
        assert [c["spi_in"] for c in sa["child_sas"]] != [old_spi]
        listing = _ike("list-sas", "--socket", str(socks["a"])).stdout
        assert "  net: #2, reqid 1, INSTALLED" in listing, listing  # a new CHILD_SA number, the same reqid
        r = _ike("rekey", "--ike", "b", "--socket", str(socks["a"]))
        assert r.returncode == 0 and re.fullmatch(r"rekey: rekeying IKE_SA b\[1\] [0-9a-f]{16}_i [0-9a-f]{16}_r\n",
                                                  r.stdout), r.stdout + r.stderr

        r = _ike("rekey", "--child", "net", "--ike", "b", "--socket", str(socks["a"]))
        assert r.returncode == 2 and "exactly one of" in r.stderr
        r = _ike("terminate", "--ike", "a", "--socket", str(socks["b"]))  # delete from the responder
        assert r.returncode == 0 and "DELETED" in r.stdout, r.stdout + r.stderr
        for _ in range(100):
            if _ike("list-sas", "--socket", str(socks["a"])).stdout.strip() == "":
                break
            time.sleep(0.05)
        assert _ike("list-sas", "--socket", str(socks["a"])).stdout.strip() == ""

        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for n, p in procs.items():
            out, _ = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, out
            assert not socks[n].exists() and not ready[n].exists()
            assert "STOPPING=1" in notifies[n].wait_for("STOPPING=1", timeout=5)
        assert "IKE_SA a[1] established" in out  # b's log, charon-like
        # QA: each event once (the core no longer logs what the daemon logs from its events)
        for line in out.splitlines():
            if "] IKE_SA " in line or "] CHILD_SA " in line:
                msg = line.split("] ", 1)[1]
                assert sum(1 for x in out.splitlines() if x.endswith("] " + msg)) == 1, out
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        for ns in notifies.values():
            ns.close()


def test_format_sas_layout() -> None:
    sas = [{
        "name": "branch", "ike_id": 3, "state": "ESTABLISHED", "version": 2, "spi_i": "0011223344556677",
        "spi_r": "8899aabbccddeeff", "proposal": "aes256-sha256-modp2048", "initiator": True,
        "local_host": "192.0.2.1", "local_port": 4500, "remote_host": "192.0.2.2", "remote_port": 4500,
        "local_id": "gw1.test", "remote_id": "gw2.test", "auth": "ecdsa", "nat_local": False, "nat_remote": True,
        "established": 12, "rekey_in": 13000,
        "child_sas": [{"name": "lan", "unique_id": 7, "reqid": 2, "state": "INSTALLED", "mode": "TUNNEL", "encap": True, "suite": "aes256-sha256",
                       "esn": True, "spi_in": "c0ffee01", "spi_out": "c0ffee02", "bytes_in": 252, "packets_in": 3,
                       "bytes_out": 504, "packets_out": 6, "dropped_in": 1, "installed": 10, "rekey_in": 3000,
                       "life_in": 3900, "rekey_bytes": 0, "rekey_packets": 0, "local_ts": ["10.1.0.0/16"],
                       "remote_ts": ["10.2.0.0/16", "10.3.0.0/16"], "outbound_active": True}],
    }]
    assert format_sas(sas).splitlines() == [
        "branch: #3, ESTABLISHED, IKEv2, 0011223344556677_i* 8899aabbccddeeff_r",
        "  local  'gw1.test' @ 192.0.2.1[4500]",
        "  remote 'gw2.test' @ 192.0.2.2[4500] [NAT]",
        "  AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
        "  established 12s ago, rekeying in 13000s",
        "  lan: #7, reqid 2, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-256/HMAC_SHA2_256_128/ESN",
        "    installed 10s ago, rekeying in 3000s, expires in 3900s",
        "    in  c0ffee01,        252 bytes,        3 packets, 1 dropped",
        "    out c0ffee02,        504 bytes,        6 packets",
        "    local  10.1.0.0/16",
        "    remote 10.2.0.0/16 10.3.0.0/16",
    ]


def test_ready_file_that_cannot_be_written_is_a_one_line_error(tmp_path: Path) -> None:
    """A supervisor waiting for a ready file that never comes would wait forever: the daemon refuses to run."""
    port, nat = _free_ports(2)
    conf = tmp_path / "a.toml"
    conf.write_text(_conf(port=port, nat=nat, sock=tmp_path / "a.sock", peer="b", remote=port + 1, me="a",
                                local="10.1.0.0/24", remote_ts="10.2.0.0/24"))
    r = _ike("daemon", "--config", str(conf), "--ready-file", str(tmp_path / "missing" / "ready.json"))
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[-1] == f"error: cannot start: ready file {tmp_path / 'missing' / 'ready.json'}: " \
                                        "No such file or directory", r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "a.sock").exists()


def test_sd_notify_abstract_and_unreachable_sockets() -> None:
    """sd_notify(3)'s addresses: '@' names an abstract socket; an absent supervisor is a warning, not a crash."""
    import os as _os

    from ike.ready import sd_notify

    name = f"espresso-test-{_os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        assert sd_notify("@" + name, "READY=1\nSTATUS=x")
        assert s.recv(100) == b"READY=1\nSTATUS=x"
    assert not sd_notify("/nonexistent/notify.sock", "READY=1")
    assert not sd_notify(None, "READY=1")


def test_daemon_log_lines_escape_control_characters_from_peers():
    """The daemon's logging (``python -m ike``'s setup): a peer identity carrying a newline and a terminal escape
    stays on its line, its control characters written as \\xNN; a traceback keeps its own lines."""
    import subprocess
    import sys
    code = ("import logging; from ike.__main__ import _setup_logging; _setup_logging(0)\n"
            "log = logging.getLogger('ike.v1')\n"
            "log.warning('peer identity %s is not the configured one', 'evil.test\\nE [ike] forged\\x1b[2J')\n"
            "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('ours')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = r.stderr.splitlines()
    assert r.returncode == 0 and "forged" in lines[0], r.stderr
    assert lines[0].endswith("peer identity evil.test\\x0aE [ike] forged\\x1b[2J is not the configured one")
    assert not any(line.startswith("E [ike] forged") for line in lines)
    assert "Traceback (most recent call last):" in lines and lines[-1].startswith("ZeroDivisionError")
