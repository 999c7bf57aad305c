"""`fer serve`: the recognizer as an HTTP service with a web page (fercli.serve)."""

from __future__ import annotations

from typing import Optional

import typer

from fercli.cli import options
from fercli.cli.app import app


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default answers this machine only; 0.0.0.0 exposes the API (which has no authentication) to the network."),
    port: int = typer.Option(8000, help="TCP port."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A `fer train` run directory, a .pt checkpoint, an exported .npz or .onnx. \\[default: the bundled model]"),
    detector: str = typer.Option("auto", help="auto (yunet if installed, else haar), yunet, haar or none (each image is one already-cropped face)."),
    backend: str = typer.Option("auto", help="auto, torch or onnx, as for `fer predict`."),
    precision: str = typer.Option("auto", help="auto, fp32 or int8 (onnxruntime), as for `fer predict`."),
    tta: str = typer.Option("none", help="Test-time augmentation: none or flip."),
    device: options.Device = "auto",
    max_batch: int = typer.Option(32, help="Most faces classified in one forward pass; requests arriving together share it."),
    max_wait_ms: float = typer.Option(5.0, help="How long the first face of a batch waits for others (ms)."),
    max_body_mb: float = typer.Option(20.0, help="Larger request bodies are refused with 413."),
    max_pixels: int = typer.Option(50_000_000, help="Images with more pixels (read from the header, before decoding) are refused with 413."),
    timeout_s: float = typer.Option(30.0, help="Seconds allowed for the body to arrive (else 408), and again to detect and classify (else 503)."),
    workers_detect: int = typer.Option(2, help="Threads decoding and detecting faces; 0 = one request at a time, unbatched (needs --max-batch 1; a baseline for benchmarks)."),
    log_level: str = typer.Option("info", help="uvicorn's log level: critical, error, warning, info, debug."),
) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, GET /healthz, a web page at /,
    and the API reference at /docs (a plain page from /openapi.json: it opens offline).

    POST an image as the raw body or as the multipart field `file`; the answer is one image of
    `fer predict --json`. Faces of requests arriving together are classified in one batched
    pass. The model is loaded once; request bodies, image sizes and time are capped (413,
    408, 503), non-images get 415/422, each with a one-line JSON {"error": ...}.
    """
    from fercli.serve.app import serve as run_server
    from fercli.serve.config import ServeConfig, validate

    cfg = ServeConfig(host=host, port=port, model=model, device=device, backend=backend,
                      precision=precision, detector=detector, tta=tta, max_batch=max_batch,
                      max_wait_ms=max_wait_ms, max_body_mb=max_body_mb, max_pixels=max_pixels,
                      timeout_s=timeout_s, workers_detect=workers_detect, log_level=log_level)
    validate(cfg)  # flag errors before the model loads
    run_server(cfg, announce=lambda line: typer.echo(line, err=True))
