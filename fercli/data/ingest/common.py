"""What both dataset readers of `fer prepare` share: the result type, skip accounting,
duplicate finding, the output-path rules, the thread pool and the whole-image face loader.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fercli.errors import FerError
from fercli.vision.faces import FACE_SIZE, resize_face
from fercli.vision.images import BadImage, decode_grey, read_file_bytes

ProgressFn = Callable[[int, int], None]


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


class Skips:
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


def converted_dict(reason_lists: Iterable[tuple[str, ...]]) -> dict[str, Any]:
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
    label_conflicts: groups whose copies carry different labels; also_in_train: per split
    other than train, its images whose pixels also appear in train; examples: source ids.
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
    in_train: dict[str, int] = {}
    for g in cross:
        if any(str(split[i]) == "train" for i in g):
            for i in g:
                if str(split[i]) != "train":
                    in_train[str(split[i])] = in_train.get(str(split[i]), 0) + 1
    return {
        "count": len(dups),
        "extra_copies": int(sum(len(g) - 1 for g in dups)),
        "images_in_groups": int(sum(len(g) for g in dups)),
        "cross_split": len(cross),
        "label_conflicts": len(conflicts),
        "also_in_train": dict(sorted(in_train.items())),
        "examples": examples,
    }


def resolve_out(out: Path | str, force: bool, src: Path) -> Path:
    target = Path(out)
    if target.exists() and not force:
        raise FerError(f"output {target} already exists (use --force to replace it)")
    if target.exists() and target.is_file():
        raise FerError(f"output {target} is a file; expected a directory")
    t, s = target.resolve(), src.resolve()
    if t == s or t in s.parents:
        raise FerError(f"output {target} would replace the input {src}; choose another --out")
    return target


def workers() -> int:
    return max(2, min(8, (os.cpu_count() or 2) + 2))


def run_chunks(
    fn: Callable[[list[int]], list[Any]], n: int, progress: ProgressFn | None, chunk: int = 256,
) -> list[Any]:
    """Run fn over index chunks in a thread pool; results in index order; progress in main."""
    chunks = [list(range(i, min(i + chunk, n))) for i in range(0, n, chunk)]
    results: list[Any] = []
    done = 0
    if progress:
        progress(0, n)
    ex = ThreadPoolExecutor(max_workers=workers())
    try:
        for part, idx in zip(ex.map(fn, chunks), chunks, strict=True):
            results.extend(part)
            done += len(idx)
            if progress:
                progress(done, n)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return results


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path) -> bytes:
    """A whole input file (the FER2013 CSV); FerError if unreadable or over MAX_FILE_BYTES."""
    try:
        return read_file_bytes(path)
    except BadImage as exc:  # too large
        raise FerError(f"{path}: {exc}") from None
    except OSError as exc:
        raise FerError(f"cannot read {path}: {exc.strerror}") from None


def bad_reason(problem: str) -> str:
    if problem.startswith("empty file"):
        return "empty image file"
    if "too large" in problem:
        return "image too large"
    return "corrupt image"


def load_face(data: bytes, size: int = FACE_SIZE) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode to grey and resize to size x size (fercli.vision.faces.resize_face, as `fer predict
    --detector none` does); reasons include "resized"."""
    arr, reasons = decode_grey(data)
    if arr.shape != (size, size):
        arr = resize_face(arr, size)
        reasons = (*reasons, "resized")
    return arr, reasons
