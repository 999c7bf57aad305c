"""Eye-line alignment, measured before it is built: does rotating each face so its eyes are
level, before `fer predict`'s crop, help? (prints JSON)

    PYTHONPATH=. python devtools/benchmarks/bench_align.py [--wild DIR] [--fer-test DIR]

Each image (wild-dev; FER2013 PublicTest faces upscaled 4x, as bench_framing.py does) goes
through YuNet with its landmarks (the largest box scoring >= 50). Unaligned: crop_face of that
box with PredictConfig.margin. Aligned: the image first rotated about the eyes' midpoint by the
eye line's angle (cv2.warpAffine, edges replicated), the box's centre rotated with it, then the
same crop. Both then get PredictConfig's intensity and TTA on the default classifier. Images
without a face count as wrong in both columns. Accuracy and mean per-class recall with
bootstrap 95 % intervals (bench_wild.metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "devtools" / "benchmarks"))

from bench_framing import UPSCALE, landmark_rows  # noqa: E402
from bench_wild import FER_TEST, WILD, load_fer, load_wild, metrics  # noqa: E402

import fercli.vision.faces as F  # noqa: E402
from fercli.infer.config import PredictConfig  # noqa: E402
from fercli.infer.recognizer import Recognizer  # noqa: E402


def crops(cnn, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    rows = landmark_rows(cnn, grey)
    rows = rows[rows[:, 0] >= F.YUNET_MIN_CONFIDENCE] if len(rows) else rows
    if len(rows) == 0:
        return None
    r = rows[np.argmax(rows[:, 3].astype(int) * rows[:, 4])]
    box = tuple(int(v) for v in r[1:5])
    eyes = r[5:9].astype(float).reshape(2, 2)
    angle = float(np.degrees(np.arctan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0])))
    plain = F.crop_face(grey, box, margin=PredictConfig.margin)
    mid = tuple(eyes.mean(0))
    m = cv2.getRotationMatrix2D(mid, angle, 1.0)
    turned = cv2.warpAffine(grey, m, grey.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    x, y, w, h = box
    cx, cy = m @ np.array([x + w / 2, y + h / 2, 1.0])
    aligned = F.crop_face(turned, (round(cx - w / 2), round(cy - h / 2), w, h), margin=PredictConfig.margin)
    return plain, aligned


def score(rec: Recognizer, cnn, greys: list[np.ndarray], labels: list[str], upscale: int) -> dict:
    idx = {c: i for i, c in enumerate(rec.classes)}
    y = np.array([idx[c] for c in labels])
    plain, aligned, found = [], [], []
    for g in greys:
        if upscale > 1:
            g = cv2.resize(g, (g.shape[1] * upscale, g.shape[0] * upscale), interpolation=cv2.INTER_CUBIC)
        c = crops(cnn, g)
        found.append(c is not None)
        blank = np.zeros((48, 48), np.uint8)
        plain.append(F.normalise_face(c[0] if c else blank, rec.intensity))
        aligned.append(F.normalise_face(c[1] if c else blank, rec.intensity))
    miss = ~np.array(found)
    out = {"n": len(y), "no_face": int(miss.sum())}
    for name, cs in (("unaligned", plain), ("aligned", aligned)):
        p = rec.classify(np.stack(cs), batch_size=64).argmax(1)
        p[miss] = (y[miss] + 1) % len(rec.classes)
        m = metrics(y, p, rec.classes, 1000, 0)
        out[name] = {k: m[k] for k in ("accuracy", "accuracy_ci", "mean_recall", "mean_recall_ci")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wild", type=Path, default=WILD)
    ap.add_argument("--fer-test", type=Path, default=FER_TEST)
    args = ap.parse_args()
    rec = Recognizer(detector="none")
    cnn = F._yunet_cnn()
    out = {"settings": {"margin": rec.margin, "tta": rec.tta, "intensity": rec.intensity},
           "wild_dev": score(rec, cnn, *load_wild(args.wild), 1),
           "public_test": score(rec, cnn, *load_fer(args.fer_test, "PublicTest"), UPSCALE)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
