"""`fer predict`: find every face in photos and classify its expression.

Per image: decode with the decoder `fer prepare` uses (fercli.vision.images: size checked from the
header, EXIF orientation, transparency on white, any mode → 8-bit grey), find faces with
OpenCV's Haar cascade and crop each with a margin (fercli.vision.faces: square, border-replicated at
the image edge, resized to 48×48) — the same code that made the training data — and classify
all faces of all images in batches through engine.predict_logits.

Nothing here imports Typer or Rich: `run_predict` returns frozen dataclasses, the CLI
renders them. A file that cannot be read is reported in its ImageResult (error) and the
rest still run; the CLI exits 1 if any failed.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fercli.errors import FerError
from fercli.files import atomic_write_bytes, atomic_write_text
from fercli.infer.classifier import (  # noqa: F401  (re-exported: fer predict's model API)
    ASSETS_DIR,
    BACKENDS,
    CPU_OPTIMIZE,
    DEFAULT_MODEL,
    OPTIMIZE_MODES,
    PRECISIONS,
    RUNS_DIR,
    Classifier,
    FaceClassifier,
    ModelInfo,
    make_classifier,
    no_model_message,
    resolve_model,
)
from fercli.infer.config import PredictConfig
from fercli.vision.faces import (
    FACE_SIZE,
    YUNET_MAX_SIDE,
    Box,
    crop_face,
    resize_face,
    resolve_detector,
    yunet_faces,
)
from fercli.vision.faces import detect_faces as haar_faces
from fercli.vision.images import IMAGE_EXTENSIONS, BadImage, decode_bgr, load_grey, read_image_file

DETECTORS = ("auto", "haar", "yunet", "none")
DETECT_MAX_SIDE = 1280  # photos are downscaled to this for detection (speed), boxes scaled back
MIN_FACE_PX = 30
MIN_FACE_FRACTION = 0.05  # of the (detection-scale) short side

ProgressFn = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FaceResult:
    box: tuple[int, int, int, int]  # x, y, w, h in the (EXIF-rotated) image
    label: str
    probs: dict[str, float]

    @property
    def confidence(self) -> float:
        return self.probs[self.label]


@dataclass(frozen=True)
class ImageResult:
    path: str
    faces: tuple[FaceResult, ...] = ()
    error: str | None = None
    size: tuple[int, int] | None = None  # width, height
    annotated: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path,
                "faces": [{"box": list(f.box), "label": f.label, "probs": dict(f.probs)} for f in self.faces],
                "error": self.error}


@dataclass(frozen=True)
class PredictResult:
    images: tuple[ImageResult, ...]
    model: ModelInfo
    device: str
    runner: dict[str, Any]
    seconds: float
    csv: str | None = None
    annotate_dir: str | None = None

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.images if r.error is not None]

    @property
    def num_faces(self) -> int:
        return sum(len(r.faces) for r in self.images)


# --------------------------------------------------------------------------- faces


def detect_faces(grey: np.ndarray, detector: str = "haar") -> list[Box]:
    """Every face (x, y, w, h) in a greyscale photo, left to right (`detector` haar | yunet)."""
    if detector == "yunet":
        boxes = yunet_faces(grey, max_side=YUNET_MAX_SIDE, min_px=MIN_FACE_PX, min_fraction=MIN_FACE_FRACTION)
    else:
        boxes = haar_faces(grey, max_side=DETECT_MAX_SIDE, min_px=MIN_FACE_PX, min_fraction=MIN_FACE_FRACTION)
    return sorted(boxes, key=lambda b: (b[0], b[1]))


def find_faces(grey: np.ndarray, detector: str, margin: float) -> tuple[list[Box], list[np.ndarray]]:
    """(boxes, 48×48 crops) of one photo: --detector haar|yunet crops every face found with
    `margin`; --detector none takes the whole (already cropped) image as one face, resized
    exactly as `fer prepare` resizes a dataset image. (`auto` is resolved before this.)"""
    if detector == "none":
        h, w = grey.shape[:2]
        return [(0, 0, w, h)], [resize_face(grey, FACE_SIZE)]
    boxes = detect_faces(grey, detector)
    return boxes, [crop_face(grey, b, FACE_SIZE, margin=margin) for b in boxes]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Input:
    path: Path
    root: Path | None  # the folder argument it was found under, or None for a file argument


def _is_within(p: Path, parent: Path) -> bool:
    try:
        p.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def expand_inputs(inputs: tuple[str, ...], exclude: Path | None = None) -> list[_Input]:
    """Files as given; folders walked recursively (sorted) for image extensions."""
    if not inputs:
        raise FerError("give at least one image or folder")
    out: list[_Input] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                d = Path(dirpath)
                dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                                     and not (exclude is not None and _is_within(d / n, exclude)))
                for n in sorted(filenames):
                    if n.startswith(".") or Path(n).suffix.lower() not in IMAGE_EXTENSIONS:
                        continue
                    found.append(d / n)
            if not found:
                raise FerError(f"{p}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
            for f in sorted(found, key=lambda q: q.relative_to(p).as_posix()):
                key = f.resolve()
                if key not in seen:
                    seen.add(key)
                    out.append(_Input(f, p))
        elif p.exists():
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(_Input(p, None))
        else:
            raise FerError(f"{p}: no such file or folder")
    return out


def _annotated_paths(items: list[_Input], out_dir: Path) -> list[Path]:
    """Mirror names under out_dir; refuse any that would land on an input."""
    folder_args = {it.root for it in items if it.root is not None}
    result: list[Path] = []
    used: set[Path] = set()
    input_keys = {it.path.resolve() for it in items}
    for it in items:
        if it.root is None:
            rel = Path(it.path.name)
        elif len(folder_args) == 1:
            rel = it.path.relative_to(it.root)
        else:
            rel = Path(it.root.resolve().name) / it.path.relative_to(it.root)
        if rel.suffix.lower() not in IMAGE_EXTENSIONS:
            rel = rel.with_suffix(rel.suffix + ".png")
        target = out_dir / rel
        k = 1
        while target.resolve() in used:
            target = out_dir / rel.with_name(f"{rel.stem}-{k}{rel.suffix}")
            k += 1
        if target.resolve() in input_keys or (target.exists() and any(
                _same_file(target, i.path) for i in items)):
            raise FerError(f"--annotate {out_dir}: annotated copy {target} would overwrite the input "
                           f"{target}; choose another folder")
        used.add(target.resolve())
        result.append(target)
    return result


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------- annotate


def _annotate(bgr: np.ndarray, faces: tuple[FaceResult, ...]) -> np.ndarray:
    img = bgr.copy()
    h, w = img.shape[:2]
    thick = max(1, round(min(h, w) / 250))
    if not faces:
        cv2.putText(img, "no face detected", (8, max(20, h // 20)), cv2.FONT_HERSHEY_SIMPLEX,
                    max(0.5, min(h, w) / 600), (0, 0, 255), thick, cv2.LINE_AA)
        return img
    for i, f in enumerate(faces):
        x, y, bw, bh = f.box
        cv2.rectangle(img, (x, y), (x + bw, y + bh), (0, 255, 0), thick + 1)
        text = f"{i}: {f.label} {100 * f.confidence:.0f}%"
        scale = max(0.4, min(2.0, bw / 220))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + bh + th + 4
        cv2.rectangle(img, (x, ty - th - base), (x + tw + 2, ty + base), (0, 255, 0), -1)
        cv2.putText(img, text, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return img


def _write_image(path: Path, bgr: np.ndarray) -> None:
    ext = path.suffix.lower()
    ok, buf = cv2.imencode(ext if ext in IMAGE_EXTENSIONS else ".png", bgr)
    if not ok:
        raise FerError(f"cannot encode annotated image {path}")
    atomic_write_bytes(path, buf.tobytes())


# --------------------------------------------------------------------------- CSV


def csv_text(images: tuple[ImageResult, ...] | list[ImageResult], classes: tuple[str, ...]) -> str:
    """One row per face; an image without faces (or that failed) gets one row with its note."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["path", "face", "x", "y", "w", "h", "label", "probability", *[f"p_{c}" for c in classes], "error"])
    for r in images:
        if r.error is not None or not r.faces:
            wr.writerow([r.path, "", "", "", "", "", "", "", *[""] * len(classes), r.error or "no face detected"])
            continue
        for i, f in enumerate(r.faces):
            wr.writerow([r.path, i, *f.box, f.label, f"{f.confidence:.6f}",
                         *[f"{f.probs[c]:.6f}" for c in classes], ""])
    return buf.getvalue()


# --------------------------------------------------------------------------- main entry


def runner_info(classifier: Classifier) -> dict[str, Any]:
    d = classifier.describe()
    return {"backend": d.pop("backend", "torch"), **d}


def validate(cfg: PredictConfig) -> None:
    from fercli.train.engine import TTA_MODES

    if cfg.backend not in BACKENDS:
        raise FerError(f"--backend {cfg.backend!r} is not one of: {', '.join(BACKENDS)}")
    if cfg.precision not in PRECISIONS:
        raise FerError(f"--precision {cfg.precision!r} is not one of: {', '.join(PRECISIONS)}")
    if cfg.precision == "int8" and cfg.backend == "torch":
        raise FerError("--precision int8 runs on onnxruntime: use --backend onnx or auto, not torch")
    if cfg.detector not in DETECTORS:
        raise FerError(f"--detector {cfg.detector!r} is not one of: {', '.join(DETECTORS)}")
    if cfg.tta not in TTA_MODES:
        raise FerError(f"--tta {cfg.tta!r} is not one of: {', '.join(TTA_MODES)}")
    if not (math.isfinite(cfg.margin) and 0 <= cfg.margin <= 2):
        raise FerError(f"--margin must be between 0 and 2, got {cfg.margin}")
    if cfg.batch_size < 1:
        raise FerError(f"--batch-size must be ≥ 1, got {cfg.batch_size}")


def run_predict(
    cfg: PredictConfig,
    *,
    classifier: FaceClassifier | None = None,
    on_progress: ProgressFn | None = None,
) -> PredictResult:
    """Detect and classify every face in cfg.inputs; write --csv / --annotate if asked."""
    from fercli.device import device_name

    t0 = time.perf_counter()
    validate(cfg)
    progress = on_progress or (lambda stage, done, total: None)
    annotate_dir = Path(cfg.annotate).expanduser() if cfg.annotate else None
    if annotate_dir is not None and annotate_dir.exists() and not annotate_dir.is_dir():
        raise FerError(f"--annotate {annotate_dir} is a file; give a folder for the annotated copies")
    items = expand_inputs(cfg.inputs, exclude=annotate_dir)
    targets = _annotated_paths(items, annotate_dir) if annotate_dir is not None else None
    if cfg.csv is not None:
        csv_path = Path(cfg.csv).expanduser()
        if any(_same_file(csv_path, it.path) or csv_path.resolve() == it.path.resolve() for it in items):
            raise FerError(f"--csv {csv_path} is one of the input images; choose another file")

    detector = resolve_detector(cfg.detector)
    if classifier is None:
        classifier, info, why = make_classifier(cfg)
    else:
        info, why = ModelInfo(source="given", path="", description="in-memory model", classes=classifier.classes), "given"
    classes = classifier.classes

    # 1. decode, detect, crop (only crops and boxes are kept: memory stays small).
    records: list[tuple[str, tuple[int, int] | None, list[tuple[int, int, int, int]], str | None]] = []
    crops: list[np.ndarray] = []
    single_file = len(items) == 1 and items[0].root is None
    for n, it in enumerate(items):
        progress("detect", n, len(items))
        try:
            grey = load_grey(it.path)
        except BadImage as exc:
            if single_file:
                raise FerError(f"{it.path}: {exc}", exit_code=1) from None
            records.append((str(it.path), None, [], str(exc)))
            continue
        h, w = grey.shape
        boxes, face_crops = find_faces(grey, detector, cfg.margin)
        crops.extend(face_crops)
        records.append((str(it.path), (w, h), boxes, None))
    progress("detect", len(items), len(items))

    # 2. classify every face of every image, in batches.
    progress("classify", 0, len(crops))
    faces_arr = np.stack(crops) if crops else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
    probs = classifier.predict_proba(faces_arr, tta=cfg.tta, batch_size=cfg.batch_size)
    progress("classify", len(crops), len(crops))

    results: list[ImageResult] = []
    k = 0
    for path, size, boxes, error in records:
        faces = []
        for b in boxes:
            p = probs[k]
            k += 1
            faces.append(FaceResult(box=tuple(int(v) for v in b), label=classes[int(np.argmax(p))],
                                    probs={c: round(float(p[j]), 6) for j, c in enumerate(classes)}))
        results.append(ImageResult(path=path, faces=tuple(faces), error=error, size=size))

    # 3. annotated copies (re-decoded one at a time), CSV.
    if targets is not None:
        for n, (r, target) in enumerate(zip(results, targets, strict=True)):
            progress("annotate", n, len(results))
            if r.error is not None:
                continue
            try:
                bgr = decode_bgr(read_image_file(r.path))
            except BadImage:
                continue
            _write_image(target, _annotate(bgr, r.faces))
            results[n] = ImageResult(path=r.path, faces=r.faces, error=r.error, size=r.size,
                                     annotated=str(target))
    if cfg.csv is not None:
        atomic_write_text(Path(cfg.csv).expanduser(), csv_text(results, classes))
    return PredictResult(images=tuple(results), model=info, device=device_name(classifier.device),
                         runner={**runner_info(classifier), "backend_reason": why, "detector": detector},
                         seconds=time.perf_counter() - t0,
                         csv=cfg.csv, annotate_dir=str(annotate_dir) if annotate_dir else None)
