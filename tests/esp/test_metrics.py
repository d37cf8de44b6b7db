"""The Prometheus collector on data planes without I/O: counters match the traffic, labels name each SA, drops
appear under their verdict, the gateway's queue counters and offload flags come out per queue, and a scrape
racing SA installs and removals neither raises nor disturbs the packets in flight. Also the metrics endpoint
over HTTP (loopback), and the address parser's errors."""
from __future__ import annotations

import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest

from esp import PacketBatch, Verdict
from esp.gateway import GatewayStats, QueueStats
from esp.gateway.metrics import DataplaneCollector, MetricsUnavailable, parse_listen, serve_metrics
from tests.esp.test_dataplane import deliver, gateways, ipv4, sa_pair
from tests.support import require_module

prom = require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(*collectors) -> dict[str, dict[tuple, float]]:
    """Render through a registry (as the HTTP endpoint does) and parse the text back:
    {sample name: {sorted label items: value}}."""
    reg = prom.CollectorRegistry(auto_describe=False)
    for c in collectors:
        reg.register(c)
    return parse(prom.generate_latest(reg).decode())


def parse(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    """The value of the one series of ``name`` whose labels include ``labels``."""
    hits = [v for k, v in samples.get(name, {}).items() if set(labels.items()) <= set(k)]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


def traffic(a, b, n: int, size: int = 100) -> None:
    pkts = [ipv4("10.0.0.5", "10.1.0.9", payload=bytes(size)) for _ in range(n)]
    src = PacketBatch.from_packets(pkts)
    out = PacketBatch.empty(n, 2048)
    v = a.outbound(src, out)
    assert (v == Verdict.OK).all()
    wire = deliver(out, v)
    assert (b.inbound(wire, PacketBatch.empty(n, 2048)) == Verdict.OK).all()
    return wire


def test_counters_per_sa_and_verdict_match_the_traffic():
    a, b = gateways()
    wire = traffic(a, b, 6)
    # a tampered packet (a new one, last byte of its ICV flipped) and a replay of a good one, on B's SA 0x1000
    out = PacketBatch.empty(1, 2048)
    one_more = PacketBatch.from_packets([ipv4("10.0.0.5", "10.1.0.9", payload=bytes(100))])
    assert a.outbound(one_more, out)[0] == Verdict.OK
    bad = bytearray(out.packet(0))
    bad[-1] ^= 1
    v = b.inbound(PacketBatch.from_packets([bytes(bad), wire.packet(1)]), PacketBatch.empty(2, 2048))
    assert list(v) == [Verdict.AUTH_FAILED, Verdict.REPLAYED]

    sa = scrape(DataplaneCollector(a))
    sb = scrape(DataplaneCollector(b))
    out_labels = {"spi": "0x00001000", "direction": "out", "peer": "192.0.2.2", "policy": "site"}
    in_labels = {"spi": "0x00001000", "direction": "in", "policy": "site"}
    assert one(sa, "espresso_sa_packets_total", **out_labels) == 7
    assert one(sb, "espresso_sa_packets_total", **in_labels) == 6
    assert one(sa, "espresso_sa_bytes_total", **out_labels) == 7 * len(ipv4("10.0.0.5", "10.1.0.9",
                                                                             payload=bytes(100)))
    assert one(sa, "espresso_sa_sequence_number", **out_labels) == 7
    assert one(sb, "espresso_sa_dropped_packets_total", verdict="AUTH_FAILED", **in_labels) == 1
    assert one(sb, "espresso_sa_dropped_packets_total", verdict="REPLAYED", **in_labels) == 1
    assert one(sb, "espresso_sa_dropped_packets_total", verdict="MALFORMED", **in_labels) == 0
    assert one(sa, "espresso_esp_packets_total", direction="out", verdict="OK") == 7
    assert one(sb, "espresso_esp_packets_total", direction="in", verdict="OK") == 6
    assert one(sb, "espresso_esp_packets_total", direction="in", verdict="AUTH_FAILED") == 1
    assert one(sb, "espresso_esp_packets_total", direction="in", verdict="REPLAYED") == 1
    assert one(sa, "espresso_sas", direction="out") == 2 and one(sa, "espresso_sas", direction="in") == 2
    assert one(sa, "espresso_sa_info", encap="udp", mode="tunnel", **out_labels) == 1
    assert {dict(k)["spi"] for k in sa["espresso_sa_info"]} == {"0x00001000", "0x00001001", "0x00002000",
                                                                "0x00002001"}
    # no gateway: no gateway series; nothing failed
    assert not any(n.startswith("espresso_gateway_") for n in sa)
    assert one(sa, "espresso_metrics_collect_errors_total") == 0


def test_unknown_spi_and_no_policy_are_counted_by_verdict():
    a, b = gateways()
    wire = traffic(a, b, 1)
    pkt = bytearray(wire.packet(0))
    pkt[28:32] = (0xDEAD).to_bytes(4, "big")  # outer IPv4 (20) + UDP (8): the SPI
    b.inbound(PacketBatch.from_packets([bytes(pkt)]), PacketBatch.empty(1, 2048))
    a.outbound(PacketBatch.from_packets([ipv4("10.9.0.1", "10.9.0.2")]), PacketBatch.empty(1, 2048))
    assert one(scrape(DataplaneCollector(b)), "espresso_esp_packets_total", direction="in", verdict="NO_SA") == 1
    assert one(scrape(DataplaneCollector(a)), "espresso_esp_packets_total", direction="out",
               verdict="DISCARDED") == 1


def test_gateway_queue_counters_offloads_and_mtu():
    a, _ = gateways()
    q0 = QueueStats(tun_read=10, tx_bytes=12345, esp_sent=9, esp_send_dropped=1, esp_received=4, rx_bytes=999,
                    tun_written=3, tso_super_packets=2, tso_segments=30, gso_trains=3, gso_datagrams=29,
                    gro_trains=1, gro_datagrams=4, tun_gro_packets=4, too_big=2, fragmented=1,
                    out_verdicts={"OK": 9}, in_verdicts={"OK": 3, "AUTH_FAILED": 1})
    q1 = QueueStats(tun_read=7, out_verdicts={"NO_SA": 2})
    st = GatewayStats(io_errors=5, offloads=["udp_gso", "tun_tso4"], outer_mtu=1500, inner_mtu=1438,
                      tun_mtu=1438, per_queue=[q0, q1])
    gw = SimpleNamespace(dataplane=a, stats=st, running=True,
                         queue_stats=lambda: [q.copy() for q in st.per_queue])
    s = scrape(DataplaneCollector(gateway=gw))
    q = {"queue": "0"}
    assert one(s, "espresso_gateway_up") == 1
    assert one(s, "espresso_gateway_tun_read_packets_total", direction="tx", **q) == 10
    assert one(s, "espresso_gateway_tun_read_bytes_total", direction="tx", **q) == 12345
    assert one(s, "espresso_gateway_esp_received_bytes_total", direction="rx", **q) == 999
    assert one(s, "espresso_gateway_batches_total", direction="tx", **q) == 0
    assert one(s, "espresso_gateway_tso_segments_total", **q) == 30
    assert one(s, "espresso_gateway_udp_gso_datagrams_total", **q) == 29
    assert one(s, "espresso_gateway_udp_gro_trains_total", **q) == 1
    assert one(s, "espresso_gateway_icmp_too_big_packets_total", **q) == 2
    assert one(s, "espresso_gateway_fragmented_packets_total", **q) == 1
    assert one(s, "espresso_gateway_io_errors_total") == 5
    assert one(s, "espresso_gateway_offload_enabled", offload="udp_gso") == 1
    assert one(s, "espresso_gateway_offload_enabled", offload="tun_tso4") == 1
    assert one(s, "espresso_gateway_offload_enabled", offload="udp_gro") == 0
    assert one(s, "espresso_gateway_mtu_bytes", kind="inner") == 1438
    assert "espresso_sa_packets_total" in s  # the gateway's data plane is read too
    # each queue is a label value of the same series, its drops by verdict too (every verdict, 0 until seen)
    assert one(s, "espresso_gateway_tun_read_packets_total", queue="1") == 7
    v = "espresso_gateway_verdict_packets_total"
    assert one(s, v, queue="0", direction="rx", verdict="AUTH_FAILED") == 1
    assert one(s, v, queue="0", direction="tx", verdict="OK") == 9
    assert one(s, v, queue="1", direction="tx", verdict="NO_SA") == 2
    assert one(s, v, queue="1", direction="rx", verdict="REPLAYED") == 0
    assert "UNPROCESSED" not in {dict(k)["verdict"] for k in s[v]}
    # a gateway not started has no queues: no per-queue series, no error
    gw.queue_stats = list
    s = scrape(DataplaneCollector(gateway=gw))
    assert "espresso_gateway_tun_read_packets_total" not in s and one(s, "espresso_gateway_up") == 1
    assert one(s, "espresso_metrics_collect_errors_total") == 0
    # a gateway not there yet (the endpoint starts first): data-plane-less, no error
    s = scrape(DataplaneCollector(gateway=lambda: None))
    assert one(s, "espresso_metrics_collect_errors_total") == 0 and "espresso_gateway_up" not in s


def test_queue_counters_add_up_to_the_totals():
    """What a compiled loop counted (its counter array's growth) goes to its queue and the totals in one step,
    and so do the Python path's counts: the queues always sum to the totals."""
    np = pytest.importorskip("numpy")
    from esp.gateway import _loop
    from esp.gateway.stats import QUEUE_COUNTERS

    st = GatewayStats(per_queue=[QueueStats(), QueueStats(), QueueStats()])
    d = np.zeros(_loop.COUNTERS, np.int64)
    d[[_loop.C_TUN_READ, _loop.C_ESP_SENT, _loop.C_TSO_SUPER, _loop.C_TSO_SEGMENTS, _loop.C_LEFT_DROPPED]] = [
        5, 40, 2, 40, 1]
    d[_loop.C_VERDICTS + int(Verdict.OK)] = 40
    st.fold(1, d, True)
    r = np.zeros(_loop.COUNTERS, np.int64)
    r[[_loop.C_ESP_RECEIVED, _loop.C_TUN_WRITTEN, _loop.C_NOT_DELIVERED, _loop.C_TUN_BAD]] = [12, 3, 2, 1]
    r[_loop.C_VERDICTS + int(Verdict.OK)] = 10
    r[_loop.C_VERDICTS + int(Verdict.REPLAYED)] = 2
    st.fold(2, r, False)
    st.add(0, too_big=3, not_sent=1)
    st.add_verdicts(0, True, np.bincount(np.array([int(Verdict.NO_SA)], np.uint8), minlength=16))
    for name in QUEUE_COUNTERS:
        assert getattr(st, name) == sum(getattr(q, name) for q in st.per_queue), name
    assert (st.tun_read, st.esp_sent, st.tso_segments, st.tun_bad, st.esp_received) == (5, 40, 40, 2, 12)
    assert st.per_queue[1].out_verdicts == {"OK": 40}
    assert st.per_queue[2].in_verdicts == {"OK": 10, "REPLAYED": 2}
    assert st.per_queue[0].out_verdicts == {"NO_SA": 1} and st.per_queue[0].too_big == 3




def test_a_section_that_fails_is_counted_not_raised():
    broken = SimpleNamespace(counters=lambda: 1 / 0, sad=None)
    c = DataplaneCollector(broken)
    s = scrape(c)
    assert one(s, "espresso_metrics_collect_errors_total") == 2  # verdicts and SAs; the scrape still answers


def test_scrape_while_sas_come_and_go_under_traffic():
    """One thread encrypts and decrypts, another installs and removes SAs, a third scrapes as fast as it
    can (bounded in time): no scrape raises, every packet of the steady SA pair passes, and the counters
    the last scrape reads are the traffic's."""
    a, b = gateways()
    from esp.spd import Policy, Selector

    a.add_policy(Policy("churn", Selector("10.0.0.0/24", "10.7.0.0/24")))
    stop = threading.Event()
    problems: list[str] = []
    sent = [0]

    def data() -> None:
        pkts = PacketBatch.from_packets([ipv4("10.0.0.5", "10.1.0.9", payload=bytes(64))] * 32)
        out, back = PacketBatch.empty(32, 2048), PacketBatch.empty(32, 2048)
        while not stop.is_set():
            v = a.outbound(pkts, out)
            w = b.inbound(deliver(out, v), back)
            if not ((v == Verdict.OK).all() and (w == Verdict.OK).all()):
                problems.append(f"verdicts {set(v.tolist())} {set(w.tolist())}")
            sent[0] += 32

    def churn() -> None:
        spi = 0x5000
        while not stop.is_set():
            o, i = sa_pair(spi)
            a.install_sa(o, "churn")
            a.install_sa(i, "churn")
            a.remove_sa(spi, "out")
            a.remove_sa(spi, "in")
            spi += 1

    threads = [threading.Thread(target=data), threading.Thread(target=churn)]
    for t in threads:
        t.start()
    c = DataplaneCollector(a)
    scrapes = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            s = scrape(c)
            scrapes += 1
            assert one(s, "espresso_metrics_collect_errors_total") == 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not problems, problems[:3]
    s = scrape(c)
    assert one(s, "espresso_sa_packets_total", spi="0x00001000", direction="out") == sent[0]
    assert scrapes > 3


def test_endpoint_over_http_and_its_errors():
    a, b = gateways()
    traffic(a, b, 3)
    srv = serve_metrics(("127.0.0.1", 0), [DataplaneCollector(a)])  # any free port
    try:
        host, port = srv.address
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        s = parse(text)
        assert one(s, "espresso_sa_packets_total", spi="0x00001000", direction="out") == 3
        assert "process_cpu_seconds_total" in s  # the process's own CPU, beside the data plane's counters
        # the port is taken now: a clear refusal
        with pytest.raises(MetricsUnavailable, match=f"cannot serve metrics on 127.0.0.1:{port}: "):
            serve_metrics(f"127.0.0.1:{port}", [])
    finally:
        srv.close()


def test_endpoint_bounds_slow_and_excess_clients():
    """Clients that connect and send nothing hold a slot only until the timeout; beyond the slots a client is
    closed at once; garbage gets an HTTP error; all counted, no traceback, and scrapes work again after."""
    import socket

    a, _ = gateways()
    srv = serve_metrics(("127.0.0.1", 0), [DataplaneCollector(a)], timeout=0.5, max_connections=2)
    port = srv.address[1]
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        deadline = time.monotonic() + 5
        while srv.active < 2 and time.monotonic() < deadline:  # both accepted (a loaded machine is slow)
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            assert third.recv(100) == b""  # no slot: closed without an answer
        for c in idle:  # the server gives up on them after its timeout
            assert c.recv(100) == b""
            c.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as bad:
            bad.sendall(b"GET /metrics HTTP/x\r\n\r\n")  # a request line that does not parse
            answer = b"".join(iter(lambda: bad.recv(4096), b""))
            assert b"Error code: 400" in answer, answer
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "espresso_sas" in text
        assert srv.refused >= 1 and srv.timed_out == 2
        s = parse(text)
        assert one(s, "espresso_metrics_http_clients_dropped_total", reason="timed_out") == 2
        assert one(s, "espresso_metrics_http_clients_dropped_total", reason="refused") == srv.refused
    finally:
        srv.close()


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:9745", ("127.0.0.1", 9745)), ("[::1]:9100", ("::1", 9100)), ("::1", ("::1", 9745)),
    ("0.0.0.0", ("0.0.0.0", 9745)), (" 10.0.0.1:80 ", ("10.0.0.1", 80)),
])
def test_parse_listen(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text,match", [
    ("localhost:9745", "not an IP address"), ("127.0.0.1:0", "port must be 1-65535"),
    ("127.0.0.1:70000", "port must be"), ("127.0.0.1:x", "port must be"), ("", "expected HOST:PORT"),
    ("[::1", "expected \\[IPv6\\]:PORT"), ("[::1]9", "expected \\[IPv6\\]:PORT"),
])
def test_parse_listen_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_listen(text)
