"""`fer ablate`: the paper's Table 5 ladder, trained and evaluated with the same engine.

Rows (the paper's names):

    ResNet34                  resnet34, from scratch, no GC (AdamW on FER2013 / Adam on CK+)
    ResNet34_Pretrain         resnet34, ImageNet-pretrained, no GC
    ResNet34_Pretrain_BCN     bcnn-resnet34 (two trunks), pretrained, no GC
    ResNet34_Pretrain_BCN_GC  bcnn-resnet34, pretrained, AdamW-GC / Adam-GC (OBSR-Net)

When ImageNet weights cannot be had (model.resolve_pretrained_weights raises), the
pretrained rows are marked "weights unavailable" and the from-scratch ladder runs instead
(ResNet34 → ResNet34_BCN → ResNet34_BCN_GC), labelled as such everywhere; nothing is
silently substituted.

FER2013 reports PrivateTest accuracy of the checkpoint selected on PublicTest; CK+ reports
subject-independent k-fold accuracy (test fold k, selection fold k+1, the rest trains), mean
± std over folds (and seeds). Every (row, seed, fold) run lives in its own run directory
under --out; a finished one (train_summary.json + metrics.json) is reused, an interrupted
one (last.pt) is resumed, so an ablation that was stopped picks up where it was.

No Typer/Rich here: progress goes through the engine's on_event callback.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fercli import paper
from fercli.errors import FerError
from fercli.files import atomic_write_many, json_bytes, read_json

# What each row of the ladder sets itself; a --preset (fercli.train.config) gives the rest.
LADDER_KEYS = ("dataset", "model", "shared_backbone", "pretrained", "init_from", "optimizer")
SCRATCH_LABEL = "from-scratch ladder (ImageNet weights unavailable)"
WEIGHTS_UNAVAILABLE = "weights unavailable"
# Settings a cached run must share with this ablation to be reused.
_MATCH_KEYS = ("model", "optimizer", "epochs", "batch_size", "lr", "weight_decay", "schedule", "pretrained",
               "shared_backbone", "image_size", "augment", "seed", "fold", "train_subset", "gc_conv_only",
               "init_from", "label_smoothing", "ema", "warmup_epochs", "random_erasing", "mixup", "cutmix",
               "scale_aug", "no_decay_bn_bias")


@dataclass(frozen=True)
class Rung:
    name: str
    model: str
    pretrained: bool  # ImageNet trunks
    gc: bool
    shared_backbone: bool = False
    init_from: bool = False  # FER2013-pretrained trunks (AblateConfig.init_from), fresh head


def rung_training(rung: Rung) -> str:
    return "FER2013-pretrained" if rung.init_from else ("ImageNet-pretrained" if rung.pretrained else "from scratch")


PAPER_LADDER = (
    Rung("ResNet34", "resnet34", False, False),
    Rung("ResNet34_Pretrain", "resnet34", True, False),
    Rung("ResNet34_Pretrain_BCN", "bcnn-resnet34", True, False),
    Rung("ResNet34_Pretrain_BCN_GC", "bcnn-resnet34", True, True),
)
SCRATCH_LADDER = (
    Rung("ResNet34", "resnet34", False, False),
    Rung("ResNet34_BCN", "bcnn-resnet34", False, False),
    Rung("ResNet34_BCN_GC", "bcnn-resnet34", False, True),
)
# fercli's rung, not the paper's: CK+ with the trunk of a from-scratch FER2013 model (the shipped
# one by default: a shared-trunk B-CNN, so this rung is shared-trunk too) instead of ImageNet.
TRANSFER_RUNG = Rung("ResNet34_FER2013Pretrain_BCN_GC", "bcnn-resnet34", False, True, shared_backbone=True,
                     init_from=True)
TRANSFER_LABEL = "FER2013-pretrained (fercli's rung, not in the paper; shared trunk)"


@dataclass(frozen=True)
class AblateConfig:
    dataset: str = "fer2013"  # fer2013 | ck+ | all | a prepared dataset directory
    epochs: int | None = None
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    preset: str = "short"  # a name of fercli.train.config.PRESETS
    out: str | None = None
    folds_limit: int | None = None
    train_subset: int | None = None
    weights: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    force: bool = False
    threads: int | None = None  # not part of a run's identity: only how fast it runs
    jobs: int = 1  # runs trained at once, each its own process (fercli.train.jobs); not identity
    devices: tuple[str, ...] | None = None  # spread concurrent runs: ("cuda:0", "cuda:1")
    init_from: str | None = "default"  # CK+: source of the FER2013-pretrained rung; None skips it


@dataclass(frozen=True)
class _Dataset:
    key: str  # fer2013 | ck+
    ref: str  # what engine.load_prepared gets
    path: Path
    kfold: bool
    num_folds: int
    sha256: str  # of data.npz, from the manifest: a cached run must have used these bytes


def _resolve_datasets(ref: str) -> list[_Dataset]:
    from fercli.data.prepared import MANIFEST_FILE, resolve_dataset

    refs = ["fer2013", "ck+"] if ref == "all" else [ref]
    out = []
    for r in refs:
        path = resolve_dataset(r)
        manifest = read_json(path / MANIFEST_FILE, "prepared-dataset manifest")
        name = str(manifest.get("name", ""))
        splits = set(manifest.get("counts", {}).keys())
        kfold = "train" not in splits
        key = "ck+" if name.lower().startswith("ck") else ("fer2013" if not kfold else name or "k-fold")
        k = int(manifest.get("num_folds", 0) or 0)
        if kfold and k < 3:
            raise FerError(f"{path}: needs ≥ 3 subject folds for the k-fold ablation, found {k}")
        out.append(_Dataset(key=key, ref=str(path) if r not in ("fer2013", "ck+") else r, path=path,
                            kfold=kfold, num_folds=k, sha256=str(manifest.get("sha256", ""))))
    return out


def _optimizer(ds: _Dataset, gc: bool) -> str:
    from fercli.train.optim import paper_optimizer

    return paper_optimizer(ds.key).removesuffix("-gc") + ("-gc" if gc else "")


def _train_config(cfg: AblateConfig, ds: _Dataset, rung: Rung, seed: int, fold: int | None, run_dir: Path):
    from fercli.train.config import make_train_config

    base = _recipe(cfg)
    base.update(shared_backbone=rung.shared_backbone, init_from=cfg.init_from if rung.init_from else None)
    base.update(dataset=ds.ref, model=rung.model, optimizer=_optimizer(ds, rung.gc), pretrained=rung.pretrained,
                weights=cfg.weights if rung.pretrained else None, seed=seed, fold=fold,
                train_subset=cfg.train_subset, device=cfg.device, out=str(run_dir),
                threads=cfg.threads)
    return make_train_config(None, **base)


def _recipe(cfg: AblateConfig) -> dict[str, Any]:
    """The training settings every run shares: the preset's, less what each row sets itself,
    with --epochs/--batch-size/--lr over them."""
    from fercli.train.config import preset_values

    recipe = {k: v for k, v in preset_values(cfg.preset).items() if k not in LADDER_KEYS}
    recipe.update((k, getattr(cfg, k)) for k in ("epochs", "batch_size", "lr") if getattr(cfg, k) is not None)
    return recipe


def _cached_record(path: Path) -> dict[str, Any] | None:
    """A cached run's JSON record, or None when it is missing or unreadable: the cache then
    misses and the run is retrained or re-evaluated."""
    try:
        return read_json(path)
    except FerError:
        return None


def _reuse_problem(run_dir: Path, tcfg: Any, dataset_sha256: str) -> str | None:
    """Why a finished or interrupted run under `run_dir` cannot stand for this ablation's run,
    or None when its config, dataset sha256 and code version all agree."""
    from fercli.provenance import code_version

    info = _cached_record(run_dir / "config.json")
    if not info or not isinstance(info.get("config"), dict):
        return "it has no readable config.json"
    saved = info["config"]
    for key in _MATCH_KEYS:
        if saved.get(key) != getattr(tcfg, key):
            return f"it was trained with {key}={saved.get(key)!r}, this ablation asks for {getattr(tcfg, key)!r}"
    saved_sha = (info.get("dataset") or {}).get("sha256")
    if saved_sha != dataset_sha256:
        return f"its dataset sha256 {str(saved_sha)[:12]}… differs from {dataset_sha256[:12]}…"
    saved_code, now = info.get("code_version"), code_version()
    if saved_code != now:
        return f"it was trained by code {saved_code}, this is {now}"
    return None


def _decide(cfg: AblateConfig, tcfg: Any, run_dir: Path, sha256: str) -> tuple[str, str | None, Any]:
    """What this ablation does with one run directory, before anything trains:
    (status, why it reruns or None, the TrainConfig to train with). status is trained (new),
    cached (finished, and config, dataset and code agree), resumed (interrupted, agrees) or
    rerun (on disk, but disagrees: retrained from scratch)."""
    from fercli.model.checkpoints import LAST_CHECKPOINT

    summary = run_dir / "train_summary.json"
    if cfg.force:
        return "trained", None, dataclasses.replace(tcfg, force=True)
    if summary.is_file() or (run_dir / LAST_CHECKPOINT).is_file():
        reason = _reuse_problem(run_dir, tcfg, sha256)
        if reason is not None:
            return "rerun", reason, dataclasses.replace(tcfg, force=True)  # retrain, and say why
        if summary.is_file():
            return "cached", None, tcfg
        return "resumed", None, dataclasses.replace(tcfg, resume=True)
    if run_dir.exists() and any(run_dir.iterdir()):
        return "trained", None, dataclasses.replace(tcfg, force=True)  # no epoch finished: start over
    return "trained", None, tcfg


def _run_one(cfg: AblateConfig, decision: tuple[str, str | None, Any], run_dir: Path, emit: Any,
             info: dict[str, Any], trained: bool = False) -> dict[str, Any]:
    """Train (unless cached, or `trained` already by a --jobs child) one run, then evaluate
    its selected checkpoint; the status says what happened to it in this ablation."""
    from fercli.evaluation.evaluate import EvaluateConfig, evaluate_target
    from fercli.train.runs import train

    status, reason, tcfg = decision
    emit("ablate_run", {**info, "status": status, "reason": reason, "run_dir": str(run_dir)})
    if status != "cached" and not trained:
        train(tcfg, on_event=emit)
    metrics = _cached_record(run_dir / "metrics.json") if status == "cached" else None
    if metrics is None or not isinstance(metrics.get("accuracy"), (int, float)):
        metrics = evaluate_target(EvaluateConfig(target=str(run_dir), device=cfg.device, write=True))
    return {"seed": info["seed"], "fold": info["fold"], "run_dir": str(run_dir), "status": status,
            "accuracy": float(metrics["accuracy"]), "split": metrics.get("split"),
            "best_epoch": metrics.get("best_epoch"), "rerun_reason": reason}


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _row_result(ds: _Dataset, rung: Rung | None, name: str, runs: list[dict[str, Any]], status: str,
                reason: str | None, ladder: str) -> dict[str, Any]:
    cell = paper.table5_value(name, ds.key) if name in {r.name for r in paper.TABLE5.rows} else None
    accs = [100 * r["accuracy"] for r in runs]
    mean, std = _stats(accs)
    per_seed: dict[int, list[float]] = {}
    for r in runs:
        per_seed.setdefault(r["seed"], []).append(100 * r["accuracy"])
    paper_val = cell.value if cell else None
    return {
        "name": name,
        "ladder": ladder,
        "model": rung.model if rung else None,
        "pretrained": rung.pretrained if rung else None,
        "training": rung_training(rung) if rung else None,
        "shared_backbone": rung.shared_backbone if rung else None,
        "optimizer": _optimizer(ds, rung.gc) if rung else None,
        "status": status,
        "reason": reason,
        "paper_pct": paper_val,
        "paper_source": cell.source if cell else None,
        "in_paper": cell is not None,
        "ours_mean_pct": mean,
        "ours_std_pct": std,
        "std_over": ("folds x seeds" if ds.kfold else "seeds") + " (population std)",
        "per_seed_mean_pct": {str(s): sum(v) / len(v) for s, v in per_seed.items()},
        "n_runs": len(runs),
        "delta_pp": (mean - paper_val) if (mean is not None and paper_val is not None) else None,
        "runs": runs,
    }


def _transfer(cfg: AblateConfig, ds: _Dataset) -> tuple[Rung, ...]:
    """The FER2013-pretrained rung runs on k-fold (CK+) datasets when a source is set."""
    return (TRANSFER_RUNG,) if ds.kfold and cfg.init_from else ()


def run_ablation(cfg: AblateConfig, on_event: Any = None) -> dict[str, Any]:
    """Run (or resume) the ladder on each dataset; write ablation.json/.csv; return the data."""
    from fercli.model.networks import resolve_pretrained_weights

    emit = on_event or (lambda kind, info: None)
    _recipe(cfg)  # an unknown --preset fails here, before any run
    if cfg.folds_limit is not None and cfg.folds_limit < 1:
        raise FerError(f"--folds-limit must be ≥ 1, got {cfg.folds_limit}")
    if not cfg.seeds:
        raise FerError("--seeds needs at least one seed")
    datasets = _resolve_datasets(cfg.dataset)
    root = Path(cfg.out) if cfg.out else Path("runs") / f"ablate-{cfg.dataset.replace('/', '_')}"
    if cfg.out is None and cfg.dataset not in ("fer2013", "ck+", "all"):
        root = Path("runs") / f"ablate-{datasets[0].key}"

    weights_reason = None
    try:
        resolve_pretrained_weights(cfg.weights)
    except FerError as exc:
        weights_reason = str(exc)
    weights_ok = weights_reason is None

    # Plan every run first, so progress shows "k of N" and a bad setting fails before training.
    plan: list[tuple[_Dataset, Rung, int, int | None, Path, Any]] = []
    for ds in datasets:
        ds_root = root / ds.key.replace("+", "plus") if len(datasets) > 1 else root
        folds: list[int | None] = [None]
        if ds.kfold:
            n = ds.num_folds if cfg.folds_limit is None else min(cfg.folds_limit, ds.num_folds)
            folds = list(range(n))
        ladder = (PAPER_LADDER if weights_ok else SCRATCH_LADDER) + _transfer(cfg, ds)
        for rung in ladder:
            for seed in cfg.seeds:
                for fold in folds:
                    run_dir = ds_root / rung.name / f"seed{seed}"
                    if fold is not None:
                        run_dir = run_dir / f"fold{fold}"
                    tcfg = _train_config(cfg, ds, rung, seed, fold, run_dir)
                    plan.append((ds, rung, seed, fold, run_dir, tcfg))
    from fercli.train.config import validate_config

    for *_, tcfg in plan:
        validate_config(tcfg)
    if any(rung.init_from for _, rung, *_ in plan):
        from fercli.model.sources import load_model_source

        load_model_source(str(cfg.init_from), "--init-from")  # a bad source fails before any training

    decisions = [_decide(cfg, tcfg, run_dir, ds.sha256) for ds, _, _, _, run_dir, tcfg in plan]
    from fercli.train.checkpointing import ensure_checkpoint_space

    # The checkpoints of every run still to train must fit on the disk before the first starts.
    ensure_checkpoint_space([d[2] for d in decisions if d[0] != "cached"], concurrent=max(1, cfg.jobs))
    trained_by_job = [False] * len(plan)
    if cfg.jobs > 1 or cfg.devices:
        # --jobs: every run that needs training trains first, up to N at once in separate
        # processes (a failed one leaves the others alone, and is retried in-process below);
        # the loop below then evaluates them, and reports each as decided above.
        from fercli.train.jobs import run_configs

        todo = [i for i, d in enumerate(decisions) if d[0] != "cached"]
        rep = run_configs([decisions[i][2] for i in todo], jobs=cfg.jobs, devices=cfg.devices, on_event=emit)
        emit("jobs_done", {k: v for k, v in rep.items() if k != "results"})
        for i, r in zip(todo, rep["results"], strict=True):
            trained_by_job[i] = r.status == "done"
    done: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for i, (ds, rung, seed, fold, run_dir, _) in enumerate(plan):
        info = {"index": i + 1, "total": len(plan), "dataset": ds.key, "row": rung.name, "seed": seed, "fold": fold}
        done.setdefault((ds.key, rung.name), []).append(
            _run_one(cfg, decisions[i], run_dir, emit, info, trained=trained_by_job[i]))

    tables = []
    for ds in datasets:
        n_used = (ds.num_folds if cfg.folds_limit is None else min(cfg.folds_limit, ds.num_folds)) if ds.kfold else None
        rows = []
        for rung in PAPER_LADDER:
            if rung.pretrained and not weights_ok:
                rows.append(_row_result(ds, rung, rung.name, [], WEIGHTS_UNAVAILABLE, weights_reason, "paper"))
            else:
                rows.append(_row_result(ds, rung, rung.name, done[(ds.key, rung.name)], "done", None, "paper"))
        if not weights_ok:
            for rung in SCRATCH_LADDER:
                if rung.name == "ResNet34":
                    continue  # shared with the paper ladder's first row
                rows.append(_row_result(ds, rung, rung.name, done[(ds.key, rung.name)], "done", None, SCRATCH_LABEL))
        for rung in _transfer(cfg, ds):
            rows.append(_row_result(ds, rung, rung.name, done[(ds.key, rung.name)], "done", None, TRANSFER_LABEL))
        tables.append({
            "dataset": ds.key,
            "dataset_path": str(ds.path),
            "metric": ("subject-independent k-fold test accuracy (selection on the next fold)" if ds.kfold
                       else "PrivateTest accuracy of the PublicTest-selected checkpoint"),
            "ladder": "paper" if weights_ok else SCRATCH_LABEL,
            "weights": {"available": weights_ok, "reason": weights_reason},
            "folds": ({"used": n_used, "total": ds.num_folds,
                       "label": (f"first {n_used} of {ds.num_folds} folds (--folds-limit)" if n_used < ds.num_folds
                                 else f"all {ds.num_folds} folds")} if ds.kfold else None),
            "rows": rows,
        })
    preset = _recipe(cfg)
    result = {
        "out": str(root),
        "preset": cfg.preset,
        "settings": {**preset, "seeds": list(cfg.seeds), "train_subset": cfg.train_subset, "init_from": cfg.init_from,
                     "folds_limit": cfg.folds_limit, "device": cfg.device},
        "paper": {"citation": paper.CITATION, "url": paper.URL},
        "tables": tables,
        "runs": {"total": len(plan), "cached": sum(r["status"] == "cached" for rs in done.values() for r in rs)},
    }
    # Both or neither: a full disk leaves the previous pair (or nothing), never a mixture.
    atomic_write_many([(root / "ablation.json", json_bytes(result)),
                       (root / "ablation.csv", ablation_csv(result).encode("utf-8"))])
    result["files"] = [str(root / "ablation.json"), str(root / "ablation.csv")]
    return result


def ablation_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "ladder", "row", "status", "paper_pct", "paper_source", "ours_mean_pct",
                "ours_std_pct", "n_runs", "delta_pp", "folds"])

    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"

    for t in result["tables"]:
        folds = t["folds"]["label"] if t["folds"] else ""
        for r in t["rows"]:
            w.writerow([t["dataset"], r["ladder"], r["name"], r["status"],
                        f(r["paper_pct"]) if r["in_paper"] else "", r["paper_source"] or "",
                        f(r["ours_mean_pct"]), f(r["ours_std_pct"]), r["n_runs"], f(r["delta_pp"]), folds])
    return buf.getvalue()
