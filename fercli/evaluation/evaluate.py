"""`fer evaluate`: any model on any prepared dataset, k-fold aggregation, the paper beside it.

Targets (fercli.infer.sources): a run directory (its best.pt, selected on validation), a CK+ k-fold
root (every fold, then mean ± std and pooled), a `.pt` checkpoint, an exported `.npz` (or its
shards), or `default` (the shipped model).

Which rows are reported:
    run / checkpoint   the run's report split (FER2013 PrivateTest; CK+ its test fold), as
                       recorded in its config.
    exported model     no run directory, but its __meta__ carries the train config: FER2013 →
                       PrivateTest; CK+ → the test fold the export records when the dataset is
                       the one it trained on, else `--fold K` (CK+ has no fixed test split).
A fold or split the model trained or selected on is refused, not reported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fercli import paper
from fercli.data import registry
from fercli.data.prepared import PreparedDataset
from fercli.data.resident import DeviceSplit, SplitPlan, plan_splits, to_device
from fercli.device import autocast_dtype, device_name, resolve_device
from fercli.errors import FerError
from fercli.evaluation.calibrate import fit_on_split, write_checkpoint_calibration
from fercli.evaluation.calibration import (
    ECE_BINS,
    calibration_metrics,
    reliability_bins,
)
from fercli.evaluation.config import CalibrateConfig, EvaluateConfig  # noqa: F401  (part of this module's API)
from fercli.evaluation.metrics import aggregate_folds, classification_metrics
from fercli.export.npz_format import INDEX_SUFFIX, with_metadata
from fercli.files import atomic_write_json
from fercli.infer.sources import ModelSource, load_checkpoint_source, load_model_source
from fercli.model.checkpoints import BEST_CHECKPOINT
from fercli.model.inference import TTA_MODES, TemperatureScaled, model_logits, predict_logits
from fercli.model.temperature import softmax, temperature_of
from fercli.plots import plot_confusion, plot_reliability

# --split as the option spells it → the split as a prepared dataset stores it. Which exist:
# FER2013 private-test (its report split) and public-test (its selection split), or test alone
# when prepared from train/ test/ folders; CK+ fold (the run's test fold, or --fold K).
SPLIT_NAMES = {"private-test": "private_test", "public-test": "public_test", "test": "test",
               "fold": "fold"}


def split_choices(ds: PreparedDataset, kfold: bool) -> list[str]:
    """The --split values that name a split of `ds`, spelled as the option takes them."""
    present = set(ds.splits)
    return [opt for opt, name in SPLIT_NAMES.items() if name in present or (name == "fold" and kfold)]


def _load_sources(cfg: EvaluateConfig) -> tuple[list[ModelSource], Path | None]:
    """The model(s) to evaluate (each fold's best.pt for a k-fold root, else the one model the
    resolver names), and the run directory metrics.json may go to (None: none)."""
    root = Path(str(cfg.target)).expanduser()
    if root.is_dir() and not (root / BEST_CHECKPOINT).is_file():
        folds = sorted(root.glob("fold-*/" + BEST_CHECKPOINT), key=lambda p: int(p.parent.name.split("-")[1]))
        if folds:
            return [load_checkpoint_source(ck) for ck in folds], root
    src = load_model_source(cfg.target, "target")
    if src.kind == "exported":
        return [src], None
    return [src], src.path.parent


def _run_fold(src: ModelSource, ds: PreparedDataset, same_data: bool, cfg: EvaluateConfig) -> int | None:
    """The CK+ test fold to report for `src` on k-fold dataset `ds`."""
    recorded = src.train_config.get("fold") if same_data else None
    if recorded == -1:  # a per-fold run records its own fold; -1 only on a k-fold root's config
        recorded = None
    if cfg.fold is not None:
        if recorded is not None and recorded != cfg.fold:
            raise FerError(f"--fold {cfg.fold}: {src.path} was trained on this dataset with fold {recorded} "
                           f"as its test fold, so fold {cfg.fold} was part of its training or selection data")
        return cfg.fold
    if recorded is not None:
        return int(recorded)
    if src.kind == "checkpoint" and same_data:
        return None  # an old run without a recorded fold: fold 0, as when it trained
    raise FerError(f"{ds.name} has no fixed test split and {src.path} records no test fold for "
                   f"{ds.path}: pass --fold K (a fold the model never trained or selected on)")


def _choose_rows(src: ModelSource, ds: PreparedDataset, same_data: bool,
                 cfg: EvaluateConfig) -> tuple[np.ndarray, str, SplitPlan]:
    """(row indices, split name, the model's split plan: its selection split) to report."""
    kfold = registry.dataset_split_rule(ds).kfold
    fold = _run_fold(src, ds, same_data, cfg) if kfold else None
    if not kfold and cfg.fold is not None:
        raise FerError(f"--fold {cfg.fold}: {ds.name} has fixed splits, not subject folds (use --split)")
    plan = plan_splits(ds, fold)
    split = SPLIT_NAMES.get(cfg.split) if cfg.split else None
    if split in (None, "fold") or split == plan.test_name:
        return plan.test, plan.test_name, plan
    if split in set(ds.split.tolist()):
        return ds.indices(split), split, plan
    raise FerError(f"--split {cfg.split}: dataset {ds.name} has no such split; give --split "
                   + " or ".join(split_choices(ds, kfold)) + (" (or --fold K)" if kfold else ""))


def _dataset_for(src: ModelSource, cfg: EvaluateConfig) -> tuple[PreparedDataset, bool]:
    """The prepared dataset to evaluate on, and whether it is the one the model trained on."""
    ref = cfg.dataset or src.train_config.get("dataset") or src.dataset_name
    if src.kind == "exported" and not cfg.dataset and src.dataset_name and not Path(str(ref)).is_dir():
        ref = src.dataset_name  # a path on the exporting machine: use the dataset's name here
    if ref is None:
        raise FerError(f"{src.path}: no dataset recorded; pass --dataset")
    ds = registry.load_dataset(ref)
    if ds.classes != src.classes:
        raise FerError(f"{src.path}: model classes {src.classes} do not match dataset {ds.path} "
                       f"classes {ds.classes}")
    same = bool(src.dataset_sha256) and src.dataset_sha256 == ds.sha256
    if src.dataset_sha256 and not same and src.kind == "checkpoint" and cfg.dataset is None:
        raise FerError(f"{src.path}: trained on a different version of {ds.path} (sha256 differs)")
    return ds, same


def paper_per_class(dataset_name: str, m: dict[str, Any]) -> dict[str, Any] | None:
    """The paper's Table 1 (FER2013) or 2 (CK+) beside our per-class P/R/F1, when classes match."""
    spec = registry.find(dataset_name)
    table = paper.per_class_table(spec.paper_column, m["classes"]) if spec else None
    if table is None:
        return None
    rows = {}
    for c in m["classes"]:
        name = paper.paper_class(table, c)
        p, r, f = table.rows[name]  # type: ignore[index]
        rows[c] = {"paper_class": name, "precision": p, "recall": r, "f1": f}
    return {"table": table.number, "title": table.title, "rows": rows,
            "what": "the paper's OBSR-Net: ImageNet-pretrained, two trunks, 200 epochs, single model"}


def _calibration(src: ModelSource, ds: PreparedDataset, plan: SplitPlan, split_name: str, data: DeviceSplit,
                 logp: torch.Tensor, cfg: EvaluateConfig, device: torch.device,
                 amp_dtype: torch.dtype | None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """ECE / MCE / NLL / Brier of the reported rows before and after the model's temperature,
    and both probability matrices (N, C). T is the one the model records; a model without
    one gets T fitted now on its selection split (plan.val; never the report rows), unsaved."""
    record = src.calibration
    source = "recorded in the model"
    if not record:
        record = fit_on_split(src.model, ds, plan, plan.val_name, device, batch_size=cfg.batch_size,
                              amp_dtype=amp_dtype)
        source = "fitted now on the selection split (not saved: `fer calibrate` records it)"
    t = temperature_of({"calibration": record})
    y = data.y.cpu().numpy()
    if cfg.tta == "none":  # from the raw logits: exactly softmax(z) and softmax(z / T)
        z = model_logits(src.model, data.x, batch_size=cfg.batch_size, amp_dtype=amp_dtype)
        before, after = softmax(z), softmax(z, t)
    else:  # T divides each view's logits before the views' probabilities are averaged, as in predict
        before = softmax(logp.double().cpu().numpy())
        after = softmax(predict_logits(TemperatureScaled(src.model, t), data.x, batch_size=cfg.batch_size,
                                       amp_dtype=amp_dtype, tta=cfg.tta, channels_last=True).double().cpu().numpy())
    block = {"temperature": t, "temperature_split": record.get("split"), "temperature_source": source,
             "bins": ECE_BINS, "before": calibration_metrics(before, y), "after": calibration_metrics(after, y),
             "argmax_identical": bool(np.array_equal(before.argmax(1), after.argmax(1))),
             "reliability": {"before": reliability_bins(before, y), "after": reliability_bins(after, y)}}
    if record.get("unidentifiable"):
        block["unidentifiable"] = record["unidentifiable"]
    if record.get("split") == split_name:
        block["note"] = f"T was fitted on {split_name} itself: the after-T numbers are in-sample"
    return block, before, after


def _pooled_calibration(blocks: list[dict[str, Any]], y: np.ndarray, before: np.ndarray,
                        after: np.ndarray) -> dict[str, Any]:
    """k-fold: every fold's T on its own test fold, pooled over all test predictions."""
    return {"temperatures": [b["temperature"] for b in blocks], "bins": ECE_BINS,
            "temperature_splits": [b["temperature_split"] for b in blocks],
            "before": calibration_metrics(before, y), "after": calibration_metrics(after, y),
            "argmax_identical": all(b["argmax_identical"] for b in blocks),
            "ece_per_fold": {"before": [b["before"]["ece"] for b in blocks],
                             "after": [b["after"]["ece"] for b in blocks]},
            "reliability": {"before": reliability_bins(before, y), "after": reliability_bins(after, y)}}


def _write_outputs(out: dict[str, Any], folder: Path) -> None:
    """metrics.json, confusion.png and reliability.png into `folder` (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "metrics.json", out)
    try:
        plot_confusion(out["confusion"], out["classes"], folder / "confusion.png",
                       f"{out['split']}: accuracy {100 * out['accuracy']:.2f}%")
        out["confusion_png"] = str(folder / "confusion.png")
        cal = out["calibration"]
        t = cal.get("temperature")
        plot_reliability(cal["reliability"]["before"], cal["reliability"]["after"], folder / "reliability.png",
                         f"{out['split']}: " + (f"T = {t:.3f} (fitted on {cal['temperature_split']})"
                                                if t is not None else "T per fold (each on its selection fold)"))
        out["reliability_png"] = str(folder / "reliability.png")
    except ImportError:
        pass
    out["metrics_json"] = str(folder / "metrics.json")


def evaluate_target(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a model (or every fold of a k-fold root) on its report rows.

    For a CK+ k-fold root, evaluates every fold's test fold, then aggregates: mean ± std over
    folds and pooled over all test predictions. Calibration (ECE, MCE, NLL, Brier) before and
    after each model's temperature, per fold and pooled. Writes metrics.json, confusion.png and
    reliability.png into a run directory (or cfg.out); an exported model's folder is never
    written to.
    """
    if cfg.tta not in TTA_MODES:
        raise FerError(f"--tta {cfg.tta!r} is not one of: {', '.join(TTA_MODES)}")
    if cfg.split is not None and cfg.split not in SPLIT_NAMES:
        raise FerError(f"--split {cfg.split!r} is not one of: {', '.join(SPLIT_NAMES)}")
    if cfg.fold is not None and cfg.fold < 0:
        raise FerError(f"--fold must be ≥ 0, got {cfg.fold}")
    sources, run_dir = _load_sources(cfg)
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, "auto")
    per_fold: list[dict[str, Any]] = []
    y_all: list[np.ndarray] = []
    p_all: list[np.ndarray] = []
    probs: list[tuple[np.ndarray, np.ndarray]] = []
    ds: PreparedDataset | None = None
    same = False
    for src in sources:
        ds, same = _dataset_for(src, cfg)
        idx, split_name, plan = _choose_rows(src, ds, same, cfg)
        # channels_last, as in training: batched 48 px inference on a 2-core AVX2 CPU runs
        # 1.5x faster than contiguous (173 -> 259 img/s, shared-trunk B-CNN, batch 256).
        model = src.model.to(device, memory_format=torch.channels_last)
        if len(idx) == 0:
            raise FerError(f"{ds.path}: split {split_name} has no rows to evaluate")
        data = to_device(ds, idx, device)
        logp = predict_logits(model, data.x, batch_size=cfg.batch_size, amp_dtype=amp_dtype, tta=cfg.tta,
                              channels_last=True)  # (N, C) log-probabilities
        pred = logp.argmax(1).cpu().numpy()
        y = ds.labels[idx]
        m = classification_metrics(y, pred, ds.classes)
        m.update({"split": split_name, "checkpoint": str(src.path), "best_epoch": src.best_epoch,
                  "selected_on": plan.val_name if same else "unknown (not this dataset)",
                  # what training saw on the selection split at that epoch: the number to
                  # compare recipes by (the test split's must not choose anything)
                  "selection_accuracy": src.selection_acc if same else None,
                  "tta": cfg.tta, "loss": float(F.nll_loss(logp, data.y))})
        m["calibration"], before, after = _calibration(src, ds, plan, split_name, data, logp, cfg, device,
                                                       amp_dtype)
        per_fold.append(m)
        y_all.append(y)
        p_all.append(pred)
        probs.append((before, after))
    assert ds is not None
    if len(per_fold) == 1:
        out = per_fold[0]
    else:
        y_cat = np.concatenate(y_all)
        out = classification_metrics(y_cat, np.concatenate(p_all), ds.classes)
        out.update({"split": "all test folds (pooled)", "tta": cfg.tta,
                    "kfold": aggregate_folds(per_fold), "per_fold": per_fold,
                    "calibration": _pooled_calibration([m["calibration"] for m in per_fold], y_cat,
                                                       np.concatenate([b for b, _ in probs]),
                                                       np.concatenate([a for _, a in probs]))})
    src = sources[0]
    out["model"] = {**src.provenance(), "single_model": True}
    out["dataset"] = {"name": ds.name, "path": str(ds.path), "sha256": ds.sha256, "same_as_training": same}
    if not same:
        out["dataset"]["note"] = ("not the dataset version the model was trained on (sha256 differs or "
                                  "unknown): its splits may overlap the model's training data")
    out["paper_per_class"] = paper_per_class(ds.name, out)
    out["device"] = device_name(device)
    if cfg.out is not None:
        _write_outputs(out, Path(cfg.out))
    elif cfg.write and run_dir is not None and os.access(run_dir, os.W_OK):
        _write_outputs(out, run_dir)
    return out





def calibrate_target(cfg: CalibrateConfig) -> dict[str, Any]:
    """`fer calibrate`: fit each model's temperature on its selection split (FER2013
    PublicTest; CK+ fold K+1 of test fold K) and record it in the model.

    A run directory's best.pt (each fold's, for a k-fold root) or a .pt checkpoint is
    rewritten in place (atomically; train_summary.json gets the record too) unless `out`
    names another .pt. An exported .npz is never modified: the copy with the temperature in
    its metadata goes to `out` (sharded like the source). Returns what was fitted and written.
    """
    ecfg = EvaluateConfig(target=cfg.target, dataset=cfg.dataset, fold=cfg.fold, device=cfg.device, write=False)
    if cfg.fold is not None and cfg.fold < 0:
        raise FerError(f"--fold must be ≥ 0, got {cfg.fold}")
    sources, _ = _load_sources(ecfg)
    if cfg.out is not None and len(sources) > 1:
        raise FerError(f"--out: {cfg.target} is a k-fold root: each fold's best.pt gets its own temperature in place")
    if sources[0].kind == "exported" and cfg.out is None:
        raise FerError(f"{sources[0].path}: an exported model is never modified in place; pass --out NEW.npz")
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, "auto")
    results = []
    for src in sources:
        ds, same = _dataset_for(src, ecfg)
        kfold = registry.dataset_split_rule(ds).kfold
        plan = plan_splits(ds, _run_fold(src, ds, same, ecfg) if kfold else None)
        record = fit_on_split(src.model, ds, plan, plan.val_name, device, batch_size=cfg.batch_size,
                              amp_dtype=amp_dtype)
        if not same:
            record["note"] = "fitted on a dataset version other than the model's (sha256 differs or unknown)"
        if src.kind == "exported":
            sharded = not src.path.is_file() and Path(f"{src.path}{INDEX_SUFFIX}").is_file()
            info = with_metadata(src.path, Path(str(cfg.out)), {"calibration": record},
                                 max_shard_mb=15.0 if sharded else None)
            written = [*info["files"], info["sidecar"]]
        else:
            written = [str(write_checkpoint_calibration(src.path, record, Path(cfg.out) if cfg.out else None))]
        results.append({"model": str(src.path), "kind": src.kind, "previous": src.calibration,
                        "calibration": record, "written": written})
    return results[0] if len(results) == 1 else {"folds": results}
