"""The FastAPI app of `fer serve`: POST /v1/predict, GET /v1/model, GET /healthz, the page.

Every image goes through the Python API's one inference path: `Recognizer.find_faces`
(decode, detect, the shared 48x48 crop) in a small thread pool, then `Recognizer.classify`
through the micro-batcher (one forward pass for the faces of requests that arrive together),
then `Recognizer.faces` for the result objects. The JSON of one request is one image of
`fer predict --json`: {"path", "faces": [{"box", "label", "probs"}], "error"}.

Request limits, each answered with a one-line JSON error {"error": "..."} before any work
is wasted on it:
  413  body over --max-body-mb (from Content-Length, else counted while reading); image over
       --max-pixels (read from the header, before decoding: decompression bombs)
  415  a Content-Type that is neither an image, octet-stream nor multipart; a body that is
       not an image of the accepted formats (JPEG, PNG, BMP, WebP, TIFF - what `fer predict`
       reads from a folder)
  422  an image that fails to decode (truncated, corrupt)
  400  an empty body; a multipart body that is malformed or has no `file` field
  408  the body took longer than --timeout-s to arrive (a slow or stalled client)
  503  detection + classification took longer than --timeout-s (an overloaded server)
  401  with API keys set, no or a wrong `Authorization: Bearer` key (fercli/serve/auth.py)
  503  more than --max-concurrent POST /v1/predict in flight (with Retry-After: 1)
The request names no file on the server: the body is the image, and a multipart file name is
only echoed back as "path".
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from fercli import __version__
from fercli.errors import FerError
from fercli.infer.recognizer import Recognizer  # the core's: `fer serve` errors name its flags
from fercli.serve.apidocs import render_api_docs
from fercli.serve.auth import Guard, is_loopback
from fercli.serve.batching import MicroBatcher
from fercli.serve.config import ServeConfig, validate
from fercli.serve.lifecycle import run as run_uvicorn
from fercli.serve.ops import Ops, OpsMiddleware
from fercli.vision.images import BadImage, image_size

STATIC = Path(__file__).resolve().parent / "static"
ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "WEBP": "WebP",
                    "TIFF": "TIFF"}
RAW_TYPES = ("", "application/octet-stream")
# The page loads nothing from elsewhere; the browser is told so (blob: for the chosen photo,
# mediastream: for the camera).
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # one line


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class Service:
    """The model (loaded once) and the workers around it; shared by every request."""

    def __init__(self, cfg: ServeConfig, recognizer: Any) -> None:
        self.cfg = cfg
        self.rec = recognizer
        self.started = time.time()
        self.counts: Counter[str] = Counter()
        self.ops = Ops(access_log=cfg.access_log)  # metrics, readiness, draining (ops.py)
        self.ops.metrics.set_model(recognizer)
        if cfg.workers_detect == 0:  # the one-request-at-a-time server: no pool, no batching
            self.serial = ThreadPoolExecutor(1, thread_name_prefix="fer-serial")
            self.pool = None
            self.batcher = None
        else:
            self.serial = None
            self.pool = ThreadPoolExecutor(cfg.workers_detect, thread_name_prefix="fer-detect")
            self.batcher = MicroBatcher(recognizer.classify, max_batch=cfg.max_batch,
                                        max_wait_ms=cfg.max_wait_ms, on_batch=self.ops.metrics.on_batch)
        self.ops.metrics.watch(lambda: self.ops.in_flight,
                               lambda: self.batcher.waiting_faces if self.batcher else 0)

    def close(self) -> None:
        for ex in (self.pool, self.serial):
            if ex is not None:
                ex.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:  # after a drain nothing is left to wait for but a stuck pass
            self.batcher.close(timeout=1.0 if self.ops.draining else 30.0)

    def _find_faces(self, data: bytes) -> list:
        start = time.perf_counter()
        try:
            return self.rec.find_faces(data)
        finally:
            self.ops.metrics.detect.observe(time.perf_counter() - start)

    def _serial_predict(self, data: bytes) -> tuple[list, np.ndarray | None]:
        found = self._find_faces(data)
        if not found:
            return [], None
        start = time.perf_counter()
        probs = self.rec.classify(np.stack([c for _, c in found]))
        self.ops.metrics.on_batch(len(found), [], time.perf_counter() - start)
        return [b for b, _ in found], probs

    async def predict(self, data: bytes) -> tuple[list, np.ndarray | None]:
        """(boxes, probabilities (N, C) or None without faces) of one image's bytes."""
        loop = asyncio.get_running_loop()
        if self.serial is not None:
            return await loop.run_in_executor(self.serial, self._serial_predict, data)
        boxes, future = await loop.run_in_executor(self.pool, self._detect_and_submit, data)
        return boxes, (None if future is None else await asyncio.wrap_future(future))

    def _detect_and_submit(self, data: bytes) -> tuple[list, Future | None]:
        """In a detection thread: the faces, handed to the batcher from this thread as soon as
        they are found (not after a trip back to the event loop). While it detects, the request
        is pending: an open batch waits (up to --max-wait-ms) for it, and for nothing else."""
        with self.batcher.expecting() as submit:  # type: ignore[union-attr]
            found = self._find_faces(data)
            if not found:
                return [], None
            crops = np.stack([c for _, c in found])  # (n, 48, 48) uint8
            return [b for b, _ in found], submit(crops)


# --------------------------------------------------------------------------- request body


async def read_body(request: Request, cap: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `cap` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HttpError(400, f"bad Content-Length {declared[:40]!r}") from None
        if size > cap:
            raise HttpError(413, f"request body of {size} bytes is over the {cap} byte limit (--max-body-mb)")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise HttpError(413, f"request body is over the {cap} byte limit (--max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_from_request(request: Request, cap: int) -> tuple[bytes, str]:
    """(image bytes, the name to echo as "path") from a raw or multipart body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data" and ctype not in RAW_TYPES and not ctype.startswith("image/"):
        raise HttpError(415, f"Content-Type {ctype!r} is not accepted: send the image as the raw body "
                             "(image/* or application/octet-stream) or as the multipart field 'file'")
    body = await read_body(request, cap)
    if ctype != "multipart/form-data":
        return body, "upload"

    async def stream():  # type: ignore[no-untyped-def]
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise HttpError(400, f"malformed multipart body: {exc.message}") from None
    except Exception as exc:  # python-multipart raises its own types on garbage
        raise HttpError(400, f"malformed multipart body ({type(exc).__name__}: {exc})") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        await form.close()
        raise HttpError(400, "the multipart body has no file field named 'file'")
    data = await upload.read()
    name = Path(upload.filename or "upload").name[:200] or "upload"
    await form.close()
    return data, name


def check_header(data: bytes, max_pixels: int) -> None:
    """Format and pixel count from the header only, before any pixel is decoded."""
    if not data:
        raise HttpError(400, "empty body: send an image (JPEG, PNG, BMP, WebP or TIFF)")
    try:
        w, h, _mode, fmt = image_size(data)
    except BadImage as exc:
        if str(exc).startswith("image too large"):  # PIL's own bomb check fired first
            raise HttpError(413, str(exc)) from None
        raise HttpError(415, f"not an image of an accepted format (JPEG, PNG, BMP, WebP, TIFF): {exc}") from None
    if fmt.upper() not in ACCEPTED_FORMATS:
        raise HttpError(415, f"{fmt or 'this'} images are not accepted: send JPEG, PNG, BMP, WebP or TIFF")
    if w * h > max_pixels:
        raise HttpError(413, f"image too large: {w}x{h} = {w * h / 1e6:.1f} megapixels "
                             f"(limit {max_pixels / 1e6:.1f}, --max-pixels)")


# --------------------------------------------------------------------------- the app


def _load_recognizer(cfg: ServeConfig) -> Any:

    return Recognizer(model=cfg.model, device=cfg.device, backend=cfg.backend,
                      precision=cfg.precision, detector=cfg.detector, tta=cfg.tta, margin=cfg.margin,
                      frame=cfg.frame, intensity=cfg.intensity, detect_max_side=cfg.detect_max_side)


def create_app(cfg: ServeConfig, recognizer: Any = None) -> FastAPI:
    """The app for `cfg`; the model is loaded here, once (or `recognizer` is used as given)."""
    validate(cfg)
    service = Service(cfg, recognizer if recognizer is not None else _load_recognizer(cfg))
    # docs_url=None: FastAPI's Swagger page loads its script from a CDN; /docs below needs nothing
    app = FastAPI(title="fer serve", version=__version__, docs_url=None, redoc_url=None,
                  description="Facial expression recognition (OBSR-Net bilinear ResNet34) over HTTP.")
    app.state.service = service
    app.router.on_shutdown.append(service.close)
    app.router.on_startup.append(lambda: service.ops.start_warm_up(service.rec.classify))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # API keys and the in-flight cap (fercli/serve/auth.py): 401 / 503 before the body is read
    app.add_middleware(Guard, keys=cfg.api_keys, max_concurrent=cfg.max_concurrent, counts=service.counts)
    # Added last, so outermost: every answer, the Guard's 401 and 503 included, is counted and logged
    app.add_middleware(OpsMiddleware, ops=service.ops, routes=app)  # counts, times, logs, drains

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404, 405 and the like in the API's own shape, {"error": "..."}, not FastAPI's {"detail"}
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        message = {404: f"no such path: {request.url.path[:200]}",
                   405: f"{request.method} is not allowed on {request.url.path[:200]}"}.get(exc.status_code, detail)
        return JSONResponse({"error": " ".join(message.split())}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.post("/v1/predict", summary="Faces and expressions in one image",
              responses={400: {}, 408: {}, 413: {}, 415: {}, 422: {}, 503: {}})
    async def predict(request: Request) -> JSONResponse:
        """The image as the raw body (Content-Type image/* or application/octet-stream) or as
        the multipart field `file`. Returns {"path", "faces", "error"} as one image of
        `fer predict --json`: each face has "box" [x, y, w, h], "label" and "probs"."""
        return await _predict(service, request)

    @app.get("/v1/model", summary="The model that answers: name, classes, provenance, accuracy")
    def model() -> dict[str, Any]:
        return {**service.rec.info, "classes": list(service.rec.classes),
                "serving": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                            "max_body_bytes": cfg.max_body_bytes, "max_pixels": cfg.max_pixels,
                            "timeout_s": cfg.timeout_s, "workers_detect": cfg.workers_detect,
                            "detect_max_side": getattr(service.rec, "detect_max_side", None),
                            "accepted_formats": sorted(set(ACCEPTED_FORMATS.values()))}}

    @app.get("/healthz", summary="Liveness, with request and batch counters")
    def healthz() -> dict[str, Any]:
        b = service.batcher
        return {"status": "ok", "uptime_s": round(time.time() - service.started, 1),
                "requests": dict(service.counts), "batches": b.stats.as_dict() if b else None}

    @app.get("/readyz", summary="Readiness: 200 once warmed up, 503 while starting or draining")
    def readyz() -> JSONResponse:
        problem = service.ops.not_ready()
        return error_response(503, problem) if problem else JSONResponse({"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    def metrics() -> Response:
        body, ctype = service.ops.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(render_api_docs(app.openapi()), headers={"Content-Security-Policy": PAGE_CSP})

    return app


async def _predict(service: Service, request: Request) -> JSONResponse:
    cfg = service.cfg
    try:
        try:
            data, name = await asyncio.wait_for(image_from_request(request, cfg.max_body_bytes), cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HttpError(408, f"the request body did not arrive within {cfg.timeout_s:g} s (--timeout-s)") from None
        check_header(data, cfg.max_pixels)
        try:
            boxes, probs = await asyncio.wait_for(service.predict(data), cfg.timeout_s)
        except asyncio.TimeoutError:
            raise HttpError(503, f"the server is overloaded: no answer within {cfg.timeout_s:g} s (--timeout-s)") from None
        except FerError as exc:
            raise HttpError(422, f"cannot decode the image: {exc}") from None
    except HttpError as exc:
        service.counts[str(exc.status)] += 1
        return error_response(exc.status, exc.message)
    except ClientDisconnect:
        service.counts["disconnected"] += 1
        return error_response(400, "the client disconnected")  # nobody reads it
    faces = service.rec.faces(boxes, probs) if probs is not None else []
    request.state.faces = len(faces)  # for the access log
    service.counts["200"] += 1
    return JSONResponse({"path": name, "faces": [f.to_dict() for f in faces], "error": None})


def serve(cfg: ServeConfig, announce: Any = print) -> None:
    """Load the model once, then serve until a signal drains it (uvicorn, one process)."""
    app = create_app(cfg)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    scheme = "https" if cfg.ssl_certfile else "http"
    keys = f"{len(cfg.api_keys)} API key(s)" if cfg.api_keys else "no API key"
    announce(f"serving on {scheme}://{host}:{cfg.port}/ (the page at /, API docs at /docs; {keys}); Ctrl-C stops")
    if cfg.no_auth and not is_loopback(cfg.host):
        announce("warning: --no-auth: anyone who can reach this address can use the API")
    run_uvicorn(app, cfg, app.state.service.ops)
