"""A model's wild-dev accuracy from gpu_payload/wild_inputs.npz (devtools/gpu_check/make_wild_inputs.py).

    PYTHONPATH=. python3 devtools/gpu_check/wild_eval.py MODEL [--inputs FILE] [--device cpu]
        [--backend torch|onnx] [--precision auto|fp32|int8] [--bf16]

MODEL is anything `fer predict --model` takes (a run, best.pt, an .npz; "default": the
shipped model). The classifier is the one `fer predict` builds (fercli.infer.classifier.
make_classifier, PredictConfig with the given backend and device), and the inputs' flip TTA
(the file's `tta`, PredictConfig's default) runs through its predict_proba, so a row here is
`fer predict`'s default path on wild-dev given the same crops: with --backend onnx
--precision int8 on the CPU it is bench_wild.py's `default` row. On CUDA the torch backend
runs bf16 autocast (FaceClassifier); --bf16 asks for the same on the CPU.

recipe_search.py calls wild_scores for each recipe's selected checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from devtools.benchmarks.bench_wild import _scores  # noqa: E402
from fercli.infer.classifier import make_classifier  # noqa: E402
from fercli.infer.config import PredictConfig  # noqa: E402


def load_inputs(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        return {k: z[k] if z[k].ndim else z[k].item() for k in z.files}


def scores(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy and mean per-class recall (%), bench_wild.py's point values and rounding, plus
    each present class's recall."""
    acc, mean_recall, _, recall = _scores(y, pred, len(classes))
    return {"n": int(len(y)), "accuracy": round(100 * acc, 2), "mean_recall": round(100 * mean_recall, 2),
            "per_class_recall": {c: round(100 * float(r), 2) for c, r in zip(classes, recall, strict=True) if not np.isnan(r)}}


def wild_scores(model: str | Path | None, inputs: dict[str, Any], *, device: str = "auto",
                backend: str = "torch", precision: str = "auto", bf16: bool = False) -> dict[str, Any]:
    """wild-dev scores of `model` on the inputs of wild_inputs.npz, with the file's TTA."""
    cfg = PredictConfig(inputs=(), model=None if model is None else str(model), device=device,
                        backend=backend, precision=precision, tta=str(inputs["tta"]))
    clf, _, why = make_classifier(cfg)
    if bf16:
        import torch

        clf.amp_dtype = torch.bfloat16  # FaceClassifier's CUDA precision, on this device
    p = clf.predict_proba(inputs["inputs"], tta=cfg.tta, batch_size=64)
    names = [str(c) for c in inputs["classes"]]
    model_idx = {c: j for j, c in enumerate(clf.classes)}
    y = np.array([model_idx[names[i]] for i in inputs["labels"]])  # the model's class order
    out = scores(y, p.argmax(1), list(clf.classes))
    d = clf.describe()
    out.update(tta=cfg.tta, backend=d.get("backend", "torch"), precision=d.get("precision"),
               device=str(d.get("device")), backend_reason=why,
               inputs={k: inputs[k] for k in ("labels_csv_sha256", "code_version", "detector", "frame", "intensity")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--inputs", type=Path, default=REPO / "gpu_payload" / "wild_inputs.npz")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    model = None if args.model == "default" else args.model
    print(json.dumps(wild_scores(model, load_inputs(args.inputs), device=args.device, backend=args.backend,
                                 precision=args.precision, bf16=args.bf16), indent=1))


if __name__ == "__main__":
    main()
