"""The IKE daemon's Prometheus endpoint (``[metrics] listen``), as an operator runs and scrapes it.

Two daemon processes on loopback (no root); one of them serves metrics. Evidence, scraped with urllib and
parsed with prometheus_client's parser: the IKE_SA and CHILD_SA gauges after an initiate, the exchanges'
events, the ESP SAs with their SPIs (the ones list-sas shows) and IKE/CHILD_SA names, an IKE datagram for an
unknown SPI counted as a drop, an impostor's failed IKE_AUTH counted, and the configuration's one-line errors.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ike.test_daemon_cli import CONF, ROOT, TIMEOUT, _conf, _free_ports, _ike
from tests.support import require_module


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(samples: dict, name: str, **labels: str) -> float:
    hits = [v for k, v in samples.get(name, {}).items() if set(labels.items()) <= set(k)]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemon_metrics_ike_and_child_sas_events_drops(tmp_path: Path) -> None:
    require_module("prometheus_client")
    pytest.importorskip("esp._core")
    pa, na, pb, nb, pc, nc = _free_ports(6)
    mport = _free_tcp_port()
    socks = {n: tmp_path / f"{n}.sock" for n in "abc"}
    confs = {}
    for me, peer, port, nat, remote, local, rts in (("a", "b", pa, na, pb, "10.1.0.0/24", "10.2.0.0/24"),
                                                     ("b", "a", pb, nb, pa, "10.2.0.0/24", "10.1.0.0/24"),
                                                     ("c", "a", pc, nc, pa, "10.2.0.0/24", "10.1.0.0/24")):
        text = _conf(port=port, nat=nat, sock=socks[me], peer=peer, remote=remote, me=me, local=local,
                     remote_ts=rts, remote_nat={pa: na, pb: nb}[remote])
        if me == "a":
            text += f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n'
        if me == "c":  # an impostor: claims to be b, does not know the key
            text = text.replace('local_id = "c.test"', 'local_id = "b.test"').replace(
                "a long enough lab secret", "another long enough secret")
        confs[me] = tmp_path / f"{me}.toml"
        confs[me].write_text(text)
    procs = {n: subprocess.Popen([sys.executable, "-m", "ike", "daemon", "--config", str(c)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n, c in confs.items()}
    try:
        _wait(lambda: all(s.exists() for s in socks.values())
              or any(p.poll() is not None for p in procs.values()), "the daemons' control sockets")
        assert all(p.poll() is None for p in procs.values()), "a daemon exited early"
        s = scrape(mport)
        assert one(s, "espresso_ike_sas", peer="b", state="ESTABLISHED") == 0
        assert one(s, "espresso_ike_dropped_messages_total", reason="unknown_spi") == 0

        r = _ike("initiate", "--ike", "b", "--timeout", "10", "--socket", str(socks["a"]))
        assert r.returncode == 0, r.stderr
        (sa,) = json.loads(_ike("list-sas", "--raw", "--socket", str(socks["a"])).stdout)["ike_sas"]
        (child,) = sa["child_sas"]
        s = scrape(mport)
        assert one(s, "espresso_ike_sas", peer="b", state="ESTABLISHED") == 1
        assert one(s, "espresso_ike_child_sas", peer="b", child="net", state="INSTALLED") == 1
        assert one(s, "espresso_ike_events_total", event="IkeSaEstablished") == 1
        assert one(s, "espresso_ike_events_total", event="ChildSaEstablished") == 1
        assert one(s, "espresso_ike_datagrams_total", direction="in") >= 2  # IKE_SA_INIT and IKE_AUTH answers
        assert one(s, "espresso_ike_datagrams_total", direction="out") >= 2
        # the CHILD_SA's two ESP SAs, by the SPIs list-sas shows, named by IKE_SA and CHILD_SA
        for spi, direction in ((child["spi_in"], "in"), (child["spi_out"], "out")):
            labels = {"spi": f"0x{spi}", "direction": direction, "ike": "b", "child": "net", "peer": "127.0.0.1"}
            assert one(s, "espresso_sa_info", **labels) == 1
            assert one(s, "espresso_sa_packets_total", **labels) == 0
        assert one(s, "espresso_sas", direction="in") == 1 and one(s, "espresso_sas", direction="out") == 1

        # an IKE message for an IKE_SA that does not exist: counted as a drop, not answered (the non-ESP
        # marker first: sent to the NAT-T port, where IKE carries it)
        hdr = bytes(4) + os.urandom(8) + (0x1234).to_bytes(8, "big") + bytes([0, 0x20, 37, 0x08]) + bytes(4) + \
            (28).to_bytes(4, "big")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(hdr, ("127.0.0.1", na))
        _wait(lambda: one(scrape(mport), "espresso_ike_dropped_messages_total", reason="unknown_spi") == 1,
              "the unknown SPI drop")

        # an impostor with b's identity and a wrong key: IKE_AUTH fails, and it is counted
        r = _ike("initiate", "--ike", "a", "--timeout", "10", "--socket", str(socks["c"]))
        assert r.returncode != 0
        _wait(lambda: one(scrape(mport), "espresso_ike_auth_failures_total") >= 1, "the authentication failure")
        s = scrape(mport)
        assert one(s, "espresso_ike_events_total", event="AuthenticationFailed") >= 1
        assert one(s, "espresso_ike_sas", peer="b", state="ESTABLISHED") == 1  # the real b is still up
        assert one(s, "espresso_ike_metrics_collect_errors_total") == 0
        assert one(s, "espresso_metrics_collect_errors_total") == 0
        assert "espresso_gateway_up" not in s  # no [gateway]: no gateway series

        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        out, _ = procs["a"].communicate(timeout=TIMEOUT)
        assert procs["a"].returncode == 0 and "Traceback" not in out, out
        with pytest.raises(OSError):  # the endpoint went with the daemon
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)


def test_metrics_config_errors_are_one_line(tmp_path: Path) -> None:
    port, nat = _free_ports(2)
    base = _conf(port=port, nat=nat, sock=tmp_path / "s", peer="b", remote=port + 1, me="a",
                       local="10.1.0.0/24", remote_ts="10.2.0.0/24")
    conf = tmp_path / "m.toml"
    for section, err in (
        ('[metrics]\nlisten = "localhost:9745"\n',
         "metrics.listen: 'localhost:9745': 'localhost' is not an IP address (HOST:PORT, e.g. 127.0.0.1:9745)"),
        ('[metrics]\nlisten = "127.0.0.1:99999"\n', "metrics.listen: '127.0.0.1:99999': port must be 1-65535"),
        ("[metrics]\nlisten = 9745\n", "metrics.listen: expected HOST:PORT (e.g. 127.0.0.1:9745), got 9745"),
        ("[metrics]\n", "metrics.listen: is required"),
        ('[metrics]\nlisen = "127.0.0.1:9745"\n', "metrics: unknown key 'lisen' (did you mean 'listen'?)"),
    ):
        conf.write_text(base + "\n" + section)
        r = _ike("check-config", "--config", str(conf))
        assert r.returncode == 2 and r.stderr == f"error: {conf}: {err}\n", r.stderr
    conf.write_text(base + '\n[metrics]\nlisten = "[::1]:9745"\n')
    r = _ike("check-config", "--config", str(conf))
    assert r.returncode == 0 and r.stdout.rstrip().endswith("; metrics at http://[::1]:9745/metrics"), r

    # a port in use, and no prometheus_client: the daemon says so in one line and starts nothing
    require_module("prometheus_client")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        mport = busy.getsockname()[1]
        conf.write_text(base + f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n')
        r = _ike("daemon", "--config", str(conf))
    assert r.returncode == 1, r.stderr
    assert r.stderr == f"error: cannot start: cannot serve metrics on 127.0.0.1:{mport}: Address already in use\n"
    assert not (tmp_path / "s").exists()
    code = ("import sys; sys.modules['prometheus_client'] = None; from ike.__main__ import main; "
            f"sys.exit(main(['daemon', '--config', {str(conf)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 1 and r.stderr == ("error: cannot start: metrics need the prometheus_client library: "
                                              "pip install 'espresso-ipsec[metrics]'\n"), r.stderr
