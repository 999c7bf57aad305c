"""The bad-input matrix across prepare, train, evaluate and predict.

Every malformed input must give: a non-zero exit; one line on stderr naming the culprit;
no traceback; no partial output left behind; and the input files byte-for-byte unchanged.
Some inputs are odd but valid (CMYK, 16-bit, RGBA, palette images; a photo without a face;
a CK+ sequence without an Emotion file): those must be handled, not rejected.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fercli.cli import app
from fercli.model import checkpoints
from fercli.train import config, runs
from tests.fixtures import (
    face_image,
    fer_csv_row,
    fer_image,
    make_ck_like,
    make_ckplus48_tree,
    make_fer_csv,
    make_fer_folders,
    make_fer_like,
    make_raw_ckplus_tree,
    save_variant,
    tree_digest,
    write_huge_png,
    zip_tree,
)

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


@dataclass
class Case:
    args: list[str]  # the fer command line
    inputs: list[Path]  # files/folders that must stay unchanged
    culprit: str  # must appear in the one-line message
    outputs: list[Path]  # must not exist afterwards


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real (tiny) fer train run on a FER2013-shaped dataset: best.pt + last.pt."""
    root = tmp_path_factory.mktemp("run")
    ds = make_fer_like(root / "fer")
    cfg = config.make_train_config(dataset=str(ds), model="resnet34", pretrained=False, epochs=1,
                                   batch_size=8, device="cpu", out=str(root / "run"))
    runs.train(cfg)
    return root / "run"


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ----------------------------------------------------------------------------- case builders
# Each builder gets (tmp_path, trained_run) and returns a Case.


def fer_truncated_jpeg(t: Path, run: Path) -> Case:
    src = make_fer_folders(t / "fer")
    bad = next((src / "train" / "happy").iterdir())
    _truncate(bad)
    return Case(["prepare", "fer2013", str(src), "--out", str(t / "out")], [src], bad.name, [t / "out"])


def fer_zero_byte_jpeg(t: Path, run: Path) -> Case:
    src = make_fer_folders(t / "fer")
    bad = src / "train" / "sad" / "Training_999.jpg"
    bad.write_bytes(b"")
    return Case(["prepare", "fer2013", str(src), "--out", str(t / "out")], [src], bad.name, [t / "out"])


def ck48_truncated_png(t: Path, run: Path) -> Case:
    src = make_ckplus48_tree(t / "ck")
    bad = next((src / "happy").iterdir())
    _truncate(bad)
    return Case(["prepare", "ck+", str(src), "--out", str(t / "out")], [src], bad.name, [t / "out"])


def ck48_zero_byte_png(t: Path, run: Path) -> Case:
    src = make_ckplus48_tree(t / "ck")
    bad = src / "anger" / "S999_001_00000001.png"
    bad.write_bytes(b"")
    return Case(["prepare", "ck+", str(src), "--out", str(t / "out")], [src], bad.name, [t / "out"])


def _csv_with(t: Path, line: str) -> Case:
    src = make_fer_csv(t / "fer2013.csv", extra_lines=[line])
    n = len(src.read_text().splitlines())
    return Case(["prepare", "fer2013", str(src), "--out", str(t / "out")], [src], f"{src.name}: line {n}", [t / "out"])


def csv_wrong_header(t: Path, run: Path) -> Case:
    src = t / "fer2013.csv"
    src.write_text("label,pixels,usage\n" + fer_csv_row(0, fer_image(0, 0), "Training") + "\n")
    return Case(["prepare", "fer2013", str(src), "--out", str(t / "out")], [src], "fer2013.csv", [t / "out"])


def csv_short_row(t: Path, run: Path) -> Case:
    return _csv_with(t, "3," + " ".join(["0"] * 2303) + ",Training")


def csv_non_numeric_pixel(t: Path, run: Path) -> Case:
    return _csv_with(t, "3," + " ".join(["0"] * 2303 + ["x"]) + ",Training")


def csv_bad_label(t: Path, run: Path) -> Case:
    return _csv_with(t, "7," + " ".join(["0"] * 2304) + ",Training")


def csv_unknown_usage(t: Path, run: Path) -> Case:
    return _csv_with(t, "3," + " ".join(["0"] * 2304) + ",Validation")


def fer_empty_class_folders(t: Path, run: Path) -> Case:
    src = make_fer_folders(t / "fer", counts={"train": {}, "public_test": {}, "private_test": {}})
    return Case(["prepare", "fer2013", str(src), "--out", str(t / "out")], [src], "empty", [t / "out"])


def fer_unknown_class_folder(t: Path, run: Path) -> Case:
    src = make_fer_folders(t / "fer")
    (src / "train" / "bored").mkdir()
    Image.fromarray(fer_image(0, 1)).save(src / "train" / "bored" / "Training_1.jpg")
    return Case(["prepare", "fer2013", str(src), "--out", str(t / "out")], [src], "bored", [t / "out"])


def ck_garbage_emotion_file(t: Path, run: Path) -> Case:
    src = make_raw_ckplus_tree(t / "raw", emotion_text={"S005_001": "happy!\n"})
    return Case(["prepare", "ck+", str(src), "--out", str(t / "out")], [src], "S005_001", [t / "out"])


def ck_emotion_out_of_range(t: Path, run: Path) -> Case:
    src = make_raw_ckplus_tree(t / "raw", emotion_text={"S005_001": "   9.0000000e+00\n"})
    return Case(["prepare", "ck+", str(src), "--out", str(t / "out")], [src], "S005_001", [t / "out"])


def zip_dotdot_entry(t: Path, run: Path) -> Case:
    src = make_ckplus48_tree(t / "ck")
    z = zip_tree(src, t / "ck.zip", arc_prefix="CK+48/")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("../evil.png", b"x")
    return Case(["prepare", "ck+", str(z), "--out", str(t / "out")], [z], "../evil.png", [t / "out", t.parent / "evil.png"])


def zip_absolute_entry(t: Path, run: Path) -> Case:
    src = make_fer_folders(t / "fer")
    z = zip_tree(src, t / "fer.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("/tmp/evil.jpg", b"x")
    return Case(["prepare", "fer2013", str(z), "--out", str(t / "out")], [z], "/tmp/evil.jpg", [t / "out"])


def prepare_missing_src(t: Path, run: Path) -> Case:
    return Case(["prepare", "fer2013", str(t / "nope"), "--out", str(t / "out")], [], "nope", [t / "out"])


def prepare_out_under_a_file(t: Path, run: Path) -> Case:
    """An --out that cannot be written: its parent is a regular file."""
    src = make_ckplus48_tree(t / "ck")
    blocker = t / "blocker"
    blocker.write_text("not a folder")
    return Case(["prepare", "ck+", str(src), "--out", str(blocker / "out")], [src, blocker], "blocker", [])


def prepare_huge_image(t: Path, run: Path) -> Case:
    src = make_fer_folders(t / "fer", ext=".png")
    huge = write_huge_png(src / "train" / "angry" / "Training_77777.png")
    return Case(["prepare", "fer2013", str(src), "--out", str(t / "out")], [src], huge.name, [t / "out"])


def train_missing_dataset(t: Path, run: Path) -> Case:
    return Case(["train", "--dataset", str(t / "nodata"), "--no-pretrained", "--out", str(t / "r")], [], "nodata", [t / "r"])


def train_dataset_hash_mismatch(t: Path, run: Path) -> Case:
    ds = make_ck_like(t / "ck")
    raw = bytearray((ds / "data.npz").read_bytes())
    raw[-64] ^= 0xFF
    (ds / "data.npz").write_bytes(bytes(raw))
    return Case(["train", "--dataset", str(ds), "--no-pretrained", "--device", "cpu", "--out", str(t / "r")],
                [ds], "data.npz", [t / "r"])


def train_dataset_is_a_file(t: Path, run: Path) -> Case:
    f = t / "dataset.npz"
    f.write_bytes(b"PK")
    return Case(["train", "--dataset", str(f), "--no-pretrained", "--out", str(t / "r")], [f], "dataset.npz", [t / "r"])


def train_dataset_without_manifest(t: Path, run: Path) -> Case:
    ds = make_ck_like(t / "ck")
    (ds / "manifest.json").unlink()
    return Case(["train", "--dataset", str(ds), "--no-pretrained", "--out", str(t / "r")], [ds], "manifest.json", [t / "r"])


def evaluate_truncated_checkpoint(t: Path, run: Path) -> Case:
    ck = t / "best.pt"
    shutil.copy(run / "best.pt", ck)
    _truncate(ck)
    return Case(["evaluate", str(ck)], [ck], "best.pt", [t / "metrics.json"])


def evaluate_checkpoint_other_class_set(t: Path, run: Path) -> Case:
    ck = make_ck_like(t / "ck")
    r = t / "run"
    shutil.copytree(run, r)
    return Case(["evaluate", str(r), "--dataset", str(ck), "--device", "cpu"], [ck, r / "best.pt"], "classes",
                [r / "metrics.json"])


def evaluate_checkpoint_other_model(t: Path, run: Path) -> Case:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["model_spec"] = dict(ckpt["model_spec"], name="bcnn-resnet34", shared_backbone=True)
    bad = t / "other_model.pt"
    torch.save(ckpt, bad)
    return Case(["evaluate", str(bad), "--device", "cpu"], [bad], "other_model.pt", [t / "metrics.json"])


def evaluate_directory_without_checkpoint(t: Path, run: Path) -> Case:
    d = t / "not_a_run"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    return Case(["evaluate", str(d)], [d], "not_a_run", [d / "metrics.json"])


def evaluate_bad_split_name(t: Path, run: Path) -> Case:
    return Case(["evaluate", str(run), "--split", "holdout"], [run / "best.pt"], "holdout", [])


def predict_zero_byte_image(t: Path, run: Path) -> Case:
    img = t / "empty.jpg"
    img.write_bytes(b"")
    return Case(["predict", str(img), "--model", str(run), "--json"], [img], "empty.jpg", [])


def predict_truncated_jpeg(t: Path, run: Path) -> Case:
    img = t / "half.jpg"
    shutil.copy(SAMPLES / "astronaut.jpg", img)
    _truncate(img)
    return Case(["predict", str(img), "--model", str(run)], [img], "half.jpg", [])


def predict_huge_image(t: Path, run: Path) -> Case:
    img = write_huge_png(t / "huge.png")
    return Case(["predict", str(img), "--model", str(run)], [img], "huge.png", [])


def predict_missing_image(t: Path, run: Path) -> Case:
    return Case(["predict", str(t / "ghost.jpg"), "--model", str(run)], [], "ghost.jpg", [])


def predict_model_dir_without_checkpoint(t: Path, run: Path) -> Case:
    d = t / "empty_run"
    d.mkdir()
    return Case(["predict", str(SAMPLES / "astronaut.jpg"), "--model", str(d)], [d], "empty_run", [])


def predict_annotate_into_a_file(t: Path, run: Path) -> Case:
    f = t / "annotated.txt"
    f.write_text("I am a file")
    return Case(["predict", str(SAMPLES / "astronaut.jpg"), "--model", str(run), "--annotate", str(f)], [f],
                "annotated.txt", [])


def predict_crafted_pickle_model(t: Path, run: Path) -> Case:
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {t / 'pwned'}",))

    evil = t / "evil.pt"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "model_spec": Payload(), "model": {}, "classes": []}, evil)
    return Case(["predict", str(SAMPLES / "astronaut.jpg"), "--model", str(evil)], [evil], "evil.pt", [t / "pwned"])


CASES: dict[str, Callable[[Path, Path], Case]] = {
    f.__name__: f for f in (
        fer_truncated_jpeg, fer_zero_byte_jpeg, ck48_truncated_png, ck48_zero_byte_png, csv_wrong_header,
        csv_short_row, csv_non_numeric_pixel, csv_bad_label, csv_unknown_usage, fer_empty_class_folders,
        fer_unknown_class_folder, ck_garbage_emotion_file, ck_emotion_out_of_range, zip_dotdot_entry,
        zip_absolute_entry, prepare_missing_src, prepare_out_under_a_file, prepare_huge_image,
        train_missing_dataset, train_dataset_hash_mismatch, train_dataset_is_a_file,
        train_dataset_without_manifest, evaluate_truncated_checkpoint, evaluate_checkpoint_other_class_set,
        evaluate_checkpoint_other_model, evaluate_directory_without_checkpoint, evaluate_bad_split_name,
        predict_zero_byte_image, predict_truncated_jpeg, predict_huge_image, predict_missing_image,
        predict_model_dir_without_checkpoint, predict_annotate_into_a_file, predict_crafted_pickle_model,
    )
}


def test_matrix_has_at_least_25_cases():
    assert len(CASES) >= 25
    assert {name.split("_")[0] for name in CASES} >= {"fer", "csv", "ck", "zip", "prepare", "train", "evaluate", "predict"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, trained_run, monkeypatch):
    monkeypatch.setenv("FER_OFFLINE", "1")
    work = tmp_path / "w"
    work.mkdir()
    case = CASES[name](work, trained_run)
    digests = {p: tree_digest(p) for p in case.inputs if p.exists()}
    res = runner.invoke(app, case.args)
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    lines = res.stderr.splitlines()
    assert lines, res.output
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert errors == lines and len(errors) == 1, res.stderr  # the error line alone: no blank or warning line
    assert case.culprit in errors[0], (case.culprit, errors[0])
    assert res.stdout.strip() == "", res.stdout  # no partial results, not even JSON
    for p in case.outputs:
        assert not p.exists(), f"partial output left: {p}"
    leftovers = [p for p in work.rglob(".fer-tmp-*")]
    assert not leftovers, leftovers
    for p, d in digests.items():
        assert tree_digest(p) == d, f"input modified: {p}"


# ----------------------------------------------------------------------------- odd but valid


@pytest.mark.parametrize("kind", ["cmyk", "16bit", "rgba", "palette", "rgb", "big"])
def test_odd_image_formats_are_converted_not_rejected(tmp_path, kind):
    src = make_fer_folders(tmp_path / "fer", ext=".png")
    target = src / "train" / "happy" / ("Training_55555" + (".jpg" if kind == "cmyk" else ".png"))
    save_variant(target, fer_image(3, 555), kind)
    before = tree_digest(src)
    res = runner.invoke(app, ["prepare", "fer2013", str(src), "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    expected_reason = {"cmyk": "cmyk", "16bit": "16", "rgba": "rgba", "palette": "palette", "rgb": "rgb",
                       "big": "size"}[kind]
    assert summary["converted"]["total"] == 1, summary["converted"]
    assert any(expected_reason in r.lower() for r in summary["converted"]["reasons"]), summary["converted"]
    assert tree_digest(src) == before
    from fercli.data.prepared import load_prepared

    ds = load_prepared(tmp_path / "out")
    hits = np.flatnonzero(np.char.endswith(ds.source, target.name))
    assert hits.size == 1, ds.source[:5]
    assert ds.images[hits[0]].shape == (48, 48) and ds.images.dtype == np.uint8


def test_ck_sequence_without_emotion_file_is_skipped_and_counted(tmp_path):
    src = make_raw_ckplus_tree(tmp_path / "raw")
    res = runner.invoke(app, ["prepare", "ck+", str(src), "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    assert "emotion" in json.dumps(json.loads(res.stdout)["skipped"]).lower()


def test_photo_without_a_face_says_so(tmp_path, trained_run):
    img = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 300), 128, np.uint8)).save(img)
    res = runner.invoke(app, ["predict", str(img), "--model", str(trained_run), "--json"])
    assert res.exit_code == 0, res.output
    (item,) = json.loads(res.stdout)
    assert item["faces"] == [] and item["error"] is None
    assert face_image().shape == (48, 48)  # fixtures import sanity
