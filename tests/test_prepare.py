"""`fer prepare` on small fixtures in every accepted layout (see tests/fixtures.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.data.ingest import prepare_ckplus, prepare_fer2013
from fercli.data.prepared import FER2013_CLASSES, load_prepared
from fercli.files import sha256_file
from fercli.vision.images import MAX_IMAGE_PIXELS
from tests.fixtures import (
    CK48_SMALL_EXPECTED,
    FER_SMALL_COUNTS,
    RAW_CK_EXPECTED,
    detector_face_crop,
    fer_image,
    make_ckplus48_tree,
    make_fer_csv,
    make_fer_folders,
    make_raw_ckplus_tree,
    save_variant,
    tree_digest,
    write_huge_png,
    zip_tree,
)

runner = CliRunner()
N_SMALL = sum(sum(per.values()) for per in FER_SMALL_COUNTS.values())  # 29
N_TRAIN = sum(FER_SMALL_COUNTS["train"].values())  # 16


def run_json(*args: str) -> dict:
    res = runner.invoke(app, ["prepare", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # --json: nothing but the JSON on stdout


def expected_counts(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {s: {c: per[c] for c in FER2013_CLASSES} for s, per in counts.items()}


# ---------------------------------------------------------------------------------- FER2013


def test_fer_folders_counts_labels_and_pixels(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer")
    before = tree_digest(src)
    out = tmp_path / "out"
    summary = run_json("fer2013", str(src), "--out", str(out))
    assert summary["counts"] == expected_counts(FER_SMALL_COUNTS)
    assert summary["num_images"] == N_SMALL == 29
    assert summary["source"]["format"] == "fer2013-folders"
    assert summary["classes"] == list(FER2013_CLASSES)
    assert summary["duplicates"]["count"] == 0
    assert summary["converted"]["total"] == 0
    assert summary["skipped"]["total"] == 0
    assert summary["notes"] == []
    check = summary["canonical_check"]
    assert check["matches"] is False and f"train: {N_TRAIN} images, canonical 28709" in check["differences"]
    assert tree_digest(src) == before

    ds = load_prepared(out)
    assert ds.images.shape == (N_SMALL, 48, 48) and ds.images.dtype == np.uint8
    assert list(dict.fromkeys(ds.split.tolist())) == ["train", "public_test", "private_test"]
    for i in range(len(ds)):
        rel = str(ds.source[i])
        folder, cls, name = rel.split("/")
        assert FER2013_CLASSES[ds.labels[i]] == cls
        want = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}
        assert ds.split[i] == want[name.split("_")[0]]
        assert folder == ("train" if ds.split[i] == "train" else "test")
        on_disk = cv2.imread(str(src / rel), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(ds.images[i], on_disk)
    assert ds.manifest["fercli_version"]
    assert len(ds.manifest["sha256"]) == 64


def test_fer_folders_parent_of_single_child(tmp_path: Path) -> None:
    make_fer_folders(tmp_path / "download" / "fer2013")
    summary = run_json("fer2013", str(tmp_path / "download"), "--out", str(tmp_path / "o"))
    assert summary["num_images"] == N_SMALL
    assert summary["source"]["root"] == "fer2013/"


def test_fer_folders_without_prefixes_make_one_test_split(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer", prefixes=False)
    summary = run_json("fer2013", str(src), "--out", str(tmp_path / "o"))
    assert list(summary["counts"]) == ["train", "test"]
    assert sum(summary["counts"]["test"].values()) == 13
    assert summary["counts"]["test"]["happy"] == 3
    assert any("PublicTest/PrivateTest separation is unavailable" in n for n in summary["notes"])


def test_fer_csv_exact_pixels_and_line_sources(tmp_path: Path) -> None:
    csv = make_fer_csv(tmp_path / "fer2013.csv")
    out = tmp_path / "out"
    summary = run_json("fer2013", str(csv), "--out", str(out))
    assert summary["counts"] == expected_counts(FER_SMALL_COUNTS)
    assert summary["source"]["format"] == "fer2013-csv"
    ds = load_prepared(out)
    # Line 2 is the first train angry image, k=0.
    first = int(np.flatnonzero(ds.source == "fer2013.csv:2")[0])
    assert ds.split[first] == "train" and FER2013_CLASSES[ds.labels[first]] == "angry"
    assert np.array_equal(ds.images[first], fer_image(0, 0, "train"))
    # The last private_test row: neutral k=0 (surprise has 0 private rows).
    last = int(np.flatnonzero(ds.source == f"fer2013.csv:{N_SMALL + 1}")[0])
    assert ds.split[last] == "private_test" and FER2013_CLASSES[ds.labels[last]] == "neutral"
    assert np.array_equal(ds.images[last], fer_image(6, 0, "private_test"))


def test_fer_folder_holding_the_csv(tmp_path: Path) -> None:
    make_fer_csv(tmp_path / "dl" / "fer2013.csv")
    summary = run_json("fer2013", str(tmp_path / "dl"), "--out", str(tmp_path / "o"))
    assert summary["num_images"] == N_SMALL
    assert summary["source"]["format"] == "fer2013-csv"


def test_fer_csv_accepts_crlf_and_bom(tmp_path: Path) -> None:
    csv = make_fer_csv(tmp_path / "fer2013.csv")
    raw = csv.read_bytes().replace(b"\n", b"\r\n")
    csv.write_bytes(b"\xef\xbb\xbf" + raw)
    summary = run_json("fer2013", str(csv), "--out", str(tmp_path / "o"))
    assert summary["num_images"] == N_SMALL


@pytest.mark.parametrize("what", ["folders", "folders-nested", "csv"])
def test_fer_zip_matches_unzipped(tmp_path: Path, what: str) -> None:
    if what == "csv":
        make_fer_csv(tmp_path / "src" / "fer2013.csv")
        plain = tmp_path / "src" / "fer2013.csv"
    else:
        plain = make_fer_folders(tmp_path / "src")
    z = zip_tree(tmp_path / "src", tmp_path / "fer.zip",
                 arc_prefix="fer2013/" if what == "folders-nested" else "")
    digest = tree_digest(z)
    a = prepare_fer2013(plain, out=tmp_path / "a")
    b = prepare_fer2013(z, out=tmp_path / "b")
    assert b.manifest["source"]["format"] == ("fer2013-csv-zip" if what == "csv" else "fer2013-folders-zip")
    assert b.manifest["source"]["sha256"] == sha256_file(z)
    assert a.counts == b.counts
    da, db = load_prepared(tmp_path / "a"), load_prepared(tmp_path / "b")
    assert np.array_equal(da.images, db.images)
    assert np.array_equal(da.labels, db.labels)
    assert da.source.tolist() == db.source.tolist()
    assert tree_digest(z) == digest


def test_fer_duplicates_within_and_across_splits(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer")
    train_happy = sorted((src / "train" / "happy").iterdir())
    # one cross-split copy (train -> public test) and one within-train copy (another class)
    shutil.copy(train_happy[0], src / "test" / "happy" / "PublicTest_dup1.jpg")
    shutil.copy(train_happy[1], src / "train" / "sad" / "Training_dup2.jpg")
    summary = run_json("fer2013", str(src), "--out", str(tmp_path / "o"))
    dup = summary["duplicates"]
    assert dup["count"] == 2
    assert dup["extra_copies"] == 2
    assert dup["cross_split"] == 1
    assert dup["label_conflicts"] == 1
    assert dup["also_in_train"] == {"public_test": 1}
    assert dup["examples"][0]["splits"] == ["public_test", "train"]
    assert "test/happy/PublicTest_dup1.jpg" in dup["examples"][0]["sources"]
    res = runner.invoke(app, ["prepare", "fer2013", str(src), "--out", str(tmp_path / "o2")])
    text = " ".join(res.stdout.split())
    assert "the splits are kept as published" in text and "1 public_test image(s) also appear in train" in text
    assert "1 group(s) carry different labels" in text


def test_fer_converts_and_counts_non_grey_or_non_48(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer")
    base = fer_image(3, 99)
    kinds = {"rgb": ".png", "rgba": ".png", "palette": ".png", "16bit": ".png",
             "cmyk": ".jpg", "big": ".png"}
    for kind, ext in kinds.items():
        save_variant(src / "train" / "happy" / f"Training_{kind}{ext}", base, kind)
    out = tmp_path / "o"
    summary = run_json("fer2013", str(src), "--out", str(out))
    conv = summary["converted"]
    assert conv["total"] == 6
    assert conv["reasons"] == {"rgb": 1, "rgba": 1, "palette": 1, "16-bit": 1, "cmyk": 1,
                               "resized": 1}
    assert summary["counts"]["train"]["happy"] == 4 + 6
    ds = load_prepared(out)
    for kind, ext in kinds.items():
        i = int(np.flatnonzero(ds.source == f"train/happy/Training_{kind}{ext}")[0])
        diff = np.abs(ds.images[i].astype(int) - base.astype(int))
        tol = {"palette": 12, "cmyk": 12, "big": 20}.get(kind, 1)
        assert diff.mean() <= tol, (kind, diff.mean())


def test_fer_skip_bad_skips_and_counts(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer")
    (src / "train" / "happy" / "Training_corrupt.jpg").write_bytes(b"not a jpeg at all")
    (src / "train" / "happy" / "Training_empty.jpg").write_bytes(b"")
    good = (src / "train" / "sad" / sorted(p.name for p in (src / "train" / "sad").iterdir())[0]).read_bytes()
    (src / "train" / "sad" / "Training_trunc.jpg").write_bytes(good[: len(good) // 2])
    write_huge_png(src / "test" / "fear" / "PublicTest_huge.png")
    (src / "train" / "notes.txt").write_text("loose file")
    summary = run_json("fer2013", str(src), "--out", str(tmp_path / "o"), "--skip-bad")
    sk = summary["skipped"]
    assert sk["reasons"] == {"corrupt image": 2, "empty image file": 1, "image too large": 1,
                             "outside a class folder": 1}
    assert sk["total"] == 5
    assert summary["num_images"] == N_SMALL


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_png_is_refused_from_header_only(tmp_path: Path) -> None:
    from fercli.vision.images import BadImage, decode_grey

    p = write_huge_png(tmp_path / "huge.png")
    assert p.stat().st_size < 1000
    with pytest.raises(BadImage, match="too large: (20000x20000 = )?400 megapixels"):
        decode_grey(p.read_bytes())
    # Between the limit and PIL's own 2x bomb limit our header check refuses it.
    with pytest.raises(BadImage, match="too large: 8000x8000 = 64 megapixels"):
        decode_grey(write_huge_png(tmp_path / "h2.png", 8000, 8000).read_bytes())
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS


def test_force_replaces_and_default_out_uses_fer_data_dir(tmp_path: Path, monkeypatch) -> None:
    src = make_fer_folders(tmp_path / "fer")
    monkeypatch.setenv("FER_DATA_DIR", str(tmp_path / "datahome"))
    run_json("fer2013", str(src))
    out = tmp_path / "datahome" / "fer2013"
    assert (out / "data.npz").is_file() and (out / "manifest.json").is_file()
    res = runner.invoke(app, ["prepare", "fer2013", str(src)])
    assert res.exit_code != 0 and "--force" in res.output
    (src / "train" / "happy" / sorted(p.name for p in (src / "train" / "happy").iterdir())[0]).unlink()
    summary = run_json("fer2013", str(src), "--force")
    assert summary["num_images"] == N_SMALL - 1
    assert load_prepared(out).manifest["num_images"] == N_SMALL - 1
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".fer-tmp-")]


def test_table_output_and_progress(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer")
    res = runner.invoke(app, ["prepare", "fer2013", str(src), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    for word in ("angry", "neutral", "train", "public_test", "private_test", "total",
                 "differs from the canonical counts", "duplicates: none"):
        assert word in res.stdout, word
    assert f"train: {N_TRAIN} images, canonical 28709" in res.stdout
    calls: list[tuple[int, int]] = []
    prepare_fer2013(src, out=tmp_path / "o2", progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1] == (N_SMALL, N_SMALL)
    assert all(d <= t for d, t in calls)


def test_core_does_not_import_typer_or_rich() -> None:
    code = ("import sys, fercli.data.ingest, fercli.vision.images, fercli.vision.faces; "
            "bad = [m for m in ('typer', 'rich') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------------------- CK+


def test_ck48_counts_subjects_and_folds(tmp_path: Path) -> None:
    src = make_ckplus48_tree(tmp_path)
    out = tmp_path / "out"
    summary = run_json("ck+", str(src), "--out", str(out), "--folds", "3")
    assert summary["source"]["format"] == "ckplus48"
    assert summary["num_images"] == CK48_SMALL_EXPECTED["images"]
    assert summary["num_subjects"] == CK48_SMALL_EXPECTED["subjects"]
    assert summary["num_sequences"] == CK48_SMALL_EXPECTED["sequences"]
    assert summary["subjects"] == ["S010", "S011", "S022", "S037"]
    assert summary["num_folds"] == 3
    counts = {c: n for c, n in summary["counts"]["all"].items() if n}
    assert counts == CK48_SMALL_EXPECTED["classes"]
    assert summary["canonical_check"]["matches"] is False
    ds = load_prepared(out)
    assert set(ds.split.tolist()) == {"all"}
    assert ds.source[0] == "anger/S010_004_00000010.png"
    assert ds.sequence[0] == "S010_004" and ds.subject[0] == "S010"
    assert_subject_disjoint(ds.subject, ds.fold, 3)


def assert_subject_disjoint(subject: np.ndarray, fold: np.ndarray, k: int) -> None:
    seen: dict[str, int] = {}
    for s, f in zip(subject.tolist(), fold.tolist(), strict=True):
        assert seen.setdefault(s, f) == f, f"subject {s} in folds {seen[s]} and {f}"
    assert sorted(set(fold.tolist())) == list(range(k))


def test_ck_folds_deterministic_by_seed(tmp_path: Path) -> None:
    src = make_ckplus48_tree(tmp_path)
    a = load_prepared(prepare_ckplus(src, out=tmp_path / "a", folds=2, seed=0).out)
    b = load_prepared(prepare_ckplus(src, out=tmp_path / "b", folds=2, seed=0).out)
    assert np.array_equal(a.fold, b.fold)
    seeds = {tuple(load_prepared(prepare_ckplus(src, out=tmp_path / f"s{s}", folds=2, seed=s).out)
                   .fold.tolist()) for s in range(1, 6)}
    assert len(seeds) > 1  # the seed changes the assignment


def test_ck_folds_capped_by_subjects_with_note(tmp_path: Path) -> None:
    src = make_ckplus48_tree(tmp_path)
    summary = run_json("ck+", str(src), "--out", str(tmp_path / "o"))  # default --folds 10
    assert summary["num_folds"] == 4
    assert any("using 4 folds instead of 10" in n for n in summary["notes"])


def test_ck_size_option_resizes(tmp_path: Path) -> None:
    src = make_ckplus48_tree(tmp_path)
    r = prepare_ckplus(src, out=tmp_path / "o", size=64, folds=2)
    assert r.manifest["image_size"] == [64, 64]
    assert r.manifest["converted"]["reasons"] == {"resized": 18}


def test_ck_raw_detects_crops_and_skips(tmp_path: Path) -> None:
    src = make_raw_ckplus_tree(tmp_path / "ck")
    before = tree_digest(src)
    out = tmp_path / "out"
    summary = run_json("ck+", str(src), "--out", str(out), "--folds", "2")
    assert summary["source"]["format"] == "ckplus-raw"
    assert summary["num_images"] == RAW_CK_EXPECTED["images"]
    assert summary["num_subjects"] == RAW_CK_EXPECTED["subjects"]
    assert summary["num_sequences"] == RAW_CK_EXPECTED["sequences"]
    assert {c: n for c, n in summary["counts"]["all"].items() if n} == RAW_CK_EXPECTED["classes"]
    assert summary["skipped"]["reasons"] == RAW_CK_EXPECTED["skipped"]
    assert summary["converted"]["reasons"] == {"rgb": RAW_CK_EXPECTED["colour_frames_used"]}
    assert summary["duplicates"]["count"] == 0
    assert tree_digest(src) == before
    ds = load_prepared(out)
    assert ds.images.shape == (12, 48, 48)
    assert ds.source[0] == "cohn-kanade-images/S005/001/S005_001_00000004.png"
    assert sorted(set(ds.sequence.tolist())) == ["S005_001", "S010_002", "S011_001", "S011_003"]
    assert_subject_disjoint(ds.subject, ds.fold, 2)
    # The crops are the detected faces: each matches its own sample face cropped at the Haar
    # box far better than the other sample face (S011_001 uses grace_hopper).
    refs = {w: detector_face_crop(w).astype(np.float64).ravel() for w in ("astronaut", "grace_hopper")}
    occluded = "cohn-kanade-images/S005/001/S005_001_00000006.png"
    for i in range(12):
        if ds.source[i] == occluded:
            continue
        own = "grace_hopper" if ds.sequence[i] == "S011_001" else "astronaut"
        other = "astronaut" if own == "grace_hopper" else "grace_hopper"
        img = ds.images[i].astype(np.float64).ravel()
        c_own, c_other = (np.corrcoef(img, refs[w])[0, 1] for w in (own, other))
        assert c_own > 0.7 and c_own > c_other + 0.15, (ds.source[i], c_own, c_other)
    # S005_001's last frame hides the face: its crop reuses the sequence's box (flat grey).
    last = int(np.flatnonzero(ds.source == occluded)[0])
    assert ds.images[last].std() < 10


def test_ck_raw_peak_frames_neutral_and_size(tmp_path: Path) -> None:
    src = make_raw_ckplus_tree(tmp_path / "ck")
    r = prepare_ckplus(src, out=tmp_path / "o", peak_frames=2, neutral_first_frame=True,
                       size=64, folds=2)
    m = r.manifest
    assert m["classes"][-1] == "neutral" and len(m["classes"]) == 8
    assert m["num_images"] == 4 * 2 + 4
    assert m["counts"]["all"]["neutral"] == 4
    assert m["image_size"] == [64, 64]
    ds = load_prepared(r.out)
    neutral = ds.source[ds.labels == 7].tolist()
    assert sorted(neutral) == [
        "cohn-kanade-images/S005/001/S005_001_00000001.png",
        "cohn-kanade-images/S010/002/S010_002_00000001.png",
        "cohn-kanade-images/S011/001/S011_001_00000001.png",
        "cohn-kanade-images/S011/003/S011_003_00000001.png",
    ]


def test_ck_raw_zip_and_nested_folder(tmp_path: Path) -> None:
    src = make_raw_ckplus_tree(tmp_path / "dl" / "CK+")
    z = zip_tree(tmp_path / "dl", tmp_path / "ck.zip")
    a = prepare_ckplus(tmp_path / "dl", out=tmp_path / "a", folds=2)
    b = prepare_ckplus(z, out=tmp_path / "b", folds=2)
    assert a.manifest["source"]["images_root"] == "CK+/cohn-kanade-images/"
    assert b.manifest["source"]["format"] == "ckplus-raw-zip"
    assert a.counts == b.counts
    da, db = load_prepared(a.out), load_prepared(b.out)
    assert np.array_equal(da.images, db.images)
    assert src.is_dir()


def test_ck48_zip(tmp_path: Path) -> None:
    make_ckplus48_tree(tmp_path / "src")
    z = zip_tree(tmp_path / "src", tmp_path / "ck48.zip")
    r = prepare_ckplus(z, out=tmp_path / "o", folds=2)
    assert r.manifest["source"]["format"] == "ckplus48-zip"
    assert r.num_images == CK48_SMALL_EXPECTED["images"]


def test_ck_skip_bad_emotion_file(tmp_path: Path) -> None:
    src = make_raw_ckplus_tree(tmp_path / "ck", emotion_text={"S011_003": "banana\n"})
    summary = run_json("ck+", str(src), "--out", str(tmp_path / "o"), "--folds", "2", "--skip-bad")
    assert summary["skipped"]["reasons"]["bad emotion file"] == 1
    assert summary["num_images"] == 9
    assert summary["counts"]["all"]["anger"] == 0


def test_sample_images_have_detectable_faces() -> None:
    from tests.fixtures import SAMPLE_DIR, SAMPLE_FACE_BOXES

    files = sorted(p.name for p in SAMPLE_DIR.glob("*.jpg"))
    assert files == ["astronaut.jpg", "grace_hopper.jpg", "two_faces.jpg"]
    assert sum((SAMPLE_DIR / f).stat().st_size for f in files) < 1_000_000
    det = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = {}
    for f in files:
        grey = cv2.imread(str(SAMPLE_DIR / f), cv2.IMREAD_GRAYSCALE)
        found[f] = len(det.detectMultiScale(grey, 1.1, 5, minSize=(60, 60)))
    assert found == {"astronaut.jpg": 1, "grace_hopper.jpg": 1, "two_faces.jpg": 2}
    for which, box in SAMPLE_FACE_BOXES.items():  # the ingest detector agrees with the README
        from fercli.vision.faces import detect_face

        grey = cv2.imread(str(SAMPLE_DIR / f"{which}.jpg"), cv2.IMREAD_GRAYSCALE)
        got = detect_face(grey)
        assert got is not None
        cx, cy = got[0] + got[2] / 2, got[1] + got[3] / 2
        assert abs(cx - (box[0] + box[2] / 2)) < box[2] / 4 and abs(cy - (box[1] + box[3] / 2)) < box[3] / 4
