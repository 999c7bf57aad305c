"""The one inference path: image → faces (detector + the shared crop) → probabilities → Face.

`Recognizer` holds a loaded model (fercli.infer.classifier.make_classifier) and the detection
settings; `fer predict` on photos (fercli.infer.predict.run_predict), on videos
(fercli.infer.video.run_video), the Python API (fercli.api) and `fer serve` all go through its
three steps, so the same image gives the same result everywhere:

    find_faces(image)  decode (fercli.vision.images: the decoder `fer prepare` uses), detect,
                       crop each face to 48x48 grey (fercli.vision.faces.crop_face)
    classify(crops)    (N, 48, 48) uint8 → (N, C) float32 probabilities, batched
    faces(boxes, p)    → Face objects (label = argmax, probabilities rounded to 6 decimals)

Threads: detection needs nothing shared (OpenCV's Haar cascade is loaded once per thread;
YuNet keeps no state between calls once its weights are initialised, done here under a lock),
so several threads detect at once; `classify` holds a lock, one forward pass at a time (the
torch model builds TorchScript / CUDA graphs lazily, and a server batches requests anyway).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fercli.device import device_name
from fercli.errors import FerError
from fercli.infer.classifier import BACKENDS, PRECISIONS, Classifier, make_classifier
from fercli.infer.config import PredictConfig
from fercli.infer.model_info import ModelInfo
from fercli.model.tta import TTA_MODES
from fercli.vision.faces import (
    DETECTORS,
    FACE_SIZE,
    INTENSITY_MODES,
    MAX_DETECT_SIDE,
    MIN_DETECT_SIDE,
    Box,
    crop_face,
    detect_faces,
    normalise_face,
    resize_face,
    resolve_detector,
    yunet_faces,
)
from fercli.vision.images import BadImage, array_to_grey, decode_grey, load_grey, pil_to_grey

COLORS = ("rgb", "bgr")

_YUNET_LOCK = threading.Lock()
_YUNET_READY: list[bool] = []


@dataclass(frozen=True)
class Face:
    """One face: its box (x, y, w, h) in the upright image, the top label, every class's
    probability (class → probability, summing to 1, rounded to 6 decimals)."""

    box: tuple[int, int, int, int]
    label: str
    probs: dict[str, float]

    @property
    def confidence(self) -> float:
        return self.probs[self.label]

    def to_dict(self) -> dict[str, Any]:
        """What `fer predict --json` prints for this face."""
        return {"box": list(self.box), "label": self.label, "probs": dict(self.probs)}


# --------------------------------------------------------------------------- grey-level steps




def find_faces(grey: np.ndarray, detector: str, margin: float, max_side: int | None = None, *,
               frame: float = PredictConfig.frame,
               intensity: str = PredictConfig.intensity) -> tuple[list[Box], list[np.ndarray]]:
    """(boxes, 48×48 crops) of one photo: --detector haar|yunet detects at long side
    `max_side` (None: the photo scale of detect_faces) and crops every face found with
    `margin` from the full-resolution photo; --detector none takes the whole (already cropped)
    image as one face: at frame 1 resized exactly as `fer prepare` resizes a dataset image,
    else the centred square `frame` × its long side (through the same crop_face). Every crop's
    levels then go through normalise_face(`intensity`). (`auto` is resolved before this.)"""
    if detector == "none":
        h, w = grey.shape[:2]
        boxes: list[Box] = [(0, 0, w, h)]
        crops = [resize_face(grey, FACE_SIZE) if frame == 1 else crop_face(grey, boxes[0], FACE_SIZE, frame - 1)]
    else:
        boxes = [tuple(int(v) for v in b) for b in detect_faces(grey, detector, max_side)]  # type: ignore[misc]
        crops = [crop_face(grey, b, FACE_SIZE, margin=margin) for b in boxes]
    return boxes, [normalise_face(c, intensity) for c in crops]


def _warm_yunet() -> None:
    """One YuNet call under a lock: the library initialises its weights on the first call,
    which is not safe to do from several threads at once."""
    with _YUNET_LOCK:
        if not _YUNET_READY:
            yunet_faces(np.zeros((160, 160), np.uint8))
            _YUNET_READY.append(True)


def to_grey(image: Any, color: str = "bgr") -> np.ndarray:
    """Any supported input → the decoder's 8-bit grey (H, W); BadImage if it cannot be.

    A path (str / Path), bytes or a binary file object (anything with `read()`, as web
    frameworks hand over uploads) go through the file decoder; a PIL image and a numpy array
    through the same conversion rules (fercli.vision.images.pil_to_grey / array_to_grey).
    `color` is the channel order of a colour array: "bgr" (the default: OpenCV's, as
    cv2.imread and video frames give) or "rgb" (PIL, imageio, matplotlib)."""
    if color not in COLORS:
        raise BadImage(f"color must be 'rgb' or 'bgr', got {color!r}")
    if isinstance(image, (str, Path)):
        return load_grey(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_grey(bytes(image))[0]
    if isinstance(image, np.ndarray):
        return array_to_grey(image, color)
    if callable(getattr(image, "read", None)):
        data = image.read()
        if isinstance(data, str):
            raise BadImage("the file object gives text: open the image in binary mode ('rb')")
        return decode_grey(bytes(data))[0]
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        return pil_to_grey(image)
    kind = type(image).__name__
    raise BadImage(f"cannot read {'an' if kind[:1] in 'aeiou' else 'a'} {kind} ({str(image)[:40]}): give a path, "
                   "bytes, a binary file object, a PIL image or a numpy array")


def _describe_input(image: Any) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"image bytes ({len(image)} bytes)"
    if isinstance(image, np.ndarray):
        return f"array {image.shape} {image.dtype}"
    if callable(getattr(image, "read", None)):
        return f"file object {getattr(image, 'name', '')}".rstrip()
    return type(image).__name__


# --------------------------------------------------------------------------- Recognizer


def validate(cfg: PredictConfig) -> None:
    """One-line FerError for any setting out of range (named as its `fer predict` option)."""
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
    if not (isinstance(cfg.margin, (int, float)) and math.isfinite(cfg.margin) and 0 <= cfg.margin <= 2):
        raise FerError(f"--margin must be between 0 and 2, got {cfg.margin}")
    if not (isinstance(cfg.frame, (int, float)) and math.isfinite(cfg.frame) and 0.5 <= cfg.frame <= 2):
        raise FerError(f"--frame must be between 0.5 and 2, got {cfg.frame}")
    if cfg.intensity not in INTENSITY_MODES:
        raise FerError(f"--intensity {cfg.intensity!r} is not one of: {', '.join(INTENSITY_MODES)}")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise FerError(f"--batch-size must be ≥ 1, got {cfg.batch_size}")


class Recognizer:
    """A loaded model plus detection settings: images in, Face objects out.

    model: None (the shipped model), a `fer train` run directory, a .pt checkpoint, an
    exported .npz or .onnx. device auto|cpu|cuda; backend auto|torch|onnx; precision
    auto|fp32|int8; detector auto|yunet|haar|none; tta none|flip|ten-crop (ten-crop: torch
    only); margin around each detected box (0.2 = 10% per side); batch_size faces per forward
    pass for folders; detect_max_side the long side photos are detected at (None: the photo
    scale of fercli.vision.faces.detect_faces, what `fer predict` uses).
    `classifier` injects an already-built classifier (tests, benchmarks).
    """

    # Every default is PredictConfig's, the one `fer predict` and `fer serve` read.
    def __init__(self, model: str | Path | None = PredictConfig.model, *, device: str = PredictConfig.device,
                 backend: str = PredictConfig.backend, precision: str = PredictConfig.precision,
                 detector: str = PredictConfig.detector, tta: str = PredictConfig.tta,
                 margin: float = PredictConfig.margin, batch_size: int = PredictConfig.batch_size,
                 classifier: Classifier | None = None, detect_max_side: int | None = None,
                 frame: float = PredictConfig.frame, intensity: str = PredictConfig.intensity) -> None:
        cfg = PredictConfig(inputs=(), model=None if model is None else str(model), detector=detector,
                            tta=tta, device=device, margin=margin, batch_size=batch_size, backend=backend,
                            precision=precision, frame=frame, intensity=intensity)
        validate(cfg)
        if detect_max_side is not None and not (isinstance(detect_max_side, int)
                                                and MIN_DETECT_SIDE <= detect_max_side <= MAX_DETECT_SIDE):
            raise FerError(f"--detect-max-side must be between {MIN_DETECT_SIDE} and {MAX_DETECT_SIDE}, "
                           f"got {detect_max_side}")
        self.config = cfg
        self.detect_max_side = detect_max_side
        self.detector = resolve_detector(detector)
        self.tta, self.margin, self.batch_size = tta, float(margin), int(batch_size)
        self.frame, self.intensity = float(frame), intensity
        if classifier is None:
            classifier, info, why = make_classifier(cfg)
        else:
            info, why = ModelInfo(source="given", path="", description="in-memory model",
                                  classes=tuple(classifier.classes)), "given"
        self.classifier = classifier
        self.model_info: ModelInfo = info
        self.backend_reason = why
        self._lock = threading.Lock()
        if self.detector == "yunet":
            _warm_yunet()

    @classmethod
    def from_config(cls, cfg: PredictConfig, *, classifier: Classifier | None = None) -> Recognizer:
        return cls(cfg.model, device=cfg.device, backend=cfg.backend, precision=cfg.precision,
                   detector=cfg.detector, tta=cfg.tta, margin=cfg.margin, batch_size=cfg.batch_size,
                   classifier=classifier, frame=cfg.frame, intensity=cfg.intensity)

    # ----------------------------------------------------------------- description

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.classifier.classes)

    @property
    def device(self) -> str:
        return str(device_name(self.classifier.device))

    @property
    def runner(self) -> dict[str, Any]:
        """Backend, precision, threads, ... plus why this backend and which detector."""
        d = dict(self.classifier.describe())
        return {"backend": d.pop("backend", "torch"), **d, "backend_reason": self.backend_reason,
                "detector": self.detector}

    @property
    def info(self) -> dict[str, Any]:
        """The model: name, classes, where it came from, how it was trained, its measured
        accuracy (FER2013 PrivateTest, when the export records it), and how it runs."""
        m = self.model_info
        spec = m.details.get("model_spec") or {}
        acc = m.details.get("private_test_accuracy")
        return {"name": spec.get("name") or (Path(m.path).name if m.path else "model"),
                "description": m.description, "classes": list(self.classes), "source": m.source,
                "path": m.path,
                "provenance": {k: m.details.get(k) for k in ("dataset_name", "dataset_sha256",
                                                            "training_command", "best_epoch")},
                "accuracy": {"fer2013_private_test": acc} if isinstance(acc, (int, float)) else {},
                "runner": self.runner, "device": self.device, "tta": self.tta, "margin": self.margin,
                "frame": self.frame, "intensity": self.intensity}

    def __repr__(self) -> str:
        return (f"Recognizer({self.model_info.description!r}, backend={self.runner['backend']!r}, "
                f"detector={self.detector!r}, tta={self.tta!r})")

    # ----------------------------------------------------------------- the three steps

    def find_faces(self, image: Any, *, color: str = "bgr") -> list[tuple[Box, np.ndarray]]:
        """[(box (x, y, w, h), 48x48 uint8 grey crop)] of every face in `image`, left to right.
        FerError (one line, naming the input) when it cannot be decoded."""
        try:
            grey = to_grey(image, color)
        except BadImage as exc:
            raise FerError(f"{_describe_input(image)}: {exc}") from None
        return self.find_faces_in_grey(grey)

    def find_faces_in_grey(self, grey: np.ndarray) -> list[tuple[Box, np.ndarray]]:
        """find_faces of an image already decoded to the decoder's grey (to_grey's (H, W)
        uint8): for a caller that keeps the grey image, so it is not converted twice."""
        boxes, crops = find_faces(grey, self.detector, self.margin, self.detect_max_side,
                                  frame=self.frame, intensity=self.intensity)
        return list(zip(boxes, crops, strict=True))

    def classify(self, crops: np.ndarray | list[np.ndarray], *, batch_size: int | None = None) -> np.ndarray:
        """(N, 48, 48) uint8 face crops → (N, C) float32 probabilities (rows sum to 1), in one
        forward pass (or in chunks of `batch_size`)."""
        arr = np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8) if len(crops) == 0 else np.asarray(
            np.stack(crops) if isinstance(crops, list) else crops)
        if arr.ndim != 3 or arr.shape[1:] != (FACE_SIZE, FACE_SIZE) or arr.dtype != np.uint8:
            raise FerError(f"classify: crops must be uint8 (N, {FACE_SIZE}, {FACE_SIZE}), got {arr.dtype} {arr.shape}")
        if arr.shape[0] == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        with self._lock:
            p = self.classifier.predict_proba(arr, tta=self.tta, batch_size=batch_size or arr.shape[0])
        return np.asarray(p, dtype=np.float32)

    def faces(self, boxes: Any, probs: Any) -> list[Face]:
        """Face objects from boxes (K × x, y, w, h) and their probabilities (K, C)."""
        classes = self.classes
        out = []
        for b, p in zip(boxes, probs, strict=True):
            p = np.asarray(p, dtype=np.float64)
            out.append(Face(box=tuple(int(v) for v in b), label=classes[int(np.argmax(p))],  # type: ignore[arg-type]
                            probs={c: round(float(p[j]), 6) for j, c in enumerate(classes)}))
        return out

    def predict(self, image: Any, *, color: str = "bgr") -> list[Face]:
        """Every face in one image (a path, bytes, a PIL image or a numpy array), left to right."""
        found = self.find_faces(image, color=color)
        if not found:
            return []
        boxes, crops = zip(*found, strict=True)
        return self.faces(boxes, self.classify(np.stack(crops)))
