"""wild-dev as the classifier's inputs, small enough to travel: gpu_payload/wild_inputs.npz.

    PYTHONPATH=. python3 devtools/gpu_check/make_wild_inputs.py [--wild DIR] [--out FILE]

wild-dev's raw images (14 MB) do not fit beside FER2013 in the device call's 64 MiB; the
48x48 inputs `fer predict` makes of them do (798 x 48 x 48 uint8, ~1 MB compressed). Each
image goes through fercli's own default path for a given face crop: the decoder
(fercli.infer.recognizer.to_grey) and fercli.infer.recognizer.find_faces with --detector none
and PredictConfig's frame and intensity, what Recognizer.find_faces_in_grey runs. The flip
TTA is not in the file: it is applied by the classifier (predict_proba(tta=...)), so the
evaluation (devtools/gpu_check/wild_eval.py) runs the same TTA on the torch model.

The file holds: inputs (N, 48, 48) uint8, labels (N,) int64 indices into classes, classes,
files (<class>/<image>), labels_csv_sha256 (of wild-dev's labels.csv), code_version (fercli's
commit that made it) and the PredictConfig settings used (detector, frame, intensity, tta).
Used for evaluation only: wild-dev is never trained on.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fercli.infer.config import PredictConfig  # noqa: E402
from fercli.infer.recognizer import find_faces, to_grey  # noqa: E402
from fercli.provenance import code_version  # noqa: E402

WILD = Path("/work/shared/datasets/wild-dev")  # bench_wild's default; make_gpu_payload.sh passes $FER_SHARED's
DETECTOR = "none"  # wild-dev's images are face crops: --detector none, how bench_wild's default row gives them


def wild_inputs(root: Path) -> dict[str, np.ndarray]:
    """The arrays of wild_inputs.npz for the wild-dev folder `root`."""
    labels_csv = root / "labels.csv"
    with labels_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    classes = list(dict.fromkeys(r["label"] for r in rows))  # first-seen order; the evaluation maps by name
    inputs = []
    for r in rows:
        _, crops = find_faces(to_grey(root / r["label"] / r["file"]), DETECTOR, PredictConfig.margin,
                              frame=PredictConfig.frame, intensity=PredictConfig.intensity)
        inputs.append(crops[0])  # --detector none: the whole image is the one face
    return {"inputs": np.stack(inputs).astype(np.uint8),
            "labels": np.array([classes.index(r["label"]) for r in rows], np.int64),
            "classes": np.array(classes), "files": np.array([f"{r['label']}/{r['file']}" for r in rows]),
            "labels_csv_sha256": np.array(hashlib.sha256(labels_csv.read_bytes()).hexdigest()),
            "code_version": np.array(code_version()),
            "detector": np.array(DETECTOR), "frame": np.array(PredictConfig.frame),
            "intensity": np.array(PredictConfig.intensity), "tta": np.array(PredictConfig.tta)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wild", type=Path, default=WILD)
    ap.add_argument("--out", type=Path, default=REPO / "gpu_payload" / "wild_inputs.npz")
    args = ap.parse_args()
    arrays = wild_inputs(args.wild)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(arrays['labels'])} faces, classes {[str(c) for c in arrays['classes']]}, "
          f"labels.csv sha256 {arrays['labels_csv_sha256']}, code {arrays['code_version']}, "
          f"{args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
