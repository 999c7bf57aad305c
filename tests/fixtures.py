"""Builders for tests: small dataset trees in every layout `fer prepare` accepts, prepared
datasets, train configs and run directories.

All builders are deterministic, write only under the directory they are given, and return
the path to pass to `fer prepare`. Images are built from the real face photos in
sample_images/ (public domain), so face detection works and the classes are learnable:

    face_image(size, which)      grey face crop from sample_images (astronaut | grace_hopper)
    detector_face_crop(which)    the same face cropped at its Haar box (reference for crops)
    fer_image(label, k, split)   48x48 grey: the face + a bright band whose row encodes the
                                 label + small per-image noise (unique per label/k/split)
    make_fer_folders(root, ...)  root/train/<class>/Training_*.jpg + root/test/<class>/
                                 PublicTest_*.jpg / PrivateTest_*.jpg    (FER_SMALL_COUNTS)
    make_fer_csv(path, ...)      the challenge CSV (emotion,pixels,Usage)  (FER_SMALL_COUNTS)
    make_ckplus48_tree(root)     root/CK+48/<class>/S###_###_########.png  (CK48_SMALL_*)
    make_raw_ckplus_tree(root)   root/cohn-kanade-images/S###/###/*.png + root/Emotion/...
                                 with 640x490 frames holding a real face (RAW_CK_EXPECTED)
    zip_tree(src, zip_path)      zip a folder (optionally under an extra top-level folder)
    save_variant(path, img, kind) write an image as rgb/rgba/palette/16bit/cmyk/big/grey
    write_huge_png(path)         a valid-header 20000x20000 PNG of a few hundred bytes
    tree_digest(path)            sha256 over a file or every file under a folder
    untrained_run(run, classes)  a run directory whose best.pt is an untrained resnet34

Prepared datasets (random pixels, written with fercli's own format), configs and runs:

    make_fer_like(path)          FER2013-shaped prepared dataset, 24/12/12 per split
    make_ck_like(path)           CK+-shaped prepared dataset with subject-disjoint folds
    tiny_cfg(dataset, out, **kw) a 2-epoch, batch-8 resnet34 TrainConfig on the CPU
    make_run(run_dir, ...)       a run holding an untrained model with non-trivial BN statistics
    fake_run(run_dir, ds_path)   a run whose best.pt holds random weights recorded for ds_path
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import shutil
import struct
import tempfile
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "sample_images"

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # CSV order
FER_USAGE = {"train": "Training", "public_test": "PublicTest", "private_test": "PrivateTest"}

#: Default per-split, per-class image counts of the small FER2013 fixtures (30 images).
FER_SMALL_COUNTS: dict[str, dict[str, int]] = {
    "train": {"angry": 3, "disgust": 1, "fear": 2, "happy": 4, "sad": 2, "surprise": 2, "neutral": 2},
    "public_test": {"angry": 1, "disgust": 0, "fear": 1, "happy": 2, "sad": 1, "surprise": 1, "neutral": 1},
    "private_test": {"angry": 1, "disgust": 1, "fear": 1, "happy": 1, "sad": 1, "surprise": 0, "neutral": 1},
}

# Face boxes (x, y, w, h) found by OpenCV's Haar cascade in the sample photos, with margin.
_FACE_CROPS = {
    "astronaut": ("astronaut.jpg", (130, 20, 190, 190)),
    "grace_hopper": ("grace_hopper.jpg", (110, 50, 310, 310)),
}


#: Boxes (x, y, w, h) OpenCV's Haar cascade finds in the sample photos (see sample_images/README.md).
SAMPLE_FACE_BOXES = {"astronaut": (177, 66, 95, 95), "grace_hopper": (156, 104, 222, 222)}


def detector_face_crop(which: str = "astronaut", size: int = 48) -> np.ndarray:
    """The sample face cropped at its Haar box (what a correct detect+crop should resemble)."""
    fname = _FACE_CROPS[which][0]
    x, y, w, h = SAMPLE_FACE_BOXES[which]
    grey = Image.fromarray(sample_image(fname)).convert("L").crop((x, y, x + w, y + h))
    return np.asarray(grey.resize((size, size), Image.Resampling.BOX))


@lru_cache(maxsize=8)
def sample_image(name: str = "astronaut.jpg") -> np.ndarray:
    """An RGB uint8 photo from sample_images/ (astronaut.jpg, grace_hopper.jpg, two_faces.jpg)."""
    with Image.open(SAMPLE_DIR / name) as im:
        arr = np.asarray(im.convert("RGB"))
    arr.setflags(write=False)
    return arr


@lru_cache(maxsize=16)
def face_image(size: int = 48, which: str = "astronaut") -> np.ndarray:
    """A real face (grey uint8, size x size, head and a little margin) from sample_images/."""
    fname, (x, y, w, h) = _FACE_CROPS[which]
    grey = Image.fromarray(sample_image(fname)).convert("L").crop((x, y, x + w, y + h))
    arr = np.asarray(grey.resize((size, size), Image.Resampling.LANCZOS))
    arr.setflags(write=False)
    return arr


def fer_image(label: int, k: int, split: str = "train", size: int = 48) -> np.ndarray:
    """A unique 48x48 grey face whose label is visible as a bright band at row 6*label."""
    seed = int.from_bytes(hashlib.sha256(f"{label}/{k}/{split}".encode()).digest()[:4], "little")
    rng = np.random.default_rng(seed)
    img = face_image(size).astype(np.float64)
    band = slice(6 * label * size // 48, (6 * label + 5) * size // 48)
    img[band, :] += 70.0
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _counts(counts: dict[str, dict[str, int]] | None) -> dict[str, dict[str, int]]:
    return FER_SMALL_COUNTS if counts is None else counts


def make_fer_folders(
    root: Path | str,
    counts: dict[str, dict[str, int]] | None = None,
    *,
    prefixes: bool = True,
    ext: str = ".jpg",
) -> Path:
    """FER2013 image folders: root/train/<class>/Training_N.jpg, root/test/<class>/...

    counts: {split: {class: n}} with splits train, public_test, private_test (default
    FER_SMALL_COUNTS). prefixes=False names test files plainly (no PublicTest_/PrivateTest_),
    as some re-uploads do. Every class folder exists even when its count is 0. Returns root.
    """
    root = Path(root)
    for folder in ("train", "test"):
        for c in FER_CLASSES:
            (root / folder / c).mkdir(parents=True, exist_ok=True)
    for split, per_class in _counts(counts).items():
        folder = "train" if split == "train" else "test"
        for c, n in per_class.items():
            label = FER_CLASSES.index(c)
            for k in range(n):
                stem = f"{FER_USAGE[split]}_{label}{k:04d}"
                if not prefixes and folder == "test":
                    stem = f"{split[:3]}{label}{k:04d}"
                img = Image.fromarray(fer_image(label, k, split))
                kw = {"quality": 95} if ext in (".jpg", ".jpeg") else {}
                img.save(root / folder / c / f"{stem}{ext}", **kw)
    return root


def fer_csv_row(label: int, pixels: np.ndarray, usage: str) -> str:
    """One CSV line (no newline) in the challenge format."""
    return f"{label},{' '.join(map(str, np.asarray(pixels).ravel().tolist()))},{usage}"


def make_fer_csv(
    path: Path | str,
    counts: dict[str, dict[str, int]] | None = None,
    *,
    extra_lines: list[str] | None = None,
    header: str = "emotion,pixels,Usage",
) -> Path:
    """The challenge CSV with rows for `counts` (default FER_SMALL_COUNTS), then extra_lines.

    Rows are grouped by split (train, public_test, private_test), then class, then k.
    Line 1 is the header, so the row
    for the i-th image (0-based) is on line i + 2. Returns path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for split, per_class in _counts(counts).items():
        for c, n in per_class.items():
            label = FER_CLASSES.index(c)
            for k in range(n):
                lines.append(fer_csv_row(label, fer_image(label, k, split), FER_USAGE[split]))
    lines.extend(extra_lines or [])
    path.write_text("\n".join(lines) + "\n")
    return path


CK_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")

#: CK+48 fixture: (class, subject, sequence) -> 3 frames each; 4 subjects, 6 sequences.
CK48_SMALL_SEQUENCES: tuple[tuple[str, str, str], ...] = (
    ("anger", "S010", "004"),
    ("happy", "S010", "006"),
    ("surprise", "S011", "001"),
    ("sadness", "S022", "002"),
    ("happy", "S037", "003"),
    ("disgust", "S037", "005"),
)
CK48_SMALL_EXPECTED = {"images": 18, "subjects": 4, "sequences": 6,
                       "classes": {"anger": 3, "happy": 6, "surprise": 3, "sadness": 3, "disgust": 3}}


def make_ckplus48_tree(
    root: Path | str,
    sequences: tuple[tuple[str, str, str], ...] = CK48_SMALL_SEQUENCES,
    frames: int = 3,
) -> Path:
    """CK+48 layout: root/CK+48/<class>/S###_###_########.png (48x48 grey). Returns root/CK+48."""
    top = Path(root) / "CK+48"
    for c in CK_CLASSES:
        (top / c).mkdir(parents=True, exist_ok=True)
    for c, subj, seq in sequences:
        label = CK_CLASSES.index(c)
        for f in range(frames):
            frame_no = 10 + f
            img = fer_image(label, int(subj[1:]) * 10 + f, f"ck{seq}")
            Image.fromarray(img).save(top / c / f"{subj}_{seq}_{frame_no:08d}.png")
    return top


# Raw CK+ fixture. Each entry: subject, sequence, emotion code (None: no emotion file),
# frame count, and how frames look. 640x490 grey frames holding a real face unless noted.
RAW_CK_SEQUENCES: tuple[dict, ...] = (
    {"subject": "S005", "seq": "001", "code": 3, "frames": 6, "occluded_last": True},  # disgust
    {"subject": "S010", "seq": "002", "code": 7, "frames": 5, "colour": (3, 4)},  # surprise, RGB frames
    {"subject": "S011", "seq": "001", "code": 5, "frames": 5, "height": 480, "who": "grace_hopper"},
    {"subject": "S011", "seq": "003", "code": 1, "frames": 4},  # anger
    {"subject": "S014", "seq": "001", "code": None, "frames": 4},  # no emotion file: skipped
    {"subject": "S022", "seq": "001", "code": 6, "frames": 4, "noface": True},  # skipped
)
#: What `fer prepare ck+` (default --peak-frames 3) must produce from make_raw_ckplus_tree.
RAW_CK_EXPECTED = {
    "images": 12, "subjects": 3, "sequences": 4,
    "classes": {"anger": 3, "disgust": 3, "happy": 3, "surprise": 3},
    "skipped": {"sequence without emotion label": 1, "sequence without a detectable face": 1},
    "colour_frames_used": 2,  # S010_002 frames 4 and 5 (1-based) are RGB and among the last 3
}


def _raw_frame(entry: dict, i: int) -> np.ndarray:
    h = entry.get("height", 490)
    key = f"{entry['subject']}/{entry['seq']}/{i}".encode()
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:4], "little"))
    canvas = np.full((h, 640), 118, dtype=np.float64)
    occluded = entry.get("occluded_last") and i == entry["frames"] - 1
    if not entry.get("noface") and not occluded:
        face = face_image(250, entry.get("who", "astronaut")).astype(np.float64)
        x0, y0 = 190 + 4 * i, 100 + 2 * i
        canvas[y0:y0 + 250, x0:x0 + 250] = face
    canvas += rng.normal(0, 3, canvas.shape)  # sensor noise: no two frames are identical
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


_RAW_TEMPLATES: dict[tuple, Path] = {}


def make_raw_ckplus_tree(
    root: Path | str,
    sequences: tuple[dict, ...] = RAW_CK_SEQUENCES,
    *,
    emotion_text: dict[str, str] | None = None,
) -> Path:
    """The raw CK+ release layout under root (returned):

        root/cohn-kanade-images/S005/001/S005_001_00000001.png ... (640x490, some RGB/640x480)
        root/Emotion/S005/001/S005_001_00000006_emotion.txt   ("   3.0000000e+00")

    Default sequences (RAW_CK_SEQUENCES): four labelled sequences from three subjects with a
    real face (one RGB-framed, one 640x480, one whose last frame hides the face so its box
    must be reused), one sequence without an emotion file, one whose frames have no face.
    emotion_text {"S005_001": "text"} writes that text as the sequence's emotion file (for
    bad-file tests). The frames are rendered once per process and copied.
    """
    root = Path(root)
    key = tuple(tuple(sorted((k, str(v)) for k, v in e.items())) for e in sequences)
    template = _RAW_TEMPLATES.get(key)
    if template is None or not template.is_dir():
        template = Path(tempfile.mkdtemp(prefix="fercli-rawck-"))
        atexit.register(shutil.rmtree, template, True)
        _render_raw_ckplus(template, sequences)
        _RAW_TEMPLATES[key] = template
    shutil.copytree(template, root, dirs_exist_ok=True)
    for seq_key, text in (emotion_text or {}).items():
        subj, seq = seq_key.split("_")
        e = next(x for x in sequences if x["subject"] == subj and x["seq"] == seq)
        edir = root / "Emotion" / subj / seq
        edir.mkdir(parents=True, exist_ok=True)
        (edir / f"{subj}_{seq}_{e['frames']:08d}_emotion.txt").write_text(text)
    return root


def _render_raw_ckplus(root: Path, sequences: tuple[dict, ...]) -> None:
    for e in sequences:
        subj, seq = e["subject"], e["seq"]
        fdir = root / "cohn-kanade-images" / subj / seq
        fdir.mkdir(parents=True, exist_ok=True)
        for i in range(e["frames"]):
            img = Image.fromarray(_raw_frame(e, i))
            if i in e.get("colour", ()):
                img = img.convert("RGB")
            img.save(fdir / f"{subj}_{seq}_{i + 1:08d}.png", compress_level=1)
        if e["code"] is None:
            continue
        edir = root / "Emotion" / subj / seq
        edir.mkdir(parents=True, exist_ok=True)
        text = f"   {float(e['code']):.7e}\n"
        (edir / f"{subj}_{seq}_{e['frames']:08d}_emotion.txt").write_text(text)


def zip_tree(src: Path | str, zip_path: Path | str, *, arc_prefix: str = "",
             compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Zip every file under src, named arc_prefix + path relative to src. Returns zip_path."""
    src, zip_path = Path(src), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", compression=compression) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, arc_prefix + p.relative_to(src).as_posix())
    return zip_path


def save_variant(path: Path | str, img: np.ndarray, kind: str) -> Path:
    """Save a grey uint8 image as kind: grey, rgb, rgba, palette, 16bit, cmyk (JPEG), big (96x96 grey)."""
    path = Path(path)
    im = Image.fromarray(np.asarray(img, dtype=np.uint8))
    if kind == "grey":
        im.save(path)
    elif kind == "rgb":
        im.convert("RGB").save(path)
    elif kind == "rgba":
        im.convert("RGBA").save(path)
    elif kind == "palette":
        im.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif kind == "16bit":
        arr16 = np.asarray(img, dtype=np.uint16) * 257
        Image.fromarray(arr16).save(path)  # PNG, mode I;16
    elif kind == "cmyk":
        im.convert("CMYK").save(path, format="JPEG", quality=95)
    elif kind == "big":
        im.resize((96, 96), Image.Resampling.BICUBIC).save(path)
    else:
        raise ValueError(kind)
    return path


def write_huge_png(path: Path | str, width: int = 20000, height: int = 20000) -> Path:
    """A PNG whose header claims width x height (8-bit grey) but holds one tiny IDAT chunk."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)


def tree_digest(path: Path | str) -> str:
    """sha256 over a file, or over every file (relative name + bytes) under a folder."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(path if path.is_dir() else path.parent).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def untrained_run(run: Path, classes: list[str]) -> Path:
    """A `fer train`-shaped run directory whose best.pt is an untrained resnet34 (seed 0)."""
    import torch

    from fercli.model.checkpoints import CHECKPOINT_FORMAT, save_checkpoint
    from fercli.model.networks import build_model

    run.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model("resnet34", len(classes))
    save_checkpoint(run / "best.pt", {"format": CHECKPOINT_FORMAT, "model_spec": dict(model.spec),
                                      "classes": classes, "model": model.state_dict(),
                                      "best": {"epoch": 1, "val_acc": 0.2}, "dataset_name": "fer2013"})
    return run


# ----------------------------------------------------------------------------- prepared datasets, configs, runs
# Random-pixel prepared datasets and untrained runs for engine, CLI and evaluation tests (no
# decoding, no training). fercli and torch are imported inside, so the folder builders above
# stay light.


def make_fer_like(path, n_per_split=(24, 12, 12), seed=0):
    """A tiny FER2013-shaped prepared dataset (random pixels, random labels)."""
    from fercli.data.prepared import FER2013_CLASSES, write_prepared

    rng = np.random.default_rng(seed)
    n = sum(n_per_split)
    split = np.array(["train"] * n_per_split[0] + ["public_test"] * n_per_split[1]
                     + ["private_test"] * n_per_split[2])
    write_prepared(path, name="fer2013", classes=FER2013_CLASSES,
                   images=rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
                   labels=rng.integers(0, 7, n), split=split,
                   source=np.array([f"fer2013.csv:{i + 2}" for i in range(n)]))
    return path


def make_ck_like(path, subjects=9, per_subject=4, folds=3, seed=0):
    """A tiny CK+-shaped prepared dataset with subject-disjoint folds."""
    from fercli.data.prepared import CKPLUS_CLASSES, write_prepared

    rng = np.random.default_rng(seed)
    n = subjects * per_subject
    subject = np.repeat([f"S{i:03d}" for i in range(subjects)], per_subject)
    fold = np.repeat(np.arange(subjects) % folds, per_subject)
    write_prepared(path, name="ck+", classes=CKPLUS_CLASSES,
                   images=rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
                   labels=rng.integers(0, 7, n), split=np.full(n, "all"),
                   source=np.array([f"{s}_001_{i:08d}.png" for i, s in enumerate(subject)]),
                   subject=subject, sequence=np.array([f"{s}_001" for s in subject]), fold=fold)
    return path


def tiny_cfg(dataset, out, **kw):
    """A TrainConfig for a 2-epoch, batch-8 resnet34 run on the CPU (options in kw override)."""
    from fercli.train import config

    base = dict(dataset=str(dataset), model="resnet34", pretrained=False, epochs=2, batch_size=8,
                lr=1e-3, device="cpu", out=str(out), seed=0, eval_batch_size=16)
    base.update(kw)
    return config.make_train_config(**base)


#: The classes of make_run's models (FER2013's, as a list: what checkpoints and exports record).
CLASSES = list(FER_CLASSES)


def make_run(run_dir: Path, name: str = "resnet34", shared: bool = False, seed: int = 0,
             metrics: dict | None = None) -> torch.nn.Module:
    """A run directory holding an untrained model in the engine's checkpoint format."""
    import torch

    from fercli.model.checkpoints import CHECKPOINT_FORMAT, save_checkpoint
    from fercli.model.networks import build_model
    from fercli.train.config import train_command

    torch.manual_seed(seed)
    model = build_model(name, len(CLASSES), shared_backbone=shared).eval()
    # Non-trivial BatchNorm statistics, so the round trip checks buffers too.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(123)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"dataset": "fer2013", "model": name, "shared_backbone": shared, "epochs": 1, "seed": seed}
    save_checkpoint(run_dir / "best.pt", {
        "format": CHECKPOINT_FORMAT, "model_spec": dict(model.spec), "classes": CLASSES,
        "model": model.state_dict(), "config": cfg, "best": {"epoch": 1, "val_acc": 0.25},
        "training_command": train_command(cfg), "dataset_sha256": "ab" * 32, "dataset_name": "fer2013", "fercli_version": "0.1.0",
    })
    (run_dir / "config.json").write_text(json.dumps({"config": cfg, "device": "cpu (test)"}))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return model


def fake_run(run_dir: Path, ds_path: Path, fold: int | None = None, seed: int = 0) -> Path:
    """A run directory with a best.pt (random weights, no training: evaluation is what is tested)."""
    import torch

    from fercli.data.prepared import load_prepared
    from fercli.model.checkpoints import BEST_CHECKPOINT, CHECKPOINT_FORMAT, save_checkpoint
    from fercli.model.networks import build_model
    from fercli.train.config import TrainConfig

    ds = load_prepared(ds_path)
    torch.manual_seed(seed)
    model = build_model("resnet34", len(ds.classes))
    cfg = dataclasses.asdict(TrainConfig(dataset=str(ds_path), model="resnet34", pretrained=False, fold=fold))
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / BEST_CHECKPOINT, {
        "format": CHECKPOINT_FORMAT, "model_spec": dict(model.spec), "classes": ds.classes,
        "model": model.state_dict(), "epoch": 0, "history": [], "best": {"epoch": 1, "val_acc": 0.5},
        "config": cfg, "dataset_sha256": ds.sha256, "dataset_name": ds.name, "code_version": "abc123"})
    (run_dir / "config.json").write_text(json.dumps({"config": cfg, "device": "cpu (test)"}))
    return run_dir
