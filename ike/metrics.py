"""Prometheus metrics of the IKE daemon: its IKE_SAs and CHILD_SAs, the exchanges' outcomes, what the
dispatcher and the UDP adapter drop, next to the data plane's metrics (esp.gateway.metrics).

Why it reads rather than counts: the core, the adapter and the daemon already keep counters (the
dispatcher's ``stats``, the endpoint's ``stats``, the daemon's event tally and ESP counters); the collector
copies them when Prometheus scrapes, on the HTTP server's thread, with one atomic copy per table, so the event
loop never waits for a scrape and a scrape never sees a table half-changed. This is the daemon's side of the
package (it reaches esp, as the daemon does); the sans-I/O core knows nothing of it.

Turned on by the configuration::

    [metrics]
    listen = "127.0.0.1:9745"
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from esp.gateway.metrics import DataplaneCollector, MetricsServer, serve_metrics

__all__ = ["IkeCollector", "serve_daemon_metrics"]

log = logging.getLogger(__name__)

#: Drop reasons the dispatcher and exchanges count (``dropped_<reason>``), exported at 0 until they happen
#: so that rate() and alerts see the series from the start; others appear when first counted.
DROP_REASONS = ("oversized", "bad_flags", "unknown_spi", "half_open_source_limit", "half_open_limit", "no_nonce",
                "no_peer_config", "internal_error", "unexpected_response", "message_id", "integrity", "malformed")
#: The core's other counters with a metric of their own: stats key -> (metric name, help).
CORE_COUNTERS = {
    "received": ("espresso_ike_messages_received", "IKE messages the core accepted for parsing"),
    "retransmits": ("espresso_ike_retransmits", "requests retransmitted (no answer in time)"),
    "duplicates_answered": ("espresso_ike_duplicates_answered", "retransmitted requests answered again"),
    "cookies_sent": ("espresso_ike_cookies_sent", "COOKIE notifies sent (RFC 7296 2.6, under load)"),
    "half_open_evicted": ("espresso_ike_half_open_evicted", "half-open IKE_SAs evicted for new ones (RFC 8019)"),
}
#: Daemon events (ike.events class names) tallied: the outcomes of exchanges.
EVENTS = ("IkeSaEstablished", "IkeSaRekeyed", "IkeSaTerminated", "AuthenticationFailed", "ChildSaEstablished",
          "ChildSaRekeyed", "ChildSaDeleted", "ChildSaFailed")


class IkeCollector:
    """Metric families of a :class:`ike.daemon.Daemon`. Reading never raises: a failed section is logged and
    counted in ``espresso_ike_metrics_collect_errors_total``."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.errors = 0

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        for section in (self._sas, self._events, self._core, self._endpoint):
            try:
                yield from section()
            except Exception as exc:  # the endpoint stays up whatever one table does
                self.errors += 1
                log.warning("metrics: %s failed: %s: %s", section.__name__, type(exc).__name__, exc)
        yield CounterMetricFamily("espresso_ike_metrics_collect_errors",
                                  "IKE metric sections that failed to read",
                                  value=self.errors)

    def _sas(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        d = self.daemon
        ike = GaugeMetricFamily("espresso_ike_sas", "IKE_SAs by peer and state (ESTABLISHED: up)",
                                labels=["peer", "state"])
        tally: dict[tuple[str, str], int] = {}
        for rec in list(d.ike_sas.values()):
            if rec.state != "DELETED":
                tally[(rec.peer, rec.state)] = tally.get((rec.peer, rec.state), 0) + 1
        for peer in sorted({p.name for p in d.config.core.peers}):
            tally.setdefault((peer, "ESTABLISHED"), 0)
        for (peer, state), n in sorted(tally.items()):
            ike.add_metric([peer, state], n)
        yield ike
        child = GaugeMetricFamily("espresso_ike_child_sas", "CHILD_SAs installed, by peer, child and state "
                                  "(INSTALLED; REKEYED: replaced, inbound still open)",
                                  labels=["peer", "child", "state"])
        tally = {}
        for c in list(d.children.values()):
            key = (c.event.peer, c.event.child, c.state)
            tally[key] = tally.get(key, 0) + 1  # type: ignore[index]
        for key, n in sorted(tally.items()):  # type: ignore[arg-type]
            child.add_metric(list(key), n)
        yield child
        half = GaugeMetricFamily("espresso_ike_half_open_sas",
                                 "responder IKE_SAs that have not completed IKE_AUTH")
        half_open = getattr(d.core, "half_open", None)
        half.add_metric([], half_open() if callable(half_open) else 0)
        yield half

    def _events(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        counts = dict(getattr(self.daemon, "event_counts", {}))
        fam = CounterMetricFamily("espresso_ike_events", "IKE and CHILD_SA outcomes (exchanges that completed or "
                                  "failed), by event", labels=["event"])
        for name in sorted(set(EVENTS) | set(counts)):
            fam.add_metric([name], counts.get(name, 0))
        yield fam
        yield CounterMetricFamily("espresso_ike_auth_failures", "IKE_AUTH failures (ours or the peer's)",
                                  value=counts.get("AuthenticationFailed", 0))

    def _core(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        stats = dict(getattr(self.daemon.core, "stats", {}) or {})
        drops = CounterMetricFamily("espresso_ike_dropped_messages", "IKE messages the dispatcher and the "
                                    "exchanges dropped, by reason", labels=["reason"])
        reasons = {k[len("dropped_"):]: v for k, v in stats.items() if k.startswith("dropped_")}
        reasons["malformed_sealed"] = stats.get("malformed_sealed", 0)
        for r in sorted(set(DROP_REASONS) | set(reasons)):
            drops.add_metric([r], reasons.get(r, 0))
        yield drops
        for key, (name, doc) in CORE_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))

    def _endpoint(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        d = self.daemon
        st = dict(d.endpoint.stats)
        msgs = CounterMetricFamily("espresso_ike_datagrams", "IKE datagrams through the daemon's sockets",
                                   labels=["direction"])
        msgs.add_metric(["in"], st.pop("ike_in", 0))
        msgs.add_metric(["out"], st.pop("ike_out", 0))
        yield msgs
        other = CounterMetricFamily("espresso_ike_socket_events", "the UDP adapter's other counters (malformed, "
                                    "keepalives, send errors, ESP on the IKE sockets ...)", labels=["counter"])
        for k in sorted(st):
            other.add_metric([k], st[k])
        yield other
        esp = CounterMetricFamily("espresso_ike_esp_socket_packets", "ESP the daemon itself carried on its UDP "
                                  "socket (no [gateway]): in/out, ok/dropped/undelivered", labels=["counter"])
        for k, v in sorted(dict(d.counters).items()):
            esp.add_metric([k], v)
        yield esp


def _child_labels(daemon: Any) -> Any:
    """Per-SA labels naming the IKE peer and CHILD_SA an ESP SA belongs to (empty for SAs not from IKE)."""
    def labels(entry: Any) -> dict[str, str]:
        spi = entry.spi
        child = daemon.children.get(spi) if entry.direction == "in" else None
        if entry.direction == "out":
            spi_in = daemon._by_out.get(spi)
            child = daemon.children.get(spi_in) if spi_in is not None else None
        if child is None:
            return {}
        return {"ike": child.event.peer, "child": child.event.child}
    return labels


def serve_daemon_metrics(daemon: Any, listen: str | tuple[str, int]) -> MetricsServer:
    """Serve the daemon's IKE metrics and its data plane's (with the gateway's, under ``[gateway]``).

    Raises esp.gateway.metrics.MetricsUnavailable (library missing, address refused) with one line."""
    dp = DataplaneCollector(daemon.dataplane, gateway=daemon.gateway, sa_labels=_child_labels(daemon),
                            sa_label_names=("ike", "child"))
    return serve_metrics(listen, [IkeCollector(daemon), dp])
