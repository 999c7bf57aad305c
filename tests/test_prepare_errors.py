"""`fer prepare` on bad input: one-line error naming the culprit, non-zero exit, no traceback,
no output directory, input untouched."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercli.cli import app
from tests.fixtures import (
    fer_csv_row,
    fer_image,
    make_ckplus48_tree,
    make_fer_csv,
    make_fer_folders,
    make_raw_ckplus_tree,
    tree_digest,
    write_huge_png,
    zip_tree,
)

runner = CliRunner()


def assert_fails(
    tmp_path: Path, args: list[str], src: Path, culprits: list[str], *, out: Path | None = None,
) -> str:
    """Run `fer prepare ARGS --out OUT`; check the failure contract; return the message."""
    out = out or tmp_path / "out"
    before = tree_digest(src) if src.exists() else None
    res = runner.invoke(app, ["prepare", *args, "--out", str(out)])
    assert res.exit_code != 0, res.output
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert res.stdout == ""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    msg = lines[0]
    assert msg.startswith("error: ")
    for c in culprits:
        assert c in msg, (c, msg)
    assert not out.exists() or out == tmp_path / "existing"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".fer-tmp-")]
    if before is not None:
        assert tree_digest(src) == before
    return msg


# ------------------------------------------------------------------------------ source/layout


def test_missing_src(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "fer2013.csv"
    assert_fails(tmp_path, ["fer2013", str(missing)], missing, [str(missing), "does not exist"])
    assert_fails(tmp_path, ["ck+", str(missing)], missing, [str(missing), "does not exist"])


@pytest.mark.parametrize("dataset", ["fer2013", "ck+"])
def test_src_matching_no_layout_lists_accepted(tmp_path: Path, dataset: str) -> None:
    src = tmp_path / "random"
    (src / "photos").mkdir(parents=True)
    (src / "photos" / "a.txt").write_text("x")
    (src / "readme.md").write_text("x")
    msg = assert_fails(tmp_path, [dataset, str(src)], src, [str(src), "no known", "accepted"])
    assert ("fer2013.csv" in msg) if dataset == "fer2013" else ("cohn-kanade-images" in msg and "CK+48" in msg)


def test_unknown_file_type(tmp_path: Path) -> None:
    src = tmp_path / "fer2013.tar.gz"
    src.write_bytes(b"\x1f\x8b not really")
    assert_fails(tmp_path, ["fer2013", str(src)], src, ["fer2013.tar.gz", "accepted"])


def test_not_a_zip(tmp_path: Path) -> None:
    src = tmp_path / "fer2013.zip"
    src.write_bytes(b"PK but not a zip")
    assert_fails(tmp_path, ["fer2013", str(src)], src, ["fer2013.zip", "not a valid zip"])


@pytest.mark.parametrize("entry", ["../evil.jpg", "/etc/evil.jpg", "train/../../evil.jpg",
                                   "C:/evil.jpg"])
@pytest.mark.parametrize("dataset", ["fer2013", "ck+"])
def test_unsafe_zip_entry(tmp_path: Path, entry: str, dataset: str) -> None:
    make_fer_folders(tmp_path / "src")
    z = zip_tree(tmp_path / "src", tmp_path / "d.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr(entry, b"x")
    assert_fails(tmp_path, [dataset, str(z)], z, ["d.zip", repr(entry), "unsafe zip entry"])
    assert not (tmp_path / "evil.jpg").exists()


def test_existing_out_without_force(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert_fails(tmp_path, ["fer2013", str(src)], src, [str(existing), "--force"], out=existing)
    assert (existing / "keep.txt").read_text() == "mine"
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_out_equal_to_src_refused_even_with_force(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer")
    before = tree_digest(src)
    res = runner.invoke(app, ["prepare", "fer2013", str(src), "--out", str(src), "--force"])
    assert res.exit_code == 2 and "would replace the input" in res.stderr
    assert tree_digest(src) == before


# ------------------------------------------------------------------------------------- CSV


def csv_with(tmp_path: Path, extra: list[str], header: str = "emotion,pixels,Usage") -> Path:
    return make_fer_csv(tmp_path / "data" / "fer2013.csv",
                        {"train": {"happy": 2}}, extra_lines=extra, header=header)


GOOD = fer_image(3, 0).ravel()


@pytest.mark.parametrize("header", ["emotion,Usage,pixels", "label,pixels,Usage", "", "emotion,pixels"])
def test_wrong_csv_header(tmp_path: Path, header: str) -> None:
    src = csv_with(tmp_path, [], header=header)
    assert_fails(tmp_path, ["fer2013", str(src)], src, ["fer2013.csv", "line 1", "header"])


BAD_ROWS: dict[str, tuple[Callable[[], str], str]] = {
    "short": (lambda: fer_csv_row(3, GOOD[:-1], "Training"), "2303 pixel values"),
    "long": (lambda: fer_csv_row(3, list(GOOD) + [7], "Training"), "2305 pixel values"),
    "non-numeric": (lambda: fer_csv_row(3, GOOD, "Training").replace(" 1", " x1", 1), "non-numeric"),
    "negative": (lambda: fer_csv_row(3, GOOD, "Training").replace(",", ",-", 1), "non-numeric"),
    "over-255": (lambda: fer_csv_row(3, [256] + list(GOOD[1:]), "Training"), "256"),
    "emotion-7": (lambda: fer_csv_row(7, GOOD, "Training"), "emotion '7'"),
    "emotion-neg": (lambda: fer_csv_row(-1, GOOD, "Training"), "emotion '-1'"),
    "emotion-text": (lambda: "happy," + fer_csv_row(3, GOOD, "Training").split(",", 1)[1], "emotion 'happy'"),
    "usage": (lambda: fer_csv_row(3, GOOD, "Validation"), "unknown Usage 'Validation'"),
    "fields": (lambda: "3,1 2 3", "expected 3 fields"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_csv_row_names_line(tmp_path: Path, case: str) -> None:
    make_row, what = BAD_ROWS[case]
    src = csv_with(tmp_path, [make_row()])
    # header + 2 good rows: the bad row is on line 4
    assert_fails(tmp_path, ["fer2013", str(src)], src, ["fer2013.csv", "line 4", what])


def test_bad_csv_rows_skipped_with_skip_bad(tmp_path: Path) -> None:
    import json

    src = csv_with(tmp_path, [BAD_ROWS[c][0]() for c in sorted(BAD_ROWS)])
    res = runner.invoke(app, ["prepare", "fer2013", str(src), "--out", str(tmp_path / "o"),
                              "--skip-bad", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["num_images"] == 2
    assert s["skipped"]["total"] == len(BAD_ROWS)
    assert s["skipped"]["reasons"] == {"bad pixels": 5, "emotion out of range": 3,
                                       "malformed row": 1, "unknown Usage": 1}


def test_csv_in_zip_error_names_member(tmp_path: Path) -> None:
    csv_with(tmp_path, [fer_csv_row(9, GOOD, "Training")])
    z = zip_tree(tmp_path / "data", tmp_path / "fer.zip")
    assert_fails(tmp_path, ["fer2013", str(z)], z, ["fer.zip:fer2013.csv", "line 4", "emotion '9'"])


def test_empty_csv_is_empty_dataset(tmp_path: Path) -> None:
    src = csv_with(tmp_path, [])
    src.write_text("emotion,pixels,Usage\n")
    assert_fails(tmp_path, ["fer2013", str(src)], src, ["empty dataset", "fer2013.csv"])


# ---------------------------------------------------------------------------------- images


BAD_IMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage garbage"), "corrupt"),
    "garbage": (lambda p: p.write_bytes(b"hello, not an image"), "corrupt"),
    "zero-byte": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated-jpeg": (lambda p: p.write_bytes(_a_jpeg()[:-200]), "truncated JPEG"),
    "truncated-header": (lambda p: p.write_bytes(_a_jpeg()[:300]), "corrupt image"),
    "huge": (lambda p: write_huge_png(p), "too large"),
}


def _a_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(fer_image(2, 1)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_fer_image_names_file(tmp_path: Path, case: str) -> None:
    write, what = BAD_IMAGES[case]
    src = make_fer_folders(tmp_path / "fer", {"train": {"fear": 2}, "public_test": {"fear": 1}})
    bad = src / "test" / "fear" / "PublicTest_bad.jpg"
    write(bad)
    assert_fails(tmp_path, ["fer2013", str(src)], src, ["PublicTest_bad.jpg", what, "--skip-bad"])


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", ["zero-byte", "huge"])
def test_bad_ck48_image_names_file(tmp_path: Path, case: str) -> None:
    write, what = BAD_IMAGES[case]
    src = make_ckplus48_tree(tmp_path)
    write(src / "fear" / "S099_001_00000001.png")
    assert_fails(tmp_path, ["ck+", str(src)], src, ["S099_001_00000001.png", what])


def test_bad_image_inside_zip_names_member(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "src", {"train": {"sad": 2}, "public_test": {"sad": 1}})
    (src / "train" / "sad" / "Training_bad.jpg").write_bytes(b"")
    z = zip_tree(src, tmp_path / "fer.zip")
    assert_fails(tmp_path, ["fer2013", str(z)], z, ["fer.zip:train/sad/Training_bad.jpg", "0 bytes"])


def test_ck48_unrecognised_file_name(tmp_path: Path) -> None:
    src = make_ckplus48_tree(tmp_path)
    shutil.copy(next((src / "anger").iterdir()), src / "anger" / "face1.png")
    assert_fails(tmp_path, ["ck+", str(src)], src, ["face1.png", "subject id"])


# --------------------------------------------------------------------------- folder layout


def test_unknown_fer_class_folder_lists_allowed(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer", {"train": {"happy": 1}})
    (src / "train" / "happiness").mkdir()
    assert_fails(tmp_path, ["fer2013", str(src)], src,
                 ["happiness", "unknown class folder", "angry, disgust, fear, happy, neutral, sad, surprise"])


def test_unknown_ck48_class_folder_lists_allowed(tmp_path: Path) -> None:
    src = make_ckplus48_tree(tmp_path)
    (src / "joy").mkdir()
    assert_fails(tmp_path, ["ck+", str(src)], src,
                 ["joy", "unknown class folder", "anger, contempt, disgust, fear, happy, sadness, surprise"])


def test_empty_fer_folders(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer", {})
    assert_fails(tmp_path, ["fer2013", str(src)], src, ["empty dataset", str(src)])


def test_empty_ck48_folders(tmp_path: Path) -> None:
    src = make_ckplus48_tree(tmp_path, sequences=())
    assert_fails(tmp_path, ["ck+", str(src)], src, ["empty dataset"])


def test_only_bad_images_with_skip_bad_is_empty(tmp_path: Path) -> None:
    src = make_fer_folders(tmp_path / "fer", {})
    (src / "train" / "sad" / "Training_x.jpg").write_bytes(b"")
    assert_fails(tmp_path, ["fer2013", str(src), "--skip-bad"], src, ["empty dataset"])


# ------------------------------------------------------------------------------------ CK+


@pytest.mark.parametrize("text,what", [
    ("banana\n", "unparsable emotion code 'banana'"),
    ("", "unparsable emotion code ''"),
    ("   9.0000000e+00\n", "out of range"),
    ("   0.0000000e+00\n", "out of range"),
    ("   2.5000000e+00\n", "out of range"),
])
def test_bad_ck_emotion_file_names_file(tmp_path: Path, text: str, what: str) -> None:
    src = make_raw_ckplus_tree(tmp_path / "ck", emotion_text={"S011_003": text})
    assert_fails(tmp_path, ["ck+", str(src), "--folds", "2"], src,
                 ["S011_003_00000004_emotion.txt", what])


def test_ck_frames_without_emotion_folder(tmp_path: Path) -> None:
    src = make_raw_ckplus_tree(tmp_path / "ck")
    shutil.rmtree(src / "Emotion")
    assert_fails(tmp_path, ["ck+", str(src)], src, ["cohn-kanade-images", "Emotion"])


def test_ck_corrupt_frame_names_file(tmp_path: Path) -> None:
    src = make_raw_ckplus_tree(tmp_path / "ck")
    (src / "cohn-kanade-images" / "S010" / "002" / "S010_002_00000005.png").write_bytes(b"\x00" * 10)
    assert_fails(tmp_path, ["ck+", str(src), "--folds", "2"], src, ["S010_002_00000005.png", "corrupt"])


@pytest.mark.parametrize("args", [["--folds", "1"], ["--size", "2"], ["--peak-frames", "0"]])
def test_bad_ck_options(tmp_path: Path, args: list[str]) -> None:
    src = make_ckplus48_tree(tmp_path)
    res = runner.invoke(app, ["prepare", "ck+", str(src), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert args[0] in res.output
    assert not (tmp_path / "o").exists()
