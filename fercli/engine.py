"""Training and evaluation engine: the whole dataset lives on the device.

The path from data to device is all in this file, in this order:

    PreparedDataset (numpy uint8, N×48×48)            fercli.dataset.load_prepared
      → DeviceSplit: one torch.uint8 tensor (N, 1, 48, 48) on the device, labels int64
      → batches: slices of a torch.randperm made on the device (no DataLoader, no workers)
      → augment_batch: one affine_grid + grid_sample for the whole batch (crop/translate,
        flip, rotation), on the device
      → model: FaceInput resizes to --image-size, repeats grey to 3 channels, normalises
      → bf16 autocast (CUDA; CPU when the CPU has bf16 kernels), channels_last

No `.item()` or other host sync happens inside an epoch: running loss and accuracy are
accumulated on the device and read once per epoch. Each epoch's shuffling and augmentation
draw from a generator seeded by (seed, epoch), so a run resumed from the last epoch
checkpoint replays exactly what the uninterrupted run would have done.

Nothing here imports Typer or Rich: progress is reported through a callback.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fercli import __version__
from fercli.dataset import PreparedDataset, load_prepared
from fercli.errors import FerError
from fercli.fsutil import atomic_save, atomic_write_json, atomic_write_text
from fercli.metrics import aggregate_folds, classification_metrics

CHECKPOINT_FORMAT = "fercli-checkpoint-v1"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"

# Progress events: ("epoch_start", {...}), ("step", {"images": n}), ("epoch_end", row).
ProgressCallback = Callable[[str, dict[str, Any]], None]
# One optimisation step on a batch: (x, y) -> (loss, logits), see make_train_step.
TrainStep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved verbatim to config.json."""

    dataset: str = "fer2013"  # fer2013 | ck+ | path to a prepared directory
    model: str = "bcnn-resnet34"
    optimizer: str = "auto"  # auto = the paper's choice: adamw-gc (FER2013), adam-gc (CK+)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | constant
    image_size: int = 48
    pretrained: bool = True
    weights: str | None = None
    shared_backbone: bool = False
    freeze_backbone: bool = False
    gc_conv_only: bool = False
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | bf16 | fp32
    compile: bool = False
    channels_last: bool = True
    augment: bool = True
    seed: int = 0
    fold: int | None = None  # CK+: test fold; None = fold 0; -1 = every fold
    train_subset: int | None = None  # use only N training images (smoke runs)
    out: str | None = None
    resume: bool = False
    force: bool = False
    eval_batch_size: int = 256
    threads: int | None = None  # CPU intra-op threads; None = torch's default (one per core)


SCHEDULES = ("cosine", "constant")
PRESETS = ("paper",)

# §3.2 of the paper: batch 16, lr 1e-4, 200 epochs, ImageNet-pretrained, AdamW-GC on
# FER2013 / Adam-GC on CK+ (the optimizer is resolved per dataset by "auto"). The paper
# names no schedule, so the preset keeps the learning rate constant.
PAPER_PRESET = {"batch_size": 16, "lr": 1e-4, "epochs": 200, "pretrained": True,
                "optimizer": "auto", "schedule": "constant"}


def make_train_config(preset: str | None = None, **explicit: Any) -> TrainConfig:
    """TrainConfig from a preset plus explicitly given options (explicit ones win)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise FerError(f"--preset {preset!r} is not one of: {', '.join(PRESETS)}")
        values.update(PAPER_PRESET)
    values.update({k: v for k, v in explicit.items() if v is not None})
    return TrainConfig(**values)


def resolve_optimizer(cfg: TrainConfig, dataset_name: str) -> TrainConfig:
    if cfg.optimizer != "auto":
        return cfg
    is_ck = dataset_name.lower().startswith("ck")
    return dataclasses.replace(cfg, optimizer="adam-gc" if is_ck else "adamw-gc")
PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")


def validate_config(cfg: TrainConfig) -> None:
    from fercli.model import MODEL_NAMES
    from fercli.optim import OPTIMIZER_NAMES

    def allowed(field: str, value: Any, names: tuple[str, ...]) -> None:
        if value not in names:
            raise FerError(f"--{field} {value!r} is not one of: {', '.join(names)}")

    allowed("model", cfg.model, tuple(MODEL_NAMES))
    allowed("optimizer", cfg.optimizer, ("auto", *OPTIMIZER_NAMES))
    allowed("schedule", cfg.schedule, SCHEDULES)
    allowed("precision", cfg.precision, PRECISIONS)
    allowed("device", cfg.device, DEVICES)
    for name in ("epochs", "batch_size", "image_size", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            raise FerError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(cfg, name)}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise FerError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise FerError(f"--weight-decay must be ≥ 0, got {cfg.weight_decay}")
    if cfg.image_size < 32:
        raise FerError(f"--image-size must be ≥ 32 (ResNet34 downsamples 32×), got {cfg.image_size}")


# --------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FerError("--device cuda requested but no CUDA GPU is available (use --device cpu)")
    if name not in DEVICES:
        raise FerError(f"--device {name!r} is not one of: {', '.join(DEVICES)}")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast where it pays: always on CUDA; on CPU only with native bf16 support."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # On a CPU without AVX512-BF16/AMX bf16 autocast is slower than fp32.
    try:
        caps = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        caps = ""
    return torch.bfloat16 if "AVX512" in caps.upper() else None


def git_version() -> str:
    """`<commit>[+dirty]` of the checkout the code runs from, or `unknown`."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------- data


@dataclass
class DeviceSplit:
    """One split resident on the device: x uint8 (N, 1, H, W), y int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def to_device(ds: PreparedDataset, idx: np.ndarray, device: torch.device) -> DeviceSplit:
    # uint8 on the device: FER2013 is 83 MB this way, 4× less than float32.
    x = torch.from_numpy(np.ascontiguousarray(ds.images[idx])).unsqueeze(1).to(device)
    y = torch.from_numpy(ds.labels[idx].astype(np.int64)).to(device)
    return DeviceSplit(x, y)


@dataclass(frozen=True)
class SplitPlan:
    """Which rows train, which select checkpoints (val) and which are reported (test)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    val_name: str
    test_name: str


def plan_splits(ds: PreparedDataset, fold: int | None) -> SplitPlan:
    """FER2013: train / PublicTest (selection) / PrivateTest (report).

    CK+: test = fold K; validation = fold K+1 (mod k), carved from the training folds and
    grouped by subject like every fold; train = the rest. Selection never sees the test fold.
    """
    splits = set(ds.split.tolist())
    if "train" in splits:
        if "public_test" in splits:
            val, test = ds.indices("public_test"), ds.indices("private_test")
            return SplitPlan(ds.indices("train"), val, test, "public_test", "private_test")
        if "test" in splits:
            # No PublicTest/PrivateTest separation: carve validation from train, 10% by index
            # hash so it is deterministic, and report on `test`.
            tr = ds.indices("train")
            rng = np.random.default_rng(0)
            mask = rng.random(tr.size) < 0.1
            return SplitPlan(tr[~mask], tr[mask], ds.indices("test"), "train_holdout", "test")
        raise FerError(f"{ds.path}: has a train split but no public_test/test split to select on")
    folds = ds.fold
    k = int(folds.max()) + 1 if folds.size else 0
    if k < 3:
        raise FerError(f"{ds.path}: needs ≥ 3 subject folds for train/val/test, found {k}")
    test_fold = 0 if fold is None else fold
    if not 0 <= test_fold < k:
        raise FerError(f"--fold {test_fold} is out of range: {ds.name} has folds 0..{k - 1}")
    val_fold = (test_fold + 1) % k
    test = np.flatnonzero(folds == test_fold)
    val = np.flatnonzero(folds == val_fold)
    train = np.flatnonzero((folds != test_fold) & (folds != val_fold))
    return SplitPlan(train, val, test, f"fold{val_fold}", f"fold{test_fold}")


# --------------------------------------------------------------------------- augmentation


def augment_batch(
    x: torch.Tensor,
    gen: torch.Generator,
    max_shift: float = 0.1,
    max_rotate_deg: float = 10.0,
    flip: bool = True,
) -> torch.Tensor:
    """Random translate (±10% ≈ ±5 px at 48 px, the usual pad-4-and-crop), horizontal
    flip (p=0.5) and rotation (±10°), all in one affine_grid + grid_sample for the batch.

    x: float (B, 1, H, W) in [0, 1]. Border pixels are replicated, like a padded crop
    without black edges. Every random number comes from `gen` (on x's device).
    """
    b = x.shape[0]
    r = torch.rand(b, 4, generator=gen, device=x.device, dtype=torch.float32)
    angle = (r[:, 0] * 2 - 1) * math.radians(max_rotate_deg)
    tx = (r[:, 1] * 2 - 1) * 2 * max_shift  # affine_grid coordinates span [-1, 1] = 2 units
    ty = (r[:, 2] * 2 - 1) * 2 * max_shift
    sx = torch.where(r[:, 3] < 0.5, -1.0, 1.0) if flip else torch.ones_like(tx)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


# --------------------------------------------------------------------------- loops


def _autocast(device: torch.device, dtype: torch.dtype | None):  # type: ignore[no-untyped-def]
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                          enabled=dtype is not None)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceSplit,
    *,
    batch_size: int,
    gen: torch.Generator,
    amp_dtype: torch.dtype | None,
    augment: bool = True,
    channels_last: bool = False,
    step_fn: TrainStep | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass over `data` in random order; returns mean loss, accuracy and images seen.

    Drops the last partial batch so every step has the same shape (what torch.compile and
    CUDA graphs want); with fewer images than one batch, the batch shrinks to fit.
    """
    model.train()
    device = data.x.device
    n = len(data)
    bs = min(batch_size, n)
    steps = n // bs
    perm = torch.randperm(n, generator=gen, device=device)
    if step_fn is None:
        step_fn = make_train_step(model, optimizer, device, amp_dtype)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for s in range(steps):
        idx = perm[s * bs:(s + 1) * bs]
        x = data.x[idx].float().div_(255)  # (B, 1, H, W) in [0, 1]
        y = data.y[idx]
        if augment:
            x = augment_batch(x, gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits = step_fn(x, y)
        loss_sum += loss.detach() * bs
        correct += (logits.detach().argmax(1) == y).sum()
        if on_step is not None:
            on_step(bs)
    seen = max(steps * bs, 1)
    # The one host sync of the epoch.
    return {"loss": float(loss_sum) / seen, "acc": float(correct) / seen, "images": steps * bs}


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    x_uint8: torch.Tensor,
    *,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
    tta: str = "none",
    channels_last: bool = False,
) -> torch.Tensor:
    """Batched inference over uint8 (N, 1, H, W); returns float32 log-probabilities (N, C).

    tta: none | flip (average with the mirrored face) | ten-crop (4 corners + centre at
    90% size, each also mirrored; the model resizes crops back to its input size).
    """
    if tta not in TTA_MODES:
        raise FerError(f"--tta {tta!r} is not one of: {', '.join(TTA_MODES)}")
    model.eval()
    device = x_uint8.device
    out = []
    for s in range(0, x_uint8.shape[0], batch_size):
        x = x_uint8[s:s + batch_size].float().div_(255)
        views = _tta_views(x, tta)
        probs = 0
        for v in views:
            if channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp_dtype):
                logits = model(v)
            probs = probs + logits.float().softmax(1)
        out.append((probs / len(views)).clamp_min(1e-12).log())
    return torch.cat(out) if out else torch.zeros(0, 0)


TTA_MODES = ("none", "flip", "ten-crop")


def _tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, x.flip(3)]
    h, w = x.shape[-2:]
    ch, cw = round(h * 0.9), round(w * 0.9)
    crops = [x[..., :ch, :cw], x[..., :ch, w - cw:], x[..., h - ch:, :cw], x[..., h - ch:, w - cw:],
             x[..., (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]]
    return crops + [c.flip(3) for c in crops]


def evaluate(
    model: nn.Module, data: DeviceSplit, *, batch_size: int = 256,
    amp_dtype: torch.dtype | None = None, tta: str = "none", channels_last: bool = False,
) -> dict[str, Any]:
    """Loss, accuracy and predictions on a device-resident split (batched, no grad)."""
    if len(data) == 0:
        return {"loss": float("nan"), "acc": float("nan"), "pred": np.zeros(0, dtype=np.int64)}
    logp = predict_logits(model, data.x, batch_size=batch_size, amp_dtype=amp_dtype, tta=tta,
                          channels_last=channels_last)
    loss = F.nll_loss(logp, data.y)
    pred = logp.argmax(1)
    acc = (pred == data.y).float().mean()
    return {"loss": float(loss), "acc": float(acc), "pred": pred.cpu().numpy()}


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file + rename: a kill never leaves a half-written checkpoint."""
    with atomic_save(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a fercli checkpoint without executing code from it (weights_only=True)."""
    path = Path(path)
    if path.is_dir():
        raise FerError(f"{path} is a directory; expected a checkpoint file (.pt)")
    if not path.is_file():
        raise FerError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise FerError(f"{path}: refused to load: the file contains code or objects that are "
                           f"not plain tensors (untrusted pickle)") from None
        raise FerError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FerError(f"{path}: not a fercli checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    for key in ("model_spec", "model", "classes"):
        if key not in ckpt:
            raise FerError(f"{path}: checkpoint is missing '{key}'")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint") -> nn.Module:
    """Rebuild the architecture from its spec and load the weights, strictly."""
    from fercli.model import model_from_spec

    model = model_from_spec(ckpt["model_spec"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise FerError(f"{path}: weights do not fit model {ckpt['model_spec'].get('name')}: {first[:160]}") from None
    return model


# --------------------------------------------------------------------------- training


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


def default_run_dir(cfg: TrainConfig, dataset_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset_name}-{cfg.model}-{cfg.optimizer}-{stamp}"


def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))  # epoch is 0-based


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
        for f in range(k):
            sub = dataclasses.replace(cfg, fold=f, out=str(root / f"fold-{f}"))
            results.append(_train_single(sub, ds, on_event))
        atomic_write_json(root / "kfold.json", {"folds": k, "config": dataclasses.asdict(cfg)})
        return results
    return [_train_single(cfg, ds, on_event)]


def _train_single(cfg: TrainConfig, ds: PreparedDataset, on_event: ProgressCallback | None) -> TrainResult:
    from fercli.model import build_model
    from fercli.optim import build_optimizer

    emit = on_event or (lambda kind, info: None)
    if cfg.threads is not None:
        # On a busy 2-core machine one thread is several times faster than two fighting
        # over a shared core (docs/benchmarks.md); on an idle machine the default wins.
        torch.set_num_threads(max(1, cfg.threads))
    device = resolve_device(cfg.device)
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
    train_data = to_device(ds, train_idx, device)
    val_data = to_device(ds, plan.val, device)

    # Model init is seeded; CPU kernels are deterministic for what we use.
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(ds.classes), image_size=cfg.image_size,
                        pretrained=cfg.pretrained, weights=cfg.weights,
                        shared_backbone=cfg.shared_backbone, freeze_backbone=cfg.freeze_backbone)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                gc_conv_only=cfg.gc_conv_only)

    history: list[dict[str, Any]] = []
    best = {"epoch": -1, "val_acc": -1.0, "val_loss": float("inf")}
    start_epoch = 0
    if cfg.resume:
        ckpt = load_checkpoint(last_path)
        if ckpt.get("dataset_sha256") != ds.sha256:
            raise FerError(f"--resume: {last_path} was trained on different data (dataset sha256 differs)")
        saved = ckpt.get("config", {})
        for key in ("model", "optimizer", "image_size", "shared_backbone", "seed", "batch_size", "fold"):
            if saved.get(key) != getattr(cfg, key):
                raise FerError(f"--resume: --{key.replace('_', '-')} {getattr(cfg, key)!r} differs from "
                               f"the run's {saved.get(key)!r} in {last_path}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, best, start_epoch = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"]) + 1

    run_info = {
        "config": dataclasses.asdict(cfg),
        "dataset": {"name": ds.name, "path": str(ds.path), "sha256": ds.sha256,
                    "classes": ds.classes, "train": int(train_idx.size), "val": int(plan.val.size),
                    "test": int(plan.test.size), "val_split": plan.val_name, "test_split": plan.test_name},
        "code_version": git_version(),
        "fercli_version": __version__,
        "torch_version": torch.__version__,
        "device": device_name(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "seed": cfg.seed,
        "model_spec": dict(model.spec),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # Created only now, after everything that can fail on bad input (dataset, weights, resume
    # checks) has passed, so a refused run leaves no directory behind.
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FerError(f"cannot create run directory {run_dir}: {exc.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise FerError(f"run directory {run_dir} is not writable")
    atomic_write_json(run_dir / "config.json", run_info)

    step_fn = None
    if cfg.compile:
        step_fn = _compiled_step(model, optimizer, device, amp_dtype)

    emit("run_start", {"run_dir": str(run_dir), "epochs": cfg.epochs, "start_epoch": start_epoch,
                       "train_images": int(train_idx.size), "device": run_info["device"],
                       "steps_per_epoch": max(len(train_data) // min(cfg.batch_size, len(train_data)), 1)})
    t_run = time.perf_counter()
    images_done = 0
    for epoch in range(start_epoch, cfg.epochs):
        lr = _lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        emit("epoch_start", {"epoch": epoch + 1, "epochs": cfg.epochs})
        gen = epoch_generator(cfg.seed, epoch, device)
        t0 = time.perf_counter()
        tr = train_one_epoch(model, optimizer, train_data, batch_size=cfg.batch_size, gen=gen,
                             amp_dtype=amp_dtype, augment=cfg.augment,
                             channels_last=cfg.channels_last, step_fn=step_fn,
                             on_step=lambda n: emit("step", {"images": n}))
        train_seconds = time.perf_counter() - t0
        seen = tr["images"]
        images_done += seen
        va = evaluate(model, val_data, batch_size=cfg.eval_batch_size, amp_dtype=amp_dtype,
                      channels_last=cfg.channels_last)
        row = {"epoch": epoch + 1, "train_loss": round(tr["loss"], 6), "train_acc": round(tr["acc"], 6),
               "val_loss": round(va["loss"], 6), "val_acc": round(va["acc"], 6), "lr": lr,
               "img_per_s": round(seen / max(train_seconds, 1e-9), 2),
               "epoch_seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        improved = va["acc"] > best["val_acc"] or (va["acc"] == best["val_acc"] and va["loss"] < best["val_loss"])
        if improved:
            best = {"epoch": epoch + 1, "val_acc": va["acc"], "val_loss": va["loss"]}
        payload = {
            "format": CHECKPOINT_FORMAT, "model_spec": dict(model.spec), "classes": ds.classes,
            "model": _cpu_state(model), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "history": history, "best": best, "config": dataclasses.asdict(cfg),
            "dataset_sha256": ds.sha256, "dataset_name": ds.name, "fercli_version": __version__,
        }
        if improved:
            # best.pt: selected on validation data only (PublicTest / a CK+ training fold).
            best_payload = {k: v for k, v in payload.items() if k != "optimizer"}
            save_checkpoint(run_dir / BEST_CHECKPOINT, best_payload)
        save_checkpoint(last_path, payload)
        _write_history(run_dir, history)
        emit("epoch_end", row)

    seconds = time.perf_counter() - t_run
    if history:
        try:
            from fercli.plots import plot_loss_curve

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


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # Strip torch.compile's `_orig_mod.` prefix if present; store contiguous CPU tensors.
    return {k.replace("_orig_mod.", ""): v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def make_train_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                    device: torch.device, amp_dtype: torch.dtype | None,
                    cuda_graphs: bool = False) -> TrainStep:
    """One optimisation step: (x, y) -> (loss, logits), no host sync.

    `forward` is the model, or torch.compile(model) for --compile. With CUDA graphs
    (torch.compile mode reduce-overhead) the outputs live in graph-owned memory that the
    next replay overwrites, so they are cloned before the caller accumulates them.
    """

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp_dtype):
            logits = forward(x)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        if cuda_graphs:
            return loss.detach().clone(), logits.detach().clone()
        return loss, logits

    return step


def _compiled_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                   amp_dtype: torch.dtype | None) -> TrainStep:
    """`fer train --compile`: forward+backward through torch.compile; the optimizer step stays eager."""
    return make_train_step(torch.compile(model), optimizer, device, amp_dtype)


# --------------------------------------------------------------------------- evaluation


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


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
