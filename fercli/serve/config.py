"""The one frozen config of `fer serve` and its checks."""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass, field

from fercli.errors import FerError
from fercli.infer.config import PredictConfig
from fercli.serve.auth import check_access
from fercli.vision.faces import MAX_DETECT_SIDE, MIN_DETECT_SIDE
from fercli.vision.images import MAX_IMAGE_PIXELS

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback only unless asked; any other address needs a key or no_auth
    port: int = 8000
    model: str | None = None  # run dir | .pt | .npz | .onnx; None = the bundled model
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    # What each face goes through: fer predict's defaults (PredictConfig), so the server
    # answers as fer predict does
    detector: str = PredictConfig.detector
    tta: str = PredictConfig.tta
    margin: float = PredictConfig.margin
    frame: float = PredictConfig.frame
    intensity: str = PredictConfig.intensity
    max_batch: int = 32  # faces per batched forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for requests still detecting (none: no wait)
    max_body_mb: float = 20.0  # larger request bodies get 413 before they are read whole
    max_pixels: int = MAX_IMAGE_PIXELS  # larger images get 413, read from the header
    timeout_s: float = 30.0  # for reading the body, and again for detecting + classifying
    workers_detect: int = 2  # detection threads; 0 = one request at a time, unbatched
    # Long side faces are detected at; None: fer predict's (YuNet 640), so the server answers as
    # fer predict does. Not smaller: at 480 YuNet takes half the time but finds only 131 of the
    # 177 faces 640 finds at 1/10 of a 960 px frame, 320 finds 13 (docs/benchmarks.md).
    detect_max_side: int | None = None
    log_level: str = "info"
    access_log: bool = True  # one JSON line per request on stderr (ops.py)
    drain_s: float = 10.0  # on SIGTERM/SIGINT, how long requests in flight may take to finish
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # Bearer keys; () = no authentication
    no_auth: bool = False  # serve a non-loopback address without keys, on purpose
    max_concurrent: int = 64  # POST /v1/predict in flight beyond this get 503; 0 = no cap
    ssl_certfile: str | None = None  # both set: uvicorn serves https
    ssl_keyfile: str | None = None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))


def validate(cfg: ServeConfig) -> None:
    """FerError (one line, naming the flag) for any value the server cannot run with."""
    if not 1 <= cfg.port <= 65535:
        raise FerError(f"--port must be 1-65535, got {cfg.port}")
    if cfg.log_level not in LOG_LEVELS:
        raise FerError(f"--log-level {cfg.log_level!r} is not one of: {', '.join(LOG_LEVELS)}")
    if cfg.max_batch < 1:
        raise FerError(f"--max-batch must be ≥ 1, got {cfg.max_batch}")
    if not (math.isfinite(cfg.max_wait_ms) and 0 <= cfg.max_wait_ms <= 1000):
        raise FerError(f"--max-wait-ms must be between 0 and 1000, got {cfg.max_wait_ms}")
    if not (math.isfinite(cfg.max_body_mb) and 0 < cfg.max_body_mb <= 1024):
        raise FerError(f"--max-body-mb must be between 0 and 1024, got {cfg.max_body_mb}")
    if not 1 <= cfg.max_pixels <= MAX_IMAGE_PIXELS:
        raise FerError(f"--max-pixels must be between 1 and {MAX_IMAGE_PIXELS} (the decoder's own "
                       f"limit), got {cfg.max_pixels}")
    if not (math.isfinite(cfg.timeout_s) and cfg.timeout_s > 0):
        raise FerError(f"--timeout-s must be > 0, got {cfg.timeout_s}")
    if not (math.isfinite(cfg.drain_s) and 0 <= cfg.drain_s <= 3600):
        raise FerError(f"--drain-s must be between 0 and 3600, got {cfg.drain_s}")
    if not 0 <= cfg.workers_detect <= 64:
        raise FerError(f"--workers-detect must be between 0 and 64, got {cfg.workers_detect}")
    if cfg.detect_max_side is not None and not MIN_DETECT_SIDE <= cfg.detect_max_side <= MAX_DETECT_SIDE:
        raise FerError(f"--detect-max-side must be between {MIN_DETECT_SIDE} and {MAX_DETECT_SIDE}, "
                       f"got {cfg.detect_max_side}")
    if cfg.workers_detect == 0 and cfg.max_batch != 1:
        raise FerError("--workers-detect 0 serves one request at a time (detect, then classify, "
                       "unbatched): give --max-batch 1 with it")
    if not 0 <= cfg.max_concurrent <= 100_000:
        raise FerError(f"--max-concurrent must be between 0 (no cap) and 100000, got {cfg.max_concurrent}")
    check_tls(cfg.ssl_certfile, cfg.ssl_keyfile)
    check_access(cfg.host, cfg.api_keys, cfg.no_auth)


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Both or neither, and the pair loads (the key unencrypted), before uvicorn tries it."""
    if (certfile is None) != (keyfile is None):
        raise FerError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
    if certfile is None or keyfile is None:
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile, password="")
    except (OSError, ssl.SSLError) as exc:
        raise FerError(f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: cannot load them as a "
                       f"PEM certificate and unencrypted key ({exc.strerror or exc})") from None
