"""The prepared-dataset format: what `fer prepare` writes and everything else reads.

A prepared dataset is one directory:

    <dir>/data.npz        uint8 images (N, H, W) plus per-image columns, no pickle:
                            images   uint8  (N, H, W)   greyscale faces
                            labels   int64  (N,)        index into manifest["classes"]
                            split    <U     (N,)        train|public_test|private_test|test|all
                            source   <U     (N,)        file name or "fer2013.csv:LINE"
                            subject  <U     (N,)        CK+ "S005", "" for FER2013
                            sequence <U     (N,)        CK+ "S005_001", "" for FER2013
                            fold     int16  (N,)        CK+ subject-independent fold, -1 else
    <dir>/manifest.json   name, classes, counts, subjects, sha256 of data.npz, source, ...

It loads in one read (np.load with allow_pickle=False), and the manifest's sha256 lets
every reader refuse data that changed after it was prepared.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fercli import __version__
from fercli.errors import FerError
from fercli.files import atomic_directory, read_json, sha256_file

DATA_FILE = "data.npz"
MANIFEST_FILE = "manifest.json"

# FER2013 emotion codes 0..6, in the order of the challenge CSV.
FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# CK+ emotion codes 1..7 (0 = neutral is only used with --neutral-first-frame, appended last).
CKPLUS_CLASSES: tuple[str, ...] = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")

COLUMNS = ("images", "labels", "split", "source", "subject", "sequence", "fold")


@dataclass(frozen=True)
class PreparedDataset:
    path: Path
    manifest: dict[str, Any]
    images: np.ndarray  # uint8 (N, H, W)
    labels: np.ndarray  # int64 (N,)
    split: np.ndarray
    source: np.ndarray
    subject: np.ndarray
    sequence: np.ndarray
    fold: np.ndarray
    sha256: str = field(default="")

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["counts"].keys())

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def write_prepared(
    out: Path,
    *,
    name: str,
    classes: list[str] | tuple[str, ...],
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    source: np.ndarray,
    subject: np.ndarray | None = None,
    sequence: np.ndarray | None = None,
    fold: np.ndarray | None = None,
    force: bool = False,
    manifest_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write data.npz + manifest.json atomically into `out`; return the manifest."""
    n = int(labels.shape[0])
    if n == 0:
        raise FerError(f"empty dataset: no images found for {name}")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 3 or images.shape[0] != n:
        raise ValueError(f"images must be (N, H, W) uint8 with N={n}, got {images.shape}")
    empty = np.full(n, "", dtype="<U1")
    cols = {
        "images": images,
        "labels": np.asarray(labels, dtype=np.int64),
        "split": np.asarray(split, dtype=str),
        "source": np.asarray(source, dtype=str),
        "subject": empty if subject is None else np.asarray(subject, dtype=str),
        "sequence": empty if sequence is None else np.asarray(sequence, dtype=str),
        "fold": np.full(n, -1, dtype=np.int16) if fold is None else np.asarray(fold, dtype=np.int16),
    }
    counts: dict[str, dict[str, int]] = {}
    for s in dict.fromkeys(cols["split"].tolist()):  # first-seen order
        m = cols["split"] == s
        counts[s] = {c: int(np.sum(cols["labels"][m] == i)) for i, c in enumerate(classes)}
    manifest: dict[str, Any] = {
        "name": name,
        "classes": list(classes),
        "image_size": [int(images.shape[1]), int(images.shape[2])],
        "num_images": n,
        "counts": counts,
    }
    if subject is not None:
        manifest["subjects"] = sorted(set(cols["subject"].tolist()) - {""})
        manifest["num_subjects"] = len(manifest["subjects"])
    if sequence is not None:
        manifest["num_sequences"] = len(set(cols["sequence"].tolist()) - {""})
    if fold is not None:
        manifest["num_folds"] = int(cols["fold"].max()) + 1
    manifest.update(manifest_extra or {})
    manifest["fercli_version"] = __version__
    # What a full disk's message says it needs: the columns as stored, plus the manifest.
    size = sum(int(c.nbytes) for c in cols.values()) + (64 << 10)
    with atomic_directory(out, force=force, size_hint=size) as tmp:
        _write_npz(tmp / DATA_FILE, cols)
        manifest["sha256"] = sha256_file(tmp / DATA_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_npz(path: Path, cols: dict[str, np.ndarray]) -> None:
    """np.savez, but byte-for-byte reproducible: fixed member timestamps, fixed order.

    np.savez stamps each member with the current time, so preparing the same source twice
    would give a different sha256. Stored uncompressed: FER2013 is 83 MB of pixels and a
    stored member loads in one read.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in COLUMNS:
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(cols[key]), allow_pickle=False)


def load_prepared(path: str | Path, verify: bool = True) -> PreparedDataset:
    """Load the prepared dataset in directory `path` in one read, refusing it if its data no
    longer matches. (A dataset's name resolves to its directory in fercli.data.registry.)"""
    path = Path(path)
    if not path.is_dir():
        raise FerError(f"dataset {path} is not a prepared dataset directory")
    mpath, dpath = path / MANIFEST_FILE, path / DATA_FILE
    if not mpath.is_file():
        raise FerError(f"{path} is not a prepared dataset: {MANIFEST_FILE} is missing")
    if not dpath.is_file():
        raise FerError(f"{path} is not a prepared dataset: {DATA_FILE} is missing")
    manifest = read_json(mpath, "prepared-dataset manifest")
    if "classes" not in manifest:
        raise FerError(f"{mpath}: not a valid prepared-dataset manifest (no classes)")
    raw = dpath.read_bytes()
    if verify:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != manifest.get("sha256"):
            raise FerError(
                f"{dpath}: sha256 {digest[:12]}… does not match manifest "
                f"{str(manifest.get('sha256'))[:12]}…; the data changed after `fer prepare` — prepare it again"
            )
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            cols = {k: z[k] for k in COLUMNS}
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FerError(f"{dpath}: unreadable prepared data ({exc})") from None
    return PreparedDataset(path=path, manifest=manifest, sha256=str(manifest.get("sha256", "")), **cols)
