"""Runs: a run directory from config to checkpoints, with provenance and resume.

`train(cfg)` is what `fer train` calls: it loads the prepared dataset, plans the splits
(selection never sees the report split), builds model and optimizer, runs the epochs of
fercli.train.engine and writes config.json, history.csv, best.pt, last.pt and loss_curve.png.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fercli import __version__
from fercli.data.prepared import PreparedDataset, load_prepared
from fercli.data.resident import epoch_generator, plan_splits, to_device
from fercli.device import autocast_dtype, configure_backends, device_name, resolve_device
from fercli.errors import FerError
from fercli.files import atomic_write_json, atomic_write_text
from fercli.model.checkpoints import (
    BEST_CHECKPOINT,
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    CheckpointWriter,
    cpu_copy,
    load_checkpoint,
)
from fercli.provenance import code_version
from fercli.train import distributed
from fercli.train.config import (
    TrainConfig,
    checkpoint_cadence,
    resolve_optimizer,
    training_label,
    validate_config,
)
from fercli.train.engine import evaluate, make_train_step, train_one_epoch
from fercli.train.regularize import WeightEMA

# Progress events: ("epoch_start", {...}), ("step", {"images": n}), ("epoch_end", row).
ProgressCallback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_acc: float
    val_split: str
    test_split: str
    history: list[dict[str, Any]]
    device: str
    fold: int | None
    seconds: float
    images_per_second: float


_DEFAULTS = dataclasses.asdict(TrainConfig())


def default_run_dir(cfg: TrainConfig, dataset_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset_name}-{cfg.model}-{cfg.optimizer}-{stamp}"


ONECYCLE_RISE = 0.3  # share of the epochs spent rising (torch OneCycleLR's pct_start)
ONECYCLE_DIV = 25.0  # start at lr / 25 (its div_factor) ...
ONECYCLE_FINAL_DIV = 1e4  # ... end towards lr / 25 / 1e4 (its final_div_factor)


def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    """lr of 0-based `epoch`: linear warm-up to cfg.lr over warmup_epochs (lr·(e+1)/w), then
    constant or cosine from cfg.lr over the remaining epochs (warmup 0: cosine over all).

    onecycle (Smith & Topin 2019, torch's OneCycleLR with cosine phases, per epoch): u =
    max(1, round(0.3·E)) epochs rise from lr/25 to lr along a half cosine, then the other E − u
    fall along a half cosine towards lr/25/1e4 (epoch u is the peak)."""
    if cfg.schedule == "onecycle":
        u = max(1, round(ONECYCLE_RISE * cfg.epochs))
        start = cfg.lr / ONECYCLE_DIV
        if epoch < u:
            return start + (cfg.lr - start) * (1 - math.cos(math.pi * epoch / u)) / 2
        end = start / ONECYCLE_FINAL_DIV
        return end + (cfg.lr - end) * (1 + math.cos(math.pi * (epoch - u) / max(1, cfg.epochs - u))) / 2
    w = cfg.warmup_epochs
    if epoch < w:
        return cfg.lr * (epoch + 1) / w
    if cfg.schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - w) / (cfg.epochs - w)))


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> Any:
    """--no-decay-bn-bias: 1-d parameters (BatchNorm weight/bias, conv/linear biases) get weight
    decay 0; every other tensor keeps --weight-decay. Otherwise the model itself (one group)."""
    if not cfg.no_decay_bn_bias:
        return model
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


def train(cfg: TrainConfig, on_event: ProgressCallback | None = None) -> list[TrainResult]:
    """Train one run (or every CK+ fold with fold=-1); returns one result per fold."""
    validate_config(cfg)
    ds = load_prepared(cfg.dataset)
    cfg = resolve_optimizer(cfg, ds.name)
    if cfg.fold == -1:
        if "train" in set(ds.split.tolist()):
            raise FerError("--fold all is for CK+-style k-fold datasets; FER2013 has fixed splits")
        k = int(ds.fold.max()) + 1
        root = Path(cfg.out) if cfg.out else default_run_dir(cfg, ds.name)
        results = []
        try:
            for f in range(k):
                sub = dataclasses.replace(cfg, fold=f, out=str(root / f"fold-{f}"))
                results.append(_train_single(sub, ds, on_event))
            if distributed.current().is_main:
                atomic_write_json(root / "kfold.json", {"folds": k, "config": dataclasses.asdict(cfg)})
        finally:
            distributed.teardown(distributed.current())
        return results
    try:
        return [_train_single(cfg, ds, on_event)]
    finally:
        distributed.teardown(distributed.current())


def _init_trunks(cfg: TrainConfig, model: torch.nn.Module) -> dict[str, Any]:
    """--init-from: copy a FER2013 model's trunks into `model` (fresh head); its provenance."""
    from fercli.model.networks import init_trunks_from
    from fercli.model.sources import load_model_source

    src = load_model_source(cfg.init_from, "--init-from")
    if not str(src.dataset_name or "").lower().startswith("fer2013"):
        raise FerError(f"--init-from {src.path} was trained on {src.dataset_name or 'an unrecorded dataset'}, "
                       f"not FER2013: FER2013-pretrained runs start from a FER2013 model")
    if src.train_config.get("init_from") or src.train_config.get("pretrained"):
        raise FerError(f"--init-from {src.path} did not start from scratch ({training_label(src.train_config)}): "
                       f"give a from-scratch FER2013 model")
    copied = init_trunks_from(model, src.model)
    return {**src.provenance(), "ref": cfg.init_from, "tensors_copied": copied, "head": "fresh (random init)",
            "label": "FER2013-pretrained"}


def _train_single(cfg: TrainConfig, ds: PreparedDataset, on_event: ProgressCallback | None) -> TrainResult:
    from fercli.model.networks import build_model
    from fercli.train.optim import build_optimizer

    emit = on_event or (lambda kind, info: None)
    if cfg.threads is not None:
        # On a busy 2-core machine one thread is several times faster than two fighting
        # over a shared core (docs/benchmarks.md); on an idle machine the default wins.
        torch.set_num_threads(max(1, cfg.threads))
    device = resolve_device(cfg.device)
    # Under torchrun: join the group, one GPU per rank; only rank 0 reports and writes.
    dist_info = distributed.setup(device.type)
    if dist_info.enabled and cfg.shard_data:
        dist_info = dataclasses.replace(dist_info, sharded=True)
    device = distributed.rank_device(dist_info, device)
    if not dist_info.is_main:
        emit = lambda kind, info: None  # noqa: E731
    configure_backends(device, cfg.deterministic)
    amp_dtype = autocast_dtype(device, cfg.precision)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg, ds.name)
    last_path = run_dir / LAST_CHECKPOINT
    if run_dir.exists() and any(run_dir.iterdir()) and not (cfg.resume or cfg.force):
        raise FerError(f"run directory {run_dir} already exists: pass --resume to continue it "
                       f"or --force to start over")
    if cfg.resume and not last_path.is_file():
        raise FerError(f"--resume: no checkpoint {last_path} to resume from")
    plan = plan_splits(ds, cfg.fold)
    train_idx = plan.train
    if cfg.train_subset is not None:
        rng = np.random.default_rng(cfg.seed)
        train_idx = np.sort(rng.permutation(train_idx)[: cfg.train_subset])
    train_data = to_device(ds, distributed.shard_rows(train_idx, dist_info) if dist_info.sharded else train_idx,
                           device)
    val_data = to_device(ds, plan.val, device)

    # Model init is seeded; CPU kernels are deterministic for what we use.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(ds.classes), image_size=cfg.image_size,
                        pretrained=cfg.pretrained, weights=cfg.weights,
                        shared_backbone=cfg.shared_backbone, freeze_backbone=cfg.freeze_backbone)
    init_source = _init_trunks(cfg, model) if cfg.init_from and not cfg.resume else None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, _param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                gc_conv_only=cfg.gc_conv_only)
    # --ema: a moving average of the weights is what gets validated, selected and saved.
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None

    history: list[dict[str, Any]] = []
    best = {"epoch": -1, "val_acc": -1.0, "val_loss": float("inf")}
    start_epoch = 0
    if cfg.resume:
        ckpt = load_checkpoint(last_path)
        if ckpt.get("dataset_sha256") != ds.sha256:
            raise FerError(f"--resume: {last_path} was trained on different data (dataset sha256 differs)")
        saved = ckpt.get("config", {})
        for key in ("model", "optimizer", "image_size", "shared_backbone", "seed", "batch_size", "fold",
                    "init_from", "random_erasing", "mixup", "cutmix", "ema", "scale_aug"):
            # Options newer than a checkpoint were off when it was written: compare with the default.
            if saved.get(key, _DEFAULTS.get(key)) != getattr(cfg, key):
                raise FerError(f"--resume: --{key.replace('_', '-')} {getattr(cfg, key)!r} differs from "
                               f"the run's {saved.get(key)!r} in {last_path}")
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != dist_info.world_size:
            raise FerError(f"--resume: {last_path} was trained by {saved_world} process(es), this is "
                           f"{dist_info.world_size}: resume with the same --nproc (data order and BatchNorm "
                           f"statistics depend on it)")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        history, best, start_epoch = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"]) + 1

    version = code_version()  # once per run: every checkpoint of this process carries it
    run_info = {
        "config": dataclasses.asdict(cfg),
        "dataset": {"name": ds.name, "path": str(ds.path), "sha256": ds.sha256,
                    "classes": ds.classes, "train": int(train_idx.size), "val": int(plan.val.size),
                    "test": int(plan.test.size), "val_split": plan.val_name, "test_split": plan.test_name},
        "code_version": version,
        "fercli_version": __version__,
        "torch_version": torch.__version__,
        "distributed": {"world_size": dist_info.world_size, "backend": dist_info.backend},
        "device": device_name(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "seed": cfg.seed,
        "training": training_label(dataclasses.asdict(cfg)),
        "init_from": init_source,
        "model_spec": dict(model.spec),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # Created only now, after everything that can fail on bad input (dataset, weights, resume
    # checks) has passed, so a refused run leaves no directory behind.
    distributed.barrier(dist_info)  # every rank passed the checks above before rank 0 writes
    if not dist_info.is_main:
        return _train_rank(cfg, model, optimizer, train_data, val_data, amp_dtype, start_epoch,
                           dist_info, plan, run_info, run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FerError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise FerError(f"run directory {run_dir} is not writable")
    if cfg.resume and (run_dir / "config.json").is_file():
        # Keep the first config.json (its start time, device and commit are the run's
        # origin); each resume appends an event instead of overwriting them.
        first = read_json(run_dir / "config.json")
        first.setdefault("resumes", []).append(
            {"time": run_info["started"], "from_epoch": start_epoch,
             "code_version": run_info["code_version"], "device": run_info["device"]})
        run_info = first
    atomic_write_json(run_dir / "config.json", run_info)

    # One step for the run: captured once as a CUDA graph (default on CUDA) or eager.
    # --compile compiles the forward/backward instead (no manual graph around it).
    step_fn = _make_step(cfg, model, optimizer, train_data, amp_dtype, dist_info, ema)
    cadence = _Cadence(*checkpoint_cadence(cfg.checkpoint_every), last=time.perf_counter())
    writer = CheckpointWriter()

    emit("run_start", {"run_dir": str(run_dir), "epochs": cfg.epochs, "start_epoch": start_epoch,
                       "train_images": int(train_idx.size), "device": run_info["device"],
                       "steps_per_epoch": -(-len(train_data) // min(cfg.batch_size, len(train_data))),
                       "cuda_graphs": step_fn.graphed})
    t_run = time.perf_counter()
    images_done = 0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            row, best, seen = _epoch(cfg, epoch, model, optimizer, step_fn, train_data, val_data,
                                     amp_dtype, ds, history, best, version, run_dir, writer, cadence, emit,
                                     dist_info, ema)
            images_done += seen
            if epoch + 1 == cfg.epochs:
                writer.wait()  # the final last.pt is on disk before the run reports done
            emit("epoch_end", row)
    finally:
        writer.wait()  # an exception or Ctrl-C still lets a started write land (atomically)
    result = _finish(cfg, run_dir, history, best, plan, run_info, t_run, images_done)
    from fercli.evaluation.calibrate import calibrate_run  # T for best.pt, fitted on plan.val only

    calibrate_run(run_dir, val_data, plan, ds, batch_size=cfg.eval_batch_size, amp_dtype=amp_dtype)
    distributed.barrier(dist_info)  # the other ranks return once the run's files are written
    return result


@dataclass
class _Cadence:
    """--checkpoint-every state: last.pt every `epochs` epochs, or once `seconds` passed
    since the last write (and after this process's first epoch, so an early kill can
    resume); always after the final epoch. best.pt (weights only) whenever selection improves."""

    epochs: int | None
    seconds: float | None
    last: float
    wrote: bool = False

    def due(self, epoch: int, total: int) -> bool:
        if epoch + 1 == total:
            return True
        if self.epochs:
            return (epoch + 1) % self.epochs == 0
        return not self.wrote or time.perf_counter() - self.last >= (self.seconds or 0.0)


def _make_step(cfg: TrainConfig, model: Any, optimizer: Any, train_data: Any, amp_dtype: Any,
               dist_info: distributed.DistInfo, ema: WeightEMA | None = None) -> Any:
    """The run's one train step: captured once as a CUDA graph (default on CUDA) or eager;
    --compile compiles the forward/backward instead (no manual graph around it). Under
    torchrun the forward is DistributedDataParallel (gradients averaged over ranks before
    GC and the update) on this rank's B / W images, eager."""
    forward = torch.compile(model) if cfg.compile else model
    batch = cfg.batch_size
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        batch = distributed.local_batch(cfg.batch_size, dist_info)
        if len(train_data) < (batch if dist_info.sharded else cfg.batch_size):
            raise FerError(f"--batch-size {cfg.batch_size} is more than the {len(train_data)} training images; "
                           f"data parallel needs full global batches")
        ids = [train_data.x.device.index] if train_data.x.device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    return make_train_step(forward, optimizer, train_data, batch_size=batch, amp_dtype=amp_dtype,
                           augment=cfg.augment, channels_last=cfg.channels_last, model=model,
                           label_smoothing=cfg.label_smoothing, random_erasing=cfg.random_erasing,
                           mixup=cfg.mixup, cutmix=cfg.cutmix, ema=ema, scale_aug=cfg.scale_aug,
                           cuda_graphs=cfg.cuda_graphs and not cfg.compile and not dist_info.enabled)


def _draw_batch(cfg: TrainConfig, dist_info: distributed.DistInfo) -> int:
    """The batch each epoch's permutation is cut into: the global B (every rank then takes
    its B / W columns), or B / W of a rank's own shard with --shard-data."""
    return distributed.local_batch(cfg.batch_size, dist_info) if dist_info.sharded else cfg.batch_size


def _train_rank(cfg: TrainConfig, model: Any, optimizer: Any, train_data: Any, val_data: Any, amp_dtype: Any,
                start_epoch: int, dist_info: distributed.DistInfo, plan: Any, run_info: dict[str, Any],
                run_dir: Path) -> TrainResult:
    """Ranks > 0: the same steps as rank 0 (DDP keeps the weights identical), no validation
    (selection is rank 0's), no files. Returns once rank 0 has written the run's files."""
    from fercli.train.optim import set_lr

    step_fn = _make_step(cfg, model, optimizer, train_data, amp_dtype, dist_info)
    t0, images = time.perf_counter(), 0
    for epoch in range(start_epoch, cfg.epochs):
        set_lr(optimizer, _lr_at(cfg, epoch))
        tr = train_one_epoch(model, optimizer, train_data, batch_size=_draw_batch(cfg, dist_info),
                             gen=epoch_generator(cfg.seed, epoch, train_data.x.device), amp_dtype=amp_dtype,
                             augment=cfg.augment, channels_last=cfg.channels_last, step_fn=step_fn,
                             dist=dist_info)
        images += int(tr["images"])
    distributed.barrier(dist_info)
    seconds = time.perf_counter() - t0
    return TrainResult(run_dir=run_dir, best_epoch=-1, best_val_acc=float("nan"), val_split=plan.val_name,
                       test_split=plan.test_name, history=[], device=run_info["device"], fold=cfg.fold,
                       seconds=seconds, images_per_second=images / max(seconds, 1e-9))


def _epoch(cfg: TrainConfig, epoch: int, model: Any, optimizer: Any, step_fn: Any, train_data: Any,
           val_data: Any, amp_dtype: Any, ds: PreparedDataset, history: list[dict[str, Any]],
           best: dict[str, Any], version: Any, run_dir: Path, writer: CheckpointWriter,
           cadence: _Cadence, emit: ProgressCallback,
           dist_info: distributed.DistInfo = distributed.SINGLE,
           ema: WeightEMA | None = None) -> tuple[dict[str, Any], dict[str, Any], int]:
    """One epoch: train, validate, checkpoint on the cadence; returns (row, best, images).
    With --ema the averaged weights are validated and go to best.pt; last.pt keeps the live
    weights (and the average) for --resume."""
    from fercli.train.optim import set_lr

    lr = _lr_at(cfg, epoch)
    set_lr(optimizer, lr)  # in place for a graph's device-tensor lr: no re-capture
    emit("epoch_start", {"epoch": epoch + 1, "epochs": cfg.epochs})
    gen = epoch_generator(cfg.seed, epoch, train_data.x.device)
    t0 = time.perf_counter()
    tr = train_one_epoch(model, optimizer, train_data, batch_size=_draw_batch(cfg, dist_info), gen=gen,
                         amp_dtype=amp_dtype, augment=cfg.augment, channels_last=cfg.channels_last,
                         step_fn=step_fn, on_step=lambda n: emit("step", {"images": n}), dist=dist_info)

    train_seconds = time.perf_counter() - t0
    t_eval = time.perf_counter()
    selected = ema.module if ema is not None else model  # the weights selection is about
    va = evaluate(selected, val_data, batch_size=cfg.eval_batch_size, amp_dtype=amp_dtype,
                  channels_last=cfg.channels_last)
    # *_seconds and img_per_s are timings: the only columns a resumed run may not repeat.
    row = {"epoch": epoch + 1, "train_loss": round(tr["loss"], 6), "train_acc": round(tr["acc"], 6),
           "val_loss": round(va["loss"], 6), "val_acc": round(va["acc"], 6), "lr": lr,
           "img_per_s": round(tr["images"] / max(train_seconds, 1e-9), 2),
           "epoch_seconds": round(time.perf_counter() - t0, 3),  # train + validation
           "eval_seconds": round(time.perf_counter() - t_eval, 3), "checkpoint_seconds": 0.0}
    history.append(row)
    improved = va["acc"] > best["val_acc"] or (va["acc"] == best["val_acc"] and va["loss"] < best["val_loss"])
    if improved:
        best = {"epoch": epoch + 1, "val_acc": va["acc"], "val_loss": va["loss"]}
    due = cadence.due(epoch, cfg.epochs)
    if improved or due:
        t_ck = time.perf_counter()
        writer.wait()  # the previous write; then a CPU snapshot, written in the background
        weights = cpu_copy({k.replace("_orig_mod.", ""): v for k, v in model.state_dict().items()}, True)
        base = {
            "format": CHECKPOINT_FORMAT, "model_spec": dict(model.spec), "classes": ds.classes,
            "model": weights if ema is None else cpu_copy(ema.module.state_dict(), True),
            "epoch": epoch, "best": dict(best), "config": dataclasses.asdict(cfg),
            "dataset_sha256": ds.sha256, "dataset_name": ds.name, "fercli_version": __version__,
            "code_version": version, "world_size": dist_info.world_size,
        }
        opt_state = cpu_copy(optimizer.state_dict()) if due else None
        row["checkpoint_seconds"] = round(time.perf_counter() - t_ck, 3)  # time the device waited
        base["history"] = [dict(h) for h in history]
        jobs = [(run_dir / BEST_CHECKPOINT, base)] if improved else []
        if due:
            last = {**base, "optimizer": opt_state, "model": weights}
            if ema is not None:
                last["ema"] = cpu_copy(ema.state_dict())
            jobs.append((run_dir / LAST_CHECKPOINT, last))
            cadence.last, cadence.wrote = time.perf_counter(), True
        writer.submit(jobs)
    _write_history(run_dir, history)
    return row, best, int(tr["images"])


def _finish(cfg: TrainConfig, run_dir: Path, history: list[dict[str, Any]], best: dict[str, Any],
            plan: Any, run_info: dict[str, Any], t_run: float, images_done: int) -> TrainResult:
    seconds = time.perf_counter() - t_run
    if history:
        try:
            from fercli.evaluation.plots import plot_loss_curve

            plot_loss_curve(history, run_dir / "loss_curve.png")
        except ImportError:  # matplotlib missing: the CSV still has everything
            pass
    result = TrainResult(run_dir=run_dir, best_epoch=int(best["epoch"]), best_val_acc=float(best["val_acc"]),
                         val_split=plan.val_name, test_split=plan.test_name, history=history,
                         device=run_info["device"], fold=cfg.fold, seconds=seconds,
                         images_per_second=images_done / max(seconds, 1e-9))
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
    atomic_write_json(run_dir / "train_summary.json", summary)
    return result



def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
