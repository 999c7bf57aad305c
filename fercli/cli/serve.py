"""`fer serve`: the recognizer as an HTTP service with a web page (fercli.serve)."""

from __future__ import annotations

from typing import Optional

import typer

from fercli.cli import options
from fercli.cli.app import app
from fercli.serve.config import ServeConfig, validate

S = ServeConfig  # every default below is ServeConfig's own


@app.command()
def serve(
    host: str = typer.Option(S.host, help="Address to bind. The default answers this machine only; 0.0.0.0 exposes the API (which has no authentication) to the network."),
    port: int = typer.Option(S.port, help="TCP port."),
    model: Optional[str] = typer.Option(S.model, "--model", "-m", help="A `fer train` run directory, a .pt checkpoint, an exported .npz or .onnx. \\[default: the bundled model]"),
    detector: str = typer.Option(S.detector, help="auto (yunet if installed, else haar), yunet, haar or none (each image is one already-cropped face)."),
    backend: str = typer.Option(S.backend, help="auto, torch or onnx, as for `fer predict`."),
    precision: str = typer.Option(S.precision, help="auto, fp32 or int8 (onnxruntime), as for `fer predict`."),
    tta: str = typer.Option(S.tta, help="Test-time augmentation: none, flip or ten-crop (ten-crop with the torch backend only)."),
    device: options.Device = S.device,
    max_batch: int = typer.Option(S.max_batch, help="Most faces classified in one forward pass; requests arriving together share it."),
    max_wait_ms: float = typer.Option(S.max_wait_ms, help="How long a batch waits for requests still being detected (ms); with none on the way a face is classified at once."),
    max_body_mb: float = typer.Option(S.max_body_mb, help="Larger request bodies are refused with 413."),
    max_pixels: int = typer.Option(S.max_pixels, help="Images with more pixels (read from the header, before decoding) are refused with 413."),
    timeout_s: float = typer.Option(S.timeout_s, help="Seconds allowed for the body to arrive (else 408), and again to detect and classify (else 503)."),
    workers_detect: int = typer.Option(S.workers_detect, help="Threads decoding and detecting faces; 0 = one request at a time, unbatched (needs --max-batch 1; a baseline for benchmarks)."),
    detect_max_side: Optional[int] = typer.Option(S.detect_max_side, help="Long side (px) photos are scaled down to for face detection (faces are cropped at full resolution); smaller is faster but misses small faces. \\[default: as `fer predict`: 640 yunet, 1280 haar]"),
    log_level: str = typer.Option(S.log_level, help="uvicorn's log level: critical, error, warning, info, debug."),
) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, GET /healthz, a web page at /,
    and the API reference at /docs (a plain page from /openapi.json: it opens offline).

    POST an image as the raw body or as the multipart field `file`; the answer is one image of
    `fer predict --json`. Faces of requests arriving together are classified in one batched
    pass. The model is loaded once; request bodies, image sizes and time are capped (413,
    408, 503), non-images get 415/422, each with a one-line JSON {"error": ...}.
    """
    cfg = ServeConfig(host=host, port=port, model=model, device=device, backend=backend,
                      precision=precision, detector=detector, tta=tta, max_batch=max_batch,
                      max_wait_ms=max_wait_ms, max_body_mb=max_body_mb, max_pixels=max_pixels,
                      timeout_s=timeout_s, workers_detect=workers_detect, log_level=log_level,
                      detect_max_side=detect_max_side)
    validate(cfg)  # flag errors before the model loads
    # deferred: fastapi and uvicorn (~0.2 s to import), which no other command needs
    from fercli.serve.app import serve as run_server

    run_server(cfg, announce=lambda line: typer.echo(line, err=True))
