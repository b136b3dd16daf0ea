"""
Prometheus metrics, read from the server's own statistics at each scrape.

Nothing is counted twice: L{ServerCollector} turns L{tftpd_tx.stats}'s
counters and histograms (the one source, which the log lines, the session
callbacks and the manhole also read) into metric families when Prometheus
asks, so serving costs nothing per packet.  The registry is private (no
global state, nothing imported that installs a reactor), and its metric
names follow Prometheus's conventions: base units, C{_total} on counters,
no label that carries a file name or a client address.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from . import health

__all__ = ["CONTENT_TYPE", "OriginCollector", "ServerCollector", "make_registry", "render"]

#: What a scrape's answer is.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The results of a request (C{tftpd_requests_total{result}}), each the sum
#: of the server counters named.
REQUEST_RESULTS = {
    "accepted": ("requests.accepted",),
    # Accepted: a transfer started.  Refused: an ERROR instead (the mode,
    # a write request, the handler), or denied by allow_request.
    "refused": ("requests.refused", "requests.bad_mode", "requests.write", "requests.denied"),
    "duplicate": ("requests.duplicate",),
    "draining": ("requests.drained",),
    "over_cap": (
        "requests.over_sessions",
        "requests.over_client_sessions",
        "requests.over_client_rate",
        "requests.no_descriptors",
    ),
    "malformed": ("datagrams.malformed", "requests.too_large"),
    "low_port": ("datagrams.low_port",),
}

_OUTCOMES = ("completed", "probe", "peer-error", "timeout", "refused", "aborted", "evicted")


def _histogram(name: str, documentation: str, histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name,
        documentation,
        buckets=[(repr(float(bound)) if bound != float("inf") else "+Inf", count)
                 for bound, count in histogram.cumulative()],
        sum_value=histogram.sum,
    )  # fmt: skip


class ServerCollector:
    """
    The metrics of one server, made at each scrape from its statistics.

    @param server: the L{tftpd_tx.server.TFTPServer}.
    @param health: its L{tftpd_tx.health.Health}, or L{None}.
    @param lag: its L{tftpd_tx.health.ReactorLag}, or L{None}.
    @param version: what C{tftpd_build_info} says.
    """

    def __init__(self, server, health=None, lag=None, version: str = "") -> None:
        self._server = server
        self._health = health
        self._lag = lag
        self._version = version

    def collect(self):
        server = self._server
        counters = server.stats.counters
        info = InfoMetricFamily("tftpd_build", "The tftpd_tx that serves.")
        info.add_metric([], {"version": self._version})
        yield info
        requests = CounterMetricFamily(
            "tftpd_requests", "Read requests by what became of them.", labels=["result"]
        )
        for result, names in REQUEST_RESULTS.items():
            requests.add_metric([result], sum(counters[name] for name in names))
        yield requests
        transfers = CounterMetricFamily(
            "tftpd_transfers", "Finished transfers by outcome.", labels=["outcome"]
        )
        for outcome in _OUTCOMES:
            transfers.add_metric([outcome], counters["outcome." + outcome])
        yield transfers
        yield GaugeMetricFamily(
            "tftpd_transfers_active", "Transfers running now.",
            value=server.stats.active_sessions,
        )  # fmt: skip
        yield _histogram(
            "tftpd_transfer_duration_seconds",
            "How long finished transfers took, request to end.",
            server.stats.durations,
        )
        yield _histogram(
            "tftpd_first_packet_seconds",
            "From a request to its first OACK or DATA: the handler's (and an "
            "origin's) latency.",
            server.stats.first_packet,
        )
        for name, documentation, counter in (
            ("tftpd_bytes_sent", "DATA payload bytes sent.", "bytes_sent"),
            ("tftpd_datagrams_sent", "Datagrams sent by transfers.", "packets_sent"),
            ("tftpd_retransmits", "Datagrams sent again by the retransmit timer.", "retransmits"),
            ("tftpd_spurious_timeouts",
             "Retransmit timeouts of finished transfers that the client showed "
             "were not needed (it acknowledged the first copy, then the second).",
             "spurious_rtos"),
            ("tftpd_abandoned_transfers",
             "Transfers that timed out after the client had acknowledged a block.",
             "transfers.abandoned"),
        ):  # fmt: skip
            yield CounterMetricFamily(name, documentation, value=counters[counter])
        yield CounterMetricFamily(
            "tftpd_stray_datagrams",
            "Datagrams for a transfer this server does not have.",
            value=counters["datagrams.stray"] + counters["datagrams.ignored"],
        )
        handback = CounterMetricFamily(
            "tftpd_handback_datagrams",
            "Strays handed to the other servers of the fleet (sent, send_failed, "
            "over_rate) and handed in by them (delivered, unknown, refused); "
            "see --handback.",
            labels=["result"],
        )
        for result in ("sent", "send_failed", "over_rate", "delivered", "unknown", "refused"):
            handback.add_metric([result], counters["handback." + result])
        yield handback
        yield GaugeMetricFamily(
            "tftpd_draining", "1 while new requests are refused.", value=int(server.draining)
        )
        if self._health is not None:
            state = self._health.report()["state"]
            grades = GaugeMetricFamily(
                "tftpd_health_state", "1 for the server's health grade.", labels=["state"]
            )
            for each in health.STATES:
                grades.add_metric([each], int(each == state))
            yield grades
        if self._lag is not None:
            yield _histogram(
                "tftpd_reactor_lag_seconds",
                "How late the reactor ran a timer.",
                self._lag.histogram,
            )


class OriginCollector:
    """
    The metrics of an L{tftpd_tx.origin.OriginHandler}, from its
    L{tftpd_tx.origin.OriginStats} at each scrape.
    """

    def __init__(self, origin) -> None:
        self._origin = origin

    def collect(self):
        stats = self._origin.stats
        results = CounterMetricFamily(
            "tftpd_origin_requests",
            "TFTP requests answered from the origin, by how.",
            labels=["result"],
        )
        for result, count in stats.results().items():
            results.add_metric([result], count)
        yield results
        for name, documentation, value in (
            ("tftpd_origin_gets", "GET requests sent to the origin.", stats.origin_requests),
            ("tftpd_origin_errors", "Origin failures: 5xx, timeouts, refused, cut short.",
             stats.errors),
            ("tftpd_origin_bytes", "Body bytes received from the origin.",
             stats.bytes_from_origin),
            ("tftpd_origin_cache_bytes_served", "Bytes transfers read from the cache.",
             stats.bytes_from_cache),
        ):  # fmt: skip
            yield CounterMetricFamily(name, documentation, value=value)
        yield HistogramMetricFamily(
            "tftpd_origin_latency_seconds",
            "How long the origin took to answer (headers).",
            buckets=[
                ("+Inf" if bound == float("inf") else repr(float(bound)), count)
                for bound, count in stats.latency_buckets.items()
            ],
            sum_value=stats.latency_sum,
        )
        yield GaugeMetricFamily(
            "tftpd_origin_failing", "1 while the origin fails.", value=int(self._origin.failing)
        )


def make_registry(collector: ServerCollector) -> CollectorRegistry:
    """
    A private registry with C{collector} and the process's own metrics
    (CPU, memory, descriptors).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """
    The text exposition of everything in C{registry}.
    """
    return generate_latest(registry)
