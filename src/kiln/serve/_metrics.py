"""The gateway's Prometheus metrics, in a registry of its own per app.

A registry per app (not prometheus-client's global one) lets two gateways live in one process,
a test's and a notebook's, without their counts mixing or their names clashing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Counters, gauges and histograms of one gateway."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("kiln_gateway_requests", "HTTP requests received",
                                ["endpoint"], registry=r)
        self.distributed = Counter("kiln_gateway_requests_distributed",
                                   "requests answered by cluster agents", registry=r)
        self.local_fallback = Counter("kiln_gateway_requests_local_fallback",
                                      "requests encoded in the gateway process (no agent could)",
                                      registry=r)
        self.failed = Counter("kiln_gateway_requests_failed", "requests answered with an error",
                              ["endpoint", "reason"], registry=r)
        self.failovers = Counter("kiln_gateway_failovers",
                                 "agent calls retried on another agent", ["reason"], registry=r)
        self.texts = Counter("kiln_gateway_texts", "texts embedded", registry=r)
        self.cache_hits = Counter("kiln_gateway_cache_hits", "texts served from an agent cache",
                                  registry=r)
        self.cache_misses = Counter("kiln_gateway_cache_misses", "texts encoded afresh",
                                    registry=r)
        self.truncated = Counter("kiln_gateway_truncated_texts",
                                 "texts cut at the model's maximum length", registry=r)
        self.node_requests = Counter("kiln_gateway_node_requests",
                                     "agent calls answered, per node", ["node"], registry=r)
        self.latency = Histogram("kiln_gateway_request_seconds", "request latency",
                                 ["endpoint"], buckets=_BUCKETS, registry=r)
        self.agent_latency = Histogram("kiln_gateway_agent_call_seconds",
                                       "latency of one call to an agent", ["node"],
                                       buckets=_BUCKETS, registry=r)
        self.agents_ready = Gauge("kiln_gateway_agents_ready", "agents ready to take requests",
                                  registry=r)
        self.inflight = Gauge("kiln_gateway_inflight", "requests being served", registry=r)
        self.cancelled = Counter("kiln_gateway_agent_calls_cancelled",
                                 "agent calls cancelled: past the request's deadline, or "
                                 "superseded", registry=r)
        self.cluster_attached = Gauge("kiln_gateway_cluster_attached",
                                      "1 while the gateway is attached to its cluster",
                                      registry=r)

    def stalls(self, loop_lag: Callable[[], dict[str, Any]],
               collections: Callable[[], dict[str, Any]]) -> None:
        """Export what a slow request may have waited for, read when scraped: the event loop's
        lateness (``serve/_lag.py``) and this process's garbage collections (``kiln._gc``)."""
        self.registry.register(_Stalls(loop_lag, collections))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when absent), e.g. ``value("kiln_gateway_failovers_total")``."""
        got = self.registry.get_sample_value(name, labels or None)
        return float(got or 0.0)


class _Stalls:
    """A collector of counters kept elsewhere (``Metrics.stalls``)."""

    def __init__(self, loop_lag: Callable[[], dict[str, Any]],
                 collections: Callable[[], dict[str, Any]]) -> None:
        self.loop_lag, self.collections = loop_lag, collections

    def collect(self) -> Any:
        lag, gc = self.loop_lag(), self.collections()
        yield _labelled("kiln_gateway_event_loop_late",
                        "event loop timers that ran late by at least over_ms", "over_ms",
                        lag["late_over_ms"])
        yield CounterMetricFamily("kiln_gateway_event_loop_late_seconds",
                                  "seconds the event loop's timers ran late, in all",
                                  value=lag["late_s"])
        yield _labelled("kiln_gateway_gc_collections", "garbage collections", "generation",
                        dict(enumerate(gc["collections"])))
        yield _labelled("kiln_gateway_gc_seconds", "seconds garbage collections paused the "
                        "process", "generation", dict(enumerate(gc["seconds"])))
        yield _labelled("kiln_gateway_gc_pauses",
                        "garbage collections that paused at least over_ms", "over_ms",
                        gc["pauses_over_ms"])


def _labelled(name: str, doc: str, label: str, values: dict[Any, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([str(key)], value)
    return family
