"""`fer predict clip.mp4` and `fer predict --camera 0`: faces and expressions over time.

Per analysed frame (every `every`-th frame, up to `max_frames`): the BGR frame goes through
the one inference path, fercli.infer.recognizer.Recognizer (the decoder's BGR -> grey, the
same detector and crop as `fer predict` on photos, one batch through the classifier). Faces
are linked across frames by IoU (greedy, highest overlap first) into tracks; with `smooth` = alpha in (0, 1) each track's probabilities are an
exponential average p_t = alpha * p_frame + (1 - alpha) * p_{t-1}, so labels do not flicker.

A file is read to its end and checked against the frame count in its header: a video that
stops early (truncated) is an error, not a short result. The annotated video (every frame,
drawn with the latest analysed boxes, same fps and size), the CSV (timeline_frame, the
DataFrame Recognizer.predict_video returns) and the --plot chart are written through temp
files and renamed only when the whole clip succeeded. A camera runs until `stop` (Ctrl-C
in the CLI) or its stream ends, and is always released.

No Typer or Rich here: `run_video` returns a frozen VideoResult; callbacks report progress
and rows so the CLI can draw a bar or print rows live.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from fercli.errors import FerError
from fercli.files import atomic_save, atomic_write_text, silent_write_fault
from fercli.infer.config import PredictConfig
from fercli.infer.predict import _annotate, frame_csv
from fercli.infer.recognizer import Face, Recognizer
from fercli.infer.recognizer import validate as validate_predict
from fercli.plots import plot_emotions

if TYPE_CHECKING:
    import pandas as pd

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv")
DEFAULT_FPS = 25.0  # when the container does not say (some webcams, some AVIs)
TRACK_IOU = 0.3  # a detection continues a track when their boxes overlap at least this much
TRACK_MAX_GAP = 5  # analysed frames a track may go unseen before it is dropped
TRUNCATED_TOLERANCE = 0.02  # header frame counts may be off by a frame or two; more is damage
# FFmpeg would happily play a still image renamed .mp4 as a one-frame "video": refuse those.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF????WEBP")


def _looks_like_image(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _IMAGE_MAGIC if b"?" not in m)


def _quiet_opencv() -> None:
    """OpenCV and FFmpeg print their own warnings ("moov atom not found", "can't open camera
    by index") on stderr; the one-line FerError says it instead."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read at first open
    os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:
        pass


class Capture(Protocol):
    """What run_video needs from cv2.VideoCapture (tests pass a fake)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


@dataclass(frozen=True)
class VideoConfig:
    source: str  # a video file, or a camera index as a string ("0")
    camera: bool = False
    model: str | None = None
    backend: str = "auto"
    precision: str = "auto"
    detector: str = PredictConfig.detector
    tta: str = PredictConfig.tta
    device: str = "auto"
    margin: float = PredictConfig.margin
    frame: float = PredictConfig.frame
    intensity: str = PredictConfig.intensity
    every: int = 1  # analyse every N-th frame
    max_frames: int | None = None  # stop after reading this many frames
    smooth: float | None = None  # EMA alpha in (0, 1]; None = raw per-frame probabilities
    annotate: str | None = None  # folder for the annotated video
    csv: str | None = None
    plot: str | None = None  # emotions-over-time PNG


@dataclass(frozen=True)
class FrameFace:
    frame: int  # index of the frame in the stream, from 0
    time_s: float  # frame / fps for a file, seconds since start for a camera
    track: int  # IoU track id, from 0
    box: tuple[int, int, int, int]  # x, y, w, h
    label: str
    probs: dict[str, float]  # smoothed when VideoConfig.smooth is set

    def as_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "time_s": self.time_s, "track": self.track, "box": list(self.box),
                "label": self.label, "probs": dict(self.probs)}


@dataclass(frozen=True)
class VideoResult:
    source: str
    camera: bool
    frames_read: int
    frames_analysed: int
    fps: float
    size: tuple[int, int]  # width, height
    faces: tuple[FrameFace, ...]
    summary: dict[str, float]  # label -> share of face rows over the clip
    stopped: str  # end | max-frames | interrupted
    model: Any  # fercli.infer.predict.ModelInfo
    runner: dict[str, Any]
    device: str
    seconds: float
    annotated: str | None = None
    csv: str | None = None
    plot: str | None = None
    tracks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.source, "camera": self.camera, "frames_read": self.frames_read,
                "frames_analysed": self.frames_analysed, "fps": self.fps, "size": list(self.size),
                "tracks": self.tracks, "stopped": self.stopped, "summary": dict(self.summary),
                "faces": [f.as_dict() for f in self.faces], "error": None}


def is_video_path(p: str | Path) -> bool:
    return Path(p).suffix.lower() in VIDEO_EXTENSIONS


# --------------------------------------------------------------------------- tracking


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: tuple[int, int, int, int]
    probs: np.ndarray  # (C,) float64
    last: int  # index of the analysed frame it was last seen in


class Tracker:
    """Greedy IoU tracker with an optional exponential average of each track's probabilities."""

    def __init__(self, smooth: float | None) -> None:
        self.alpha = smooth
        self.tracks: list[_Track] = []
        self.next_id = 0
        self.step = 0

    def update(self, boxes: list[tuple[int, int, int, int]], probs: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """boxes (K) and probs (K, C) of one analysed frame -> (track id, probs to report) each."""
        self.step += 1
        self.tracks = [t for t in self.tracks if self.step - t.last <= TRACK_MAX_GAP]
        pairs = sorted(((iou(b, t.box), i, j) for i, b in enumerate(boxes) for j, t in enumerate(self.tracks)),
                       reverse=True)
        match: dict[int, int] = {}
        used: set[int] = set()
        for ov, i, j in pairs:
            if ov < TRACK_IOU:
                break
            if i not in match and j not in used:
                match[i] = j
                used.add(j)
        out = []
        for i, b in enumerate(boxes):
            p = probs[i].astype(np.float64)
            if i in match:
                t = self.tracks[match[i]]
                if self.alpha is not None:
                    p = self.alpha * p + (1 - self.alpha) * t.probs
                t.box, t.probs, t.last = b, p, self.step
            else:
                t = _Track(self.next_id, b, p, self.step)
                self.next_id += 1
                self.tracks.append(t)
            out.append((t.id, p / p.sum()))
        return out


# --------------------------------------------------------------------------- I/O


def open_capture(cfg: VideoConfig) -> Capture:
    """cv2.VideoCapture of the file or camera, or a one-line FerError naming it."""
    _quiet_opencv()
    if cfg.camera:
        try:
            index = int(cfg.source)
        except ValueError:
            raise FerError(f"--camera {cfg.source!r}: give a camera index such as 0") from None
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise FerError(f"camera {index}: cannot open it (no such device, or it is busy)")
        return cap
    p = Path(cfg.source).expanduser()
    if p.is_dir():
        raise FerError(f"{p} is a folder, not a video")
    if not p.is_file():
        raise FerError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise FerError(f"{p}: empty file (0 bytes), not a video")
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise FerError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if _looks_like_image(head):
        raise FerError(f"{p}: this is a still image, not a video (give it to fer predict with an image extension)")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        cap.release()
        raise FerError(f"{p}: not a video OpenCV can read (damaged, truncated or not a video)")
    return cap


def has_display() -> bool:
    """True when cv2.imshow can open a window: a GUI build of OpenCV and a display.
    (opencv-python-headless, which fercli installs, has no GUI backend at all.)"""
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("fer")
        cv2.destroyWindow("fer")
    except cv2.error:
        return False
    return True


def _annotate_target(cfg: VideoConfig) -> Path | None:
    if cfg.annotate is None:
        return None
    d = Path(cfg.annotate).expanduser()
    if d.exists() and not d.is_dir():
        raise FerError(f"--annotate {d} is a file; give a folder for the annotated video")
    name = f"camera{cfg.source}.mp4" if cfg.camera else Path(cfg.source).stem + ".mp4"
    target = d / name
    if not cfg.camera and target.exists() and os.path.samefile(target, cfg.source):
        raise FerError(f"--annotate {d}: the annotated video {target} would overwrite the input")
    return target


def timeline_frame(result: VideoResult, classes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per face per analysed frame: path, frame, time_s, track, x, y, w, h, label,
    probability (of the label), p_<class> for every class. What `fer predict clip.mp4 --csv`
    writes, `Recognizer.predict_video` returns and `plot_emotions` draws."""
    import pandas as pd

    classes = tuple(classes if classes is not None else getattr(result.model, "classes", ()))
    prob_cols = [f"p_{c}" for c in classes]
    rows = [{"path": result.source, "frame": f.frame, "time_s": f.time_s, "track": f.track,
             "x": f.box[0], "y": f.box[1], "w": f.box[2], "h": f.box[3], "label": f.label,
             "probability": f.probs[f.label], **{f"p_{c}": f.probs[c] for c in classes}} for f in result.faces]
    cols = ["path", "frame", "time_s", "track", "x", "y", "w", "h", "label", "probability", *prob_cols]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("frame", "track", "x", "y", "w", "h"):
        df[c] = df[c].astype("int64")
    for c in ("time_s", "probability", *prob_cols):
        df[c] = df[c].astype("float64")
    return df


def _draw(bgr: np.ndarray, rows: list[FrameFace]) -> np.ndarray:

    return _annotate(bgr, tuple(Face(box=r.box, label=f"#{r.track} {r.label}", probs={
        f"#{r.track} {r.label}": r.probs[r.label]}) for r in rows)) if rows else bgr


# --------------------------------------------------------------------------- main loop


ProgressFn = Callable[[int, int | None, float], None]  # frames read, total (None: camera), fps
FrameFn = Callable[[int, np.ndarray, list[FrameFace]], None]  # frame index, BGR, its rows


def validate(cfg: VideoConfig) -> None:
    if cfg.every < 1:
        raise FerError(f"--every must be ≥ 1, got {cfg.every}")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise FerError(f"--max-frames must be ≥ 1, got {cfg.max_frames}")
    if cfg.smooth is not None and not (math.isfinite(cfg.smooth) and 0 < cfg.smooth <= 1):
        raise FerError(f"--smooth must be in (0, 1] (the weight of the newest frame), got {cfg.smooth}")


@dataclass
class _Stream:
    """What the frame loop has seen so far."""

    rows: list[FrameFace] = field(default_factory=list)
    n_read: int = 0
    n_done: int = 0
    size: tuple[int, int] = (0, 0)
    stopped: str = "end"


def _analyse(rec: Recognizer, frame: np.ndarray, idx: int, ts: float, tracker: Tracker) -> list[FrameFace]:
    """One analysed BGR frame through the shared path (find_faces → classify), tracked."""
    found = rec.find_faces(frame, color="bgr")
    if not found:
        tracker.update([], np.zeros((0, len(rec.classes))))
        return []
    boxes = [b for b, _ in found]
    probs = rec.classify(np.stack([c for _, c in found]))
    tracked = tracker.update(boxes, probs)
    faces = rec.faces(boxes, [p for _, p in tracked])
    return [FrameFace(frame=idx, time_s=round(ts, 3), track=tid, box=f.box, label=f.label, probs=f.probs)
            for (tid, _), f in zip(tracked, faces, strict=True)]


def _stream(cfg: VideoConfig, rec: Recognizer, cap: Capture, tmp_video: Path | None, target: Path | None,
            fps: float, t0: float, on_progress: ProgressFn, on_frame: FrameFn | None) -> _Stream:
    """Read every frame, analyse every cfg.every-th, write the annotated copy if asked."""
    st = _Stream()
    tracker = Tracker(cfg.smooth)
    total = None if cfg.camera else int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    writer = None
    last: list[FrameFace] = []
    try:
        while True:
            if cfg.max_frames is not None and st.n_read >= cfg.max_frames:
                st.stopped = "max-frames"
                break
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            idx = st.n_read
            st.n_read += 1
            if st.n_read == 1:
                st.size = (frame.shape[1], frame.shape[0])
                if tmp_video is not None:
                    writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*"mp4v"), fps, st.size)
                    if not writer.isOpened():
                        raise (silent_write_fault(target or tmp_video, tmp_video)
                               or FerError(f"--annotate {target}: OpenCV cannot write an mp4 video here"))
            if idx % cfg.every == 0:
                ts = (time.perf_counter() - t0) if cfg.camera else idx / fps
                last = _analyse(rec, frame, idx, ts, tracker)
                st.rows.extend(last)
                st.n_done += 1
                if on_frame is not None:
                    on_frame(idx, frame, last)
            if writer is not None:
                writer.write(_draw(frame, last))
            on_progress(st.n_read, total, st.n_read / max(1e-9, time.perf_counter() - t0))
    except KeyboardInterrupt:
        if not cfg.camera:
            raise
        st.stopped = "interrupted"  # Ctrl-C ends a camera session normally
    finally:
        if writer is not None:
            writer.release()
    name = _name(cfg)
    if st.n_read == 0:
        raise FerError(f"{name}: no frames could be read (an empty or damaged video)")
    if st.stopped == "end" and total is not None and st.n_read < total * (1 - TRUNCATED_TOLERANCE) - 1:
        raise FerError(f"{name}: truncated or damaged video: read {st.n_read} of the {total} frames "
                       "its header announces")
    if tmp_video is not None and writer is None:
        raise FerError(f"{name}: no frame to write to {target}")
    if tmp_video is not None:
        _check_written(tmp_video, target, st.n_read)
    return st


def _mp4_has_index(path: Path) -> bool:
    """Whether the MP4's top-level boxes (4-byte big-endian size, 4-byte type; size 1: a 64-bit
    size follows; size 0: to the end) fit the file and include the 'moov' index, which the
    writer adds last, on release."""
    end = path.stat().st_size
    types = []
    with open(path, "rb") as fh:
        pos = 0
        while pos + 8 <= end:
            fh.seek(pos)
            head = fh.read(16)
            size, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if size == 1 and len(head) == 16:
                size = int.from_bytes(head[8:16], "big")
            elif size == 0:
                size = end - pos
            if size < 8 or pos + size > end:
                return False
            types.append(kind)
            pos += size
    return pos == end and b"moov" in types


def _check_written(tmp_video: Path, target: Path | None, frames: int) -> None:
    """OpenCV's writer raises nothing when a write fails: a full disk leaves an mp4 without its
    index (unreadable) and exit code 0. Read the finished file's frame count back before it is
    renamed into place; atomic_save removes it when this raises."""
    kept = 0
    if _mp4_has_index(tmp_video):  # else ffmpeg would print "moov atom not found" to stderr
        cap = cv2.VideoCapture(str(tmp_video))
        try:
            kept = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
        finally:
            cap.release()
    if kept < frames:
        raise (silent_write_fault(target or tmp_video, tmp_video)
               or FerError(f"{target or tmp_video}: OpenCV's video writer kept {kept} of {frames} frames", exit_code=1))


def _name(cfg: VideoConfig) -> str:
    return f"camera {cfg.source}" if cfg.camera else str(Path(cfg.source).expanduser())


def _check_outputs(cfg: VideoConfig) -> Path | None:
    """The annotated video's path; --csv / --plot must not be the input."""
    target = _annotate_target(cfg)
    for flag, out in (("--csv", cfg.csv), ("--plot", cfg.plot)):
        if out is not None and not cfg.camera and Path(out).expanduser().resolve() == Path(cfg.source).resolve():
            raise FerError(f"{flag} {out} is the input video; choose another file")
    if cfg.plot is not None and Path(cfg.plot).suffix.lower() != ".png":
        raise FerError(f"--plot {cfg.plot}: the emotions-over-time chart is a PNG; give a .png file")
    return target


def run_video(
    cfg: VideoConfig,
    *,
    capture: Capture | None = None,
    classifier: Any = None,
    recognizer: Recognizer | None = None,
    on_progress: ProgressFn | None = None,
    on_frame: FrameFn | None = None,
) -> VideoResult:
    """Detect, classify and track faces through a video file or a camera stream.
    `recognizer` (its settings win over cfg's) or `classifier` skip loading the model."""
    t0 = time.perf_counter()
    validate(cfg)
    pcfg = PredictConfig(inputs=(cfg.source,), model=cfg.model, detector=cfg.detector, tta=cfg.tta,
                         device=cfg.device, margin=cfg.margin, backend=cfg.backend, precision=cfg.precision,
                         frame=cfg.frame, intensity=cfg.intensity)
    validate_predict(pcfg)
    target = _check_outputs(cfg)
    cap = capture if capture is not None else open_capture(cfg)
    try:
        rec = recognizer if recognizer is not None else Recognizer.from_config(pcfg, classifier=classifier)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
        fps = fps if math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
        progress = on_progress or (lambda done, tot, rate: None)
        with ExitStack() as stack:
            tmp_video = stack.enter_context(atomic_save(target)) if target is not None else None
            st = _stream(cfg, rec, cap, tmp_video, target, fps, t0, progress, on_frame)
    finally:
        cap.release()
    counts: dict[str, int] = {}
    for r in st.rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    summary = {c: round(counts.get(c, 0) / len(st.rows), 4) for c in rec.classes} if st.rows else {}
    result = VideoResult(source=_name(cfg), camera=cfg.camera, frames_read=st.n_read, frames_analysed=st.n_done,
                         fps=fps, size=st.size, faces=tuple(st.rows), summary=summary, stopped=st.stopped,
                         model=rec.model_info, runner=rec.runner, device=rec.device,
                         seconds=time.perf_counter() - t0, annotated=str(target) if target is not None else None,
                         csv=cfg.csv, plot=cfg.plot, tracks=1 + max((f.track for f in st.rows), default=-1))
    if cfg.csv is not None or cfg.plot is not None:
        df = timeline_frame(result, rec.classes)
        if cfg.csv is not None:
            atomic_write_text(Path(cfg.csv).expanduser(), frame_csv(df))
        if cfg.plot is not None:
            plot_emotions(df, Path(cfg.plot).expanduser(), title=result.source)
    return result


class LiveWindow:
    """A cv2 window showing each analysed frame with its boxes; q or Esc stops the stream
    (raised as KeyboardInterrupt, which run_video treats as a normal camera stop)."""

    def __init__(self, title: str = "fer (q to quit)") -> None:
        self.title = title

    def __call__(self, idx: int, frame: np.ndarray, rows: list[FrameFace]) -> None:
        cv2.imshow(self.title, _draw(frame, rows))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            raise KeyboardInterrupt

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass
