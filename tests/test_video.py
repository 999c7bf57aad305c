"""`fer predict` on videos and cameras: a synthetic MP4 written here from the sample photos
(frames, timestamps, tracks, the annotated video), bad inputs, the headless camera loop."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fercli.cli import app
from fercli.errors import FerError
from fercli.infer import video
from fercli.infer.torch_backend import FaceClassifier
from fercli.model.networks import build_model
from tests.fixtures import SAMPLE_DIR, untrained_run

runner = CliRunner()
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FPS = 10.0


def write_clip(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert wr.isOpened()
    for f in frames:
        wr.write(f)
    wr.release()
    return path


def face_frames(n: int = 6) -> list[np.ndarray]:
    """The astronaut photo (one face), drifting 4 px right per frame."""
    a = cv2.resize(cv2.imread(str(SAMPLE_DIR / "astronaut.jpg")), (320, 320))
    return [np.roll(a, 4 * i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("video") / "run", CLASSES)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", face_frames())


def fer(model_dir: Path, *args: str, code: int = 0):  # type: ignore[no-untyped-def]
    res = runner.invoke(app, ["predict", *args, "--model", str(model_dir), "--backend", "torch",
                              "--detector", "haar", "--device", "cpu"])
    assert res.exit_code == code, res.output
    return res


def test_video_rows_timestamps_tracks_annotate_csv(model_dir: Path, clip: Path, tmp_path: Path) -> None:
    out, csv_path = tmp_path / "out", tmp_path / "rows.csv"
    res = fer(model_dir, str(clip), "--every", "2", "--smooth", "0.5", "--json",
              "--annotate", str(out), "--csv", str(csv_path))
    r = json.loads(res.stdout)
    assert r["frames_read"] == 6 and r["frames_analysed"] == 3 and r["fps"] == pytest.approx(FPS)
    assert [f["frame"] for f in r["faces"]] == [0, 2, 4]  # one face, every 2nd frame
    assert [f["time_s"] for f in r["faces"]] == [0.0, 0.2, 0.4]  # frame / fps
    assert {f["track"] for f in r["faces"]} == {0} and r["tracks"] == 1  # one face, one track
    assert r["stopped"] == "end" and abs(sum(r["summary"].values()) - 1) < 1e-3
    for f in r["faces"]:
        assert list(f["probs"]) == CLASSES and abs(sum(f["probs"].values()) - 1) < 1e-4
        assert f["label"] == max(f["probs"], key=f["probs"].get)
    # The annotated video: every frame, same fps and size, readable.
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (320, 320, 3)
        n += 1
    cap.release()
    assert n == 6
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("path,frame,time_s,track,x,y,w,h,label") and len(lines) == 4
    assert [ln.split(",")[1] for ln in lines[1:]] == ["0", "2", "4"]
    # --max-frames stops early and says so.
    r = json.loads(fer(model_dir, str(clip), "--max-frames", "3", "--json").stdout)
    assert r["frames_read"] == 3 and r["stopped"] == "max-frames" and len(r["faces"]) == 3


def test_video_without_faces_is_an_empty_result(model_dir: Path, tmp_path: Path) -> None:
    p = write_clip(tmp_path / "blank.mp4", [np.full((120, 160, 3), 90 + 10 * i, np.uint8) for i in range(4)])
    r = json.loads(fer(model_dir, str(p), "--json").stdout)
    assert r["faces"] == [] and r["frames_read"] == 4 and r["summary"] == {}
    res = fer(model_dir, str(p))
    assert "no face found in 4 analysed frame(s)" in res.stdout


def test_tracker_smooths_and_keeps_ids() -> None:
    t = video.Tracker(smooth=0.3)
    a, b = np.array([[0.9, 0.1]]), np.array([[0.1, 0.9]])
    labels = []
    seq = [a, a, b, a, a, b, a]  # a steady expression with one-frame flickers
    for i, q in enumerate(seq):
        (tid, p), = t.update([(100 + 3 * i, 50, 80, 80)], q)
        assert tid == 0  # the drifting face keeps its track
        labels.append(int(np.argmax(p)))
    assert labels == [0] * 7  # smoothed: no flicker
    raw = video.Tracker(smooth=None)
    assert [int(np.argmax(raw.update([(0, 0, 80, 80)], q)[0][1])) for q in seq] == [0, 0, 1, 0, 0, 1, 0]
    # A far-away face is a new track; one unseen for longer than TRACK_MAX_GAP is forgotten.
    (_, _), (tid2, _) = t.update([(118, 50, 80, 80), (400, 300, 60, 60)], np.vstack([a, b]))
    assert tid2 == 1
    for _ in range(video.TRACK_MAX_GAP + 1):
        t.update([], np.zeros((0, 2)))
    (tid3, _), = t.update([(118, 50, 80, 80)], a)
    assert tid3 == 2


@pytest.mark.parametrize("case", ["truncated", "empty", "text", "image", "annotate-file", "camera"])
def test_bad_video_inputs_are_one_line_errors(case: str, model_dir: Path, clip: Path, tmp_path: Path) -> None:
    p = tmp_path / f"{case}.mp4"
    data = clip.read_bytes()
    args = [str(p)]
    if case == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("this is not a video\n" * 50)
    elif case == "image":
        p.write_bytes((SAMPLE_DIR / "astronaut.jpg").read_bytes())
    elif case == "annotate-file":
        p.write_bytes(data)
        (tmp_path / "afile").write_text("x")
        args += ["--annotate", str(tmp_path / "afile")]
        p = tmp_path / "afile"
    else:
        args = ["--camera", "97"]
    out_dir = tmp_path / "out"
    res = fer(model_dir, *args, "--csv", str(tmp_path / "rows.csv"), *(
        ["--annotate", str(out_dir)] if case != "annotate-file" else []), code=2)
    name = "camera 97" if case == "camera" else str(p)
    assert name in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "rows.csv").exists()
    assert not out_dir.exists() or not any(out_dir.iterdir())


class FakeCapture:
    """A camera or a file: yields `frames`, then ends, or raises KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, frames: list[np.ndarray], count: float = 0, interrupt: bool = False) -> None:
        self.frames, self.count, self.interrupt = list(frames), count, interrupt
        self.released = False
        self.reads = 0

    def isOpened(self) -> bool:
        return not self.released

    def read(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        if self.frames:
            return True, self.frames.pop(0)
        if self.interrupt:
            raise KeyboardInterrupt
        return False, None

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_COUNT: self.count}.get(prop, 0.0)

    def release(self) -> None:
        self.released = True


@pytest.fixture(scope="module")
def classifier() -> FaceClassifier:
    torch.manual_seed(0)
    return FaceClassifier(build_model("resnet34", len(CLASSES)), CLASSES, torch.device("cpu"))


def test_truncated_stream_is_an_error_and_leaves_no_file(classifier: FaceClassifier, tmp_path: Path) -> None:
    cap = FakeCapture(face_frames(3), count=10)  # the header promises 10 frames, 3 arrive
    cfg = video.VideoConfig(source=str(tmp_path / "x.mp4"), detector="haar", annotate=str(tmp_path / "out"),
                            csv=str(tmp_path / "rows.csv"))
    with pytest.raises(FerError, match="truncated.*read 3 of the 10"):
        video.run_video(cfg, capture=cap, classifier=classifier)
    assert cap.released and not (tmp_path / "rows.csv").exists()
    assert not any((tmp_path / "out").iterdir())  # the temp video was removed


def test_headless_camera_prints_rows_until_ctrl_c(classifier: FaceClassifier, model_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cap = FakeCapture(face_frames(3), interrupt=True)
    seen: list[int] = []
    cfg = video.VideoConfig(source="0", camera=True, detector="haar")
    r = video.run_video(cfg, capture=cap, classifier=classifier, on_frame=lambda i, f, rows: seen.append(i))
    assert r.stopped == "interrupted" and r.frames_read == 3 and seen == [0, 1, 2] and cap.released
    assert len(r.faces) == 3 and all(f.track == 0 for f in r.faces)
    # Through the CLI: no display here (headless OpenCV), so rows go to stdout, exit 0.
    cap2 = FakeCapture(face_frames(2), interrupt=True)
    monkeypatch.setattr(video, "open_capture", lambda cfg: cap2)
    monkeypatch.setattr(video, "has_display", lambda: False)
    res = fer(model_dir, "--camera", "0", "--json")
    rows = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [r["frame"] for r in rows] == [0, 1] and cap2.released
    assert "until Ctrl-C" in res.stderr


def test_opencv_here_is_headless() -> None:
    """opencv-python-headless has no GUI: --camera must fall back to rows, not crash."""
    assert video.has_display() is False


def test_mp4_index_check_reads_a_whole_file_and_refuses_a_cut_one(clip: Path, tmp_path: Path) -> None:
    """The box walk that decides whether the annotated file may be opened (an index-less mp4
    makes ffmpeg print to stderr): a finished clip has its 'moov'; cut short, or empty, not."""
    assert video._mp4_has_index(clip)
    data = clip.read_bytes()
    for n, cut in ((0, "empty"), (len(data) - 9, "cut"), (len(data) // 2, "half")):
        (tmp_path / f"{cut}.mp4").write_bytes(data[:n])
        assert not video._mp4_has_index(tmp_path / f"{cut}.mp4"), cut

