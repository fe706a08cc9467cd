"""Prometheus metrics of the hub process, on a registry of their own.

Metrics describe the process, not one app instance, so they live at module level like
prometheus-client intends; `GET /metrics` renders `REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pubsub.broker import Broker

REGISTRY: Final = CollectorRegistry()

STREAMS_OPEN: Final = Gauge("progress_streams_open", "Open SSE streams", registry=REGISTRY)
SUBSCRIPTIONS: Final = Gauge(
    "progress_subscriptions", "Broker channels this process listens to", registry=REGISTRY
)
EVENTS_PUBLISHED: Final = Counter(
    "progress_events_published", "Updates accepted over HTTP", registry=REGISTRY
)
EVENTS_DELIVERED: Final = Counter(
    "progress_events_delivered", "Events queued to open streams", registry=REGISTRY
)
FRAMES_CONFLATED: Final = Counter(
    "progress_frames_conflated", "Stream backlogs conflated for slow clients", registry=REGISTRY
)
MESSAGES_IGNORED: Final = Counter(
    "progress_messages_ignored", "Malformed broker messages dropped", registry=REGISTRY
)
BROKER_RECONNECTS: Final = Counter(
    "progress_broker_reconnects", "Subscription feed reconnects", registry=REGISTRY
)
SLOW_CLIENT_DISCONNECTS: Final = Counter(
    "progress_slow_client_disconnects",
    "Streams dropped because their client read nothing for the send timeout",
    registry=REGISTRY,
)
STREAMS_REFUSED: Final = Counter(
    "progress_streams_refused", "Streams turned away (limit or outage)", registry=REGISTRY
)
PUBLISH_SECONDS: Final = Histogram(
    "progress_publish_seconds", "HTTP publish latency", registry=REGISTRY
)


class FeedCollector(Collector):
    """The broker feed's shard connections (up or not, by node) and re-subscriptions,
    read from the broker at each scrape (`watch_feed`)."""

    def __init__(self) -> None:
        self.broker: Broker | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "progress_feed_shard_up",
            "1 while this process's subscription connection to a shard node is up",
            labels=["node"],
        )
        again = CounterMetricFamily(
            "progress_feed_resubscriptions",
            "Subscriptions made again after a possible gap (lost connection, moved slot)",
        )
        broker = self.broker
        if broker is not None:
            for node, connected in sorted(broker.feed_shards().items()):
                up.add_metric([node], 1.0 if connected else 0.0)
            again.add_metric([], broker.feed_resubscriptions)
        yield up
        yield again


FEED: Final = FeedCollector()
REGISTRY.register(FEED)


def watch_feed(broker: Broker | None) -> None:
    """Report `broker`'s feed in the metrics from now on (None: stop)."""
    FEED.broker = broker


Footprint = Callable[[], Mapping[str, int]]


class HeldCollector(Collector):
    """The size of every structure of the hub process that holds something per job or
    per stream, by name (`progress_held{structure=...}`), read at each scrape: with no
    stream open each is back to its size at start, or within its fixed bound
    (docs/production.md, metrics; tests/app/test_growth.py)."""

    def __init__(self) -> None:
        self.sources: tuple[tuple[str, Footprint], ...] = ()

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "progress_held",
            "Entries held by one structure of this process (streams, channels, caches)",
            labels=["structure"],
        )
        for prefix, footprint in self.sources:
            for name, size in sorted(footprint().items()):
                held.add_metric([prefix + name], size)
        yield held


HELD: Final = HeldCollector()
REGISTRY.register(HELD)


def watch_held(*sources: tuple[str, Footprint]) -> None:
    """Report these footprints (a name prefix, the function) from now on (none: stop)."""
    HELD.sources = sources
