"""Fitting a model's temperature on its selection split, and recording it.

The rule is the one that chooses checkpoints: T is fitted on the selection split (FER2013
PublicTest; CK+ fold K+1 for test fold K) and never on the report split (PrivateTest, the
test fold). `fit_on_split` takes a split *name*, looks the rows up in the run's SplitPlan
and refuses the report split with a FerError (guard_split) before any row is read;
`calibrate_run` gets the selection rows training already holds, and checks the plan alike.

Where T goes:
    best.pt                 ckpt["calibration"] (end of `fer train`: `calibrate_run`;
                            `fer calibrate RUN`), and the run's train_summary.json
    exported .npz           __meta__["calibration"] (`fer export` copies it from best.pt;
                            `fer calibrate MODEL.npz --out NEW.npz`)
    .onnx                   the graph divides the logits by T; fercli_meta["calibration"]

The record: temperature, split, dataset name and sha256, faces, the split's ECE/NLL before
and after, method, code version, date.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fercli.data.prepared import PreparedDataset
from fercli.data.resident import DeviceSplit, SplitPlan, to_device
from fercli.errors import FerError
from fercli.evaluation.calibration import calibration_metrics
from fercli.files import atomic_write_json
from fercli.model.checkpoints import (
    BEST_CHECKPOINT,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from fercli.model.inference import model_logits
from fercli.model.temperature import TEMPERATURE_BOUNDS, fit_temperature, softmax
from fercli.provenance import code_version

METHOD = ("temperature scaling: one T for all classes, p = softmax(logits / T), T minimising the "
          "NLL of the selection split (exact bisection on dNLL/d(1/T); fercli.model.temperature)")


def guard_split(split: str, plan: SplitPlan) -> None:
    """Refuse to fit T on anything but the selection split; above all the report split."""
    if split == plan.test_name:
        raise FerError(f"refusing to fit the temperature on {split}: it is the report split (checkpoints "
                       f"are selected and T is fitted on {plan.val_name} only)")
    if split != plan.val_name:
        raise FerError(f"the temperature is fitted on the selection split {plan.val_name}, not {split}")


def fit_record(logits: np.ndarray, labels: np.ndarray, split: str, ds: PreparedDataset) -> dict[str, Any]:
    """Fit T on (logits, labels) of `split` and describe the fit (JSON-serialisable).

    A fit at a bound of TEMPERATURE_BOUNDS has no minimum to find: with no misclassified face
    in the split (a CK+ selection fold often has none), the NLL keeps falling as T -> 0, and a
    T of 0.01 would make every wrong answer on other faces near-certain. Such a split cannot
    pin T down, so the record keeps T = 1 (the model's own probabilities) and says why."""
    fitted = fit_temperature(logits, labels)
    t = 1.0 if fitted in TEMPERATURE_BOUNDS else fitted
    before = calibration_metrics(softmax(logits), labels)
    after = calibration_metrics(softmax(logits, t), labels)
    keep = ("ece", "nll", "brier", "mean_confidence", "accuracy")
    return {"temperature": t, "split": split, "dataset_name": ds.name, "dataset_sha256": ds.sha256,
            "num_samples": int(len(labels)), "before": {k: before[k] for k in keep},
            "after": {k: after[k] for k in keep}, "method": METHOD, "code_version": code_version(),
            "fitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"unidentifiable": f"the NLL of {split} is least at the bound T = {fitted:g} (errors on it: "
                                  f"{int(np.sum(np.argmax(logits, axis=1) != labels))}); T = 1 kept"}
               if fitted != t else {})}


def selection_logits(model: nn.Module, ds: PreparedDataset, plan: SplitPlan, split: str, device: torch.device,
                     *, batch_size: int = 256, amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (N, C) and labels (N,) of `split` of `ds`, which must be plan's selection split."""
    guard_split(split, plan)
    data = to_device(ds, plan.val, device)  # the selection rows only
    z = model_logits(model.to(device, memory_format=torch.channels_last), data.x, batch_size=batch_size,
                     amp_dtype=amp_dtype)
    return z, ds.labels[plan.val]


def fit_on_split(model: nn.Module, ds: PreparedDataset, plan: SplitPlan, split: str, device: torch.device,
                 *, batch_size: int = 256, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """T for `model` fitted on `split` of `ds`, which must be plan's selection split."""
    z, y = selection_logits(model, ds, plan, split, device, batch_size=batch_size, amp_dtype=amp_dtype)
    return fit_record(z, y, split, ds)


def calibrate_run(run_dir: Path, val_data: DeviceSplit, plan: SplitPlan, ds: PreparedDataset, *,
                  batch_size: int = 256, amp_dtype: torch.dtype | None = None) -> dict[str, Any] | None:
    """End of `fer train`: fit T for the selected checkpoint (best.pt) on the selection split
    (`val_data`, plan.val's rows, already on the device) and record it in best.pt and
    train_summary.json. None when the run has no best.pt (no epoch ran)."""
    guard_split(plan.val_name, plan)
    path = run_dir / BEST_CHECKPOINT
    if not path.is_file() or len(val_data) == 0:
        return None
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).eval().to(val_data.x.device, memory_format=torch.channels_last)
    z = model_logits(model, val_data.x, batch_size=batch_size, amp_dtype=amp_dtype)
    record = fit_record(z, val_data.y.cpu().numpy(), plan.val_name, ds)
    write_checkpoint_calibration(path, record)
    return record


def write_checkpoint_calibration(path: Path, record: dict[str, Any], out: Path | None = None) -> Path:
    """best.pt (or any checkpoint) with ckpt["calibration"] = record, atomically, to `out`
    or in place; the run's train_summary.json beside it gets the record too."""
    ckpt = load_checkpoint(path)
    ckpt["calibration"] = record
    target = out or path
    save_checkpoint(target, ckpt)
    summary_path = path.parent / "train_summary.json"
    if out is None and summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            return target
        summary["calibration"] = record
        atomic_write_json(summary_path, summary)
    return target
