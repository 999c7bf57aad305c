"""`fer ablate`: the paper's Table 5 ladder, trained and evaluated with the same engine.

Rows (the paper's names; the rungs live in fercli.ablation.ladder):

    ResNet34                  resnet34, from scratch, no GC (AdamW on FER2013 / Adam on CK+)
    ResNet34_Pretrain         resnet34, ImageNet-pretrained, no GC
    ResNet34_Pretrain_BCN     bcnn-resnet34 (two trunks), pretrained, no GC
    ResNet34_Pretrain_BCN_GC  bcnn-resnet34, pretrained, AdamW-GC / Adam-GC (OBSR-Net)

When ImageNet weights cannot be had (model.resolve_pretrained_weights raises), nothing is
silently substituted; the ladder says what it ran instead, everywhere:
  - CK+ (k-fold) with a FER2013 source (--init-from, the shipped model by default): the same
    four rows with FER2013-pretrained trunks (ResNet34_FER2013Pretrain...), the source's trunk
    copied into every trunk, both of the B-CNN's;
  - otherwise the pretrained rows are marked "weights unavailable" and the from-scratch ladder
    runs (ResNet34 → ResNet34_BCN → ResNet34_BCN_GC).

FER2013 reports PrivateTest accuracy of the checkpoint selected on PublicTest; CK+ reports
subject-independent k-fold accuracy (test fold k, selection fold k+1, the rest trains), mean
± std over folds (and seeds). Every (row, seed, fold) run lives in its own run directory
under --out; a finished one (train_summary.json + metrics.json) is reused, an interrupted
one (last.pt) is resumed, so an ablation that was stopped picks up where it was. A finished
run keeps only best.pt unless --keep-last (last.pt is ~3x its size: a CK+ ladder of 40 runs
would otherwise keep ~10 GB); before training the ladder says, and checks, the disk it needs. k-fold runs
go fold by fold, so a stopped ladder has whole folds of every row; its table shows each row's
fold count, "partial" or "pending" (fercli.ablation.ablate_status reads it without training).

No Typer/Rich here: progress goes through the engine's on_event callback.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fercli import paper
from fercli.ablation.ablate_estimate import estimate_wall_time
from fercli.ablation.config import AblateConfig  # noqa: F401  (part of this module's API)
from fercli.ablation.ladder import (
    FER2013_LABEL,
    FER2013_LADDER,
    PAPER_LADDER,
    SCRATCH_LABEL,
    SCRATCH_LADDER,
    WEIGHTS_UNAVAILABLE,
    Rung,
    ablation_csv,
    add_changes,
    folds_label,
    optimizer_for,
    row_result,
)
from fercli.ablation.paired import paired_steps
from fercli.data import registry
from fercli.data.prepared import MANIFEST_FILE
from fercli.errors import FerError
from fercli.evaluation.evaluate import EvaluateConfig, evaluate_target
from fercli.files import atomic_write_many, json_bytes, read_json
from fercli.infer.sources import load_model_source
from fercli.model.checkpoints import LAST_CHECKPOINT
from fercli.model.networks import resolve_pretrained_weights
from fercli.provenance import code_version
from fercli.train import checkpointing
from fercli.train.config import make_train_config, preset_values, validate_config
from fercli.train.jobs import run_configs
from fercli.train.runs import train

# What each row of the ladder sets itself; a --preset (fercli.train.config) gives the rest.
LADDER_KEYS = ("dataset", "model", "shared_backbone", "pretrained", "init_from", "optimizer")
# Settings a cached run must share with this ablation to be reused.
_MATCH_KEYS = ("model", "optimizer", "epochs", "batch_size", "lr", "weight_decay", "schedule", "pretrained",
               "shared_backbone", "image_size", "augment", "seed", "fold", "train_subset", "gc_conv_only",
               "init_from", "label_smoothing", "ema", "warmup_epochs", "random_erasing", "mixup", "cutmix",
               "scale_aug", "no_decay_bn_bias")





@dataclass(frozen=True)
class _Dataset:
    key: str  # its column in the paper's tables (fer2013 | ck+), else its name
    ref: str  # what registry.load_dataset gets (its --dataset)
    path: Path
    kfold: bool
    num_folds: int
    sha256: str  # of data.npz, from the manifest: a cached run must have used these bytes
    paper_optimizer: str  # the paper's optimizer for it, GC variant (fercli.data.registry)
    label: str  # its column heading in the paper's tables ("FER2013 %"), else its name


def _datasets_of(ref: str) -> list[str]:
    """--dataset all: every registered dataset that has a column in the paper's Table 5."""
    if ref != "all":
        return [ref]
    return [s.name for s in registry.specs() if s.paper_column in paper.TABLE5.columns]


def _resolve_datasets(ref: str) -> list[_Dataset]:
    out = []
    for r in _datasets_of(ref):
        path = registry.resolve_dataset(r)
        manifest = read_json(path / MANIFEST_FILE, "prepared-dataset manifest")
        name = str(manifest.get("name", ""))
        rule = registry.split_rule(name, set(manifest.get("counts", {}).keys()), str(path))
        spec = registry.find(name)
        key = spec.paper_column if spec else (name or ("k-fold" if rule.kfold else "dataset"))
        k = int(manifest.get("num_folds", 0) or 0)
        if rule.kfold and k < rule.min_folds:
            raise FerError(f"{path}: needs ≥ {rule.min_folds} subject folds for the k-fold ablation, found {k}")
        out.append(_Dataset(key=key, ref=r if r in registry.names() else str(path), path=path,
                            kfold=rule.kfold, num_folds=k, sha256=str(manifest.get("sha256", "")),
                            paper_optimizer=registry.paper_optimizer(name),
                            label=spec.paper_label if spec else key))
    return out


def _train_config(cfg: AblateConfig, ds: _Dataset, rung: Rung, seed: int, fold: int | None, run_dir: Path):
    base = _recipe(cfg)
    base.update(shared_backbone=rung.shared_backbone, init_from=cfg.init_from if rung.init_from else None)
    base.update(dataset=ds.ref, model=rung.model, optimizer=optimizer_for(ds, rung.gc), pretrained=rung.pretrained,
                weights=cfg.weights if rung.pretrained else None, seed=seed, fold=fold,
                train_subset=cfg.train_subset, device=cfg.device, out=str(run_dir),
                threads=cfg.threads, keep_last=cfg.keep_last)
    return make_train_config(None, **base)


def _recipe(cfg: AblateConfig) -> dict[str, Any]:
    """The training settings every run shares: the preset's, less what each row sets itself,
    with --epochs/--batch-size/--lr over them."""
    recipe = {k: v for k, v in preset_values(cfg.preset).items() if k not in LADDER_KEYS}
    recipe.update((k, getattr(cfg, k)) for k in ("epochs", "batch_size", "lr") if getattr(cfg, k) is not None)
    return recipe


def cached_record(path: Path) -> dict[str, Any] | None:
    """A cached run's JSON record, or None when it is missing or unreadable: the cache then
    misses and the run is retrained or re-evaluated."""
    try:
        return read_json(path)
    except FerError:
        return None


def config_problem(run_dir: Path, tcfg: Any, dataset_sha256: str) -> str | None:
    """Why the run under `run_dir` was not this ablation's run (another config or dataset), or None."""
    info = cached_record(run_dir / "config.json")
    if not info or not isinstance(info.get("config"), dict):
        return "it has no readable config.json"
    saved = info["config"]
    for key in _MATCH_KEYS:
        if saved.get(key) != getattr(tcfg, key):
            return f"it was trained with {key}={saved.get(key)!r}, this ablation asks for {getattr(tcfg, key)!r}"
    saved_sha = (info.get("dataset") or {}).get("sha256")
    if saved_sha != dataset_sha256:
        return f"its dataset sha256 {str(saved_sha)[:12]}… differs from {dataset_sha256[:12]}…"
    return None


def _reuse_problem(run_dir: Path, tcfg: Any, dataset_sha256: str) -> str | None:
    """Why a finished or interrupted run under `run_dir` cannot stand for this ablation's run,
    or None when its config, dataset sha256 and code version all agree."""
    problem = config_problem(run_dir, tcfg, dataset_sha256)
    if problem is not None:
        return problem
    saved_code, now = (cached_record(run_dir / "config.json") or {}).get("code_version"), code_version()
    if saved_code != now:
        return f"it was trained by code {saved_code}, this is {now}"
    return None


def _decide(cfg: AblateConfig, tcfg: Any, run_dir: Path, sha256: str) -> tuple[str, str | None, Any]:
    """What this ablation does with one run directory, before anything trains:
    (status, why it reruns or None, the TrainConfig to train with). status is trained (new),
    cached (finished, and config, dataset and code agree), resumed (interrupted, agrees) or
    rerun (on disk, but disagrees: retrained from scratch)."""
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
             info: dict[str, Any], trained: bool = False, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (unless cached, or `trained` already by a --jobs child) one run, then evaluate
    its selected checkpoint; the status says what happened to it in this ablation."""
    status, reason, tcfg = decision
    emit("ablate_run", {**info, "status": status, "reason": reason, "run_dir": str(run_dir)})
    if status != "cached" and not trained:
        train(tcfg, on_event=emit)
    if metrics is None and status == "cached":
        metrics = cached_record(run_dir / "metrics.json")
    if metrics is None or not isinstance(metrics.get("accuracy"), (int, float)):
        metrics = evaluate_target(EvaluateConfig(target=str(run_dir), device=cfg.device, write=True))
    return {"seed": info["seed"], "fold": info["fold"], "run_dir": str(run_dir), "status": status,
            "accuracy": float(metrics["accuracy"]), "split": metrics.get("split"),
            "best_epoch": metrics.get("best_epoch"), "rerun_reason": reason}


def _evaluate_finished_job(cfg: AblateConfig, emit: Any, evaluated: dict[str, dict[str, Any]]) -> Any:
    """--jobs' event callback: each run that trains to the end has its test fold read at once
    (into `evaluated`, by run directory), so a ladder stopped part way keeps its whole folds
    evaluated (`--progress` shows them done), not only trained. A failed evaluation is left to
    _run_one, which evaluates again and says why."""
    def on_event(kind: str, info: dict[str, Any]) -> None:
        if kind == "job_end" and info.get("status") == "done":
            try:
                evaluated[str(info["out"])] = evaluate_target(
                    EvaluateConfig(target=str(info["out"]), device=cfg.device, write=True))
            except FerError:
                pass
        emit(kind, info)
    return on_event


def _ladder(cfg: AblateConfig, ds: _Dataset, weights_ok: bool) -> tuple[tuple[Rung, ...], str]:
    """Which ladder runs: ImageNet weights → the paper's; else on CK+ with a FER2013 source →
    FER2013-pretrained; else from scratch. Always labelled, never substituted silently."""
    if weights_ok:
        return PAPER_LADDER, "paper"
    if ds.kfold and cfg.init_from:
        return FER2013_LADDER, FER2013_LABEL
    return SCRATCH_LADDER, SCRATCH_LABEL


def _pretrained_means(cfg: AblateConfig, ladder: str) -> str:
    if ladder == "paper":
        return f"ImageNet-pretrained (torchvision resnet34 weights{', ' + str(cfg.weights) if cfg.weights else ''})"
    if ladder == FER2013_LABEL:
        src = "the shipped from-scratch FER2013 model" if cfg.init_from == "default" else str(cfg.init_from)
        return f"FER2013-pretrained: the trunk of {src} (--init-from {cfg.init_from}), in every trunk, head fresh"
    return "not run: ImageNet weights unavailable (from-scratch ladder)"


@dataclass(frozen=True)
class PlannedRun:
    ds: _Dataset
    rung: Rung
    seed: int
    fold: int | None
    run_dir: Path
    tcfg: Any


@dataclass(frozen=True)
class Plan:
    root: Path
    datasets: list[_Dataset]
    weights_reason: str | None
    runs: list[PlannedRun]

    @property
    def weights_ok(self) -> bool:
        return self.weights_reason is None


def _folds(cfg: AblateConfig, ds: _Dataset) -> list[int | None]:
    if not ds.kfold:
        return [None]
    if cfg.folds is not None:
        missing = [f for f in cfg.folds if not 0 <= f < ds.num_folds]
        if missing:
            raise FerError(f"--folds {','.join(map(str, missing))}: {ds.path} has folds 0–{ds.num_folds - 1}")
        return list(cfg.folds)
    return list(range(ds.num_folds if cfg.folds_limit is None else min(cfg.folds_limit, ds.num_folds)))


def plan_ablation(cfg: AblateConfig, *, download: bool = True) -> Plan:
    """Every run of the ablation, checked, before anything trains. On k-fold datasets the order
    is fold by fold (every row of fold 0, then of fold 1, ...), so a ladder stopped part way has
    whole folds of every row to compare, not some rows done and others not started. Without
    `download`, ImageNet weights are looked for on disk only (--weights, torch's hub cache)."""
    _recipe(cfg)  # an unknown --preset fails here, before any run
    if cfg.folds_limit is not None and cfg.folds_limit < 1:
        raise FerError(f"--folds-limit must be ≥ 1, got {cfg.folds_limit}")
    if cfg.folds is not None and cfg.folds_limit is not None:
        raise FerError("--folds and --folds-limit both choose the folds: give one")
    if not cfg.seeds:
        raise FerError("--seeds needs at least one seed")
    datasets = _resolve_datasets(cfg.dataset)
    root = Path(cfg.out) if cfg.out else Path("runs") / f"ablate-{cfg.dataset.replace('/', '_')}"
    if cfg.out is None and cfg.dataset not in (*registry.names(), "all"):
        root = Path("runs") / f"ablate-{datasets[0].key}"
    weights_reason = None
    try:
        resolve_pretrained_weights(cfg.weights, download=download)
    except FerError as exc:
        weights_reason = str(exc)

    runs: list[PlannedRun] = []
    for ds in datasets:
        ds_root = root / ds.key.replace("+", "plus") if len(datasets) > 1 else root
        ladder, _ = _ladder(cfg, ds, weights_reason is None)
        for fold in _folds(cfg, ds):
            for rung in ladder:
                for seed in cfg.seeds:
                    run_dir = ds_root / rung.name / f"seed{seed}"
                    if fold is not None:
                        run_dir = run_dir / f"fold{fold}"
                    runs.append(PlannedRun(ds, rung, seed, fold, run_dir,
                                           _train_config(cfg, ds, rung, seed, fold, run_dir)))
    for r in runs:
        validate_config(r.tcfg)
    if any(r.rung.init_from for r in runs):
        load_model_source(str(cfg.init_from), "--init-from")  # a bad source fails before any training
    return Plan(root, datasets, weights_reason, runs)


def build_tables(cfg: AblateConfig, plan: Plan, finished: dict[tuple[str, str], list[dict[str, Any]]]
                 ) -> list[dict[str, Any]]:
    """Table 5 per dataset from the runs finished so far: rows in the paper's order, each done,
    partial (with its fold count) or pending."""
    tables = []
    for ds in plan.datasets:
        folds = _folds(cfg, ds)
        planned = len(folds) * len(cfg.seeds)
        ladder, label = _ladder(cfg, ds, plan.weights_ok)

        def row(rung: Rung, lab: str, ds: _Dataset = ds, planned: int = planned) -> dict[str, Any]:
            return row_result(ds, rung, rung.name, finished.get((ds.key, rung.name), []), "done", None, lab,
                               planned=planned)

        if label == SCRATCH_LABEL:
            rows = [row(PAPER_LADDER[0], "paper")]
            rows += [row_result(ds, rung, rung.name, [], WEIGHTS_UNAVAILABLE, plan.weights_reason, "paper")
                     for rung in PAPER_LADDER[1:]]
            rows += [row(rung, SCRATCH_LABEL) for rung in SCRATCH_LADDER[1:]]
        else:
            rows = [row(rung, "paper" if label == "paper" or not (rung.init_from or rung.pretrained) else label)
                    for rung in ladder]
        add_changes(rows)
        counted = [r["folds_done"] or 0 for r in rows if r["status"] != WEIGHTS_UNAVAILABLE]
        done_folds, most_folds = min(counted, default=0), max(counted, default=0)
        tables.append({
            "dataset": ds.key,
            "column": ds.label,
            "dataset_path": str(ds.path),
            "metric": ("subject-independent k-fold test accuracy (selection on the next fold)" if ds.kfold
                       else "PrivateTest accuracy of the PublicTest-selected checkpoint"),
            "ladder": label,
            "pretrained_means": _pretrained_means(cfg, label),
            "weights": {"available": plan.weights_ok, "reason": plan.weights_reason},
            "folds": ({"planned": len(folds), "used": len(folds), "total": ds.num_folds, "done_every_row": done_folds,
                       "done_some_row": most_folds,
                       "ids": folds,
                       "label": folds_label(len(folds), ds.num_folds, done_folds, most_folds,
                                            ids=folds if cfg.folds is not None else None)} if ds.kfold else None),
            "rows": rows,
            # each row − the row above, fold by fold (seed by seed): whether a step helps
            "steps": paired_steps(rows),
        })
    return tables


def _settings(cfg: AblateConfig) -> dict[str, Any]:
    preset = _recipe(cfg)
    return {**preset, "seeds": list(cfg.seeds), "train_subset": cfg.train_subset, "init_from": cfg.init_from,
            "folds_limit": cfg.folds_limit, "folds": list(cfg.folds) if cfg.folds is not None else None,
            "device": cfg.device}


def ladder_result(cfg: AblateConfig, plan: Plan, finished: dict[tuple[str, str], list[dict[str, Any]]]
                  ) -> dict[str, Any]:
    return {
        "out": str(plan.root),
        "preset": cfg.preset,
        "settings": _settings(cfg),
        "paper": {"citation": paper.CITATION, "url": paper.URL},
        "tables": build_tables(cfg, plan, finished),
    }


def run_ablation(cfg: AblateConfig, on_event: Any = None) -> dict[str, Any]:
    """Run (or resume) the ladder on each dataset; write ablation.json/.csv; return the data."""
    emit = on_event or (lambda kind, info: None)
    plan = plan_ablation(cfg)
    decisions = [_decide(cfg, r.tcfg, r.run_dir, r.ds.sha256) for r in plan.runs]
    # The checkpoints of every run still to train must fit on the disk before the first starts.
    disks = checkpointing.ensure_checkpoint_space([d[2] for d in decisions if d[0] != "cached"],
                                                  concurrent=max(1, cfg.jobs))
    emit("ablate_disk", {"disks": [d.as_dict() for d in disks], "lines": [d.text() for d in disks]})
    estimate = None
    if cfg.estimate and any(d[0] != "cached" for d in decisions):
        # Before anything trains: how long it will take (said, never refused: it runs anyway).
        estimate = estimate_wall_time(plan.runs, [d[0] for d in decisions], cfg.device, on_event=emit)
        emit("ablate_estimate", estimate)
    trained_by_job = [False] * len(plan.runs)
    evaluated: dict[str, dict[str, Any]] = {}  # run directory -> its metrics, read as its job ended
    if cfg.jobs > 1 or cfg.devices:
        # --jobs: every run that needs training trains first, up to N at once in separate
        # processes (a failed one leaves the others alone, and is retried in-process below);
        # each one's test fold is read as its child ends, and the loop below reports each as
        # decided above.
        todo = [i for i, d in enumerate(decisions) if d[0] != "cached"]
        rep = run_configs([decisions[i][2] for i in todo], jobs=cfg.jobs, devices=cfg.devices,
                          on_event=_evaluate_finished_job(cfg, emit, evaluated))
        emit("jobs_done", {k: v for k, v in rep.items() if k != "results"})
        for i, r in zip(todo, rep["results"], strict=True):
            trained_by_job[i] = r.status == "done"
    done: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for i, r in enumerate(plan.runs):
        info = {"index": i + 1, "total": len(plan.runs), "dataset": r.ds.key, "row": r.rung.name, "seed": r.seed,
                "fold": r.fold}
        done.setdefault((r.ds.key, r.rung.name), []).append(
            _run_one(cfg, decisions[i], r.run_dir, emit, info, trained=trained_by_job[i],
                     metrics=evaluated.get(str(r.run_dir))))

    result = ladder_result(cfg, plan, done)
    result["runs"] = {"total": len(plan.runs),
                      "cached": sum(r["status"] == "cached" for rs in done.values() for r in rs)}
    result["estimate"] = estimate
    result["disk"] = [d.as_dict() for d in disks]
    # Both or neither: a full disk leaves the previous pair (or nothing), never a mixture.
    atomic_write_many([(plan.root / "ablation.json", json_bytes(result)),
                       (plan.root / "ablation.csv", ablation_csv(result).encode("utf-8"))])
    result["files"] = [str(plan.root / "ablation.json"), str(plan.root / "ablation.csv")]
    return result
