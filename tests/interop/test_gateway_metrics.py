"""Prometheus metrics of ``python -m esp gateway --metrics`` as an operator scrapes them.

Two gateways with static SAs in their own namespaces (the topology of tests/interop/test_gateway.py), each
serving metrics on its namespace's loopback; the scrapes run inside the namespace with urllib, the text is
parsed with prometheus_client's parser. Evidence: the pings counted per SA (both SPIs, both directions, with
their peer and policy labels), the verdicts per direction, the I/O and offload counters after a TCP transfer,
scrapes in a loop while the transfer runs (none fails, the transfer's hash matches), and a forged ESP packet
and an unknown SPI counted as AUTH_FAILED and NO_SA; with two queues, each queue's samples (packets, bytes,
segmentation, drops by verdict) add up to the totals and the forged packets show up on the queues that got
them.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.interop.test_gateway import (ROOT, UDP_FLOWS_SENDER, UDP_RECEIVER, GatewayProcess, bulk_transfer, ping,
                                        sh, static_configs, unique)
from tests.interop.test_gateway import topo  # noqa: F401  (the four-namespace fixture)
from tests.support import require_module, require_root, require_tool

pytestmark = pytest.mark.interop

PORT = 9745
SCRAPE = textwrap.dedent("""
    import sys, time, urllib.request
    url, loops, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    deadline, n, text = time.monotonic() + seconds, 0, ""
    while n < loops and (n == 0 or time.monotonic() < deadline):
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        n += 1
    sys.stdout.write(f"{n}\\n" + text)
""")
FORGE = textwrap.dedent("""
    import os, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for spi in (int(sys.argv[2], 0), 0xDEAD):  # known SPI, fresh seq, forged ICV; unknown SPI
        s.sendto(spi.to_bytes(4, "big") + (1 << 31).to_bytes(4, "big") + os.urandom(80), (sys.argv[1], 4500))
""")
# forged packets for a known SPI from many source ports: the kernel spreads 4-tuples over the reuseport sockets
FORGE_SPREAD = textwrap.dedent("""
    import os, socket, sys
    for k in range(int(sys.argv[3])):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(int(sys.argv[2], 0).to_bytes(4, "big") + ((1 << 31) + k).to_bytes(4, "big") + os.urandom(80),
                     (sys.argv[1], 4500))
""")


def scrape(ns: str, loops: int = 1, seconds: float = 0.0) -> tuple[int, dict]:
    """Scrape the gateway in ``ns`` (``loops`` times, for at most ``seconds``); (scrapes done, samples)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = sh(sys.executable, "-c", SCRAPE, f"http://127.0.0.1:{PORT}/metrics", str(loops), str(seconds), ns=ns,
           timeout=seconds + 30)
    count, text = r.stdout.split("\n", 1)
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return int(count), out


def one(samples: dict, name: str, **labels: str) -> float:
    hits = [v for k, v in samples.get(name, {}).items() if set(labels.items()) <= set(k)]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


def per_queue(samples: dict, name: str, **labels: str) -> dict[str, float]:
    """{queue: value} of the series of ``name`` whose labels include ``labels``, one per queue."""
    out: dict[str, float] = {}
    for k, v in samples.get(name, {}).items():
        if set(labels.items()) <= set(k):
            q = dict(k)["queue"]
            assert q not in out, (name, labels, samples.get(name))
            out[q] = v
    assert out, (name, labels)
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum over the gateway's queues (one per CPU unless configured)."""
    return sum(per_queue(samples, name, **labels).values())


def test_gateway_metrics_count_the_traffic_per_sa_queue_and_verdict(topo, tmp_path):  # noqa: F811
    require_module("prometheus_client")
    cfg_a, cfg_b = static_configs()  # SPI 0xa0001 carries A -> B, 0xb0001 B -> A
    args = ("--metrics", f"127.0.0.1:{PORT}")
    gw_a = GatewayProcess(topo.gw_a, cfg_a, tmp_path, "a", args)
    try:
        gw_b = GatewayProcess(topo.gw_b, cfg_b, tmp_path, "b", args)
        try:
            p = ping(topo.host_a, "10.98.2.2", count=5)
            assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
            _, sa = scrape(topo.gw_a)
            _, sb = scrape(topo.gw_b)
            ab = {"spi": "0x000a0001", "policy": "site"}
            ba = {"spi": "0x000b0001", "policy": "site"}
            # five echo requests out of A and into B on one SPI, five replies on the other
            assert one(sa, "espresso_sa_packets_total", direction="out", peer="10.97.0.2", **ab) == 5
            assert one(sb, "espresso_sa_packets_total", direction="in", peer="10.97.0.1", **ab) == 5
            assert one(sb, "espresso_sa_packets_total", direction="out", peer="10.97.0.1", **ba) == 5
            assert one(sa, "espresso_sa_packets_total", direction="in", peer="10.97.0.2", **ba) == 5
            assert one(sa, "espresso_sa_bytes_total", direction="out", **ab) == 5 * 84  # 20 IP + 8 ICMP + 56
            assert one(sa, "espresso_esp_packets_total", direction="out", verdict="OK") == 5
            assert one(sb, "espresso_esp_packets_total", direction="in", verdict="OK") == 5
            assert total(sa, "espresso_gateway_esp_sent_packets_total", direction="tx") == 5
            assert total(sb, "espresso_gateway_esp_received_packets_total", direction="rx") == 5
            assert one(sa, "espresso_gateway_up") == 1
            assert one(sa, "espresso_sa_info", direction="out", suite="aes128gcm16", encap="udp", **ab) == 1

            # a TCP transfer with scrapes in a loop beside it: the transfer is whole, no scrape fails
            scraper = subprocess.Popen(["ip", "netns", "exec", topo.gw_b, sys.executable, "-c", SCRAPE,
                                        f"http://127.0.0.1:{PORT}/metrics", "500", "20"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                sent, got, _ = bulk_transfer(topo, 8 << 20)
            finally:
                out, err = scraper.communicate(timeout=60)
            assert scraper.returncode == 0 and int(out.split("\n", 1)[0]) >= 2, err[-2000:]
            assert sent == got and got.startswith(str(8 << 20)), (sent, got)
            _, sa = scrape(topo.gw_a)
            _, sb = scrape(topo.gw_b)
            assert one(sa, "espresso_sa_bytes_total", direction="out", **ab) > 8 << 20
            assert total(sa, "espresso_gateway_tun_read_bytes_total") > 8 << 20
            assert total(sb, "espresso_gateway_esp_received_bytes_total") > 8 << 20
            # segmentation and coalescing ratios: super-packets cut on A, segments coalesced on B
            supers = total(sa, "espresso_gateway_tso_super_packets_total")
            assert 0 < supers < total(sa, "espresso_gateway_tso_segments_total")
            assert one(sa, "espresso_gateway_offload_enabled", offload="tun_tso4") == 1
            if one(sa, "espresso_gateway_offload_enabled", offload="udp_gso") == 1:
                assert total(sa, "espresso_gateway_udp_gso_datagrams_total") > \
                    total(sa, "espresso_gateway_udp_gso_trains_total") > 0
            assert total(sb, "espresso_gateway_tun_written_packets_total") < \
                total(sb, "espresso_gateway_tun_gro_packets_total")
            for v in ("AUTH_FAILED", "REPLAYED", "NO_SA", "MALFORMED"):
                assert one(sb, "espresso_esp_packets_total", direction="in", verdict=v) == 0

            # a forged packet on A -> B's SPI and one for an unknown SPI, sent from A's outer address
            sh(sys.executable, "-c", FORGE, "10.97.0.2", "0xa0001", ns=topo.gw_a)
            for _ in range(50):
                _, sb = scrape(topo.gw_b)
                if one(sb, "espresso_esp_packets_total", direction="in", verdict="NO_SA") >= 1:
                    break
            assert one(sb, "espresso_esp_packets_total", direction="in", verdict="AUTH_FAILED") == 1
            assert one(sb, "espresso_esp_packets_total", direction="in", verdict="NO_SA") == 1
            assert one(sb, "espresso_sa_dropped_packets_total", direction="in", verdict="AUTH_FAILED", **ab) == 1
            assert one(sb, "espresso_sa_dropped_packets_total", direction="in", verdict="REPLAYED", **ab) == 0
            assert total(sb, "espresso_gateway_not_delivered_packets_total") >= 2
            assert one(sb, "espresso_metrics_collect_errors_total") == 0
        finally:
            stats_b = gw_b.stop()
    finally:
        stats_a = gw_a.stop()
    assert stats_a["gateway"]["errors"] == [] and stats_b["gateway"]["errors"] == []
    # the endpoint reads the counters the gateway prints when it stops
    assert total(sa, "espresso_gateway_esp_sent_packets_total") <= stats_a["gateway"]["esp_sent"]
    assert stats_b["inbound"]["AUTH_FAILED"] == 1


def test_two_queues_export_per_queue_counters_that_add_up(topo, tmp_path):  # noqa: F811
    """Two queues on each gateway: UDP flows spread over gwA's TUN queues and TCP goes through; every
    per-queue series has a sample for each queue, they add up to the data plane's verdict totals in the same
    scrape and to the gateway's totals at stop, and forged packets sent from many source ports (spread over
    gwB's sockets) show up as AUTH_FAILED on the queues that received them."""
    require_module("prometheus_client")
    cfg_a, cfg_b = static_configs()
    for cfg in (cfg_a, cfg_b):
        cfg["gateway"]["queues"] = 2
    args = ("--metrics", f"127.0.0.1:{PORT}")
    gw_a = GatewayProcess(topo.gw_a, cfg_a, tmp_path, "a", args)
    try:
        gw_b = GatewayProcess(topo.gw_b, cfg_b, tmp_path, "b", args)
        try:
            urx = subprocess.Popen(["ip", "netns", "exec", topo.host_b, sys.executable, "-c", UDP_RECEIVER,
                                    "10.98.2.2", "4000"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert urx.stdout.readline().strip() == "LISTENING"
                sh(sys.executable, "-c", UDP_FLOWS_SENDER, "10.98.2.2", "4000", "1000", "20e6", "16",
                   ns=topo.host_a, timeout=60)
                uout, _ = urx.communicate(timeout=30)
            finally:
                if urx.poll() is None:
                    urx.kill()
                    urx.communicate(timeout=5)
            good, bad, dup = map(int, uout.split())
            assert bad == dup == 0 and good >= 2000, (good, bad, dup)
            sent, got, _ = bulk_transfer(topo, 4 << 20)
            assert sent == got, (sent, got)
            forged = 16
            sh(sys.executable, "-c", FORGE_SPREAD, "10.97.0.2", "0xa0001", str(forged), ns=topo.gw_a)
            for _ in range(50):
                _, sb = scrape(topo.gw_b)
                if one(sb, "espresso_esp_packets_total", direction="in", verdict="AUTH_FAILED") >= forged:
                    break
            _, sa = scrape(topo.gw_a)
            v = "espresso_gateway_verdict_packets_total"
            # each queue is there, in every per-queue family
            for s in (sa, sb):
                for name, series in s.items():
                    if name.startswith("espresso_gateway_") and any(dict(k).get("queue") for k in series):
                        assert {dict(k)["queue"] for k in series} == {"0", "1"}, name
            # per queue and verdict, adding up to the data plane's verdicts (nothing else moves them)
            for s in (sa, sb):
                for direction, dp_dir in (("tx", "out"), ("rx", "in")):
                    for verdict in ("OK", "AUTH_FAILED", "REPLAYED", "NO_SA", "DISCARDED", "POLICY_MISMATCH"):
                        want = one(s, "espresso_esp_packets_total", direction=dp_dir, verdict=verdict)
                        assert total(s, v, direction=direction, verdict=verdict) == want, (direction, verdict)
            # the UDP flows were spread over gwA's two TUN queues: both workers read and encrypted
            reads = per_queue(sa, "espresso_gateway_tun_read_packets_total")
            assert min(reads.values()) > 0, reads
            assert min(per_queue(sa, v, direction="tx", verdict="OK").values()) > 0
            # the forged packets, spread over gwB's sockets: on the queues that got them, and nowhere else
            auth = per_queue(sb, v, direction="rx", verdict="AUTH_FAILED")
            assert sum(auth.values()) == forged and min(auth.values()) > 0, auth
            assert per_queue(sb, "espresso_gateway_not_delivered_packets_total") == auth
            assert one(sb, "espresso_sa_dropped_packets_total", direction="in", verdict="AUTH_FAILED",
                       spi="0x000a0001") == forged
            # segmentation on A (TCP super-packets cut), coalescing on B, summed over the queues
            assert 0 < total(sa, "espresso_gateway_tso_super_packets_total") < \
                total(sa, "espresso_gateway_tso_segments_total")
            assert 0 < total(sb, "espresso_gateway_tun_written_packets_total") < \
                total(sb, "espresso_gateway_tun_gro_packets_total")
            assert one(sa, "espresso_metrics_collect_errors_total") == 0
        finally:
            stats_b = gw_b.stop()
    finally:
        stats_a = gw_a.stop()
    from esp.gateway.stats import QUEUE_COUNTERS

    for st in (stats_a, stats_b):
        g = st["gateway"]
        assert g["errors"] == [] and g["queues"] == len(g["per_queue"]) == 2
        for name in QUEUE_COUNTERS:  # the queues add up to the totals the gateway prints
            assert sum(q[name] for q in g["per_queue"]) == g[name], name
        for direction in ("outbound", "inbound"):
            key = "out_verdicts" if direction == "outbound" else "in_verdicts"
            for verdict, n in st[direction].items():
                assert sum(q[key].get(verdict, 0) for q in g["per_queue"]) == n, (direction, verdict)
    # what the last scrape read, the gateway still had at stop (only IKE-less gateways: nothing moves after)
    assert total(sb, "espresso_gateway_esp_received_packets_total") <= stats_b["gateway"]["esp_received"]


def test_gateway_metrics_address_refused_is_one_line(tmp_path):
    """The endpoint binds before the gateway starts: a port in use (or a bad address) is one line, exit 2,
    and no gateway is started (no root needed to see it)."""
    import socket

    require_module("prometheus_client")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = run([sys.executable, "-m", "esp", "gateway", str(tmp_path / "none.json"), "--metrics",
                 f"127.0.0.1:{port}"])
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr == f"python -m esp: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use\n"
    r = run([sys.executable, "-m", "esp", "gateway", "x.json", "--metrics", "gw.example:9745"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not an IP address" in r.stderr, r.stderr
    # without the library: the one line names the extra to install
    code = ("import sys; sys.modules['prometheus_client'] = None; from esp.__main__ import main; "
            "sys.exit(main(['gateway', 'x.json', '--metrics', '127.0.0.1:9745']))")
    r = run([sys.executable, "-c", code])
    assert r.returncode == 2 and r.stderr == ("python -m esp: error: metrics need the prometheus_client library: "
                                              "pip install 'espresso-ipsec[metrics]'\n"), r.stderr


def test_ike_daemon_with_gateway_serves_ike_and_data_plane_metrics(topo, tmp_path):  # noqa: F811
    """``python -m ike daemon`` with ``[gateway]`` and ``[metrics]``: the CHILD_SA's ESP SAs carry the pings,
    named by IKE_SA and CHILD_SA, beside the gateway's queue counters and the IKE gauges."""
    require_module("prometheus_client")
    from tests.interop.test_gateway_ike import _pair

    # [metrics] is a top-level table: it may follow the child's keys, [gateway] comes after it
    a, b = _pair(topo, tmp_path, child_extra=f'\n[metrics]\nlisten = "127.0.0.1:{PORT}"\n')
    try:
        r = a.control({"cmd": "initiate", "ike": "gwb", "timeout": 10})
        assert r["ok"] and r["state"] == "ESTABLISHED", r
        (ca,) = a.wait(a.children, "the initiator's CHILD_SA")
        b.wait(b.children, "the responder's CHILD_SA")
        p = ping(topo.host_a, "10.98.2.2", count=5)
        assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
        _, s = scrape(topo.gw_a)
        named = {"ike": "gwb", "child": "net"}
        assert one(s, "espresso_sa_packets_total", direction="out", spi=f"0x{ca['spi_out']}", **named) == 5
        assert one(s, "espresso_sa_packets_total", direction="in", spi=f"0x{ca['spi_in']}", **named) == 5
        assert total(s, "espresso_gateway_esp_sent_packets_total") >= 5
        # the daemon's gateway queues, with their drops by verdict, adding up to the data plane's
        queues = per_queue(s, "espresso_gateway_verdict_packets_total", direction="tx", verdict="OK")
        assert len(queues) == (os.cpu_count() or 1) and sum(queues.values()) == \
            one(s, "espresso_esp_packets_total", direction="out", verdict="OK") >= 5, queues
        assert one(s, "espresso_gateway_up") == 1
        assert one(s, "espresso_ike_sas", peer="gwb", state="ESTABLISHED") == 1
        assert one(s, "espresso_ike_child_sas", peer="gwb", child="net", state="INSTALLED") == 1
        assert one(s, "espresso_ike_events_total", event="ChildSaEstablished") == 1
        assert one(s, "espresso_metrics_collect_errors_total") == 0
        assert one(s, "espresso_ike_metrics_collect_errors_total") == 0
    finally:
        sb = b.stop()
        sa = a.stop()
    assert sa["tracebacks"] == sb["tracebacks"] == 0, sa["stderr"][-2000:]


def test_the_readme_metrics_example_runs_as_written(tmp_path):
    """The README's metrics block, as written, in a fresh network namespace (its loopback, its TUN device):
    every line the README says it prints is printed."""
    require_root()
    require_tool("ip")
    require_tool("curl")
    require_module("prometheus_client")
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Metrics (Prometheus)"):]
    start = section.index("```sh\n") + len("```sh\n")
    block = section[start:section.index("```\n", start)]
    shown = section.index("```\n", section.index("prints", start)) + 4
    expected = section[shown:section.index("```", shown)].strip().splitlines()
    ns = unique("emrd")
    sh("ip", "netns", "add", ns)
    log = tmp_path / "out.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ['PATH']}"}
    try:
        sh("ip", "link", "set", "lo", "up", ns=ns)
        with open(log, "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, "bash", "-c", block], cwd=tmp_path, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the gateway the block left in the background
        printed = log.read_text()
        for line in expected:
            assert line in printed.splitlines(), (line, printed[-3000:])
        assert "Traceback" not in printed
    finally:
        for pid in sh("ip", "netns", "pids", ns, check=False, timeout=5).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "delete", ns, check=False)
