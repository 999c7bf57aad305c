"""Runs: a run directory from config to checkpoints, with provenance and resume.

`train(cfg)` is what `fer train` calls: it loads the prepared dataset, checks that the
checkpoints fit on the disk, plans the splits (selection never sees the report split), builds
model, optimizer and weight EMA (or loads them from last.pt on --resume) into one Run
(fercli.train.loop), runs its epochs and writes config.json, history.csv, best.pt, last.pt,
loss_curve.png and train_summary.json. With keep_last off (--no-keep-last) a finished run
removes last.pt (the optimizer state only --resume reads), after train_summary.json is written.

    train(cfg)                          every fold of the config (CK+ --fold all: k runs)
      _train_run(cfg, ds)               one run in this process (every rank under torchrun)
        _join, _check_run_dir, _device_data, _build, _resume, _run_info, _open_run_dir
        → Run → loop.fit(run) → _result
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fercli import __version__
from fercli.data import registry
from fercli.data.prepared import PreparedDataset
from fercli.data.resident import plan_splits, to_device
from fercli.device import autocast_dtype, configure_backends, device_name, resolve_device
from fercli.errors import FerError
from fercli.evaluation.calibrate import (
    calibrate_run,  # T for best.pt, fitted on plan.val only
)
from fercli.files import atomic_write_json, read_json, sweep_stale_temps
from fercli.infer.sources import load_model_source
from fercli.model.checkpoints import LAST_CHECKPOINT, load_checkpoint
from fercli.model.networks import build_model, init_trunks_from, resolve_pretrained_weights
from fercli.plots import plot_loss_curve
from fercli.provenance import code_version, training_label
from fercli.train import distributed
from fercli.train.checkpointing import Cadence, Checkpointer, ensure_checkpoint_space
from fercli.train.config import (
    TrainConfig,
    resolve_optimizer,
    train_command,
    validate_config,
)
from fercli.train.engine import make_train_step
from fercli.train.loop import ProgressCallback, Run, fit
from fercli.train.optim import build_optimizer
from fercli.train.regularize import WeightEMA


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
_NO_BEST = {"epoch": -1, "val_acc": -1.0, "val_loss": float("inf")}


def run_dir_for(cfg: TrainConfig, dataset_name: str) -> Path:
    """--out, else a new runs/<dataset>-<model>-<optimizer>-<time> folder."""
    if cfg.out:
        return Path(cfg.out)
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
    """The optimizer's groups. --no-decay-bn-bias: 1-d parameters (BatchNorm weight/bias,
    conv/linear biases) get weight decay 0, every other tensor keeps --weight-decay.
    --trunk-lr F (≠ 1): the trunks' parameters learn at F × the schedule's lr ("lr_scale",
    read by optim.set_lr), the head and the rest at the full lr. Neither: the model itself."""
    if not cfg.no_decay_bn_bias and cfg.trunk_lr == 1.0:
        return model
    in_trunk = {id(p) for t in model.trunks() for p in t.parameters()} if cfg.trunk_lr != 1.0 else set()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = []
    for trunk in ((True, False) if cfg.trunk_lr != 1.0 else (None,)):
        mine = [p for p in params if trunk is None or (id(p) in in_trunk) == trunk]
        scale = {"lr_scale": cfg.trunk_lr} if trunk else {}
        if cfg.no_decay_bn_bias:
            groups += [{"params": [p for p in mine if p.ndim > 1], **scale},
                       {"params": [p for p in mine if p.ndim <= 1], "weight_decay": 0.0, **scale}]
        else:
            groups.append({"params": mine, **scale})
    return [g for g in groups if g["params"]]


def check_fold_all(ds: PreparedDataset) -> None:
    """--fold all: one run per subject fold, so the dataset's split rule must be k-fold."""
    if not registry.dataset_split_rule(ds).kfold:
        raise FerError(f"--fold all is for CK+-style k-fold datasets; {ds.name} has fixed splits")


# Printed once when a plain `fer train` finds no ImageNet weights (TrainConfig.pretrained None).
NO_WEIGHTS_WARNING = ("no ImageNet weights at hand (offline?): training from scratch; pass --weights FILE for "
                      "the paper's pretrained trunks, or --no-pretrained to silence this")


def resolve_pretraining(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """(cfg with `pretrained` true or false, the warning to print once or None).

    pretrained None, the default, means ImageNet trunks when the weights are at hand (--weights,
    torch's hub cache, a download) and from scratch otherwise, with NO_WEIGHTS_WARNING, so that
    a first `fer train` works offline and its config.json says what it did. Asked for (True:
    --pretrained, the paper preset, --weights), weights that cannot be had are refused in one
    line. A resumed run keeps what its config.json records. `fer ablate` sets it on each row and
    runs the pretrained rows only when its plan found the weights."""
    if cfg.init_from and cfg.pretrained is None:
        return dataclasses.replace(cfg, pretrained=False), None  # FER2013 trunks instead
    if cfg.pretrained is not None:
        if cfg.pretrained and cfg.weights is None:
            try:
                resolve_pretrained_weights(None)
            except FerError as exc:
                raise FerError(f"{exc}, or --no-pretrained to train from scratch") from None
        return cfg, None
    if cfg.weights:
        return dataclasses.replace(cfg, pretrained=True), None  # --weights FILE asks for them
    saved = _saved_pretrained(cfg) if cfg.resume else None
    if saved is not None:
        return dataclasses.replace(cfg, pretrained=saved), None
    try:
        resolve_pretrained_weights(None)
    except FerError:
        return dataclasses.replace(cfg, pretrained=False), NO_WEIGHTS_WARNING
    return dataclasses.replace(cfg, pretrained=True), None


def _saved_pretrained(cfg: TrainConfig) -> bool | None:
    """--resume: whether the run in --out started from ImageNet weights (its config.json)."""
    for name in ("config.json", "kfold.json"):
        path = Path(cfg.out or ".") / name
        if cfg.out and path.is_file():
            value = read_json(path, "run config").get("config", {}).get("pretrained")
            if isinstance(value, bool):
                return value
    return None


def train(cfg: TrainConfig, on_event: ProgressCallback | None = None) -> list[TrainResult]:
    """Train one run (or every CK+ fold with fold=-1); returns one result per fold.

    Before the first epoch, rank 0 checks that the checkpoints of every fold fit on the disk
    and reports the estimate (event "disk_estimate")."""
    code_version()  # read here, as the code is imported: every run of this process records it
    validate_config(cfg)
    cfg, warning = resolve_pretraining(cfg)
    if warning and on_event is not None and distributed.env_rank() == 0:
        on_event("warning", {"message": warning})
    ds = registry.load_dataset(cfg.dataset)
    cfg = resolve_optimizer(cfg, ds.name)
    runs, root = [cfg], None
    if cfg.fold == -1:
        check_fold_all(ds)
        root = run_dir_for(cfg, ds.name)
        runs = [dataclasses.replace(cfg, fold=f, out=str(root / f"fold-{f}")) for f in range(int(ds.fold.max()) + 1)]
    try:
        if distributed.env_rank() == 0:
            _sweep_run_dirs(runs, on_event)  # before the space check: a killed write's temp counts as used
            disks = ensure_checkpoint_space(runs, num_classes=len(ds.classes))
            on_event = _with_disk_estimate(on_event, disks)
        results = [_train_run(sub, ds, on_event, warning) for sub in runs]
        if root is not None and distributed.current().is_main:
            atomic_write_json(root / "kfold.json", {"folds": len(runs), "config": dataclasses.asdict(cfg)})
    finally:
        distributed.teardown(distributed.current())
    return results


def _with_disk_estimate(on_event: ProgressCallback | None, disks: list[Any]) -> ProgressCallback | None:
    """on_event that reports the checkpoints' disk estimate ("disk_estimate": per disk, a dict
    and a line of text) just before the first run starts: after every check that can refuse
    the run, so a refused run still says only its one error line."""
    if on_event is None:
        return None
    pending = [{"disks": [d.as_dict() for d in disks], "lines": [d.text() for d in disks]}]

    def emit(kind: str, info: dict[str, Any]) -> None:
        if kind == "run_start" and pending:
            on_event("disk_estimate", pending.pop())
        on_event(kind, info)

    return emit


def _sweep_run_dirs(runs: list[TrainConfig], on_event: ProgressCallback | None) -> None:
    """Remove what killed writers left in the run directories (a SIGKILL during a checkpoint
    write leaves a temp as large as the checkpoint): files.sweep_stale_temps. A run without
    --out gets a new folder: nothing to sweep."""
    for sub in runs:
        if not sub.out:
            continue
        run_dir = Path(sub.out)
        removed = sweep_stale_temps(run_dir)
        if removed and on_event is not None:
            on_event("swept_temps", {"run_dir": str(run_dir), "files": [n for n, _ in removed],
                                     "bytes": sum(b for _, b in removed)})


def _init_from(cfg: TrainConfig, ds: PreparedDataset, model: torch.nn.Module) -> dict[str, Any]:
    """--init-from: copy a FER2013 model's trunks into `model` (fresh head), or with
    --init-head the whole model (a fine-tune on the source's own dataset); its provenance."""
    src = load_model_source(cfg.init_from, "--init-from")
    if registry.find(src.dataset_name) is not registry.FER2013:
        raise FerError(f"--init-from {src.path} was trained on {src.dataset_name or 'an unrecorded dataset'}, "
                       f"not FER2013: FER2013-pretrained runs start from a FER2013 model")
    if training_label(src.train_config) not in ("from scratch", "from scratch, fine-tuned"):
        raise FerError(f"--init-from {src.path} did not start from scratch ({training_label(src.train_config)}): "
                       f"give a from-scratch FER2013 model")
    if not cfg.init_head:
        copied = init_trunks_from(model, src.model)
        return {**src.provenance(), "ref": cfg.init_from, "tensors_copied": copied, "head": "fresh (random init)",
                "label": "FER2013-pretrained"}
    if registry.find(ds.name) is not registry.FER2013 or list(ds.classes) != list(src.classes):
        raise FerError(f"--init-head continues {src.path} on its own dataset (FER2013, its classes); "
                       f"this run trains on {ds.name}: drop --init-head to transfer the trunks only")
    mine, theirs = dict(model.spec), dict(src.model.spec)
    if mine != theirs:
        raise FerError(f"--init-head: {src.path} is {theirs}, this run builds {mine}: give the source's "
                       f"--arch, --image-size and --shared-backbone")
    state = src.model.state_dict()
    model.load_state_dict(state, strict=True)
    return {**src.provenance(), "ref": cfg.init_from, "tensors_copied": len(state), "head": "copied",
            "label": "from scratch, fine-tuned"}


def _quiet(kind: str, info: dict[str, Any]) -> None:
    pass


def _train_run(cfg: TrainConfig, ds: PreparedDataset, on_event: ProgressCallback | None,
               pretrained_note: str | None = None) -> TrainResult:
    """One run (one fold) in this process: set up the Run, train it, report. Under torchrun
    every rank runs this; only rank 0 validates, writes and reports."""
    device, dist_info = _join(cfg)
    emit = (on_event or _quiet) if dist_info.is_main else _quiet
    run_dir = run_dir_for(cfg, ds.name)
    _check_run_dir(cfg, run_dir)
    plan, n_train, train_data, val_data = _device_data(cfg, ds, device, dist_info)
    model, optimizer, ema, init_source = _build(cfg, ds, device, dist_info)
    history, best, start_epoch = [], dict(_NO_BEST), 0
    if cfg.resume:
        history, best, start_epoch = _resume(cfg, ds, run_dir / LAST_CHECKPOINT, dist_info, model, optimizer, ema)
    amp_dtype = autocast_dtype(device, cfg.precision)
    info = _run_info(cfg, ds, plan, n_train, dist_info, device, amp_dtype, model, init_source)
    if pretrained_note:
        info["pretrained_note"] = pretrained_note  # why config.pretrained is false: no weights at hand
    identity = {"model_spec": dict(model.spec), "classes": ds.classes, "config": dataclasses.asdict(cfg),
                "training_command": train_command(dataclasses.asdict(cfg)), "dataset_sha256": ds.sha256, "dataset_name": ds.name, "fercli_version": __version__,
                "code_version": info["code_version"], "world_size": dist_info.world_size}
    # The directory is created only here, after everything that can fail on bad input (dataset,
    # weights, resume checks) has passed, so a refused run leaves no directory behind.
    distributed.barrier(dist_info)  # every rank passed the checks above before rank 0 writes
    if dist_info.is_main:
        info = _open_run_dir(cfg, run_dir, info, start_epoch)
    run = Run(cfg=cfg, dist=dist_info, model=model, optimizer=optimizer, schedule=functools.partial(_lr_at, cfg),
              ema=ema, step=_make_step(cfg, model, optimizer, train_data, amp_dtype, dist_info, ema),
              train_data=train_data, val_data=val_data, amp_dtype=amp_dtype, run_dir=run_dir, checkpoints=None,
              history=history, best=best, start_epoch=start_epoch)
    if dist_info.is_main:
        run.checkpoints = Checkpointer(run_dir, identity, cadence=Cadence.parse(cfg.checkpoint_every),
                                       epochs=cfg.epochs, steps_per_epoch=run.steps_per_epoch,
                                       last_good=start_epoch - 1 if cfg.resume else None)
    emit("run_start", {"run_dir": str(run_dir), "epochs": cfg.epochs, "start_epoch": start_epoch,
                       "train_images": n_train, "device": info["device"], "steps_per_epoch": run.steps_per_epoch,
                       "cuda_graphs": run.step.graphed})
    t_run = time.perf_counter()
    images = fit(run, emit)
    result = _result(run, plan, info, time.perf_counter() - t_run, images)
    if dist_info.is_main:
        calibrate_run(run_dir, val_data, plan, ds, batch_size=cfg.eval_batch_size, amp_dtype=amp_dtype)
        if not cfg.keep_last:  # finished and recorded (train_summary.json): best.pt is what stays
            (run_dir / LAST_CHECKPOINT).unlink(missing_ok=True)
    distributed.barrier(dist_info)  # the other ranks return once the run's files are written
    return result


def _join(cfg: TrainConfig) -> tuple[torch.device, distributed.DistInfo]:
    """This process's device and place in a data-parallel group (under torchrun: one GPU per
    rank; only rank 0 reports and writes)."""
    if cfg.threads is not None:
        # On a busy 2-core machine one thread is several times faster than two fighting
        # over a shared core (docs/benchmarks.md); on an idle machine the default wins.
        torch.set_num_threads(max(1, cfg.threads))
    device = resolve_device(cfg.device)
    dist_info = distributed.setup(device.type)
    if dist_info.enabled and cfg.shard_data:
        dist_info = dataclasses.replace(dist_info, sharded=True)
    device = distributed.rank_device(dist_info, device)
    configure_backends(device, cfg.deterministic)
    return device, dist_info


def _check_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    last_path = run_dir / LAST_CHECKPOINT
    if run_dir.exists() and any(run_dir.iterdir()) and not (cfg.resume or cfg.force):
        raise FerError(f"run directory {run_dir} already exists: pass --resume to continue it "
                       f"or --force to start over")
    if cfg.resume and not last_path.is_file():
        pruned = (run_dir / "train_summary.json").is_file()
        raise FerError(f"--resume: no checkpoint {last_path} to resume from"
                       + (" (the run finished and kept only best.pt: --no-keep-last)" if pruned else ""))


def _device_data(cfg: TrainConfig, ds: PreparedDataset, device: torch.device,
                 dist_info: distributed.DistInfo) -> tuple[Any, int, Any, Any]:
    """(split plan, training images, train and validation DeviceSplits): --train-subset draws
    a seeded subset; --shard-data keeps this rank's share on its device."""
    plan = plan_splits(ds, cfg.fold)
    train_idx = plan.train
    if cfg.train_subset is not None:
        rng = np.random.default_rng(cfg.seed)
        train_idx = np.sort(rng.permutation(train_idx)[: cfg.train_subset])
    rows = distributed.shard_rows(train_idx, dist_info) if dist_info.sharded else train_idx
    return plan, int(train_idx.size), to_device(ds, rows, device), to_device(ds, plan.val, device)


def _build(cfg: TrainConfig, ds: PreparedDataset, device: torch.device,
           dist_info: distributed.DistInfo) -> tuple[Any, Any, WeightEMA | None, dict[str, Any] | None]:
    """(model, optimizer, weight EMA, --init-from provenance). Model init is seeded; CPU
    kernels are deterministic for what we use."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(ds.classes), image_size=cfg.image_size,
                        pretrained=cfg.pretrained, weights=cfg.weights,
                        shared_backbone=cfg.shared_backbone, freeze_backbone=cfg.freeze_backbone)
    init_source = _init_from(cfg, ds, model) if cfg.init_from and not cfg.resume else None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, _param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                gc_conv_only=cfg.gc_conv_only)
    # --ema: a moving average of the weights is what gets validated, selected and saved; that
    # is rank 0's work, so the other ranks of a data-parallel run keep none.
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 and dist_info.is_main else None
    return model, optimizer, ema, init_source


def _resume(cfg: TrainConfig, ds: PreparedDataset, last_path: Path, dist_info: distributed.DistInfo,
            model: Any, optimizer: Any, ema: WeightEMA | None) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """--resume: check that last.pt belongs to this run and load its states into model,
    optimizer and EMA; returns (history, best, first epoch to train)."""
    ckpt = load_checkpoint(last_path)
    if ckpt.get("dataset_sha256") != ds.sha256:
        raise FerError(f"--resume: {last_path} was trained on different data (dataset sha256 differs)")
    saved = ckpt.get("config", {})
    for key in ("model", "optimizer", "image_size", "shared_backbone", "seed", "batch_size", "fold",
                "init_from", "init_head", "trunk_lr", "random_erasing", "mixup", "cutmix", "ema", "scale_aug",
                "photometric"):
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
    return list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"]) + 1


def _run_info(cfg: TrainConfig, ds: PreparedDataset, plan: Any, n_train: int, dist_info: distributed.DistInfo,
              device: torch.device, amp_dtype: Any, model: Any, init_source: dict[str, Any] | None) -> dict[str, Any]:
    """config.json: what the run is, on which data, by which code, where (its provenance)."""
    return {
        "config": dataclasses.asdict(cfg),
        "training_command": train_command(dataclasses.asdict(cfg)),
        "dataset": {"name": ds.name, "path": str(ds.path), "sha256": ds.sha256,
                    "classes": ds.classes, "train": n_train, "val": int(plan.val.size),
                    "test": int(plan.test.size), "val_split": plan.val_name, "test_split": plan.test_name},
        "code_version": code_version(),  # once per run: every checkpoint of this process carries it
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


def _open_run_dir(cfg: TrainConfig, run_dir: Path, run_info: dict[str, Any], start_epoch: int) -> dict[str, Any]:
    """Create the run directory and write config.json; returns what config.json holds. A
    resume keeps the first config.json (its start time, device and commit are the run's
    origin) and appends an event instead of overwriting them."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FerError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise FerError(f"run directory {run_dir} is not writable")
    if cfg.resume and (run_dir / "config.json").is_file():
        # Keep the first config.json (its start time, device and commit are the run's
        # origin); each resume appends an event instead of overwriting them.
        first = read_json(run_dir / "config.json", "run config")
        first.setdefault("resumes", []).append(
            {"time": run_info["started"], "from_epoch": start_epoch,
             "code_version": run_info["code_version"], "device": run_info["device"]})
        run_info = first
    atomic_write_json(run_dir / "config.json", run_info)
    return run_info


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
                           photometric=cfg.photometric,
                           cuda_graphs=cfg.cuda_graphs and not cfg.compile and not dist_info.enabled)


def _result(run: Run, plan: Any, run_info: dict[str, Any], seconds: float, images: int) -> TrainResult:
    """What train() returns for this process's run. Rank 0 (or the only process) also draws
    loss_curve.png and writes train_summary.json; the other ranks report only their timing."""
    cfg = run.cfg
    if run.checkpoints is None:
        return TrainResult(run_dir=run.run_dir, best_epoch=-1, best_val_acc=float("nan"), val_split=plan.val_name,
                           test_split=plan.test_name, history=[], device=run_info["device"], fold=cfg.fold,
                           seconds=seconds, images_per_second=images / max(seconds, 1e-9))
    if run.history:
        try:
            plot_loss_curve(run.history, run.run_dir / "loss_curve.png")
        except ImportError:  # matplotlib missing: the CSV still has everything
            pass
    result = TrainResult(run_dir=run.run_dir, best_epoch=int(run.best["epoch"]),
                         best_val_acc=float(run.best["val_acc"]), val_split=plan.val_name,
                         test_split=plan.test_name, history=run.history, device=run_info["device"], fold=cfg.fold,
                         seconds=seconds, images_per_second=images / max(seconds, 1e-9))
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()}
    atomic_write_json(run.run_dir / "train_summary.json", summary)
    return result
