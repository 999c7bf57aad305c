"""`fer predict`: find every face in photos and classify its expression.

Built on fercli.infer.recognizer.Recognizer, the one inference path (also the Python API's
and `fer serve`'s). Per image: decode with the decoder `fer prepare` uses (fercli.vision.images:
size checked from the header, EXIF orientation, transparency on white, any mode → 8-bit grey),
find faces (YuNet or Haar) and crop each with a margin (fercli.vision.faces: square,
border-replicated at the image edge, resized to 48×48) — the same code that made the training
data — then classify all faces of all images in batches of --batch-size.

Nothing here imports Typer or Rich: `run_predict` returns frozen dataclasses, the CLI
renders them. A file that cannot be read is reported in its ImageResult (error) and the
rest still run; the CLI exits 1 if any failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from fercli.errors import FerError
from fercli.files import atomic_write_bytes, atomic_write_text
from fercli.infer.classifier import Classifier
from fercli.infer.config import PredictConfig
from fercli.infer.model_info import ModelInfo
from fercli.infer.recognizer import Face, Recognizer, to_grey, validate
from fercli.vision.faces import FACE_SIZE
from fercli.vision.images import IMAGE_EXTENSIONS, BadImage, decode_bgr, read_image_file

if TYPE_CHECKING:
    import pandas as pd

ProgressFn = Callable[[str, int, int], None]
FaceResult = Face  # one face of an ImageResult: the API's Face


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ImageResult:
    path: str
    faces: tuple[Face, ...] = ()
    error: str | None = None
    size: tuple[int, int] | None = None  # width, height
    annotated: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "faces": [f.to_dict() for f in self.faces], "error": self.error}


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


def _annotate(bgr: np.ndarray, faces: tuple[Face, ...]) -> np.ndarray:
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


# --------------------------------------------------------------------------- tables


def results_frame(images: tuple[ImageResult, ...] | list[ImageResult], classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per face: path, face (index in its image), x, y, w, h, label, probability (of
    the label), p_<class> for every class, error. An image without faces (or that failed)
    gets one row with empty face columns and its note in `error`. What `fer predict --csv`
    writes and `Recognizer.predict_folder` returns."""
    import pandas as pd

    prob_cols = [f"p_{c}" for c in classes]
    rows: list[dict[str, Any]] = []
    for r in images:
        if r.error is not None or not r.faces:
            rows.append({"path": r.path, "error": r.error or "no face detected"})
            continue
        for i, f in enumerate(r.faces):
            x, y, w, h = f.box
            rows.append({"path": r.path, "face": i, "x": x, "y": y, "w": w, "h": h, "label": f.label,
                         "probability": f.confidence, **{f"p_{c}": f.probs[c] for c in classes},
                         "error": None})
    cols = ["path", "face", "x", "y", "w", "h", "label", "probability", *prob_cols, "error"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("face", "x", "y", "w", "h"):
        df[c] = df[c].astype("Int64")
    for c in ("probability", *prob_cols):
        df[c] = df[c].astype("float64")
    return df


def frame_csv(df: pd.DataFrame) -> str:
    """A results/timeline DataFrame as CSV text: probabilities to 6 decimals, time_s to
    milliseconds, empty cells blank."""
    if "time_s" in df.columns:
        df = df.assign(time_s=df["time_s"].map("{:.3f}".format))
    return str(df.to_csv(index=False, float_format="%.6f", lineterminator="\n"))


# --------------------------------------------------------------------------- main entry


def runner_info(classifier: Classifier) -> dict[str, Any]:
    d = classifier.describe()
    return {"backend": d.pop("backend", "torch"), **d}


def _check_outputs(cfg: PredictConfig) -> tuple[list[_Input], Path | None, list[Path] | None]:
    """The inputs, and --annotate / --csv targets that cannot overwrite any of them."""
    annotate_dir = Path(cfg.annotate).expanduser() if cfg.annotate else None
    if annotate_dir is not None and annotate_dir.exists() and not annotate_dir.is_dir():
        raise FerError(f"--annotate {annotate_dir} is a file; give a folder for the annotated copies")
    items = expand_inputs(cfg.inputs, exclude=annotate_dir)
    targets = _annotated_paths(items, annotate_dir) if annotate_dir is not None else None
    if cfg.csv is not None:
        csv_path = Path(cfg.csv).expanduser()
        if any(_same_file(csv_path, it.path) or csv_path.resolve() == it.path.resolve() for it in items):
            raise FerError(f"--csv {csv_path} is one of the input images; choose another file")
    return items, annotate_dir, targets


def _detect_all(items: list[_Input], rec: Recognizer, progress: ProgressFn) -> tuple[list[ImageResult], list[list[Any]], list[np.ndarray]]:
    """Decode, detect and crop every input (only boxes and crops are kept: memory stays
    small). Returns an ImageResult without faces per input, its boxes, and all crops."""
    records: list[ImageResult] = []
    boxes_per: list[list[Any]] = []
    crops: list[np.ndarray] = []
    single_file = len(items) == 1 and items[0].root is None
    for n, it in enumerate(items):
        progress("detect", n, len(items))
        try:
            grey = to_grey(it.path)
        except BadImage as exc:
            if single_file:
                raise FerError(f"{it.path}: {exc}", exit_code=1) from None
            records.append(ImageResult(path=str(it.path), error=str(exc)))
            boxes_per.append([])
            continue
        found = rec.find_faces_in_grey(grey)  # already grey: not through to_grey again
        crops.extend(c for _, c in found)
        boxes_per.append([b for b, _ in found])
        records.append(ImageResult(path=str(it.path), size=(grey.shape[1], grey.shape[0])))
    progress("detect", len(items), len(items))
    return records, boxes_per, crops


def _write_annotated(results: list[ImageResult], targets: list[Path], progress: ProgressFn) -> None:
    """Annotated copies (each image re-decoded in colour, one at a time)."""
    for n, (r, target) in enumerate(zip(results, targets, strict=True)):
        progress("annotate", n, len(results))
        if r.error is not None:
            continue
        try:
            bgr = decode_bgr(read_image_file(r.path))
        except BadImage:
            continue
        _write_image(target, _annotate(bgr, r.faces))
        results[n] = ImageResult(path=r.path, faces=r.faces, error=r.error, size=r.size, annotated=str(target))


def run_predict(
    cfg: PredictConfig,
    *,
    classifier: Classifier | None = None,
    recognizer: Recognizer | None = None,
    on_progress: ProgressFn | None = None,
) -> PredictResult:
    """Detect and classify every face in cfg.inputs; write --csv / --annotate if asked.

    `recognizer` (its model and detection settings win over cfg's) or `classifier` (an
    already-built model, cfg's detection settings) skip loading the model."""
    t0 = time.perf_counter()
    validate(cfg)
    progress = on_progress or (lambda stage, done, total: None)
    items, annotate_dir, targets = _check_outputs(cfg)
    rec = recognizer if recognizer is not None else Recognizer.from_config(cfg, classifier=classifier)

    records, boxes_per, crops = _detect_all(items, rec, progress)
    # Every face of every image, in batches of cfg.batch_size.
    progress("classify", 0, len(crops))
    faces_arr = np.stack(crops) if crops else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
    probs = rec.classify(faces_arr, batch_size=cfg.batch_size)
    progress("classify", len(crops), len(crops))

    results: list[ImageResult] = []
    k = 0
    for r, boxes in zip(records, boxes_per, strict=True):
        faces = rec.faces(boxes, probs[k:k + len(boxes)])
        k += len(boxes)
        results.append(ImageResult(path=r.path, faces=tuple(faces), error=r.error, size=r.size))
    if targets is not None:
        _write_annotated(results, targets, progress)
    if cfg.csv is not None:
        atomic_write_text(Path(cfg.csv).expanduser(), frame_csv(results_frame(results, rec.classes)))
    return PredictResult(images=tuple(results), model=rec.model_info, device=rec.device, runner=rec.runner,
                         seconds=time.perf_counter() - t0,
                         csv=cfg.csv, annotate_dir=str(annotate_dir) if annotate_dir else None)
