"""`fer prepare ck+`: the raw CK+ release, the CK+48 face crops, or a zip of either.

Raw CK+: each emotion-labelled sequence gives its last --peak-frames frames (and, with
--neutral-first-frame, its first as 'neutral'); the face is found with the shared Haar
detector and cropped with fercli.vision.faces.crop_face (no margin). CK+48: the crops are read as
they are. Subject ids and sequences are kept, and subject-independent, label-stratified
folds are assigned.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass, field
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
    resolve_out,
    run_chunks,
)
from fercli.data.ingest.trees import IMAGE_EXTS, Tree, no_layout, open_src
from fercli.data.prepared import CKPLUS_CLASSES, write_prepared
from fercli.errors import FerError
from fercli.files import sha256_file
from fercli.vision.faces import Box, crop_face, detect_face, haar_detector
from fercli.vision.images import BadImage, decode_grey

#: Canonical CK+ emotion-labelled sequences per class (327 sequences, 118 subjects).
CKPLUS_CANONICAL_SEQUENCES: dict[str, int] = {
    "anger": 45, "contempt": 18, "disgust": 59, "fear": 25, "happy": 69, "sadness": 28,
    "surprise": 83,
}
CKPLUS_CANONICAL_SUBJECTS = 118
CKPLUS48_FRAMES_PER_SEQUENCE = 3  # CK+48 holds the last three frames of each sequence

ACCEPTED_CKPLUS = (
    "the raw CK+ release (cohn-kanade-images/S###/###/*.png and Emotion/S###/###/*_emotion.txt)",
    "the CK+48 layout (<class>/S###_###_########.png with classes " + ", ".join(CKPLUS_CLASSES) + ")",
    "a .zip of either",
)


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
    out: Path | str,
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
    _check_ck_options(peak_frames, size, folds)
    path, tree = open_src(src, ACCEPTED_CKPLUS, "CK+")
    if tree is None:
        raise FerError(f"{path}: not a known CK+ layout; accepted: " + "; ".join(ACCEPTED_CKPLUS))
    target = resolve_out(out, force, path)
    skips = Skips(skip_bad)
    notes: list[str] = []
    classes = list(CKPLUS_CLASSES)
    items, n_seq_labelled, fmt, source_info = _read_ck_source(
        path, tree, skips, classes, notes, peak_frames, neutral_first_frame, size, progress
    )
    n = len(items.labels)
    if n == 0:
        raise FerError(f"empty dataset: no CK+ images found in {path}")
    images, labels, source, subject, sequence, reasons = _ordered(items)
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
        "converted": converted_dict(reasons),
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


def _check_ck_options(peak_frames: int, size: int, folds: int) -> None:
    if peak_frames < 1:
        raise FerError(f"--peak-frames must be at least 1, got {peak_frames}")
    if not 8 <= size <= 1024:
        raise FerError(f"--size must be between 8 and 1024, got {size}")
    if folds < 2:
        raise FerError(f"--folds must be at least 2, got {folds}")


def _read_ck_source(
    path: Path, tree: Tree, skips: Skips, classes: list[str], notes: list[str], peak_frames: int,
    neutral_first_frame: bool, size: int, progress: ProgressFn | None,
) -> tuple[_CkItems, int | None, str, dict[str, Any]]:
    """Read whichever CK+ layout `tree` holds, then close it.

    Returns the items, the labelled sequences found (raw only, else None), the format name and
    the manifest's source record. Appends 'neutral' to `classes` and any caveat to `notes`.
    """
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
    return items, n_seq_labelled, fmt, source_info


def _ordered(
    items: _CkItems,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """The items as arrays sorted by (subject, sequence, source file): a stable on-disk order."""
    n = len(items.labels)
    order = sorted(range(n), key=lambda i: (items.subject[i], items.sequence[i], items.source[i]))
    images = np.stack([items.images[i] for i in order]).astype(np.uint8)  # (N, size, size)
    labels = np.array([items.labels[i] for i in order], dtype=np.int64)
    source = np.array([items.source[i] for i in order], dtype=str)
    subject = np.array([items.subject[i] for i in order], dtype=str)
    sequence = np.array([items.sequence[i] for i in order], dtype=str)
    reasons = [items.reasons[i] for i in order]
    return images, labels, source, subject, sequence, reasons


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


def _detect_ck_layout(tree: Tree) -> tuple[str, tuple[str, ...]]:
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
    raise no_layout(tree.where(""), "CK+", ACCEPTED_CKPLUS)


def _read_ck48(
    tree: Tree, root: str, skips: Skips, size: int, progress: ProgressFn | None,
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
    for (rel, label, subj, seq), r in zip(todo, run_chunks(work, len(todo), progress, 64), strict=True):
        if isinstance(r, BadImage):
            skips.bad(tree.where(rel), str(r), bad_reason(str(r)))
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
    tree: Tree, img_root: str, emo_root: str, skips: Skips, peak_frames: int,
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

    def work(idx: list[int]) -> list[Any]:  # detect_face uses this worker thread's own detector
        return [_process_sequence(tree, seqs[i], peak_frames, neutral, size) for i in idx]

    haar_detector()  # fail fast (one line) if this OpenCV lacks the Haar cascade
    items = _CkItems()
    for s, res in zip(seqs, run_chunks(work, len(seqs), progress, 1), strict=True):
        if isinstance(res, tuple) and res and res[0] == "bad":
            _, rel, problem = res
            skips.bad(tree.where(rel), problem, bad_reason(problem))
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


def _process_sequence(tree: Tree, s: _Seq, peak_frames: int, neutral: bool, size: int) -> Any:
    """[(rel, crop, reasons, is_neutral)], None when no face in the sequence, or ('bad', rel, msg)."""
    chosen = list(s.frames[-peak_frames:])
    wanted: list[tuple[str, bool]] = [(f, False) for f in chosen]
    if neutral and s.frames[0] not in chosen:
        wanted.insert(0, (s.frames[0], True))
    decoded: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    boxes: dict[str, Box | None] = {}
    for rel, _ in wanted:
        try:
            decoded[rel] = decode_grey(tree.read(rel))
        except BadImage as exc:
            return ("bad", rel, str(exc))
        boxes[rel] = detect_face(decoded[rel][0])
    if not any(boxes.values()):
        # Try a few other frames of the sequence before giving up on it.
        others = [f for f in s.frames if f not in decoded]
        for rel in others[:: max(1, len(others) // 3)][:3]:
            try:
                g, _ = decode_grey(tree.read(rel))
            except BadImage:
                continue
            b = detect_face(g)
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
        out.append((rel, crop_face(grey, box, size, margin=0.0), reasons, is_neutral))
    return out
