"""Detection size vs quality: YuNet at full resolution vs smaller long sides (prints JSON).

    .venv/bin/python devtools/benchmarks/bench_detect_size.py [--sizes 640 480 320]
        [--fer-limit 300] [--ck-stride 4] [--fer-root DIR] [--ck-root DIR] [--json out.json]

Every image is detected as `fer predict` / `fer serve` detect it (fercli.vision.faces.
detect_faces: scaled down to a long side, boxes mapped back to full resolution) once with no
limit (the reference: the full-resolution image) and once per candidate --sizes. Per size:
  same_faces    reference faces also found there (a box with IoU >= 0.3), of all reference faces
  extra_faces   boxes there that match no reference face
  iou_ge_0.9    matched faces whose box has IoU >= 0.9 with the reference box
  iou_min/median  of the matched faces
  vs_predict    the same four against `fer predict`'s own size (YUNET_MAX_SIDE) instead of
                full resolution: what a server at that size would answer differently
  smallest_face_px  the smallest face side (full-resolution pixels) found at that size
  detect_ms_mean  mean detect_faces time per image (the machine may be shared: compare sizes
                  within one run)
Images (faces small and large, because a smaller detection size loses small faces first):
  samples     the three photos in sample_images/ (512-964 px, faces 90-220 px)
  fer_photo   FER2013 PrivateTest faces upscaled to 192 px (INTER_CUBIC, as bench_detect.py
              does) in the middle of a 960 px frame (edges replicated): a face 1/5 of a photo
  fer_small   the same faces at 96 px in a 960 px frame: a face 1/10 of a photo
  ck_photo    CK+48 crops upscaled to 192 px in a 960 px frame
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fercli.infer.video import iou  # noqa: E402
from fercli.vision.faces import YUNET_MAX_SIDE, detect_faces  # noqa: E402
from fercli.vision.images import load_grey  # noqa: E402

FULL = 100_000  # a long side no photo reaches: detection at full resolution
FRAME = 960  # the frame side the dataset faces are placed in (YuNet's library warns above 960)


def framed(path: Path, face_px: int) -> np.ndarray:
    """A 48x48 dataset face upscaled to face_px (INTER_CUBIC) in the middle of a FRAME frame."""
    g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(g, (face_px, face_px), interpolation=cv2.INTER_CUBIC)
    a = (FRAME - face_px) // 2
    return cv2.copyMakeBorder(big, a, FRAME - face_px - a, a, FRAME - face_px - a, cv2.BORDER_REPLICATE)


def image_sets(fer_root: Path, ck_root: Path, fer_limit: int, ck_stride: int) -> dict[str, Iterator[np.ndarray]]:
    fer = sorted((fer_root / "test").rglob("PrivateTest_*.jpg"))
    fer = fer[::max(1, len(fer) // fer_limit)][:fer_limit] if fer_limit else fer
    ck = sorted(ck_root.rglob("*.png"))[::ck_stride]
    return {"samples": (load_grey(p) for p in sorted((REPO / "sample_images").glob("*.jpg"))),
            "fer_photo": (framed(p, 192) for p in fer), "fer_small": (framed(p, 96) for p in fer),
            "ck_photo": (framed(p, 192) for p in ck)}


def _match(ref: list, boxes: list, acc: dict) -> None:
    """Add to acc: the IoU of each reference face's best box (IoU >= 0.3: the same face), and
    the boxes that match no reference face."""
    best = [max((iou(r, b) for b in boxes), default=0.0) for r in ref]
    acc["ious"] += [v for v in best if v >= 0.3]
    acc["extra"] += sum(1 for b in boxes if all(iou(r, b) < 0.3 for r in ref))


def _summary(acc: dict) -> dict:
    ious = acc["ious"]
    return {"same_faces": len(ious), "extra_faces": acc["extra"], "iou_ge_0.9": sum(v >= 0.9 for v in ious),
            "iou_min": round(min(ious), 3) if ious else None,
            "iou_median": round(statistics.median(ious), 3) if ious else None}


def compare(images: Iterator[np.ndarray], sizes: list[int]) -> dict:
    """Per size, the faces found vs the full-resolution reference and vs `fer predict`'s size
    (see the module docstring)."""
    every = sorted({FULL, YUNET_MAX_SIDE, *sizes}, reverse=True)
    st = {s: {"full": {"ious": [], "extra": 0}, "predict": {"ious": [], "extra": 0},
              "smallest": None, "ms": 0.0} for s in every}
    ref_faces = predict_faces = n = 0
    for g in images:
        n += 1
        found = {}
        for s in every:
            t0 = time.perf_counter()
            found[s] = detect_faces(g, "yunet", s)
            st[s]["ms"] += 1000 * (time.perf_counter() - t0)
            sides = [max(b[2], b[3]) for b in found[s]] + ([st[s]["smallest"]] if st[s]["smallest"] else [])
            st[s]["smallest"] = min(sides) if sides else None
        ref_faces += len(found[FULL])
        predict_faces += len(found[YUNET_MAX_SIDE])
        for s in sizes:
            _match(found[FULL], found[s], st[s]["full"])
            _match(found[YUNET_MAX_SIDE], found[s], st[s]["predict"])
    out = {"images": n, "reference_faces": ref_faces, "predict_faces": predict_faces,
           "full_resolution": {"smallest_face_px": st[FULL]["smallest"],
                               "detect_ms_mean": round(st[FULL]["ms"] / max(1, n), 2)}}
    for s in sizes:
        out[str(s)] = {**_summary(st[s]["full"]), "smallest_face_px": st[s]["smallest"],
                       "detect_ms_mean": round(st[s]["ms"] / max(1, n), 2),
                       "vs_predict": _summary(st[s]["predict"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[640, 480, 320])
    ap.add_argument("--fer-root", type=Path, default=Path.home() / ".cache/fercli-tests/fer2013-unpacked")
    shared = Path(os.environ.get("FER_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
    ap.add_argument("--ck-root", type=Path, default=shared / "CK+48")
    ap.add_argument("--fer-limit", type=int, default=300, help="PrivateTest faces, evenly spaced (0: all)")
    ap.add_argument("--ck-stride", type=int, default=4, help="every N-th CK+48 crop")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    fer_root = args.fer_root / "fer2013" if (args.fer_root / "fer2013").is_dir() else args.fer_root
    if not (fer_root / "test").is_dir() or not args.ck_root.is_dir():
        sys.exit(f"need FER2013 folders under {fer_root} and CK+48 at {args.ck_root}")
    out: dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                 "command": "python devtools/benchmarks/bench_detect_size.py " + " ".join(sys.argv[1:]),
                 "cores": os.cpu_count(), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
                 "detector": "yunet", "sizes": args.sizes, "sets": {}}
    for name, images in image_sets(fer_root, args.ck_root, args.fer_limit, args.ck_stride).items():
        out["sets"][name] = compare(images, args.sizes)
        print(name, json.dumps(out["sets"][name]), file=sys.stderr, flush=True)
    out["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
