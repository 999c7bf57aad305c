"""`fer predict` end to end through the CLI, with an untrained resnet34 checkpoint.

Untrained weights are enough here: these tests check faces found, boxes, output formats,
error handling and that inputs are never modified, not what emotion is predicted.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fercli.cli import app
from fercli.infer.torch_backend import FaceClassifier
from fercli.model import locate
from fercli.model.networks import build_model
from fercli.vision.faces import crop_face
from fercli.vision.images import load_grey
from tests.fixtures import (
    SAMPLE_DIR,
    face_image,
    save_variant,
    tree_digest,
    untrained_run,
    write_huge_png,
)

runner = CliRunner()
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("predict") / "run", CLASSES)


def predict_json(model_dir: Path, *args: str, code: int = 0) -> list[dict]:
    res = runner.invoke(app, ["predict", *args, "--model", str(model_dir), "--json", "--device", "cpu"])
    assert res.exit_code == code, res.output
    return json.loads(res.stdout)  # --json: nothing but JSON on stdout


def check_schema(item: dict) -> None:
    assert set(item) == {"path", "faces", "error"}
    for f in item["faces"]:
        assert set(f) == {"box", "label", "probs"}
        assert len(f["box"]) == 4 and all(isinstance(v, int) for v in f["box"])
        assert list(f["probs"]) == CLASSES and f["label"] in CLASSES
        assert abs(sum(f["probs"].values()) - 1) < 1e-4
        assert f["label"] == max(f["probs"], key=f["probs"].get)


def test_one_face_several_faces_and_no_face(model_dir: Path, tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((240, 320), 128, np.uint8)).save(grey)
    out = predict_json(model_dir, str(SAMPLE_DIR / "astronaut.jpg"), str(SAMPLE_DIR / "two_faces.jpg"), str(grey))
    assert [Path(o["path"]).name for o in out] == ["astronaut.jpg", "two_faces.jpg", "grey.png"]
    for o in out:
        check_schema(o)
        assert o["error"] is None
    assert len(out[0]["faces"]) == 1
    x, y, w, h = out[0]["faces"][0]["box"]
    assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 180 and 60 < w < 160  # the astronaut's face
    assert len(out[1]["faces"]) == 2
    assert out[1]["faces"][0]["box"][0] < out[1]["faces"][1]["box"][0]  # left to right
    assert out[2]["faces"] == []
    # The table output says so too.
    res = runner.invoke(app, ["predict", str(grey), str(SAMPLE_DIR / "two_faces.jpg"), "--model", str(model_dir)])
    assert res.exit_code == 0, res.output
    assert "no face found" in res.stdout and "2 face(s)" in res.stdout
    assert "model: resnet34" in res.stderr


def test_folder_recursive_csv_and_annotate_keep_inputs(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(SAMPLE_DIR / "two_faces.jpg", src / "b.jpg")
    shutil.copy(SAMPLE_DIR / "astronaut.jpg", src / "sub" / "a.JPG")
    save_variant(src / "sub" / "deeper" / "face.png", face_image(96), "rgba")
    (src / "notes.txt").write_text("not an image")
    before = tree_digest(src)
    ann, table = tmp_path / "ann", tmp_path / "faces.csv"
    out = predict_json(model_dir, str(src), "--csv", str(table), "--annotate", str(ann))
    assert [Path(o["path"]).relative_to(src).as_posix() for o in out] == ["b.jpg", "sub/a.JPG", "sub/deeper/face.png"]
    assert tree_digest(src) == before  # inputs untouched
    written = sorted(p.relative_to(ann).as_posix() for p in ann.rglob("*") if p.is_file())
    assert written == ["b.jpg", "sub/a.JPG", "sub/deeper/face.png"]
    with Image.open(ann / "b.jpg") as im:
        assert im.size == Image.open(src / "b.jpg").size
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    n_faces = sum(len(o["faces"]) for o in out)
    face_rows = [r for r in rows if r["face"] != ""]
    assert len(face_rows) == n_faces >= 3
    for r in face_rows:
        assert abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-4


def test_bad_files_in_folder_are_reported_and_skipped(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "mixed"
    src.mkdir()
    shutil.copy(SAMPLE_DIR / "astronaut.jpg", src / "a.jpg")
    (src / "b_empty.jpg").write_bytes(b"")
    data = (SAMPLE_DIR / "grace_hopper.jpg").read_bytes()
    (src / "c_truncated.jpg").write_bytes(data[: len(data) // 3])
    (src / "d_garbage.png").write_bytes(b"\x89PNG not really")
    write_huge_png(src / "e_huge.png")
    res = runner.invoke(app, ["predict", str(src), "--model", str(model_dir), "--json"])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    by_name = {Path(o["path"]).name: o for o in out}
    assert len(by_name["a.jpg"]["faces"]) == 1 and by_name["a.jpg"]["error"] is None
    assert "empty" in by_name["b_empty.jpg"]["error"]
    assert "truncated" in by_name["c_truncated.jpg"]["error"]
    assert by_name["d_garbage.png"]["error"]
    assert "too large" in by_name["e_huge.png"]["error"]
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 4 and all(any(n in ln for n in by_name) for ln in err_lines)
    assert "Traceback" not in res.output


def test_single_bad_file_and_bad_arguments(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    res = runner.invoke(app, ["predict", str(bad), "--model", str(model_dir)])
    assert res.exit_code != 0 and "bad.jpg" in res.stderr and "empty" in res.stderr
    res = runner.invoke(app, ["predict", str(tmp_path / "missing.jpg"), "--model", str(model_dir)])
    assert res.exit_code == 2 and "no such file" in res.stderr
    res = runner.invoke(app, ["predict", str(SAMPLE_DIR / "astronaut.jpg"), "--model", str(tmp_path)])
    assert res.exit_code == 2 and "best.pt" in res.stderr
    res = runner.invoke(app, ["predict", str(SAMPLE_DIR / "astronaut.jpg"), "--model", str(model_dir),
                              "--detector", "mtcnn"])
    assert res.exit_code == 2 and "--detector" in res.stderr


def test_annotate_never_overwrites_inputs(model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE_DIR / "astronaut.jpg", src / "a.jpg")
    before = tree_digest(src)
    res = runner.invoke(app, ["predict", str(src / "a.jpg"), "--model", str(model_dir), "--annotate", str(src)])
    assert res.exit_code == 2 and "overwrite" in res.stderr
    assert tree_digest(src) == before


def test_detector_none_and_image_modes(model_dir: Path, tmp_path: Path) -> None:
    face = face_image(48)
    paths = [save_variant(tmp_path / f"f_{k}{'.jpg' if k == 'cmyk' else '.png'}", face, k)
             for k in ("grey", "rgb", "rgba", "palette", "16bit", "cmyk", "big")]
    out = predict_json(model_dir, *map(str, paths), "--detector", "none", "--tta", "flip")
    assert len(out) == len(paths)
    for o, p in zip(out, paths, strict=True):
        check_schema(o)
        assert o["error"] is None and len(o["faces"]) == 1
        size = 96 if "big" in p.name else 48
        assert o["faces"][0]["box"] == [0, 0, size, size]
    # The same face in every mode gives (nearly) the same probabilities.
    ref = np.array(list(out[0]["faces"][0]["probs"].values()))
    for o in out[1:5]:
        assert np.allclose(ref, list(o["faces"][0]["probs"].values()), atol=0.02)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_grey(tmp_path / "rot.jpg").shape == (40, 20)  # the decoder predict uses


def test_model_resolution_order(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(locate, "DEFAULT_MODEL", tmp_path / "assets" / "default_model.npz")
    img = str(SAMPLE_DIR / "astronaut.jpg")
    res = runner.invoke(app, ["predict", img])
    assert res.exit_code == 2
    assert "fer prepare fer2013" in res.stderr and "--model" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1
    # A local run is used (and named) when there is no bundled model.
    shutil.copytree(model_dir, tmp_path / "runs" / "some-run")
    res = runner.invoke(app, ["predict", img, "--json"])
    assert res.exit_code == 0, res.output
    assert "newest local run" in res.stderr and "some-run" in res.stderr
    # The bundled default wins once it exists (an exported .npz).
    from fercli.export.npz_format import export_model

    export_model(model_dir, tmp_path / "assets" / "default_model.npz")
    res = runner.invoke(app, ["predict", img, "--json", "--backend", "torch"])  # no ONNX conversion needed here
    assert res.exit_code == 0, res.output
    assert "bundled default model" in res.stderr
    assert len(json.loads(res.stdout)[0]["faces"]) == 1


def test_crop_face_margin_and_edges() -> None:
    grey = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100).astype(np.uint8)
    c = crop_face(grey, (0, 0, 30, 30), 48, margin=0.2)  # box at the corner: padded, still square
    assert c.shape == (48, 48) and c.dtype == np.uint8
    assert crop_face(grey, (90, 90, 10, 10), 48).shape == (48, 48)


@pytest.mark.slow
def test_frozen_torchscript_runner_matches_eager() -> None:
    torch.manual_seed(0)
    model = build_model("resnet34", len(CLASSES))
    faces = np.stack([np.roll(face_image(48), k, axis=1) for k in range(3)])
    eager = FaceClassifier(model, CLASSES, torch.device("cpu"), optimize="eager").predict_proba(faces)
    jit = FaceClassifier(model, CLASSES, torch.device("cpu"), optimize="jit")
    got = jit.predict_proba(faces, tta="flip")
    assert jit.describe()["torchscript"] is True
    ref = FaceClassifier(model, CLASSES, torch.device("cpu")).predict_proba(faces, tta="flip")
    assert np.allclose(got, ref, atol=1e-4) and np.allclose(eager.sum(1), 1)
    # ten-crop views are smaller than 48 px: they bypass the frozen (48 px-traced) model.
    tc = jit.predict_proba(faces, tta="ten-crop")
    assert np.allclose(tc, FaceClassifier(model, CLASSES, torch.device("cpu")).predict_proba(faces, tta="ten-crop"), atol=1e-4)
