"""Prometheus metrics of a hub, with ``prometheus_client`` (``pip install 'wshub[metrics]'``).

Turned on by ``HttpServer(metrics_path="/metrics")`` (the server's own
port), ``ws.asgi(app, metrics_path="/metrics")`` (the ASGI adapter) or
``wshub serve --metrics /metrics``.  Nothing is measured for metrics on
the way of a message: the hub keeps plain integer totals
(:class:`~wshub.hub.stats.HubStats`) and the links count their bytes
anyway; :class:`HubCollector` reads them when the endpoint is scraped.
docs/deploy.md ("Metrics") lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        GC_COLLECTOR,
        PLATFORM_COLLECTOR,
        PROCESS_COLLECTOR,
        CollectorRegistry,
        generate_latest,
    )
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised by the install without the extra
    raise ImportError("wshub metrics need prometheus_client: pip install 'wshub[metrics]'") from exc

from .http import Request, Response
from .hub.stats import RTT_BUCKETS, HubStats

if TYPE_CHECKING:
    from .hub import WebSocket

__all__ = ["CARRIERS", "HubCollector", "MetricsEndpoint", "check_metrics_path"]

#: The ``transport`` label values of ``wshub_open_connections`` (always reported).
CARRIERS = ("http1", "h2", "asgi")


def check_metrics_path(path: object) -> str:
    """A metrics path as given to the server or adapter: ``/`` and more, no query."""
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or len(path) < 2:
        raise ValueError(f"metrics_path must be a path such as '/metrics', not {path!r}")
    return path


class HubCollector(Collector):
    """Reads a hub's :class:`~wshub.hub.stats.HubStats` at each scrape.

    Register it with your own ``prometheus_client`` registry to publish the
    hub's metrics next to yours: ``REGISTRY.register(HubCollector(ws))``.
    It turns the hub's metrics on (:meth:`WebSocket.enable_metrics`): what
    happened before is not counted.
    """

    def __init__(self, hub: WebSocket) -> None:
        hub.enable_metrics()
        self._stats: HubStats = hub.stats

    def collect(self) -> Iterator[Metric]:
        snap = self._stats.snapshot()
        opened = GaugeMetricFamily(
            "wshub_open_connections",
            "WebSocket connections open now, by what carries them",
            labels=["transport"],
        )
        for carrier in CARRIERS:
            opened.add_metric([carrier], snap.open_by_carrier.get(carrier, 0))
        yield opened
        yield GaugeMetricFamily(
            "wshub_clients_over_write_high",
            "Open clients with more than write_high bytes waiting to be sent",
            value=snap.over_write_high,
        )
        handshakes = CounterMetricFamily(
            "wshub_handshakes",
            "WebSocket upgrades by the HTTP status of the answer (101: accepted)",
            labels=["status"],
        )
        for status, count in sorted(snap.handshakes.items()):
            handshakes.add_metric([str(status)], count)
        yield handshakes
        yield CounterMetricFamily(
            "wshub_received_messages",
            "Messages received from clients",
            value=snap.messages_received,
        )
        yield CounterMetricFamily(
            "wshub_sent_messages",
            "Messages queued for clients (send, broadcast, routed)",
            value=snap.messages_sent,
        )
        yield CounterMetricFamily(
            "wshub_received_bytes",
            "Bytes read from WebSocket clients (handshake and frames; ASGI: payloads)",
            value=snap.bytes_received,
        )
        yield CounterMetricFamily(
            "wshub_sent_bytes",
            "Bytes written to WebSocket clients (handshake and frames; ASGI: payloads)",
            value=snap.bytes_sent,
        )
        closes = CounterMetricFamily(
            "wshub_closes", "Closed WebSocket connections by close code", labels=["code"]
        )
        for code, count in sorted(snap.closes.items()):
            closes.add_metric([str(code)], count)
        yield closes
        cumulative = []
        total = 0
        for bound, count in zip((*RTT_BUCKETS, float("inf")), snap.rtt_buckets, strict=True):
            total += count
            cumulative.append((_bound_label(bound), total))
        yield HistogramMetricFamily(
            "wshub_ping_rtt_seconds",
            "Time from the server's ping to the client's pong",
            buckets=cumulative,
            sum_value=snap.rtt_sum,
        )
        resumes = CounterMetricFamily(
            "wshub_resumes",
            "wshub.v1 resumes (a client's since answered) by outcome: recovered "
            "(every missed message), truncated (history too short), reset",
            labels=["outcome"],
        )
        for outcome in ("recovered", "truncated", "reset"):
            resumes.add_metric([outcome], snap.resumes.get(outcome, 0))
        yield resumes
        backplane = snap.backplane
        if backplane is not None:
            yield GaugeMetricFamily(
                "wshub_backplane_connected",
                "1 while the cluster backplane is connected",
                value=1 if backplane.connected else 0,
            )
            yield GaugeMetricFamily(
                "wshub_backplane_queue_messages",
                "Cross-node messages waiting to be published",
                value=backplane.queued_messages,
            )
            yield GaugeMetricFamily(
                "wshub_backplane_queue_bytes",
                "Bytes of the cross-node messages waiting to be published",
                value=backplane.queued_bytes,
            )
            yield CounterMetricFamily(
                "wshub_backplane_dropped_messages",
                "Cross-node messages dropped (queue full or backplane down)",
                value=backplane.dropped_messages,
            )
            yield CounterMetricFamily(
                "wshub_backplane_reconnects",
                "Backplane sessions opened after a lost or failed one",
                value=backplane.reconnects,
            )


def _bound_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class MetricsEndpoint:
    """The plain-HTTP answer to a scrape at ``path``: ``hub``'s metrics and the process's.

    A handler (``Request`` -> ``Response``) for :meth:`HttpServer.add_endpoint`;
    the ASGI adapter calls :meth:`body` itself.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, path: str, hub: WebSocket) -> None:
        self.path = check_metrics_path(path)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(HubCollector(hub))
        # The standard process figures (CPU, memory, file descriptors, GC),
        # read from the same collectors prometheus_client's default registry uses.
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(standard)
        self.registry = registry

    def body(self) -> bytes:
        """The text exposition of every metric now."""
        return generate_latest(self.registry)

    def respond(self, method: str) -> Response:
        """The answer to a ``method`` request for :attr:`path` (GET or HEAD; else 405)."""
        if method not in ("GET", "HEAD"):
            return Response.text(405, "Method Not Allowed\n", [("Allow", "GET, HEAD")])
        body = self.body()
        return Response(
            b"" if method == "HEAD" else body,
            headers=[("Cache-Control", "no-store")],
            content_type=self.content_type,
        )

    def __call__(self, request: Request) -> Response:
        return self.respond(request.method)
