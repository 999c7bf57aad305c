"""`fer evaluate`: a run's selected checkpoint on its report split, k-fold aggregation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fercli.checkpoints import BEST_CHECKPOINT, load_checkpoint, model_from_checkpoint
from fercli.data import plan_splits, to_device
from fercli.dataset import load_prepared
from fercli.device import autocast_dtype, device_name, resolve_device
from fercli.engine import TTA_MODES, evaluate
from fercli.errors import FerError
from fercli.fsutil import atomic_write_json
from fercli.metrics import aggregate_folds, classification_metrics


@dataclass(frozen=True)
class EvaluateConfig:
    target: str  # run dir (single or k-fold root) or checkpoint file
    split: str | None = None  # private-test | public-test | test | fold; None = the run's report split
    tta: str = "none"
    device: str = "auto"
    dataset: str | None = None  # override the dataset path recorded in the run
    batch_size: int = 256
    write: bool = True


SPLIT_NAMES = {"private-test": "private_test", "public-test": "public_test", "test": "test",
               "fold": "fold"}


def _find_checkpoints(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    if not target.exists():
        raise FerError(f"{target} does not exist (give a run directory or a checkpoint file)")
    if (target / BEST_CHECKPOINT).is_file():
        return [target / BEST_CHECKPOINT]
    folds = sorted(target.glob("fold-*/" + BEST_CHECKPOINT), key=lambda p: int(p.parent.name.split("-")[1]))
    if folds:
        return folds
    raise FerError(f"{target}: no {BEST_CHECKPOINT} found (is it a `fer train` run directory?)")


def evaluate_target(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a run's selected (best-on-validation) checkpoint on its report split.

    For a CK+ k-fold root, evaluates every fold's test fold, then aggregates: mean ± std
    over folds and pooled over all test predictions. Writes metrics.json (+ confusion PNG).
    """
    if cfg.tta not in TTA_MODES:
        raise FerError(f"--tta {cfg.tta!r} is not one of: {', '.join(TTA_MODES)}")
    if cfg.split is not None and cfg.split not in SPLIT_NAMES:
        raise FerError(f"--split {cfg.split!r} is not one of: {', '.join(SPLIT_NAMES)}")
    target = Path(cfg.target)
    ckpts = _find_checkpoints(target)
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, "auto")
    per_fold: list[dict[str, Any]] = []
    y_all: list[np.ndarray] = []
    p_all: list[np.ndarray] = []
    classes: list[str] = []
    for ck_path in ckpts:
        ckpt = load_checkpoint(ck_path)
        model = model_from_checkpoint(ckpt, ck_path).to(device)
        run_cfg = ckpt.get("config", {})
        ds_ref = cfg.dataset or run_cfg.get("dataset")
        if ds_ref is None:
            raise FerError(f"{ck_path}: no dataset recorded; pass --dataset")
        ds = load_prepared(ds_ref)
        if ds.classes != list(ckpt["classes"]):
            raise FerError(f"{ck_path}: checkpoint classes {ckpt['classes']} do not match dataset "
                           f"{ds.path} classes {ds.classes}")
        if ckpt.get("dataset_sha256") and ckpt["dataset_sha256"] != ds.sha256:
            raise FerError(f"{ck_path}: trained on a different version of {ds.path} (sha256 differs)")
        plan = plan_splits(ds, run_cfg.get("fold"))
        split = SPLIT_NAMES.get(cfg.split) if cfg.split else None
        if split in (None, "fold") or (split == plan.test_name):
            idx, split_name = plan.test, plan.test_name
        elif split in set(ds.split.tolist()):
            idx, split_name = ds.indices(split), split
        else:
            raise FerError(f"--split {cfg.split}: dataset {ds.name} has splits {', '.join(ds.splits)}"
                           + (" and CK+ folds (use --split fold)" if "all" in ds.splits else ""))
        data = to_device(ds, idx, device)
        res = evaluate(model, data, batch_size=cfg.batch_size, amp_dtype=amp_dtype, tta=cfg.tta,
                       channels_last=False)
        y = ds.labels[idx]
        m = classification_metrics(y, res["pred"], ds.classes)
        m.update({"split": split_name, "checkpoint": str(ck_path), "best_epoch": ckpt.get("best", {}).get("epoch"),
                  "selected_on": plan.val_name, "tta": cfg.tta, "loss": res["loss"]})
        per_fold.append(m)
        y_all.append(y)
        p_all.append(res["pred"])
        classes = ds.classes
    if len(per_fold) == 1:
        out = per_fold[0]
    else:
        out = classification_metrics(np.concatenate(y_all), np.concatenate(p_all), classes)
        out.update({"split": "all test folds (pooled)", "tta": cfg.tta,
                    "kfold": aggregate_folds(per_fold), "per_fold": per_fold})
    out["device"] = device_name(device)
    if cfg.write:
        run_dir = target if target.is_dir() else target.parent
        if os.access(run_dir, os.W_OK):
            atomic_write_json(run_dir / "metrics.json", out)
            try:
                from fercli.plots import plot_confusion

                plot_confusion(out["confusion"], out["classes"], run_dir / "confusion.png",
                               f"{out['split']}: accuracy {100 * out['accuracy']:.2f}%")
                out["confusion_png"] = str(run_dir / "confusion.png")
            except ImportError:
                pass
            out["metrics_json"] = str(run_dir / "metrics.json")
    return out

