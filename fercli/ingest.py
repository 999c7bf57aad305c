"""Core of `fer prepare`: read FER2013 or CK+ in any accepted layout into the prepared format.

Accepted inputs (SRC):

    fer2013  fer2013.csv                       the challenge CSV (emotion,pixels,Usage)
             DIR/train/<class>/*.jpg + DIR/test/<class>/*.jpg   the image-folder layout
                                               (DIR may also be the parent of a single such folder)
             a .zip of either
    ck+      DIR/cohn-kanade-images/S###/###/*.png + DIR/Emotion/S###/###/*_emotion.txt
                                               the raw CK+ release (faces are detected and cropped)
             DIR/<class>/S###_###_########.png  the CK+48 face-crop layout (or its parent)
             a .zip of either

Everything is parsed and validated before anything is written; the output is then written
atomically with `fercli.dataset.write_prepared`, so a bad input leaves no output directory.
The input is only ever read. Every problem the user can fix raises a one-line FerError that
names the file (and line); `skip_bad=True` skips bad images/rows/labels and counts them instead.

This module never imports Typer or Rich: it returns a frozen `PrepareResult` that the CLI
renders, and reports progress through an optional `progress(done, total)` callback.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from fercli.dataset import (
    CKPLUS_CLASSES,
    FER2013_CLASSES,
    default_dataset_dir,
    write_prepared,
)
from fercli.errors import FerError
from fercli.fsutil import sha256_file

ProgressFn = Callable[[int, int], None]

# --------------------------------------------------------------------------------------------
# Limits and constants
# --------------------------------------------------------------------------------------------

#: Images with more pixels than this are refused (or skipped with skip_bad) before decoding,
#: so a 20000x20000 PNG cannot exhaust memory. PIL's own decompression-bomb limit is set to
#: the same value; its warning is silenced because our check reports such images itself.
MAX_IMAGE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

#: A zip member larger than this (uncompressed) is refused rather than read into memory.
MAX_MEMBER_BYTES = 2 << 30

FER_SIZE = 48
FER_PIXELS = FER_SIZE * FER_SIZE
FER_CSV_HEADER = "emotion,pixels,Usage"
FER_USAGE_SPLITS = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}
FER_SPLIT_ORDER = ("train", "public_test", "private_test", "test")
FER_PREFIXES = {"Training_": "train", "PublicTest_": "public_test", "PrivateTest_": "private_test"}

IMAGE_EXTS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
)
JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})

#: Canonical FER2013 counts per split (Usage) and class, from the 2013 challenge release.
FER2013_CANONICAL: dict[str, dict[str, int]] = {
    "train": {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "sad": 4830,
              "surprise": 3171, "neutral": 4965},
    "public_test": {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "sad": 653,
                    "surprise": 415, "neutral": 607},
    "private_test": {"angry": 491, "disgust": 55, "fear": 528, "happy": 879, "sad": 594,
                     "surprise": 416, "neutral": 626},
}
#: Canonical CK+ emotion-labelled sequences per class (327 sequences, 118 subjects).
CKPLUS_CANONICAL_SEQUENCES: dict[str, int] = {
    "anger": 45, "contempt": 18, "disgust": 59, "fear": 25, "happy": 69, "sadness": 28,
    "surprise": 83,
}
CKPLUS_CANONICAL_SUBJECTS = 118
CKPLUS48_FRAMES_PER_SEQUENCE = 3  # CK+48 holds the last three frames of each sequence

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 320  # frames are downscaled to this for detection (CK+ faces are large)

ACCEPTED_FER2013 = (
    "fer2013.csv (header emotion,pixels,Usage)",
    "a folder with train/<class>/ and test/<class>/ image folders (or its parent)",
    "a .zip of either",
)
ACCEPTED_CKPLUS = (
    "the raw CK+ release (cohn-kanade-images/S###/###/*.png and Emotion/S###/###/*_emotion.txt)",
    "the CK+48 layout (<class>/S###_###_########.png with classes " + ", ".join(CKPLUS_CLASSES) + ")",
    "a .zip of either",
)


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_fer2013` / `prepare_ckplus` return: the written manifest plus timing."""

    out: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.manifest["counts"]

    @property
    def num_images(self) -> int:
        return int(self.manifest["num_images"])

    @property
    def notes(self) -> list[str]:
        return list(self.manifest.get("notes", []))

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: the manifest plus the output path and elapsed seconds."""
        return {"out": str(self.out), "seconds": round(self.seconds, 3), **self.manifest}


# --------------------------------------------------------------------------------------------
# Image decoding (shared: other commands may use decode_grey/load_face for user images)
# --------------------------------------------------------------------------------------------


class BadImage(Exception):
    """An unreadable/unsafe image; the caller turns it into a FerError naming the file."""


_PIL_MODE_REASON = {
    "P": "palette", "PA": "palette", "CMYK": "cmyk", "1": "1-bit", "LA": "alpha",
    "YCbCr": "rgb", "LAB": "lab", "HSV": "hsv", "F": "float", "I": "32-bit",
}


def image_size(data: bytes) -> tuple[int, int, str, str]:
    """(width, height, PIL mode, format) from the header only; raises BadImage."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            return int(w), int(h), str(im.mode), str(im.format or "")
    except Image.DecompressionBombError as exc:  # over 2 x MAX_IMAGE_PIXELS: PIL refuses itself
        m = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "too many pixels"
        raise BadImage(
            f"image too large: {size} (limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"
        ) from None
    except UnidentifiedImageError:
        raise BadImage("corrupt or unsupported image (cannot identify the format)") from None
    except Exception as exc:  # PIL raises many types on malformed headers
        raise BadImage(f"corrupt image ({type(exc).__name__}: {exc})") from None


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _sniff_header(data: bytes) -> tuple[int, int, str, str] | None:
    """(w, h, mode, format) for the common JPEG/PNG cases straight from the header bytes, in
    a few microseconds (PIL.Image.open takes ~20); None means "ask PIL" (other formats,
    palette, CMYK, low bit depths, anything unusual or malformed)."""
    if data[:8] == _PNG_SIG:
        if data[12:16] != b"IHDR" or len(data) < 26:
            return None
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        depth, ctype = data[24], data[25]
        mode = {(0, 8): "L", (2, 8): "RGB", (6, 8): "RGBA", (0, 16): "I;16",
                (2, 16): "RGB", (6, 16): "RGBA"}.get((ctype, depth))
        return (w, h, mode, "PNG") if mode else None
    if data[:3] != b"\xff\xd8\xff":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            precision, comps = data[i + 4], data[i + 9]
            h, w = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            mode = {1: "L", 3: "RGB"}.get(comps) if precision == 8 else None
            return (w, h, mode, "JPEG") if mode and h > 0 else None
        if marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def decode_grey(data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode image bytes to an 8-bit greyscale array at full resolution.

    Returns (array (H, W) uint8, conversion reasons) where reasons name what had to be
    converted: "rgb", "rgba", "palette", "16-bit", "cmyk", ... (empty for 8-bit grey).
    The size is checked from the header first; images over MAX_IMAGE_PIXELS raise BadImage.
    """
    w, h, mode, fmt = _sniff_header(data) or image_size(data)
    if w <= 0 or h <= 0:
        raise BadImage(f"corrupt image (size {w}x{h})")
    if w * h > MAX_IMAGE_PIXELS:
        raise BadImage(
            f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels "
            f"(limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"
        )
    if fmt == "JPEG" and not _has_jpeg_eoi(data):
        raise BadImage("corrupt image (truncated JPEG: no end-of-image marker)")
    reasons: list[str] = []
    arr: np.ndarray | None = None
    if mode in ("L", "RGB", "RGBA") or mode.startswith("I;16"):
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:  # palette, CMYK, exotic modes, or formats cv2 lacks: let PIL convert
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if mode.startswith("I;16") or mode == "I":
                    a = np.asarray(im, dtype=np.float64)
                    top = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
                    arr = np.clip(np.rint(a * 255.0 / top), 0, 255).astype(np.uint8)
                    reasons.append("16-bit" if mode.startswith("I;16") else "32-bit")
                else:
                    if mode != "L":
                        reasons.append(_PIL_MODE_REASON.get(mode, mode.lower()))
                    if mode in ("P", "PA") and "transparency" in im.info:
                        im = im.convert("RGBA")
                    arr = np.asarray(im.convert("L"), dtype=np.uint8)
        except BadImage:
            raise
        except Exception as exc:
            raise BadImage(f"corrupt image ({type(exc).__name__}: {exc})") from None
        return np.ascontiguousarray(arr), tuple(reasons)
    if arr.dtype == np.uint16:
        reasons.append("16-bit")
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype != np.uint8:
        reasons.append(str(arr.dtype))
        a = arr.astype(np.float64)
        arr = np.clip(np.rint(a * 255.0 / max(float(a.max()), 1.0)), 0, 255).astype(np.uint8)
    if arr.ndim == 3:
        ch = arr.shape[2]
        if ch == 1:
            arr = arr[:, :, 0]
        elif ch == 3:
            reasons.append("rgb")
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
        elif ch == 4:
            reasons.append("rgba")
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2GRAY)
        else:
            raise BadImage(f"unsupported image with {ch} channels")
    return np.ascontiguousarray(arr), tuple(reasons)


def load_face(data: bytes, size: int = FER_SIZE) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode to grey and resize to size x size (INTER_AREA); reasons include "resized"."""
    arr, reasons = decode_grey(data)
    if arr.shape != (size, size):
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA)
        reasons = (*reasons, "resized")
    return arr, reasons


def _has_jpeg_eoi(data: bytes) -> bool:
    # In entropy-coded JPEG data 0xFF is always stuffed (FF00) or a restart marker, so FFD9
    # only appears as the end-of-image marker (or inside an embedded EXIF thumbnail).
    return data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) >= 0 or data.rfind(b"\xff\xd9") >= 0


# --------------------------------------------------------------------------------------------
# Input trees: a directory or a zip archive behind one small interface
# --------------------------------------------------------------------------------------------


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name in JUNK_NAMES


class _Tree:
    """Read-only view of a directory or zip: children(prefix), walk(prefix), read(rel)."""

    kind = ""
    path: Path

    def children(self, prefix: str) -> tuple[list[str], list[str]]:  # (dirs, files), sorted
        raise NotImplementedError

    def walk(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def where(self, rel: str) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _DirTree(_Tree):
    kind = "folder"

    def __init__(self, path: Path) -> None:
        self.path = path

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        dirs: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(self.path / prefix if prefix else self.path) as it:
                for e in it:
                    if _is_junk(e.name):
                        continue
                    (dirs if e.is_dir() else files).append(e.name)
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        except OSError as exc:
            raise FerError(f"cannot read folder {self.where(prefix)}: {exc.strerror}") from None
        return sorted(dirs), sorted(files)

    def walk(self, prefix: str) -> list[str]:
        out: list[str] = []
        base = self.path / prefix if prefix else self.path
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not _is_junk(d)]
            rel = Path(dirpath).relative_to(self.path).as_posix()
            rel = "" if rel == "." else rel + "/"
            out.extend(rel + f for f in filenames if not _is_junk(f))
        out.sort()
        return out

    def read(self, rel: str) -> bytes:
        try:
            return (self.path / rel).read_bytes()
        except OSError as exc:
            raise BadImage(f"cannot read file ({exc.strerror})") from None

    def where(self, rel: str) -> str:
        return str(self.path / rel) if rel else str(self.path)


_UNSAFE_DRIVE = re.compile(r"^[A-Za-z]:")


class _ZipTree(_Tree):
    kind = "zip"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise FerError(f"{path}: not a valid zip archive ({exc})") from None
        self._local = threading.local()
        self._local.zf = zf
        self._handles = [zf]
        self._lock = threading.Lock()
        self.sizes: dict[str, int] = {}
        self._dirs: dict[str, set[str]] = {"": set()}
        self._files: dict[str, list[str]] = {"": []}
        for info in zf.infolist():
            name = info.filename
            parts = re.split(r"[\\/]", name)
            if name.startswith(("/", "\\")) or _UNSAFE_DRIVE.match(name) or ".." in parts:
                zf.close()
                raise FerError(
                    f"{path}: unsafe zip entry {name!r} (absolute path or '..'); refusing the archive"
                )
            if info.is_dir():
                parts = [p for p in name.split("/") if p]
                self._add_dirs(parts)
                continue
            parts = name.split("/")
            if any(_is_junk(p) for p in parts):
                continue
            self._add_dirs(parts[:-1])
            parent = "".join(p + "/" for p in parts[:-1])
            self._files.setdefault(parent, []).append(parts[-1])
            self.sizes[name] = info.file_size

    def _add_dirs(self, parts: Sequence[str]) -> None:
        prefix = ""
        for p in parts:
            if _is_junk(p):
                return
            self._dirs.setdefault(prefix, set()).add(p)
            prefix += p + "/"
            self._dirs.setdefault(prefix, set())
            self._files.setdefault(prefix, [])

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        return sorted(self._dirs.get(prefix, ())), sorted(self._files.get(prefix, ()))

    def walk(self, prefix: str) -> list[str]:
        return sorted(n for n in self.sizes if n.startswith(prefix))

    def _zf(self) -> zipfile.ZipFile:
        zf = getattr(self._local, "zf", None)
        if zf is None:  # one handle per thread: ZipFile reads are not safe to share
            zf = zipfile.ZipFile(self.path)
            self._local.zf = zf
            with self._lock:
                self._handles.append(zf)
        return zf

    def read(self, rel: str) -> bytes:
        size = self.sizes.get(rel, 0)
        if size > MAX_MEMBER_BYTES:
            raise BadImage(f"zip member too large ({size} bytes uncompressed)")
        try:
            return self._zf().read(rel)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise BadImage(f"corrupt zip member ({exc})") from None
        except (RuntimeError, NotImplementedError) as exc:  # encrypted / unsupported method
            raise BadImage(f"cannot read zip member ({exc})") from None

    def where(self, rel: str) -> str:
        return f"{self.path}:{rel}" if rel else str(self.path)

    def close(self) -> None:
        for zf in self._handles:
            zf.close()


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


class _Skips:
    """Counts skipped items by reason (with a few examples) or raises when not skipping."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.reasons: Counter[str] = Counter()
        self.examples: list[str] = []

    def bad(self, where: str, problem: str, reason: str) -> None:
        """A bad input item: FerError unless skip_bad, else count it under `reason`."""
        if not self.skip_bad:
            raise FerError(f"{where}: {problem} (use --skip-bad to skip such items)")
        self.count(reason, f"{where}: {problem}")

    def count(self, reason: str, example: str | None = None) -> None:
        self.reasons[reason] += 1
        if example and len(self.examples) < 10:
            self.examples.append(example)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": int(sum(self.reasons.values())),
            "reasons": dict(sorted(self.reasons.items())),
            "examples": list(self.examples),
        }


def _converted_dict(reason_lists: Iterable[tuple[str, ...]]) -> dict[str, Any]:
    c: Counter[str] = Counter()
    total = 0
    for rs in reason_lists:
        if rs:
            total += 1
            c.update(set(rs))
    return {"total": total, "reasons": dict(sorted(c.items()))}


def find_duplicates(
    images: np.ndarray, split: np.ndarray, labels: np.ndarray, source: np.ndarray,
    max_examples: int = 5,
) -> dict[str, Any]:
    """Exact duplicates (identical pixels) within and across splits.

    count: duplicate groups (pixel patterns seen more than once); extra_copies: images beyond
    the first of each group; cross_split: groups that span more than one split;
    label_conflicts: groups whose copies carry different labels; examples: source ids.
    """
    groups: dict[bytes, list[int]] = {}
    for i in range(images.shape[0]):
        key = hashlib.blake2b(images[i].tobytes(), digest_size=16).digest()
        groups.setdefault(key, []).append(i)
    dups = [g for g in groups.values() if len(g) > 1]
    dups.sort(key=lambda g: g[0])
    cross = [g for g in dups if len({str(split[i]) for i in g}) > 1]
    conflicts = [g for g in dups if len({int(labels[i]) for i in g}) > 1]
    cross_first = {g[0] for g in cross}
    pick = (cross + [g for g in dups if g[0] not in cross_first])[:max_examples]
    def shown(g: list[int]) -> list[str]:  # one copy from each split first, then the rest
        first: dict[str, int] = {}
        for i in g:
            first.setdefault(str(split[i]), i)
        order = list(first.values()) + [i for i in g if i not in first.values()]
        return [str(source[i]) for i in order[:4]]

    examples = [
        {"copies": len(g), "sources": shown(g), "splits": sorted({str(split[i]) for i in g})}
        for g in pick
    ]
    return {
        "count": len(dups),
        "extra_copies": int(sum(len(g) - 1 for g in dups)),
        "images_in_groups": int(sum(len(g) for g in dups)),
        "cross_split": len(cross),
        "label_conflicts": len(conflicts),
        "examples": examples,
    }


def _resolve_out(name: str, out: Path | str | None, force: bool, src: Path) -> Path:
    target = Path(out) if out is not None else default_dataset_dir(name)
    if target.exists() and not force:
        raise FerError(f"output {target} already exists (use --force to replace it)")
    if target.exists() and target.is_file():
        raise FerError(f"output {target} is a file; expected a directory")
    t, s = target.resolve(), src.resolve()
    if t == s or t in s.parents:
        raise FerError(f"output {target} would replace the input {src}; choose another --out")
    return target


def _open_src(src: Path | str, accepted: Sequence[str], what: str) -> tuple[Path, _Tree | None]:
    """(path, tree): a _DirTree for a folder, a _ZipTree for a zip, None for another file."""
    p = Path(src)
    if not p.exists():
        raise FerError(f"SRC {p} does not exist")
    if p.is_dir():
        return p, _DirTree(p)
    if p.suffix.lower() == ".zip" or zipfile.is_zipfile(p):
        return p, _ZipTree(p)
    if p.suffix.lower() == ".csv":
        return p, None
    raise FerError(f"{p}: not a known {what} layout; accepted: " + "; ".join(accepted))


def _no_layout(where: str, what: str, accepted: Sequence[str]) -> FerError:
    return FerError(f"{where}: matches no known {what} layout; accepted: " + "; ".join(accepted))


def _workers() -> int:
    return max(2, min(8, (os.cpu_count() or 2) + 2))


def _run_chunks(
    fn: Callable[[list[int]], list[Any]], n: int, progress: ProgressFn | None, chunk: int = 256,
) -> list[Any]:
    """Run fn over index chunks in a thread pool; results in index order; progress in main."""
    chunks = [list(range(i, min(i + chunk, n))) for i in range(0, n, chunk)]
    results: list[Any] = []
    done = 0
    if progress:
        progress(0, n)
    ex = ThreadPoolExecutor(max_workers=_workers())
    try:
        for part, idx in zip(ex.map(fn, chunks), chunks, strict=True):
            results.extend(part)
            done += len(idx)
            if progress:
                progress(done, n)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return results


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# FER2013
# --------------------------------------------------------------------------------------------


def prepare_fer2013(
    src: Path | str,
    *,
    out: Path | str | None = None,
    force: bool = False,
    skip_bad: bool = False,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """Prepare FER2013 from the CSV, the image folders, or a zip of either."""
    t0 = time.perf_counter()
    path, tree = _open_src(src, ACCEPTED_FER2013, "FER2013")
    target = _resolve_out("fer2013", out, force, path)
    skips = _Skips(skip_bad)
    notes: list[str] = []
    try:
        source_info: dict[str, Any] = {"path": str(path.resolve())}
        if tree is None:
            data = _read_file(path)
            source_info.update(format="fer2013-csv", sha256=_sha256_bytes(data))
            cols = _parse_fer_csv(data, str(path), path.name, skips, progress)
        else:
            kind, root = _detect_fer_layout(tree)
            if kind == "csv":
                try:
                    data = tree.read(root)
                except BadImage as exc:
                    raise FerError(f"{tree.where(root)}: {exc}") from None
                fmt = "fer2013-csv" + ("-zip" if tree.kind == "zip" else "")
                source_info.update(format=fmt, member=root)
                if tree.kind != "zip":
                    source_info["sha256"] = _sha256_bytes(data)
                cols = _parse_fer_csv(data, tree.where(root), Path(root).name, skips, progress)
            else:
                fmt = "fer2013-folders" + ("-zip" if tree.kind == "zip" else "")
                source_info.update(format=fmt, root=root)
                cols = _read_fer_folders(tree, root, skips, notes, progress)
            if tree.kind == "zip":
                source_info["sha256"] = sha256_file(path)
    finally:
        if tree is not None:
            tree.close()
    images, labels, split, source, reasons = cols
    if labels.shape[0] == 0:
        raise FerError(f"empty dataset: no FER2013 images found in {path}")
    order = _fer_order(split, source)
    images, labels, split, source = images[order], labels[order], split[order], source[order]
    reasons = [reasons[i] for i in order]
    manifest_extra = {
        "source": source_info,
        "splits": [s for s in FER_SPLIT_ORDER if s in set(split.tolist())],
        "duplicates": find_duplicates(images, split, labels, source),
        "converted": _converted_dict(reasons),
        "skipped": skips.as_dict(),
        "canonical_check": _fer_canonical(split, labels),
        "notes": notes,
        "options": {"skip_bad": skip_bad},
    }
    manifest = write_prepared(
        target, name="fer2013", classes=FER2013_CLASSES, images=images, labels=labels,
        split=split, source=source, force=force, manifest_extra=manifest_extra,
    )
    return PrepareResult(out=target, manifest=manifest, seconds=time.perf_counter() - t0)


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_MEMBER_BYTES:
            raise FerError(f"{path}: file too large ({size} bytes)")
        return path.read_bytes()
    except OSError as exc:
        raise FerError(f"cannot read {path}: {exc.strerror}") from None


def _fer_order(split: np.ndarray, source: np.ndarray) -> np.ndarray:
    rank = {s: i for i, s in enumerate(FER_SPLIT_ORDER)}
    keys = [(rank.get(str(s), 99), i) for i, s in enumerate(split.tolist())]
    # Stable by split, keeping the reader's (sorted) order within a split.
    return np.array([i for _, i in sorted(keys)], dtype=np.int64)


def _detect_fer_layout(tree: _Tree) -> tuple[str, str]:
    """('folders', root prefix) or ('csv', member/file rel path)."""

    def has_split_dirs(prefix: str) -> bool:
        dirs, _ = tree.children(prefix)
        low = {d.lower(): d for d in dirs}
        return "train" in low and "test" in low

    def csv_in(prefix: str) -> str | None:
        _, files = tree.children(prefix)
        csvs = [f for f in files if f.lower() == "fer2013.csv"] or (
            [f for f in files if f.lower().endswith(".csv")] if tree.kind == "zip" else []
        )
        return prefix + csvs[0] if len(csvs) == 1 else None

    candidates = [""]
    dirs, _ = tree.children("")
    if len(dirs) == 1:
        candidates.append(dirs[0] + "/")
    for prefix in candidates:
        if has_split_dirs(prefix):
            return "folders", prefix
        c = csv_in(prefix)
        if c is not None:
            return "csv", c
    raise _no_layout(tree.where(""), "FER2013", ACCEPTED_FER2013)


def _read_fer_folders(
    tree: _Tree, root: str, skips: _Skips, notes: list[str], progress: ProgressFn | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    class_index = {c: i for i, c in enumerate(FER2013_CLASSES)}
    dirs, _ = tree.children(root)
    split_dirs = {d.lower(): d for d in dirs}
    items: list[tuple[str, int, str]] = []  # (full rel path, label, split)
    unprefixed_test = 0
    for folder_split in ("train", "test"):
        sd = root + split_dirs[folder_split] + "/"
        cdirs, loose = tree.children(sd)
        for f in loose:
            skips.count("outside a class folder", tree.where(sd + f))
        for cd in cdirs:
            label = class_index.get(cd.lower())
            if label is None:
                raise FerError(
                    f"{tree.where(sd + cd)}: unknown class folder {cd!r}; allowed: "
                    + ", ".join(sorted(class_index))
                )
            for rel in tree.walk(sd + cd + "/"):
                base = rel.rsplit("/", 1)[-1]
                if os.path.splitext(base)[1].lower() not in IMAGE_EXTS:
                    skips.count("not an image file", tree.where(rel))
                    continue
                split = next((s for p, s in FER_PREFIXES.items() if base.startswith(p)), None)
                if split is None:
                    split = "train" if folder_split == "train" else "test"
                    if folder_split == "test":
                        unprefixed_test += 1
                items.append((rel, label, split))
    if unprefixed_test:
        notes.append(
            f"{unprefixed_test} test images have no PublicTest_/PrivateTest_ file-name prefix: "
            "they form one split 'test'; the PublicTest/PrivateTest separation is unavailable"
        )
    n = len(items)
    if n == 0:
        raise FerError(f"empty dataset: no FER2013 images found in {tree.where(root)}")
    images = np.zeros((n, FER_SIZE, FER_SIZE), dtype=np.uint8)

    def work(idx: list[int]) -> list[Any]:
        res: list[Any] = []
        for i in idx:
            rel = items[i][0]
            try:
                img, reasons = load_face(tree.read(rel), FER_SIZE)
            except BadImage as exc:
                res.append(exc)
                continue
            images[i] = img
            res.append(reasons)
        return res

    results = _run_chunks(work, n, progress)
    keep: list[int] = []
    reasons_out: list[tuple[str, ...]] = []
    for i, r in enumerate(results):
        if isinstance(r, BadImage):
            skips.bad(tree.where(items[i][0]), str(r), _bad_reason(str(r)))
            continue
        keep.append(i)
        reasons_out.append(r)
    k = np.array(keep, dtype=np.int64)
    rel_root = len(root)
    return (
        images[k] if len(keep) < n else images,
        np.array([items[i][1] for i in keep], dtype=np.int64),
        np.array([items[i][2] for i in keep], dtype=str),
        np.array([items[i][0][rel_root:] for i in keep], dtype=str),
        reasons_out,
    )


def _bad_reason(problem: str) -> str:
    if problem.startswith("empty file"):
        return "empty image file"
    if "too large" in problem:
        return "image too large"
    return "corrupt image"


def _parse_fer_csv(
    data: bytes, where: str, label: str, skips: _Skips, progress: ProgressFn | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """Parse the challenge CSV; `where` names the file in errors, `label` in source ids.

    Rows are split with a few bytes operations each; the pixel fields are validated and
    parsed per chunk of 4096 rows with numpy (no per-value Python). Only a chunk that fails
    validation is re-checked row by row to name the culprit line.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    header = lines[0].strip().decode("utf-8", "replace")
    if header != FER_CSV_HEADER:
        shown = header if len(header) <= 60 else header[:57] + "..."
        raise FerError(f"{where}: line 1: header is {shown!r}, expected {FER_CSV_HEADER!r}")
    emotions = {str(i).encode(): i for i in range(len(FER2013_CLASSES))}
    usages = {k.encode(): v for k, v in FER_USAGE_SPLITS.items()}
    total = max(len(lines) - 1, 1)
    step = 4096
    images_parts: list[np.ndarray] = []
    rows: list[tuple[int, int, str]] = []  # (line number, label, split) of parsed rows
    pend_rows: list[tuple[int, int, str]] = []
    pend_pix: list[bytes] = []

    def flush() -> None:
        if not pend_rows:
            return
        imgs, ok = _parse_pixel_chunk(pend_pix, pend_rows, where, skips)
        images_parts.append(imgs)
        rows.extend(r for r, good in zip(pend_rows, ok, strict=True) if good)
        pend_rows.clear()
        pend_pix.clear()

    if progress:
        progress(0, total)
    for ln, line in enumerate(lines[1:], start=2):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or not line.strip():
            continue
        i, j = line.find(b","), line.rfind(b",")
        if i < 0 or i == j:
            n_fields = line.count(b",") + 1
            skips.bad(f"{where}: line {ln}",
                      f"expected 3 fields (emotion,pixels,Usage), got {n_fields}", "malformed row")
            continue
        emo = emotions.get(line[:i].strip().strip(b'"'))
        if emo is None:
            val = line[:i].strip().decode("utf-8", "replace")[:20]
            skips.bad(f"{where}: line {ln}", f"emotion {val!r} is not an integer 0-6",
                      "emotion out of range")
            continue
        usage_raw = line[j + 1:].strip().strip(b'"')
        split = usages.get(usage_raw)
        if split is None:
            val = usage_raw.decode("utf-8", "replace")[:30]
            skips.bad(
                f"{where}: line {ln}",
                f"unknown Usage {val!r} (expected Training, PublicTest or PrivateTest)",
                "unknown Usage",
            )
            continue
        pend_rows.append((ln, emo, split))
        pend_pix.append(line[i + 1:j].strip().strip(b'"'))
        if len(pend_rows) == step:
            flush()
            if progress:
                progress(ln - 1, total)
    flush()
    if progress:
        progress(total, total)
    images = (np.concatenate(images_parts) if images_parts
              else np.zeros((0, FER_SIZE, FER_SIZE), dtype=np.uint8))
    return (
        images,
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=str),
        np.array([f"{label}:{r[0]}" for r in rows], dtype=str),
        [()] * len(rows),
    )


_PIXEL_CHARS = b"0123456789 \n"


def _parse_pixel_chunk(
    pix: list[bytes], rows: list[tuple[int, int, str]], where: str, skips: _Skips,
) -> tuple[np.ndarray, list[bool]]:
    """Parse pixel fields (one per row) to uint8 images; returns (images of good rows, ok)."""
    n = len(pix)
    joined = b"\n".join(pix)
    ok = [True] * n
    valid = not joined.translate(None, _PIXEL_CHARS) and b"  " not in joined and all(pix)
    if valid:
        buf = np.frombuffer(joined, dtype=np.uint8)
        starts = np.concatenate(([0], np.flatnonzero(buf == 10) + 1))
        per_row = np.add.reduceat((buf == 32).view(np.uint8), starts, dtype=np.int64)
        valid = per_row.shape[0] == n and bool(np.all(per_row == FER_PIXELS - 1))
    if not valid:  # find and report (or skip) the bad rows one by one
        for k, p in enumerate(pix):
            if not (p.count(b" ") == FER_PIXELS - 1 and b"  " not in p
                    and not p.translate(None, b"0123456789 ") and p):
                ok[k] = False
                skips.bad(f"{where}: line {rows[k][0]}", _pixel_problem(p), "bad pixels")
        pix = [p for p, good in zip(pix, ok, strict=True) if good]
        joined = b"\n".join(pix)
    m = len(pix)
    if m == 0:
        return np.zeros((0, FER_SIZE, FER_SIZE), dtype=np.uint8), ok
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        vals = np.fromstring(joined, dtype=np.int64, sep=" ")
    if vals.size != m * FER_PIXELS:  # defensive: the rows were validated above
        raise FerError(f"{where}: could not parse the pixel values near line {rows[0][0]}")
    vals = vals.reshape(m, FER_PIXELS)
    good_idx = [k for k in range(n) if ok[k]]
    over = np.flatnonzero(vals.max(axis=1) > 255)
    keep = np.ones(m, dtype=bool)
    for r in over:
        bad = int(vals[r][vals[r] > 255][0])
        k = good_idx[r]
        ok[k] = False
        keep[r] = False
        skips.bad(f"{where}: line {rows[k][0]}", f"pixel value {bad} is outside 0-255", "bad pixels")
    return vals[keep].astype(np.uint8).reshape(-1, FER_SIZE, FER_SIZE), ok


def _pixel_problem(p: bytes) -> str:
    toks = p.split()
    for t in toks:
        if not t.isdigit():
            return f"non-numeric pixel value {t.decode('utf-8', 'replace')[:20]!r}"
    return f"has {len(toks)} pixel values, expected {FER_PIXELS}"


def _fer_canonical(split: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    diffs: list[str] = []
    present = set(split.tolist())
    expected = dict(FER2013_CANONICAL)
    if "test" in present:  # no PublicTest/PrivateTest separation: compare the union
        expected = {
            "train": FER2013_CANONICAL["train"],
            "test": {c: FER2013_CANONICAL["public_test"][c] + FER2013_CANONICAL["private_test"][c]
                     for c in FER2013_CLASSES},
        }
    for s in sorted(present - set(expected)):
        diffs.append(f"unexpected split {s}")
    for s, per_class in expected.items():
        m = split == s
        n = int(m.sum())
        exp_total = sum(per_class.values())
        if n != exp_total:
            diffs.append(f"{s}: {n} images, canonical {exp_total}")
        for ci, c in enumerate(FER2013_CLASSES):
            got = int(np.sum(labels[m] == ci))
            if got != per_class[c]:
                diffs.append(f"{s}/{c}: {got}, canonical {per_class[c]}")
    return {
        "reference": "FER2013 (ICML 2013 challenge): Training 28709, PublicTest 3589, PrivateTest 3589",
        "expected": {s: sum(v.values()) for s, v in expected.items()},
        "matches": not diffs,
        "differences": diffs,
    }


# --------------------------------------------------------------------------------------------
# CK+
# --------------------------------------------------------------------------------------------


CK48_NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)")


@dataclass
class _CkItems:
    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    subject: list[str] = field(default_factory=list)
    sequence: list[str] = field(default_factory=list)
    reasons: list[tuple[str, ...]] = field(default_factory=list)


def prepare_ckplus(
    src: Path | str,
    *,
    out: Path | str | None = None,
    force: bool = False,
    peak_frames: int = 3,
    neutral_first_frame: bool = False,
    size: int = 48,
    folds: int = 10,
    seed: int = 0,
    skip_bad: bool = False,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """Prepare CK+ from the raw release, the CK+48 folders, or a zip of either."""
    t0 = time.perf_counter()
    if peak_frames < 1:
        raise FerError(f"--peak-frames must be at least 1, got {peak_frames}")
    if not 8 <= size <= 1024:
        raise FerError(f"--size must be between 8 and 1024, got {size}")
    if folds < 2:
        raise FerError(f"--folds must be at least 2, got {folds}")
    path, tree = _open_src(src, ACCEPTED_CKPLUS, "CK+")
    if tree is None:
        raise FerError(f"{path}: not a known CK+ layout; accepted: " + "; ".join(ACCEPTED_CKPLUS))
    target = _resolve_out("ck+", out, force, path)
    skips = _Skips(skip_bad)
    notes: list[str] = []
    classes = list(CKPLUS_CLASSES)
    try:
        source_info: dict[str, Any] = {"path": str(path.resolve())}
        kind, roots = _detect_ck_layout(tree)
        if kind == "raw":
            if neutral_first_frame:
                classes.append("neutral")
            items, n_seq_labelled = _read_ck_raw(
                tree, roots[0], roots[1], skips, peak_frames, neutral_first_frame, size, progress
            )
            fmt = "ckplus-raw"
            source_info.update(images_root=roots[0], emotion_root=roots[1])
        else:
            if neutral_first_frame:
                notes.append("--neutral-first-frame ignored: CK+48 holds no neutral frames")
            items = _read_ck48(tree, roots[0], skips, size, progress)
            n_seq_labelled = None
            fmt = "ckplus48"
            source_info.update(root=roots[0])
        source_info["format"] = fmt + ("-zip" if tree.kind == "zip" else "")
        if tree.kind == "zip":
            source_info["sha256"] = sha256_file(path)
    finally:
        tree.close()
    n = len(items.labels)
    if n == 0:
        raise FerError(f"empty dataset: no CK+ images found in {path}")
    order = sorted(range(n), key=lambda i: (items.subject[i], items.sequence[i], items.source[i]))
    images = np.stack([items.images[i] for i in order]).astype(np.uint8)
    labels = np.array([items.labels[i] for i in order], dtype=np.int64)
    source = np.array([items.source[i] for i in order], dtype=str)
    subject = np.array([items.subject[i] for i in order], dtype=str)
    sequence = np.array([items.sequence[i] for i in order], dtype=str)
    reasons = [items.reasons[i] for i in order]
    split = np.full(n, "all", dtype="<U3")
    fold, used_folds = _assign_folds(labels, subject, folds, seed)
    if used_folds != folds:
        notes.append(
            f"only {len(set(subject.tolist()))} subjects: using {used_folds} folds instead of {folds}"
        )
    manifest_extra = {
        "source": source_info,
        "splits": ["all"],
        "sequences_per_class": _seq_per_class(labels, sequence, classes),
        "duplicates": find_duplicates(images, split, labels, source),
        "converted": _converted_dict(reasons),
        "skipped": skips.as_dict(),
        "canonical_check": _ck_canonical(
            fmt, labels, subject, sequence, classes, peak_frames, neutral_first_frame
        ),
        "fold_seed": seed,
        "notes": notes,
        "options": {
            "peak_frames": peak_frames, "neutral_first_frame": neutral_first_frame,
            "size": size, "folds": folds, "seed": seed, "skip_bad": skip_bad,
        },
    }
    if n_seq_labelled is not None:
        manifest_extra["labelled_sequences_found"] = n_seq_labelled
    manifest = write_prepared(
        target, name="ck+", classes=classes, images=images, labels=labels, split=split,
        source=source, subject=subject, sequence=sequence, fold=fold, force=force,
        manifest_extra=manifest_extra,
    )
    return PrepareResult(out=target, manifest=manifest, seconds=time.perf_counter() - t0)


def _seq_per_class(labels: np.ndarray, sequence: np.ndarray, classes: list[str]) -> dict[str, int]:
    return {
        c: len({str(s) for s, lab in zip(sequence, labels, strict=True) if int(lab) == ci})
        for ci, c in enumerate(classes)
    }


def _assign_folds(labels: np.ndarray, subject: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, int]:
    """Subject-independent, label-stratified folds (StratifiedGroupKFold, shuffled by seed)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_subjects = len(set(subject.tolist()))
    k = min(folds, n_subjects)
    fold = np.zeros(labels.shape[0], dtype=np.int16)
    if k < 2:
        return fold, 1
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has fewer than n_splits members"
        for fi, (_, test_idx) in enumerate(sgkf.split(np.zeros(labels.shape[0]), labels, groups=subject)):
            fold[test_idx] = fi
    return fold, k


def _ck_canonical(
    fmt: str, labels: np.ndarray, subject: np.ndarray, sequence: np.ndarray, classes: list[str],
    peak_frames: int, neutral: bool,
) -> dict[str, Any]:
    per_seq = CKPLUS48_FRAMES_PER_SEQUENCE if fmt == "ckplus48" else peak_frames
    n_seq = sum(CKPLUS_CANONICAL_SEQUENCES.values())
    expected_classes = {c: v * per_seq for c, v in CKPLUS_CANONICAL_SEQUENCES.items()}
    if "neutral" in classes:
        expected_classes["neutral"] = n_seq
    expected = {
        "images": sum(expected_classes.values()),
        "subjects": CKPLUS_CANONICAL_SUBJECTS,
        "sequences": n_seq,
    }
    got = {
        "images": int(labels.shape[0]),
        "subjects": len(set(subject.tolist())),
        "sequences": len(set(sequence.tolist())),
    }
    diffs = [f"{k}: {got[k]}, canonical {expected[k]}" for k in expected if got[k] != expected[k]]
    for ci, c in enumerate(classes):
        g = int(np.sum(labels == ci))
        if g != expected_classes.get(c, 0):
            diffs.append(f"{c}: {g} images, canonical {expected_classes.get(c, 0)}")
    ref = (
        "CK+48: 981 images (last 3 frames of 327 sequences), 118 subjects"
        if fmt == "ckplus48"
        else f"CK+: 327 emotion-labelled sequences, 118 subjects, {per_seq} peak frames each"
    )
    return {"reference": ref, "expected": expected, "matches": not diffs, "differences": diffs}


def _detect_ck_layout(tree: _Tree) -> tuple[str, tuple[str, ...]]:
    """('raw', (images_root, emotion_root)) or ('ck48', (root,)); roots end with '/' or are ''."""
    img_root: str | None = None
    emo_root: str | None = None
    frontier = [""]
    for _depth in range(4):  # breadth-first, a few levels: CK+/, Emotion_labels/Emotion/, ...
        nxt: list[str] = []
        for prefix in frontier:
            dirs, _ = tree.children(prefix)
            for d in dirs:
                low = d.lower()
                if low == "cohn-kanade-images" and img_root is None:
                    img_root = prefix + d + "/"
                elif low == "emotion" and emo_root is None:
                    emo_root = prefix + d + "/"
                elif len(dirs) <= 8 and not re.match(r"^s\d+$", low):
                    nxt.append(prefix + d + "/")
        frontier = nxt
        if img_root and emo_root:
            return "raw", (img_root, emo_root)
    if img_root and not emo_root:
        raise FerError(
            f"{tree.where(img_root)}: found the CK+ frames but no Emotion/ folder with the "
            "*_emotion.txt labels next to it"
        )
    known = set(CKPLUS_CLASSES)
    candidates = [""]
    dirs, _ = tree.children("")
    if len(dirs) == 1:
        candidates.append(dirs[0] + "/")
    for prefix in candidates:
        cdirs, _ = tree.children(prefix)
        if any(d.lower() in known for d in cdirs):
            for d in cdirs:
                if d.lower() not in known:
                    raise FerError(
                        f"{tree.where(prefix + d)}: unknown class folder {d!r}; allowed: "
                        + ", ".join(CKPLUS_CLASSES)
                    )
            return "ck48", (prefix,)
    raise _no_layout(tree.where(""), "CK+", ACCEPTED_CKPLUS)


def _read_ck48(
    tree: _Tree, root: str, skips: _Skips, size: int, progress: ProgressFn | None,
) -> _CkItems:
    class_index = {c: i for i, c in enumerate(CKPLUS_CLASSES)}
    cdirs, loose = tree.children(root)
    for f in loose:
        skips.count("outside a class folder", tree.where(root + f))
    todo: list[tuple[str, int, str, str]] = []
    for cd in cdirs:
        label = class_index[cd.lower()]
        for rel in tree.walk(root + cd + "/"):
            base = rel.rsplit("/", 1)[-1]
            if os.path.splitext(base)[1].lower() not in IMAGE_EXTS:
                skips.count("not an image file", tree.where(rel))
                continue
            m = CK48_NAME.match(base)
            if m is None:
                skips.bad(
                    tree.where(rel),
                    "cannot read the subject id from the file name (expected S###_###_########.png)",
                    "unrecognised file name",
                )
                continue
            todo.append((rel, label, m.group(1), f"{m.group(1)}_{m.group(2)}"))

    def work(idx: list[int]) -> list[Any]:
        res: list[Any] = []
        for i in idx:
            try:
                res.append(load_face(tree.read(todo[i][0]), size))
            except BadImage as exc:
                res.append(exc)
        return res

    items = _CkItems()
    for (rel, label, subj, seq), r in zip(todo, _run_chunks(work, len(todo), progress, 64), strict=True):
        if isinstance(r, BadImage):
            skips.bad(tree.where(rel), str(r), _bad_reason(str(r)))
            continue
        img, reasons = r
        items.images.append(img)
        items.labels.append(label)
        items.source.append(rel[len(root):])
        items.subject.append(subj)
        items.sequence.append(seq)
        items.reasons.append(reasons)
    return items


def parse_ck_emotion(text: bytes) -> int:
    """The CK+ emotion code (1..7) from an *_emotion.txt file's bytes; ValueError if bad."""
    try:
        s = text.decode("ascii").strip()
        v = float(s)
    except (UnicodeDecodeError, ValueError):
        shown = text[:30].decode("utf-8", "replace").strip()
        raise ValueError(f"unparsable emotion code {shown!r}") from None
    if not v.is_integer() or not 1 <= int(v) <= len(CKPLUS_CLASSES):
        raise ValueError(f"emotion code {s} is out of range (expected 1-7)")
    return int(v)


@dataclass(frozen=True)
class _Seq:
    subject: str
    sequence: str
    frames: tuple[str, ...]  # full rel paths, sorted by frame number
    label: int  # index into classes


def _read_ck_raw(
    tree: _Tree, img_root: str, emo_root: str, skips: _Skips, peak_frames: int,
    neutral: bool, size: int, progress: ProgressFn | None,
) -> tuple[_CkItems, int]:
    seqs: list[_Seq] = []
    sdirs, _ = tree.children(img_root)
    for subj in sdirs:
        qdirs, _ = tree.children(img_root + subj + "/")
        for q in qdirs:
            seq_id = f"{subj}_{q}"
            _, files = tree.children(f"{img_root}{subj}/{q}/")
            frames = tuple(
                f"{img_root}{subj}/{q}/{f}" for f in files
                if os.path.splitext(f)[1].lower() in IMAGE_EXTS
            )
            _, efiles = tree.children(f"{emo_root}{subj}/{q}/")
            efiles = [f for f in efiles if f.lower().endswith("_emotion.txt")]
            if not efiles:
                skips.count("sequence without emotion label", seq_id)
                continue
            erel = f"{emo_root}{subj}/{q}/{efiles[-1]}"
            try:
                code = parse_ck_emotion(tree.read(erel))
            except (ValueError, BadImage) as exc:
                skips.bad(tree.where(erel), str(exc), "bad emotion file")
                continue
            if not frames:
                skips.count("sequence without frames", seq_id)
                continue
            seqs.append(_Seq(subj, seq_id, frames, code - 1))
    n_labelled = len(seqs)
    neutral_label = len(CKPLUS_CLASSES)
    local = threading.local()

    def detector() -> cv2.CascadeClassifier:
        det = getattr(local, "det", None)
        if det is None:
            det = _haar_detector()
            local.det = det
        return det

    def work(idx: list[int]) -> list[Any]:
        return [_process_sequence(tree, seqs[i], peak_frames, neutral, size, detector()) for i in idx]

    _haar_detector()  # fail fast (one line) if this OpenCV lacks the Haar cascade
    items = _CkItems()
    for s, res in zip(seqs, _run_chunks(work, len(seqs), progress, 1), strict=True):
        if isinstance(res, tuple) and res and res[0] == "bad":
            _, rel, problem = res
            skips.bad(tree.where(rel), problem, _bad_reason(problem))
            continue
        if res is None:
            skips.count("sequence without a detectable face", s.sequence)
            continue
        for rel, img, reasons, is_neutral in res:
            items.images.append(img)
            items.labels.append(neutral_label if is_neutral else s.label)
            items.source.append(rel)
            items.subject.append(s.subject)
            items.sequence.append(s.sequence)
            items.reasons.append(reasons)
    return items, n_labelled


_HAAR_LOCK = threading.Lock()


def _haar_detector() -> cv2.CascadeClassifier:
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise FerError(
            f"this OpenCV ({cv2.__version__}) has no Haar cascade face detector; "
            "install opencv-python-headless<5"
        )
    path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
    with _HAAR_LOCK:
        det = cv2.CascadeClassifier(path)
    if det.empty():
        raise FerError(f"cannot load OpenCV's Haar cascade {path}; install opencv-python-headless<5")
    return det


def detect_faces(
    grey: np.ndarray,
    detector: cv2.CascadeClassifier | None = None,
    *,
    max_side: int = DETECT_MAX_SIDE,
    min_px: int = 24,
    min_fraction: float = 1 / 8,
) -> list[tuple[int, int, int, int]]:
    """Every frontal face (x, y, w, h) in a greyscale image (OpenCV Haar cascade).

    The image is downscaled so its long side is at most `max_side` (detection cost grows
    with area), faces smaller than max(min_px, min_fraction × short side) at that scale are
    ignored, and boxes are scaled back and clipped to the image. Shared by `fer prepare ck+`
    (largest face per frame) and `fer predict` (every face in a photo).
    """
    det = detector or _haar_detector()
    h, w = grey.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = grey if scale >= 1 else cv2.resize(
        grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    side = min(small.shape[:2])
    ms = max(min_px, round(min_fraction * side))
    if side < ms:
        return []
    boxes = []
    for x, y, fw, fh in (tuple(int(v) for v in f) for f in det.detectMultiScale(
            small, scaleFactor=1.1, minNeighbors=5, minSize=(ms, ms))):
        bx, by = max(0, round(x / scale)), max(0, round(y / scale))
        boxes.append((bx, by, min(round(fw / scale), w - bx), min(round(fh / scale), h - by)))
    return boxes


def detect_face(grey: np.ndarray, detector: cv2.CascadeClassifier | None = None) -> tuple[int, int, int, int] | None:
    """Largest frontal face (x, y, w, h) in a greyscale image, or None."""
    faces = detect_faces(grey, detector)
    return max(faces, key=lambda b: b[2] * b[3]) if faces else None


def crop_face(grey: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    x, y, w, h = box
    H, W = grey.shape[:2]
    x0, y0 = max(0, min(x, W - 1)), max(0, min(y, H - 1))
    x1, y1 = max(x0 + 1, min(x + w, W)), max(y0 + 1, min(y + h, H))
    return cv2.resize(grey[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def _process_sequence(
    tree: _Tree, s: _Seq, peak_frames: int, neutral: bool, size: int, det: cv2.CascadeClassifier,
) -> Any:
    """[(rel, crop, reasons, is_neutral)], None when no face in the sequence, or ('bad', rel, msg)."""
    chosen = list(s.frames[-peak_frames:])
    wanted: list[tuple[str, bool]] = [(f, False) for f in chosen]
    if neutral and s.frames[0] not in chosen:
        wanted.insert(0, (s.frames[0], True))
    decoded: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    boxes: dict[str, tuple[int, int, int, int] | None] = {}
    for rel, _ in wanted:
        try:
            decoded[rel] = decode_grey(tree.read(rel))
        except BadImage as exc:
            return ("bad", rel, str(exc))
        boxes[rel] = detect_face(decoded[rel][0], det)
    if not any(boxes.values()):
        # Try a few other frames of the sequence before giving up on it.
        others = [f for f in s.frames if f not in decoded]
        for rel in others[:: max(1, len(others) // 3)][:3]:
            try:
                g, _ = decode_grey(tree.read(rel))
            except BadImage:
                continue
            b = detect_face(g, det)
            if b is not None:
                boxes[rel] = b
                break
        if not any(boxes.values()):
            return None
    pos = {f: i for i, f in enumerate(s.frames)}
    found = [(pos[f], b) for f, b in boxes.items() if b is not None]
    out = []
    for rel, is_neutral in wanted:
        box = boxes[rel]
        if box is None:  # reuse the box from the nearest frame of the same sequence
            box = min(found, key=lambda pb: abs(pb[0] - pos[rel]))[1]
        grey, reasons = decoded[rel]
        out.append((rel, crop_face(grey, box, size), reasons, is_neutral))
    return out
