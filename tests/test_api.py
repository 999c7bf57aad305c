"""The Python API (fercli.Recognizer, Face, plot_emotions) on the shipped model: every input
kind gives what `fer predict --json` gives, tables have the documented columns, a shared
Recognizer gives the same results from 8 threads, bad input is a one-line FerError, and the
README's snippet runs.

The shipped model is loaded once per module (it takes seconds); the CLI runs in this test
reuse it through make_classifier, so they exercise everything but the loading again."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import fercli
from fercli.cli import app
from fercli.infer import recognizer as core
from tests.fixtures import REPO, SAMPLE_DIR

TWO = SAMPLE_DIR / "two_faces.jpg"
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FACE_COLS = ["path", "face", "x", "y", "w", "h", "label", "probability", *[f"p_{c}" for c in CLASSES], "error"]
VIDEO_COLS = ["path", "frame", "time_s", "track", "x", "y", "w", "h", "label", "probability",
              *[f"p_{c}" for c in CLASSES]]

@pytest.fixture(scope="module")
def rec() -> fercli.Recognizer:
    return fercli.Recognizer(device="cpu")


@pytest.fixture
def reuse_model(rec: fercli.Recognizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Recognizer built in the test (the CLI's, the README's) gets rec's loaded model."""
    made = (rec.classifier, rec.model_info, rec.backend_reason)
    monkeypatch.setattr(core, "make_classifier", lambda cfg: made)


def cli_json(*args: str) -> object:
    res = CliRunner().invoke(app, ["predict", *args, "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def write_clip(path: Path, n: int = 6, fps: float = 10.0) -> Path:
    """A short mp4 of the astronaut portrait sliding right, 3 px per frame (160x160)."""
    face = cv2.resize(cv2.imread(str(SAMPLE_DIR / "astronaut.jpg")), (160, 160), interpolation=cv2.INTER_AREA)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 160))
    assert w.isOpened()
    for i in range(n):
        w.write(np.roll(face, 3 * i, axis=1))
    w.release()
    return path


# --------------------------------------------------------------------------- inputs


def _inputs() -> dict[str, tuple[object, str]]:
    bgr = cv2.imread(str(TWO))
    return {
        "path-str": (str(TWO), "rgb"),
        "path": (TWO, "rgb"),
        "bytes": (TWO.read_bytes(), "rgb"),
        "pil": (Image.open(TWO), "rgb"),
        "rgb-array": (np.ascontiguousarray(bgr[:, :, ::-1]), "rgb"),
        "bgr-array": (bgr, "bgr"),
        "grey-array": (cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), "rgb"),
        "rgba-array": (np.dstack([bgr[:, :, ::-1], np.full(bgr.shape[:2], 255, np.uint8)]), "rgb"),
        "float-array": (bgr[:, :, ::-1].astype(np.float32) / 255.0, "rgb"),
    }


def test_every_input_kind_gives_what_fer_predict_json_gives(rec: fercli.Recognizer, reuse_model: None) -> None:
    (entry,) = cli_json(str(TWO))
    expected = entry["faces"]
    assert len(expected) == 2  # the two portraits
    for kind, (image, color) in _inputs().items():
        faces = rec.predict(image, color=color)
        assert [f.to_dict() for f in faces] == expected, kind
    f = rec.predict(TWO)[0]
    assert isinstance(f, fercli.Face) and f.label == max(f.probs, key=f.probs.get)
    assert f.confidence == f.probs[f.label] and list(f.probs) == list(rec.classes) == list(CLASSES)
    assert abs(sum(f.probs.values()) - 1) < 1e-4
    with pytest.raises(AttributeError):
        f.label = "x"  # type: ignore[misc]  (frozen)


def test_predict_is_find_faces_then_classify_then_faces(rec: fercli.Recognizer) -> None:
    found = rec.find_faces(cv2.imread(str(TWO)), color="bgr")
    assert len(found) == 2
    for box, crop in found:
        assert len(box) == 4 and all(isinstance(v, int) for v in box)
        assert crop.shape == (48, 48) and crop.dtype == np.uint8
    boxes, crops = zip(*found, strict=True)
    probs = rec.classify(np.stack(crops))
    assert probs.shape == (2, 7) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert rec.faces(boxes, probs) == rec.predict(TWO)
    assert rec.classify(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)
    # One batched pass gives each face what it gets alone.
    alone = np.concatenate([rec.classify(c[None]) for c in crops])
    assert np.allclose(alone, probs, atol=1e-5)


def test_info_describes_the_model(rec: fercli.Recognizer) -> None:
    info = rec.info
    json.dumps(info)  # serialisable, as `fer serve` returns it
    assert info["name"] == "bcnn-resnet34" and info["classes"] == list(CLASSES)
    assert info["provenance"]["dataset_name"] == "fer2013" and len(info["provenance"]["dataset_sha256"]) == 64
    assert info["accuracy"]["fer2013_private_test"] == pytest.approx(0.6623, abs=5e-5)
    assert info["runner"]["detector"] in ("yunet", "haar")


# --------------------------------------------------------------------------- tables


def test_predict_folder_dataframe_equals_fer_predict_csv(rec: fercli.Recognizer, reuse_model: None,
                                                        tmp_path: Path) -> None:
    df = rec.predict_folder(SAMPLE_DIR)
    assert list(df.columns) == FACE_COLS and len(df) == 4  # 1 + 1 + 2 faces
    assert df["error"].isna().all() and str(df["x"].dtype) == "Int64"
    assert np.allclose(df[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1, atol=1e-4)
    two = df[df["path"] == str(TWO)]
    for i, f in enumerate(rec.predict(TWO)):
        row = two.iloc[i]
        assert [int(row[k]) for k in "xywh"] == list(f.box) and row["label"] == f.label
        assert {c: row[f"p_{c}"] for c in CLASSES} == f.probs
    # `fer predict --csv` writes this table.
    csv_path = tmp_path / "faces.csv"
    cli_json(str(SAMPLE_DIR), "--csv", str(csv_path))
    written = pd.read_csv(csv_path)
    assert list(written.columns) == FACE_COLS
    pd.testing.assert_frame_equal(written.drop(columns=["error", "face", "x", "y", "w", "h"]),
                                  df.drop(columns=["error", "face", "x", "y", "w", "h"]), atol=1e-6)
    assert (written[list("xywh")].to_numpy() == df[list("xywh")].to_numpy(dtype=int)).all()


def test_folder_with_a_bad_file_and_a_faceless_image(rec: fercli.Recognizer, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("L", (80, 80), 128).save(tmp_path / "blank.png")
    df = rec.predict_folder(tmp_path)
    assert len(df) == 2 and df["face"].isna().all()
    notes = dict(zip(df["path"].map(lambda p: Path(p).name), df["error"], strict=True))
    assert notes["blank.png"] == "no face detected" and "corrupt" in notes["broken.jpg"]


def test_predict_video_timeline_and_plot(rec: fercli.Recognizer, reuse_model: None, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4")
    tl = rec.predict_video(clip, every=2, smooth=0.3)
    assert list(tl.columns) == VIDEO_COLS
    assert tl["frame"].tolist() == [0, 2, 4] and tl["time_s"].tolist() == pytest.approx([0.0, 0.2, 0.4])
    assert tl["track"].tolist() == [0, 0, 0]  # one face followed through the clip
    assert np.allclose(tl[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1, atol=1e-4)
    raw = rec.predict_video(clip, every=2)
    # Frame 0 has no history: smoothing changes only the later rows.
    assert tl.iloc[0]["p_happy"] == raw.iloc[0]["p_happy"]
    # The first frame's row is what predict gives for that frame.
    cap = cv2.VideoCapture(str(clip))
    ok, frame0 = cap.read()
    cap.release()
    (f0,) = rec.predict(frame0, color="bgr")
    assert [int(raw.iloc[0][k]) for k in "xywh"] == list(f0.box) and raw.iloc[0]["label"] == f0.label
    png = fercli.plot_emotions(tl, tmp_path / "emotions.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    # `fer predict clip.mp4 --plot` uses the same helper; --plot with photos is refused.
    out = cli_json(str(clip), "--every", "2", "--plot", str(tmp_path / "cli.png"))
    assert len(out["faces"]) == 3 and (tmp_path / "cli.png").stat().st_size > 5000
    res = CliRunner().invoke(app, ["predict", str(TWO), "--plot", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--plot" in res.output and not (tmp_path / "x.png").exists()


def test_plot_emotions_refuses_a_photo_table(rec: fercli.Recognizer, tmp_path: Path) -> None:
    with pytest.raises(fercli.FerError, match="time_s"):
        fercli.plot_emotions(pd.DataFrame({"p_happy": [1.0]}), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- threads


def test_one_recognizer_shared_by_8_threads_gives_the_sequential_results(
        rec: fercli.Recognizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection runs in parallel (nothing shared), classification under the Recognizer's
    lock: 8 threads × 3 calls over 3 images give exactly the sequential answers, and the
    model never runs two forward passes at once."""
    images = [cv2.imread(str(SAMPLE_DIR / n)) for n in ("astronaut.jpg", "grace_hopper.jpg", "two_faces.jpg")]
    images = [cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA) for im in images]
    expected = [rec.predict(im, color="bgr") for im in images]
    assert [len(e) for e in expected] == [1, 1, 2]
    crops = np.stack([c for im in images for _, c in rec.find_faces(im, color="bgr")])
    expected_probs = rec.classify(crops)
    active, most = [0], [0]
    inner = rec.classifier.predict_proba

    def counted(*args: object, **kwargs: object) -> np.ndarray:
        active[0] += 1
        most[0] = max(most[0], active[0])
        try:
            return inner(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(rec.classifier, "predict_proba", counted)
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait()
            for k in range(3):
                i = (t + k) % 3
                results[t, k] = rec.predict(images[i], color="bgr")
                results[t, k, "p"] = rec.classify(crops)  # type: ignore[index]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert most[0] == 1  # the lock: one forward pass at a time
    for t in range(8):
        for k in range(3):
            assert results[t, k] == expected[(t + k) % 3]
            assert np.array_equal(results[t, k, "p"], expected_probs)  # type: ignore[index]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("image, color, match", [
    (b"", "rgb", "empty"),
    (b"this is not an image", "rgb", "corrupt"),
    ("no/such/photo.jpg", "rgb", "no/such/photo.jpg"),
    (np.zeros((10, 10, 2), np.uint8), "rgb", "shape"),
    (np.zeros((0, 5), np.uint8), "rgb", "empty"),
    (np.full((20, 20), np.nan, np.float32), "rgb", "NaN"),
    (np.zeros((20, 20), "U1"), "rgb", "dtype"),
    (np.zeros((20, 20), np.uint8), "hsv", "color"),
    (np.zeros((8000, 8000), bool), "rgb", "too large"),
    (object(), "rgb", "cannot read an object"),
])
def test_bad_input_is_a_one_line_fer_error(rec: fercli.Recognizer, image: object, color: str, match: str) -> None:
    with pytest.raises(fercli.FerError, match=re.escape(match)) as info:
        rec.predict(image, color=color)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_bytes_and_bad_settings(rec: fercli.Recognizer) -> None:
    data = TWO.read_bytes()
    with pytest.raises(fercli.FerError, match="truncated"):
        rec.predict(data[: len(data) // 2])
    with pytest.raises(fercli.FerError, match="classify: crops must be uint8"):
        rec.classify(np.zeros((2, 32, 32), np.uint8))
    for kw, match in [({"detector": "mtcnn"}, "^detector='mtcnn'"), ({"margin": -1.0}, "^margin "),
                      ({"tta": "rotate"}, "^tta='rotate'"), ({"backend": "tvm"}, "^backend='tvm'")]:
        with pytest.raises(fercli.FerError, match=match):
            fercli.Recognizer(**kw)
    with pytest.raises(fercli.FerError, match="does not exist"):
        fercli.Recognizer("no/such/model.pt")


# --------------------------------------------------------------------------- the README


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    assert len(section.strip().splitlines()) <= 15, "the README's API section is at most 15 lines"
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_python_api_snippet_runs(reuse_model: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_snippet()
    assert "fercli.Recognizer(" in code and "predict_folder" in code and "plot_emotions" in code
    os.symlink(SAMPLE_DIR, tmp_path / "sample_images")
    write_clip(tmp_path / "clip.mp4", n=12)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith("happy ")  # the astronaut smiles
    assert isinstance(scope["df"], pd.DataFrame) and len(scope["df"]) == 4
    assert isinstance(scope["tl"], pd.DataFrame) and scope["tl"]["frame"].tolist() == [0, 5, 10]
    assert (tmp_path / "emotions.png").read_bytes()[:4] == b"\x89PNG"


def test_public_surface() -> None:
    assert set(fercli.__all__) >= {"Recognizer", "Face", "FerError", "plot_emotions"}
    for name in fercli.__all__:
        assert getattr(fercli, name) is not None
    assert fercli.FerError is core.FerError
    with pytest.raises(AttributeError):
        fercli.no_such_name  # noqa: B018


def test_an_opencv_array_needs_no_color_and_a_file_object_reads(rec: fercli.Recognizer) -> None:
    """A colour array is BGR unless told otherwise (the OpenCV convention); an RGB array read
    as BGR would be a silent channel swap, so the default is checked against fer predict."""
    import io

    (entry,) = cli_json(str(TWO))
    bgr = cv2.imread(str(TWO))
    assert [f.to_dict() for f in rec.predict(bgr)] == entry["faces"]
    assert [f.to_dict() for f in rec.predict(np.ascontiguousarray(bgr[:, :, ::-1]), color="rgb")] == entry["faces"]
    assert [f.to_dict() for f in rec.predict(io.BytesIO(TWO.read_bytes()))] == entry["faces"]
    with open(TWO, "rb") as fh:
        assert [f.to_dict() for f in rec.predict(fh)] == entry["faces"]
    with pytest.raises(fercli.FerError, match="binary mode"):
        rec.predict(io.StringIO("text"))
    with pytest.raises(fercli.FerError, match=r"cannot read an int \(5\)"):
        rec.predict(5)


def test_api_errors_name_keywords_and_cli_errors_name_flags() -> None:
    from fercli.api import keyword_terms

    with pytest.raises(fercli.FerError) as info:
        fercli.Recognizer(detector="foo")
    assert str(info.value).startswith("detector='foo' is not one of") and "--" not in str(info.value)
    with pytest.raises(fercli.FerError, match=r"^margin must be between 0 and 2"):
        fercli.Recognizer(margin=5)
    assert keyword_terms("--device cuda requested but no CUDA GPU is available (use --device cpu)") == (
        "device='cuda' requested but no CUDA GPU is available (use device='cpu')")
    assert keyword_terms("--model /x/m.pt: not found") == "model='/x/m.pt': not found"
    r = CliRunner().invoke(app, ["predict", str(TWO), "--detector", "foo"])
    assert r.exit_code == 2 and "--detector 'foo' is not one of" in r.stderr
