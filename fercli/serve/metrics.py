"""`GET /metrics`: the server's Prometheus metrics, in a registry of its own per app.

Each app gets its own CollectorRegistry (not prometheus_client's global one), so several apps
in one process (the tests) never share or collide on a metric. Names, in the text format:

  fer_requests_total{route,status}        requests answered, by route and HTTP status
  fer_request_duration_seconds{route}     time from the request's arrival to its answer
  fer_requests_in_flight                  requests being answered (a scrape counts itself)
  fer_detect_duration_seconds             decode + detect + crop of one image
  fer_queue_wait_seconds                  one request's faces waiting in the micro-batcher
                                          before their forward pass
  fer_forward_duration_seconds            one forward pass (one classify call)
  fer_batch_faces                         faces per forward pass
  fer_queue_faces                         faces waiting in the micro-batcher now
  fer_model_info{name,backend,precision,detector,version}   1, the model that answers
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.exposition import generate_latest

from fercli import __version__

# Seconds: from a fast forward pass of a few faces (~1 ms) to a request stuck behind a crowd.
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FACE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The metric objects of one app and the text that /metrics answers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("fer_requests", "Requests answered, by route and HTTP status.",
                                ("route", "status"), registry=r)
        self.latency = Histogram("fer_request_duration_seconds", "Time from a request's arrival to its answer.",
                                 ("route",), buckets=TIME_BUCKETS, registry=r)
        self.in_flight = Gauge("fer_requests_in_flight", "Requests being answered, this scrape included.",
                               registry=r)
        self.detect = Histogram("fer_detect_duration_seconds", "Decode, detect and crop of one image.",
                                buckets=TIME_BUCKETS, registry=r)
        self.queue_wait = Histogram("fer_queue_wait_seconds",
                                    "Time a request's faces waited in the micro-batcher before their forward pass.",
                                    buckets=TIME_BUCKETS, registry=r)
        self.forward = Histogram("fer_forward_duration_seconds", "One forward pass (one classify call).",
                                 buckets=TIME_BUCKETS, registry=r)
        self.batch_faces = Histogram("fer_batch_faces", "Faces per forward pass.", buckets=FACE_BUCKETS, registry=r)
        self.queue_faces = Gauge("fer_queue_faces", "Faces waiting in the micro-batcher for a forward pass.",
                                 registry=r)
        self.model = Info("fer_model", "The model that answers.", registry=r)

    def watch(self, in_flight: Callable[[], float], queued: Callable[[], float]) -> None:
        """Read the two gauges from their owners at each scrape (one source of truth)."""
        self.in_flight.set_function(in_flight)
        self.queue_faces.set_function(queued)

    def set_model(self, recognizer: Any) -> None:
        info = getattr(recognizer, "info", None) or {}
        runner = info.get("runner") or {}
        self.model.info({"name": str(info.get("name", "")), "backend": str(runner.get("backend", "")),
                         "precision": str(runner.get("precision", "")),
                         "detector": str(runner.get("detector", "")), "version": __version__})

    def on_batch(self, n_faces: int, queue_seconds: Sequence[float], forward_seconds: float) -> None:
        """The micro-batcher's hook: one forward pass of `n_faces`, each request's wait."""
        self.batch_faces.observe(n_faces)
        self.forward.observe(forward_seconds)
        for s in queue_seconds:
            self.queue_wait.observe(s)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """(the text format, its Content-Type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
