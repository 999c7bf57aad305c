"""`fer prepare fer2013`: the challenge CSV, the image-folder layout, or a zip of either.

The CSV is parsed with a few bytes operations per row and numpy per chunk of rows; the
image folders are decoded in a thread pool with the shared decoder (fercli.vision.images). Usage
becomes the split (train, public_test, private_test; 'test' when file names lost it), the
counts are checked against the 2013 release, and exact duplicates are reported.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fercli.data.ingest.common import (
    PrepareResult,
    ProgressFn,
    Skips,
    bad_reason,
    converted_dict,
    find_duplicates,
    load_face,
    read_file,
    resolve_out,
    run_chunks,
    sha256_bytes,
)
from fercli.data.ingest.trees import IMAGE_EXTS, Tree, no_layout, open_src
from fercli.data.prepared import FER2013_CLASSES, write_prepared
from fercli.errors import FerError
from fercli.files import sha256_file
from fercli.vision.images import BadImage

FER_SIZE = 48
FER_PIXELS = FER_SIZE * FER_SIZE
FER_CSV_HEADER = "emotion,pixels,Usage"
FER_USAGE_SPLITS = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}
FER_SPLIT_ORDER = ("train", "public_test", "private_test", "test")
FER_PREFIXES = {"Training_": "train", "PublicTest_": "public_test", "PrivateTest_": "private_test"}

#: Canonical FER2013 counts per split (Usage) and class, from the 2013 challenge release.
FER2013_CANONICAL: dict[str, dict[str, int]] = {
    "train": {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "sad": 4830,
              "surprise": 3171, "neutral": 4965},
    "public_test": {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "sad": 653,
                    "surprise": 415, "neutral": 607},
    "private_test": {"angry": 491, "disgust": 55, "fear": 528, "happy": 879, "sad": 594,
                     "surprise": 416, "neutral": 626},
}

ACCEPTED_FER2013 = (
    "fer2013.csv (header emotion,pixels,Usage)",
    "a folder with train/<class>/ and test/<class>/ image folders (or its parent)",
    "a .zip of either",
)


def prepare_fer2013(
    src: Path | str,
    *,
    out: Path | str,
    force: bool = False,
    skip_bad: bool = False,
    progress: ProgressFn | None = None,
) -> PrepareResult:
    """Prepare FER2013 from the CSV, the image folders, or a zip of either."""
    t0 = time.perf_counter()
    path, tree = open_src(src, ACCEPTED_FER2013, "FER2013")
    target = resolve_out(out, force, path)
    skips = Skips(skip_bad)
    notes: list[str] = []
    try:
        source_info: dict[str, Any] = {"path": str(path.resolve())}
        if tree is None:
            data = read_file(path)
            source_info.update(format="fer2013-csv", sha256=sha256_bytes(data))
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
                    source_info["sha256"] = sha256_bytes(data)
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
        "converted": converted_dict(reasons),
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


def _fer_order(split: np.ndarray, source: np.ndarray) -> np.ndarray:
    rank = {s: i for i, s in enumerate(FER_SPLIT_ORDER)}
    keys = [(rank.get(str(s), 99), i) for i, s in enumerate(split.tolist())]
    # Stable by split, keeping the reader's (sorted) order within a split.
    return np.array([i for _, i in sorted(keys)], dtype=np.int64)


def _detect_fer_layout(tree: Tree) -> tuple[str, str]:
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
    raise no_layout(tree.where(""), "FER2013", ACCEPTED_FER2013)


def _read_fer_folders(
    tree: Tree, root: str, skips: Skips, notes: list[str], progress: ProgressFn | None,
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

    results = run_chunks(work, n, progress)
    keep: list[int] = []
    reasons_out: list[tuple[str, ...]] = []
    for i, r in enumerate(results):
        if isinstance(r, BadImage):
            skips.bad(tree.where(items[i][0]), str(r), bad_reason(str(r)))
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


def _parse_fer_csv(
    data: bytes, where: str, label: str, skips: Skips, progress: ProgressFn | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """Parse the challenge CSV; `where` names the file in errors, `label` in source ids.

    Rows are split with a few bytes operations each; the pixel fields are validated and
    parsed per chunk of 4096 rows with numpy (no per-value Python). Only a chunk that fails
    validation is re-checked row by row to name the culprit line.
    """
    lines = _csv_lines(data, where)
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
        row = _split_row(line, ln, where, skips)
        if row is None:
            continue
        pend_rows.append(row[:3])
        pend_pix.append(row[3])
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


def _csv_lines(data: bytes, where: str) -> list[bytes]:
    """The CSV's lines (BOM dropped), after checking that line 1 is the challenge header."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    header = lines[0].strip().decode("utf-8", "replace")
    if header != FER_CSV_HEADER:
        shown = header if len(header) <= 60 else header[:57] + "..."
        raise FerError(f"{where}: line 1: header is {shown!r}, expected {FER_CSV_HEADER!r}")
    return lines


_EMOTIONS = {str(i).encode(): i for i in range(len(FER2013_CLASSES))}
_USAGES = {k.encode(): v for k, v in FER_USAGE_SPLITS.items()}


def _split_row(line: bytes, ln: int, where: str, skips: Skips) -> tuple[int, int, str, bytes] | None:
    """(line number, label, split, pixel field) of one data line; None for a blank or bad one.

    A bad line goes to `skips` (an error naming line `ln` unless --skip-bad). The first and
    last comma delimit the fields, so the pixel field is never scanned here.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line or not line.strip():
        return None
    i, j = line.find(b","), line.rfind(b",")
    if i < 0 or i == j:
        n_fields = line.count(b",") + 1
        skips.bad(f"{where}: line {ln}",
                  f"expected 3 fields (emotion,pixels,Usage), got {n_fields}", "malformed row")
        return None
    emo = _EMOTIONS.get(line[:i].strip().strip(b'"'))
    if emo is None:
        val = line[:i].strip().decode("utf-8", "replace")[:20]
        skips.bad(f"{where}: line {ln}", f"emotion {val!r} is not an integer 0-6",
                  "emotion out of range")
        return None
    usage_raw = line[j + 1:].strip().strip(b'"')
    split = _USAGES.get(usage_raw)
    if split is None:
        val = usage_raw.decode("utf-8", "replace")[:30]
        skips.bad(
            f"{where}: line {ln}",
            f"unknown Usage {val!r} (expected Training, PublicTest or PrivateTest)",
            "unknown Usage",
        )
        return None
    return ln, emo, split, line[i + 1:j].strip().strip(b'"')


_PIXEL_CHARS = b"0123456789 \n"


def _parse_pixel_chunk(
    pix: list[bytes], rows: list[tuple[int, int, str]], where: str, skips: Skips,
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


