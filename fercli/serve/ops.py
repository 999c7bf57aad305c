"""What `fer serve` tells its operators: readiness, the draining state, and one ASGI middleware
that counts, times and logs every request (and refuses new ones while draining).

Readiness: /readyz is 200 only once the model is loaded and one warm-up forward pass (a blank
48x48 crop) has run; 503 while starting, after a failed warm-up, and while draining.
Draining (SIGTERM, SIGINT; see lifecycle.py): requests already being answered finish; new ones
get 503 with `Retry-After: 1` and a one-line JSON error, except the probes and the scrape
(/healthz, /readyz, /metrics), which keep answering.
The access log: one JSON line per request on stderr, logger `fercli.serve.access`:
{"time", "method", "route", "status", "ms", "faces", "client"}. Never a body, a header or a
query string; "route" is the route's path ("other" for paths the app does not serve), so
neither the log nor the metrics' labels grow with what clients send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from fercli.serve.metrics import Metrics

ACCESS_LOGGER = "fercli.serve.access"
ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz", "/metrics"})  # also while draining
WARM_UP_CROP = np.zeros((1, 48, 48), np.uint8)


class _StderrHandler(logging.Handler):
    """Writes to the sys.stderr of the moment (so a test's capture sees it too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never fail a request
            self.handleError(record)


def access_logger() -> logging.Logger:
    log = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(logging.INFO)
    log.propagate = False  # one line per request, whatever the root logger does
    return log


class Ops:
    """Readiness, draining, requests in flight, the metrics; one per app."""

    def __init__(self, *, access_log: bool) -> None:
        self.metrics = Metrics()
        self.ready = False
        self.warm_error: str | None = None
        self.draining = False
        self.in_flight = 0
        self.log = access_logger() if access_log else None

    def not_ready(self) -> str | None:
        """Why /readyz answers 503, or None when ready."""
        if self.draining:
            return "draining: the server is shutting down"
        if self.warm_error is not None:
            return f"the warm-up forward pass failed: {self.warm_error}"
        if not self.ready:
            return "starting: the warm-up forward pass has not run yet"
        return None

    def start_warm_up(self, classify: Callable[[np.ndarray], Any]) -> threading.Thread:
        """One forward pass of a blank crop, off the event loop; then ready."""
        def run() -> None:
            try:
                classify(WARM_UP_CROP)
            except Exception as exc:  # noqa: BLE001 - reported by /readyz, one line
                self.warm_error = " ".join(f"{type(exc).__name__}: {exc}".split())
                return
            self.ready = True

        t = threading.Thread(target=run, name="fer-warm-up", daemon=True)
        t.start()
        return t


def _route_resolver(app: Any) -> Callable[[str], str]:
    """path -> the route label: an exact route path, a mount's prefix, else "other"."""
    cache: dict[str, Any] = {}

    def route_of(path: str) -> str:
        if not cache:  # the routes are all declared by the first request
            cache["exact"] = frozenset(r.path for r in app.routes if not hasattr(r, "routes"))
            cache["mounts"] = tuple(r.path for r in app.routes if hasattr(r, "routes"))
        if path in cache["exact"]:
            return path
        return next((m for m in cache["mounts"] if path.startswith(m + "/")), "other")

    return route_of


_DRAINING = json.dumps({"error": "the server is shutting down: retry (on another instance)"}).encode()
_CUT = json.dumps({"error": "the server shut down before answering (the drain ran past --drain-s): retry"}).encode()


async def _send_503(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class OpsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: the body streams through untouched)."""

    def __init__(self, app: Any, *, ops: Ops, routes: Any) -> None:
        self.app = app
        self.ops = ops
        self.route_of = _route_resolver(routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ops = self.ops
        route = self.route_of(scope["path"])
        start = time.perf_counter()
        state = scope.setdefault("state", {})  # request.state: the predict route puts "faces" here
        status = 500  # what an exception without an answer becomes
        ops.in_flight += 1
        try:
            if ops.draining and route not in ALWAYS_ANSWERED:
                status = 503
                await _send_503(send, _DRAINING)
                return
            started = False

            async def send_status(message: dict) -> None:
                nonlocal status, started
                if message["type"] == "http.response.start":
                    status, started = message["status"], True
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            except asyncio.CancelledError:  # cut by a drain that ran out of time: say so
                if ops.draining and not started:
                    status = 503
                    await _send_503(send, _CUT)
                raise
        finally:
            ops.in_flight -= 1
            seconds = time.perf_counter() - start
            ops.metrics.observe_request(route, status, seconds)
            if ops.log is not None:
                ops.log.info(access_line(scope, route, status, seconds, state.get("faces")))


def access_line(scope: dict, route: str, status: int, seconds: float, faces: int | None) -> str:
    client = scope.get("client")
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"time": now, "method": scope.get("method"), "route": route, "status": status,
                       "ms": round(seconds * 1000, 2), "faces": faces,
                       "client": f"{client[0]}:{client[1]}" if client else None})
