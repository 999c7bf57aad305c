"""Running the app under uvicorn with a graceful shutdown (a drain).

On SIGTERM or SIGINT the server drains: /readyz turns 503 at once and new requests get 503
(ops.py), the requests in flight are answered, and then uvicorn stops (listeners closed, idle
connections closed, the batcher finished) and the process exits 0. If requests are still in
flight after `--drain-s` seconds, it stops at once anyway (their connections are closed
unanswered), and so does a second signal during the drain.

uvicorn's own handler would set `should_exit` at the first signal (no drain) and re-raise the
signal after shutdown (so the exit status would be the signal's); this Server does neither.
"""

from __future__ import annotations

import logging
import time
from types import FrameType
from typing import Any

import uvicorn

from fercli.serve.config import ServeConfig
from fercli.serve.ops import Ops

log = logging.getLogger("uvicorn.error")  # uvicorn's own log: its level and format


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ops: Ops, drain_s: float) -> None:
        super().__init__(config)
        self.ops = ops
        self.drain_s = drain_s
        self.drain_deadline: float | None = None
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler: only flags here (no logging, no locks).
        if self.ops.draining:  # a second signal: stop now
            self.should_exit = True
            self.force_exit = True
            return
        self.drain_deadline = time.monotonic() + self.drain_s
        self.ops.draining = True

    async def on_tick(self, counter: int) -> bool:
        if self.ops.draining and not self.should_exit and self.drain_deadline is not None:
            if not self._announced:
                self._announced = True
                log.info("Draining: %d request(s) in flight; new requests get 503 (up to %g s)",
                         self.ops.in_flight, self.drain_s)
            if self.ops.in_flight == 0:
                log.info("Drained: every request in flight was answered")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.warning("Drain timed out after %g s with %d request(s) in flight (--drain-s): "
                            "closing their connections", self.drain_s, self.ops.in_flight)
                self.should_exit = True
                self.force_exit = True  # no waiting on them (or on a forward pass stuck under them)
        return await super().on_tick(counter)


def run(app: Any, cfg: ServeConfig, ops: Ops) -> None:
    """Serve `app` until a signal has drained it; returns normally (exit status 0)."""
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_keep_alive=5,
                            server_header=False, access_log=False,  # ops.py logs each request once
                            timeout_graceful_shutdown=1, ssl_certfile=cfg.ssl_certfile, ssl_keyfile=cfg.ssl_keyfile)
    DrainingServer(config, ops, cfg.drain_s).run()
