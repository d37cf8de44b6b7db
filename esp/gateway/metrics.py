"""Prometheus metrics for the data plane and the gateway: what a router exposes to its monitoring.

Why a collector and no instrumented counters: the data threads must not run Python per packet, and the data
plane already counts everything (verdicts per direction in :class:`esp.Dataplane`, packets, bytes and drops
per SA in each SA's compiled context, the I/O counters per queue in :class:`esp.gateway.QueueStats`). So
nothing is counted twice: :class:`DataplaneCollector` reads those counters when Prometheus scrapes, from the
HTTP server's thread, and turns them into metric families. A scrape takes the SAD's current snapshot (an SA removed while
it runs is still read through the snapshot's reference) and never touches a batch in flight.

Queues: each of a gateway's data queues (a TUN queue, a UDP socket, a transmit and a receive worker) is a
``queue`` label value, read from :meth:`esp.gateway.Gateway.queue_stats`: its packets, bytes, segmentation
and coalescing counts, and its packets by verdict (``espresso_gateway_verdict_packets_total``); the samples of
all queues add up to the gateway's totals and, per verdict, to ``espresso_esp_packets_total``.
``prometheus_client`` is an optional dependency (``pip install 'espresso-ipsec[metrics]'``); this module
imports it only when a collector runs or a server starts.

    python -m esp gateway site.json --metrics 127.0.0.1:9745
    curl -s http://127.0.0.1:9745/metrics | grep espresso_sa_packets_total
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from esp.batch import Verdict
from esp.errors import EspError
from esp.gateway.stats import VERDICT_NAMES

__all__ = ["DataplaneCollector", "MetricsServer", "MetricsUnavailable", "PIP_HINT", "parse_listen",
           "require_prometheus", "serve_metrics"]

log = logging.getLogger(__name__)

#: What a user without the library is told to run (the distribution's name, see pyproject.toml).
PIP_HINT = "pip install 'espresso-ipsec[metrics]'"
DEFAULT_PORT = 9745

#: Per-SA drop counters of the compiled context (esp.sa.Counters field) under the Verdict they count.
SA_DROPS = (("AUTH_FAILED", "auth_failed"), ("REPLAYED", "replayed"), ("MALFORMED", "malformed"),
            ("PAD_ERROR", "pad_errors"), ("DUMMY", "dummy"), ("NO_SPACE", "no_space"), ("EXPIRED", "expired"),
            ("SEQ_EXHAUSTED", "seq_exhausted"), ("UNSUPPORTED", "unsupported"))
#: Every offload a gateway may turn on (GatewayStats.offloads names): reported 1 (on) or 0 (off).
OFFLOADS = ("udp_gso", "udp_gro", "tun_csum", "tun_tso4", "tun_tso6", "tun_tso_ecn", "tun_uso4", "tun_uso6")

# QueueStats counters: (metric name without espresso_gateway_ and _total, stats field, help,
# queue direction). tx is TUN -> ESP, rx is ESP -> TUN.
_QUEUE_COUNTERS = (
    ("tun_read_packets", "tun_read", "reads from the TUN device (a super-packet counts once)", "tx"),
    ("tun_read_bytes", "tx_bytes", "inner bytes taken in for encryption (after segmentation)", "tx"),
    ("esp_sent_packets", "esp_sent", "ESP packets sent", "tx"),
    ("esp_send_dropped_packets", "esp_send_dropped", "ESP packets the socket refused (buffer full, error)", "tx"),
    ("not_sent_packets", "not_sent", "inner packets not encrypted (outbound verdict other than OK)", "tx"),
    ("tso_super_packets", "tso_super_packets", "TSO/USO super-packets read from the TUN device", "tx"),
    ("tso_segments", "tso_segments", "packets cut from TSO/USO super-packets", "tx"),
    ("udp_gso_trains", "gso_trains", "UDP GSO sends (one sendmsg per train)", "tx"),
    ("udp_gso_datagrams", "gso_datagrams", "ESP datagrams sent in UDP GSO trains", "tx"),
    ("icmp_too_big_packets", "too_big", "inner packets answered with ICMP too big (RFC 4301 8)", "tx"),
    ("too_big_dropped_packets", "too_big_dropped", "too-big inner packets dropped without an ICMP answer", "tx"),
    ("fragmented_packets", "fragmented", "inner IPv4 packets without DF fragmented before encryption", "tx"),
    ("tun_bad_packets", "tun_bad", "malformed virtio_net_hdr reads (or coalescing failures), dropped", "tx"),
    ("batches", "tx_batches", "batches processed", "tx"),
    ("esp_received_packets", "esp_received", "ESP (and IKE) datagrams received", "rx"),
    ("esp_received_bytes", "rx_bytes", "outer bytes received", "rx"),
    ("tun_written_packets", "tun_written", "writes to the TUN device (a super-packet counts once)", "rx"),
    ("tun_write_dropped_packets", "tun_write_dropped", "writes the TUN device refused", "rx"),
    ("not_delivered_packets", "not_delivered", "received packets not delivered (inbound verdict other than OK)",
     "rx"),
    ("ike_received_packets", "ike_received", "IKE messages received on the NAT-T port", "rx"),
    ("udp_gro_trains", "gro_trains", "UDP GRO trains received", "rx"),
    ("udp_gro_datagrams", "gro_datagrams", "ESP datagrams received in UDP GRO trains", "rx"),
    ("tun_gro_packets", "tun_gro_packets", "decrypted packets handed to userspace GRO (coalescing)", "rx"),
    ("batches", "rx_batches", "batches processed", "rx"),
)


class MetricsUnavailable(EspError):
    """Metrics were asked for but cannot be served (library missing, address refused); one line says why."""


def require_prometheus() -> Any:
    """The prometheus_client module, or MetricsUnavailable naming the extra to install."""
    try:
        import prometheus_client
    except ImportError:
        raise MetricsUnavailable(f"metrics need the prometheus_client library: {PIP_HINT}") from None
    return prometheus_client


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` (port 9745) -> (address, port); ValueError says what is wrong.

    Only IP addresses: a metrics endpoint opens a port, and where it listens should be explicit."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT}), got {text!r}")
    s = text.strip()
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
        port_s = rest[1:] if rest else str(DEFAULT_PORT)
    elif s.count(":") == 1:
        host, port_s = s.split(":")
    else:
        host, port_s = s, str(DEFAULT_PORT)  # an address alone (IPv4, or IPv6 without brackets)
    try:
        addr = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT})") \
            from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return addr, int(port_s)


#: How long one client may take to send its request and read the answer (seconds), and how many may be
#: connected at once: a scraper that stalls, or a flood of connections, costs one bounded slot each.
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 16


class MetricsServer:
    """The metrics endpoint: prometheus_client's WSGI app on a small threaded HTTP server of our own, whose
    clients each get :data:`REQUEST_TIMEOUT` and at most :data:`MAX_CONNECTIONS` of them a thread; the rest
    are closed at once and counted (``refused``), as are clients cut off by the timeout (``timed_out``).
    Nothing a client does prints a traceback. :meth:`close` stops it."""

    def __init__(self, host: str, port: int, app: Any, *, timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        owner = self
        self.refused = self.timed_out = self.errors = 0
        self.active = 0  # clients holding a slot now
        slots = threading.BoundedSemaphore(max_connections)
        count = threading.Lock()

        def active(delta: int) -> None:
            with count:
                owner.active += delta

        class Handler(WSGIRequestHandler):
            def setup(self) -> None:
                self.timeout = timeout  # StreamRequestHandler puts it on the socket
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
                pass

        class Server(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def server_bind(self) -> None:  # HTTPServer's would look the address up in DNS: not here
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
                self.setup_environ()

            def process_request(self, request: Any, client_address: Any) -> None:
                if not slots.acquire(blocking=False):
                    owner.refused += 1
                    self.shutdown_request(request)
                    return
                active(1)
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    active(-1)
                    slots.release()
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    active(-1)
                    slots.release()

            def handle_error(self, request: Any, client_address: Any) -> None:
                exc = sys.exc_info()[1]
                if isinstance(exc, (TimeoutError, socket.timeout)):
                    owner.timed_out += 1
                else:  # a client that went away mid-answer, or worse: one line at debug level, no traceback
                    owner.errors += 1
                    log.debug("metrics: client %s: %s: %s", client_address, type(exc).__name__, exc)

        self.httpd = Server((host, port), Handler)
        self.httpd.set_app(app)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="espresso-metrics", daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[0], self.httpd.server_address[1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve_metrics(listen: str | tuple[str, int], collectors: Iterable[Any], *,
                  timeout: float = REQUEST_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> MetricsServer:
    """Serve ``collectors`` (and the process's CPU and memory) at ``http://HOST:PORT/metrics``.

    Raises MetricsUnavailable (library missing, address in use, not an address of this host) or ValueError
    (a malformed ``listen``) before anything listens."""
    host, port = parse_listen(listen) if isinstance(listen, str) else listen
    prom = require_prometheus()
    registry = prom.CollectorRegistry(auto_describe=False)
    prom.ProcessCollector(registry=registry)
    for c in collectors:
        registry.register(c)
    try:
        server = MetricsServer(host, port, prom.make_wsgi_app(registry), timeout=timeout,
                               max_connections=max_connections)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise MetricsUnavailable(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
    registry.register(_EndpointCollector(server))
    return server


class _EndpointCollector:
    """The endpoint's own clients turned away: a scraper that keeps timing out shows here."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily("espresso_metrics_http_clients_dropped", "metrics clients turned away: no free "
                                  "slot (refused), too slow (timed_out), broken request or connection (error)",
                                  labels=["reason"])
        s = self.server
        for reason, n in (("refused", s.refused), ("timed_out", s.timed_out), ("error", s.errors)):
            fam.add_metric([reason], n)
        yield fam


def _hex_spi(spi: int) -> str:
    return f"0x{spi:08x}"


class DataplaneCollector:
    """Metric families of a :class:`esp.Dataplane` and, when given, the :class:`esp.gateway.Gateway` around it.

    ``gateway`` may be a callable returning the gateway (or None), for a server that starts before it does.
    ``sa_labels(entry)`` may add labels to every per-SA series (the IKE daemon adds its CHILD_SA name); it
    must return the same keys for every entry. Reading never raises: a section that fails is skipped and
    counted in ``espresso_metrics_collect_errors_total``."""

    def __init__(self, dataplane: Any = None, gateway: Any = None,
                 sa_labels: Callable[[Any], dict[str, str]] | None = None,
                 sa_label_names: tuple[str, ...] = ()) -> None:
        self.dataplane = dataplane
        self.gateway = gateway
        self.sa_labels = sa_labels
        self.sa_label_names = tuple(sa_label_names)
        self.errors = 0

    def _gw(self) -> Any:
        g = self.gateway
        return g() if callable(g) and not hasattr(g, "stats") else g

    def _dp(self) -> Any:
        if self.dataplane is not None:
            return self.dataplane
        gw = self._gw()
        return getattr(gw, "dataplane", None)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        for section in (self._dataplane_families, self._sa_families, self._gateway_families):
            try:
                yield from section()
            except Exception as exc:  # a scrape must never take the endpoint (or a data thread) down
                self.errors += 1
                log.warning("metrics: %s failed: %s: %s", section.__name__, type(exc).__name__, exc)
        yield CounterMetricFamily("espresso_metrics_collect_errors", "metric sections that failed to read",
                                  value=self.errors)

    # -- data plane: verdicts per direction -----------------------------------------------------------------
    def _dataplane_families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        dp = self._dp()
        if dp is None:
            return
        c = dp.counters()
        fam = CounterMetricFamily("espresso_esp_packets", "packets the data plane processed, by direction and "
                                  "verdict (OK passed; every other verdict is a drop or a hand-over)",
                                  labels=["direction", "verdict"])
        for direction, table in (("out", c.outbound), ("in", c.inbound)):
            for v in Verdict:
                if v is Verdict.UNPROCESSED:
                    continue
                fam.add_metric([direction, v.name], table.get(v.name, 0))
        yield fam
        yield CounterMetricFamily("espresso_esp_acquires", "SA acquires raised (PROTECT traffic without an SA)",
                                  value=c.acquires)
        yield CounterMetricFamily("espresso_esp_events_dropped",
                                  "data plane events dropped (nobody drained them)",
                                  value=c.events_dropped)

    # -- per SA ---------------------------------------------------------------------------------------------
    def _sa_families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        dp = self._dp()
        if dp is None:
            return
        names = ["spi", "direction", "peer", "policy", *self.sa_label_names]
        pk = CounterMetricFamily("espresso_sa_packets", "packets an SA passed (decrypted in, encrypted out)",
                                 labels=names)
        by = CounterMetricFamily("espresso_sa_bytes", "payload bytes an SA passed", labels=names)
        dr = CounterMetricFamily("espresso_sa_dropped_packets", "packets an SA refused, by verdict",
                                 labels=[*names, "verdict"])
        sq = GaugeMetricFamily("espresso_sa_sequence_number", "last sequence number sent (out) or highest "
                               "received (in)", labels=names)
        info = GaugeMetricFamily("espresso_sa_info", "an installed SA (value 1) with its suite, mode, "
                                 "encapsulation and crypto backend", labels=[*names, "suite", "mode", "encap", "backend"])
        count = {"in": 0, "out": 0}
        seen = set()
        for e in dp.sad.snapshot.entries():
            key = (e.spi, e.direction)
            if key in seen:
                continue
            seen.add(key)
            sa = e.sa
            p = sa.params
            peer = p.dst if e.direction == "out" else p.src
            labels = [_hex_spi(e.spi), e.direction, peer or "", e.policy or ""]
            if self.sa_labels is not None:
                extra = self.sa_labels(e)
                labels += [str(extra.get(k, "")) for k in self.sa_label_names]
            c = sa.counters
            pk.add_metric(labels, c.packets)
            by.add_metric(labels, c.bytes)
            for verdict, fld in SA_DROPS:
                dr.add_metric([*labels, verdict], getattr(c, fld))
            sq.add_metric(labels, sa.seq)
            info.add_metric([*labels, p.suite.name, p.mode.value, "udp" if p.encap is not None else "none",
                             sa.backend], 1)
            count[e.direction] += 1
        sas = GaugeMetricFamily("espresso_sas", "SAs installed in the data plane", labels=["direction"])
        for d, n in count.items():
            sas.add_metric([d], n)
        yield from (sas, pk, by, dr, sq, info)

    # -- gateway: per queue, offloads, MTU ------------------------------------------------------------------
    def _gateway_families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        gw = self._gw()
        if gw is None:
            return
        up = GaugeMetricFamily("espresso_gateway_up", "1 while the gateway's data threads run")
        up.add_metric([], 1 if gw.running else 0)
        yield up
        snaps = [(str(i), vars(q)) for i, q in enumerate(gw.queue_stats())]  # copies, taken under its lock
        fams: dict[str, Any] = {}
        for name, fld, doc, direction in _QUEUE_COUNTERS:
            fam = fams.get(name)
            if fam is None:
                fam = fams[name] = CounterMetricFamily(f"espresso_gateway_{name}", doc,
                                                       labels=["queue", "direction"])
            for q, qs in snaps:
                fam.add_metric([q, direction], qs[fld])
        yield from fams.values()
        verdicts = CounterMetricFamily("espresso_gateway_verdict_packets", "packets each queue's workers "
                                       "processed, by verdict (OK passed; every other verdict is a drop or, "
                                       "BYPASSED rx, IKE handed over); tx: encrypted, rx: decrypted",
                                       labels=["queue", "direction", "verdict"])
        for q, qs in snaps:
            for direction, table in (("tx", qs["out_verdicts"]), ("rx", qs["in_verdicts"])):
                for name in VERDICT_NAMES.values():
                    verdicts.add_metric([q, direction, name], table.get(name, 0))
        yield verdicts
        st = vars(gw.stats)
        yield CounterMetricFamily("espresso_gateway_io_errors", "transient I/O errors (the data loop carried on)",
                                  value=st.get("io_errors", 0))
        on = set(st.get("offloads", ()))
        off = GaugeMetricFamily("espresso_gateway_offload_enabled", "1 if the offload is in use, else 0",
                                labels=["offload"])
        for o in sorted(set(OFFLOADS) | on):
            off.add_metric([o], 1 if o in on else 0)
        yield off
        mtu = GaugeMetricFamily("espresso_gateway_mtu_bytes", "outer path MTU, largest inner packet the SAs let "
                                "through, and the TUN device's MTU", labels=["kind"])
        for kind, fld in (("outer", "outer_mtu"), ("inner", "inner_mtu"), ("tun", "tun_mtu")):
            mtu.add_metric([kind], st.get(fld, 0))
        yield mtu
