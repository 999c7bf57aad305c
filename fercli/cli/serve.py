"""`fer serve`: the recognizer as an HTTP service with a web page (fercli.serve)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from fercli.cli import options
from fercli.cli.app import app
from fercli.serve.auth import ENV_VAR, gather_api_keys
from fercli.serve.config import ServeConfig, validate

S = ServeConfig  # every default below is ServeConfig's own


@app.command()
def serve(
    host: str = typer.Option(S.host, help="Address to bind. The default answers this machine only; any other (0.0.0.0) needs an API key, or --no-auth."),
    port: int = typer.Option(S.port, help="TCP port."),
    model: Optional[str] = typer.Option(S.model, "--model", "-m", help="A `fer train` run directory, a .pt checkpoint, an exported .npz or .onnx. \\[default: the bundled model]"),
    detector: str = typer.Option(S.detector, help="auto (yunet if installed, else haar), yunet, haar or none (each image is one already-cropped face)."),
    backend: str = typer.Option(S.backend, help="auto, torch or onnx, as for `fer predict`."),
    precision: str = typer.Option(S.precision, help="auto, fp32 or int8 (onnxruntime), as for `fer predict`."),
    tta: str = typer.Option(S.tta, help="Test-time augmentation: none, flip, shift, flip-shift or ten-crop (ten-crop with the torch backend only)."),
    device: options.Device = S.device,
    max_batch: int = typer.Option(S.max_batch, help="Most faces classified in one forward pass; requests arriving together share it."),
    max_wait_ms: float = typer.Option(S.max_wait_ms, help="How long a batch waits for requests still being detected (ms); with none on the way a face is classified at once."),
    max_body_mb: float = typer.Option(S.max_body_mb, help="Larger request bodies are refused with 413."),
    max_pixels: int = typer.Option(S.max_pixels, help="Images with more pixels (read from the header, before decoding) are refused with 413."),
    timeout_s: float = typer.Option(S.timeout_s, help="Seconds allowed for the body to arrive (else 408), and again to detect and classify (else 503)."),
    workers_detect: int = typer.Option(S.workers_detect, help="Threads decoding and detecting faces; 0 = one request at a time, unbatched (needs --max-batch 1; a baseline for benchmarks)."),
    detect_max_side: Optional[int] = typer.Option(S.detect_max_side, help="Long side (px) photos are scaled down to for face detection (faces are cropped at full resolution); smaller is faster but misses small faces. \\[default: as `fer predict`: 640 yunet, 1280 haar]"),
    log_level: str = typer.Option(S.log_level, help="uvicorn's log level: critical, error, warning, info, debug."),
    access_log: bool = typer.Option(S.access_log, "--access-log/--no-access-log", help="One JSON line per request on stderr: time, method, route, status, ms, faces, client."),
    drain_s: float = typer.Option(S.drain_s, help="On SIGTERM or Ctrl-C: new requests get 503 while those in flight finish, for at most this many seconds; then the server exits 0."),
    api_key: Optional[List[str]] = typer.Option(list(S.api_keys), "--api-key", metavar="KEY", show_default=False, help=f"A key clients send as 'Authorization: Bearer KEY' (repeatable). Also {ENV_VAR} (comma-separated) and --api-key-file, which other users cannot read in `ps`."),
    api_key_file: Optional[Path] = typer.Option(None, help="A file of API keys, one a line (blank lines and # comment lines skipped)."),
    no_auth: bool = typer.Option(S.no_auth, "--no-auth", help="Serve a non-loopback --host without API keys, on purpose."),
    max_concurrent: int = typer.Option(S.max_concurrent, help="POST /v1/predict requests in flight beyond this get 503 with Retry-After: 1; 0 = no cap."),
    ssl_certfile: Optional[str] = typer.Option(S.ssl_certfile, help="PEM certificate (chain): serve https. Needs --ssl-keyfile."),
    ssl_keyfile: Optional[str] = typer.Option(S.ssl_keyfile, help="PEM private key of --ssl-certfile (unencrypted)."),
) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, GET /healthz, GET /readyz,
    GET /metrics (Prometheus), a web page at /, and the API reference at /docs (a plain page
    from /openapi.json: it opens offline).

    POST an image as the raw body or as the multipart field `file`; the answer is one image of
    `fer predict --json`. Faces of requests arriving together are classified in one batched
    pass. The model is loaded once; request bodies, image sizes and time are capped (413,
    408, 503), non-images get 415/422, each with a one-line JSON {"error": ...}. With API keys
    every path but the page, /healthz, /readyz and the docs needs 'Authorization: Bearer KEY'
    (else 401); any --host but loopback needs a key, or --no-auth.
    """
    cfg = ServeConfig(host=host, port=port, model=model, device=device, backend=backend,
                      precision=precision, detector=detector, tta=tta, max_batch=max_batch,
                      max_wait_ms=max_wait_ms, max_body_mb=max_body_mb, max_pixels=max_pixels,
                      timeout_s=timeout_s, workers_detect=workers_detect, log_level=log_level,
                      access_log=access_log, drain_s=drain_s,
                      api_keys=gather_api_keys(api_key or (), os.environ.get(ENV_VAR), api_key_file),
                      no_auth=no_auth, max_concurrent=max_concurrent, ssl_certfile=ssl_certfile,
                      ssl_keyfile=ssl_keyfile, detect_max_side=detect_max_side)
    validate(cfg)  # flag errors before the model loads
    # deferred: fastapi and uvicorn (~0.2 s to import), which no other command needs
    from fercli.serve.app import serve as run_server

    run_server(cfg, announce=lambda line: typer.echo(line, err=True))
