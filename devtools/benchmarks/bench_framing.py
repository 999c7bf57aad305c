"""How FER2013's faces sit in their 48x48 images, as YuNet sees them (prints JSON): the
reference `fer predict`'s crop (fercli.vision.faces.crop_face, PredictConfig.margin) copies.

    PYTHONPATH=. python devtools/benchmarks/bench_framing.py [--train DIR] [--limit 400]

A seeded random --limit of the Training faces (the image-folder release's train/), each
upscaled 4x (INTER_CUBIC, 192 px) and run through libfacedetection's YuNet (the detector
behind --detector yunet, called as fercli.vision.faces does, here with its 5 landmarks);
the largest box scoring >= 50 counts. Per face, relative to the image side: the box's side
max(w, h), width, height, centre, the eye line's height and length, and its angle in degrees
(right eye minus left eye). Median, 10th and 90th percentiles, mean.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import fercli.vision.faces as F  # noqa: E402
from fercli.vision.images import load_grey  # noqa: E402

TRAIN = Path("~/.cache/fercli-tests/fer2013-unpacked/train").expanduser()
UPSCALE = 4


def landmark_rows(cnn, grey: np.ndarray) -> np.ndarray:
    """facedetect_cnn's raw rows: (n, 16) int16 = score, x, y, w, h, 5 landmarks (x, y), pad."""
    result = np.zeros(F._CNN_RESULT_BYTES, np.uint8)
    bgr = np.ascontiguousarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    h, w = bgr.shape[:2]
    with F._OneOmpThread():
        cnn(result.ctypes.data, bgr.ctypes.data, w, h, w * 3)
    n = int(result[:4].view(np.int32)[0])
    return result[4:4 + 32 * n].view(np.int16).reshape(n, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=TRAIN)
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    files = sorted(args.train.glob("*/*.jpg"))
    random.Random(args.seed).shuffle(files)
    cnn, side = F._yunet_cnn(), 48 * UPSCALE
    rows = []
    for f in files[:args.limit]:
        big = cv2.resize(load_grey(f), (side, side), interpolation=cv2.INTER_CUBIC)
        r = landmark_rows(cnn, big)
        if len(r) == 0:
            continue
        r = r[np.argmax(r[:, 3].astype(int) * r[:, 4])]
        if r[0] < F.YUNET_MIN_CONFIDENCE:
            continue
        x, y, w, h = (int(v) for v in r[1:5])
        eyes = r[5:9].astype(float).reshape(2, 2)
        rows.append({"side": max(w, h) / side, "w": w / side, "h": h / side, "cx": (x + w / 2) / side,
                     "cy": (y + h / 2) / side, "eye_y": eyes[:, 1].mean() / side,
                     "eye_dist": float(np.hypot(*(eyes[1] - eyes[0]))) / side,
                     "angle": float(np.degrees(np.arctan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0])))})
    stats = {}
    for k in (rows[0] if rows else {}):
        v = np.array([r[k] for r in rows])
        stats[k] = {"median": round(float(np.median(v)), 3), "p10": round(float(np.percentile(v, 10)), 3),
                    "p90": round(float(np.percentile(v, 90)), 3), "mean": round(float(v.mean()), 3)}
    print(json.dumps({"n": len(rows), "of": min(args.limit, len(files)), "upscale": UPSCALE, "stats": stats}, indent=1))


if __name__ == "__main__":
    main()
