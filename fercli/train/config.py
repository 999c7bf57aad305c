"""Training configuration: the frozen TrainConfig, presets and validation.

`fer train` builds exactly one TrainConfig (CLI options over a preset) and hands it to
`fercli.train.runs.train`; config.json records it verbatim.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from fercli.data import registry
from fercli.device import DEVICES
from fercli.errors import FerError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved verbatim to config.json."""

    dataset: str = "fer2013"  # fer2013 | ck+ | path to a prepared directory
    model: str = "bcnn-resnet34"
    optimizer: str = "auto"  # auto = the paper's choice: adamw-gc (FER2013), adam-gc (CK+)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-4
    trunk_lr: float = 1.0  # the trunks' lr as a fraction of lr (the head keeps lr): runs._param_groups
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | constant | onecycle (runs._lr_at)
    image_size: int = 48
    # ImageNet trunks. None (the default): when at hand (--weights, torch's hub cache, a
    # download), else from scratch with one warning (runs.resolve_pretraining); True: required.
    # A run's config.json records what was used, true or false.
    pretrained: bool | None = None
    weights: str | None = None
    # FER2013-pretrained trunks: RUN_DIR | CHECKPOINT.pt | EXPORT.npz | "default" (fercli.infer.sources);
    # the classifier head stays freshly initialised. Excludes --pretrained (ImageNet).
    init_from: str | None = None
    # With init_from: copy the source's classifier head too (same classes), so the run goes
    # on training the source model: a fine-tune (runs._init_from). Off: transfer, fresh head.
    init_head: bool = False
    # Recipe options for the from-scratch search; the defaults keep the measured behaviour.
    label_smoothing: float = 0.0  # cross-entropy target smoothing (engine.make_train_step)
    warmup_epochs: int = 0  # linear lr warm-up over the first N epochs, then the schedule
    no_decay_bn_bias: bool = False  # weight decay 0 on 1-d parameters (BatchNorm, biases)
    random_erasing: float = 0.0  # probability of erasing a rectangle per image (fercli.train.regularize)
    mixup: float = 0.0  # mixup Beta(α, α) parameter; 0 = off
    cutmix: float = 0.0  # cutmix Beta(α, α) parameter; 0 = off (excludes mixup)
    scale_aug: float = 0.0  # random zoom in [1 − s, 1 + s] in the affine augmentation; 0 = off
    photometric: float = 0.0  # probability of each of contrast, gamma, blur, JPEG jitter (fercli.train.photometric)
    ema: float = 0.0  # decay of the weight EMA that is validated and saved; 0 = off
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
    cuda_graphs: bool = True  # capture the train step as a CUDA graph (CUDA, adam*/adamw*)
    deterministic: bool = False  # deterministic kernels; off: cudnn.benchmark + TF32 on CUDA
    checkpoint_every: str = "60s"  # last.pt every N epochs ("5") or N seconds ("60s"), + the end
    shard_data: bool = False  # torchrun: each rank holds only its 1/W of the training rows
    # After the run finishes: keep last.pt (optimizer state; --resume with more --epochs needs
    # it) or remove it, leaving best.pt and the records (fer ablate's default: runs.prune_last)
    keep_last: bool = True


SCHEDULES = ("cosine", "constant", "onecycle")

# `--preset NAME` in `fer train` and `fer ablate` (which keeps each row's own architecture,
# optimizer and starting weights: fercli.ablation.ablate): recipe files shipped in the package,
# fercli/train/presets/NAME.toml, each saying why it holds what it holds. Listed here in the
# order `--preset`'s help explains them.
PRESET_DIR = Path(__file__).with_name("presets")
PRESETS = ("paper", "short", "fer2013-scratch", "ckplus-transfer")
DEPRECATED_PRESETS = {"fast": "short"}  # old name -> name; the CLI warns when one is used
# Fields of a run's config.json that belong to that run, not to its recipe: `--config
# run/config.json` trains the same recipe again, into a directory of its own.
RUN_ONLY_FIELDS = ("out", "resume", "force", "keep_last")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a recipe file sets: a TOML file of `field = value` lines (the
    presets; dashes or underscores, `arch` for `model`), or a run's config.json / kfold.json
    (its "config", less RUN_ONLY_FIELDS). A key that is no option, or a value of the wrong
    type, is a one-line FerError naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FerError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
            raw = raw.get("config", raw) if isinstance(raw, dict) else raw
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            raw = {k: v for k, v in raw.items() if k not in RUN_ONLY_FIELDS}
        else:
            raw = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise FerError(f"--config {path}: not a recipe ({exc})") from None
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    fields["pretrained"] = True  # a recipe says true or false; unset is the default
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = "model" if key == "arch" else key.replace("-", "_")
        if name not in fields or name in RUN_ONLY_FIELDS:
            raise FerError(f"--config {path}: {key!r} is not a `fer train` option")
        if not _fits(value, fields[name]):
            raise FerError(f"--config {path}: {key} = {value!r} should be {_kind(fields[name])}")
        values[name] = value
    return values


def _kind(default: Any) -> str:
    return "true or false" if isinstance(default, bool) else {int: "an integer", float: "a number"}.get(
        type(default), "a string or a number" if default is None else "a string")


def _fits(value: Any, default: Any) -> bool:
    """Whether a recipe value has the type of the field whose default is `default`."""
    if value is None:  # JSON null: only where the field may be unset
        return default is None
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and (isinstance(default, bool) or default is None)
    if default is None:
        return isinstance(value, (str, int, float))
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


PRESET_VALUES: dict[str, dict[str, Any]] = {name: read_recipe(PRESET_DIR / f"{name}.toml") for name in PRESETS}


def preset_values(name: str) -> dict[str, Any]:
    """The TrainConfig fields that preset `name` sets (a copy)."""
    if name not in PRESET_VALUES:
        raise FerError(f"--preset {name!r} is not one of: {', '.join(PRESETS)}")
    return dict(PRESET_VALUES[name])


def make_train_config(preset: str | None = None, *, recipe: dict[str, Any] | None = None,
                      **explicit: Any) -> TrainConfig:
    """TrainConfig from, in rising order of precedence: its own defaults, a preset, a recipe
    (`--config` file: read_recipe) and the options given explicitly."""
    values: dict[str, Any] = {}
    if preset is not None:
        values.update(preset_values(preset))
    values.update(recipe or {})
    values.update({k: v for k, v in explicit.items() if v is not None})
    chosen = {**(recipe or {}), **explicit}
    if values.get("init_from") and chosen.get("pretrained") is None and not chosen.get("weights"):
        values["pretrained"] = False  # --init-from replaces ImageNet weights unless both are asked for
    return TrainConfig(**values)




def resolve_optimizer(cfg: TrainConfig, dataset_name: str) -> TrainConfig:
    """optimizer "auto" -> the paper's optimizer for this dataset (fercli.data.registry)."""
    if cfg.optimizer != "auto":
        return cfg
    return dataclasses.replace(cfg, optimizer=registry.paper_optimizer(dataset_name))


TRAIN_PRECISIONS = ("auto", "bf16", "fp32")  # fer train --precision (inference has its own: infer.classifier)


def validate_config(cfg: TrainConfig) -> None:
    # deferred: both import torch, and a TrainConfig is made and read without it
    from fercli.model.networks import MODEL_NAMES, check_image_size
    from fercli.train.optim import OPTIMIZER_NAMES

    def allowed(field: str, value: Any, names: tuple[str, ...]) -> None:
        if value not in names:
            raise FerError(f"--{field} {value!r} is not one of: {', '.join(names)}")

    allowed("arch", cfg.model, tuple(MODEL_NAMES))
    allowed("optimizer", cfg.optimizer, ("auto", *OPTIMIZER_NAMES))
    allowed("schedule", cfg.schedule, SCHEDULES)
    allowed("precision", cfg.precision, TRAIN_PRECISIONS)
    allowed("device", cfg.device, DEVICES)
    for name in ("epochs", "batch_size", "image_size", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            raise FerError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(cfg, name)}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise FerError(f"--lr must be a positive number, got {cfg.lr}")
    if not (0 < cfg.trunk_lr <= 1 and math.isfinite(cfg.trunk_lr)):
        raise FerError(f"--trunk-lr is a fraction of --lr in (0, 1] (e.g. 0.1), got {cfg.trunk_lr}")
    if cfg.weight_decay < 0:
        raise FerError(f"--weight-decay must be ≥ 0, got {cfg.weight_decay}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise FerError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not 0.0 <= cfg.random_erasing <= 1.0:
        raise FerError(f"--random-erasing is a probability in [0, 1], got {cfg.random_erasing}")
    if not (cfg.mixup >= 0 and math.isfinite(cfg.mixup)):
        raise FerError(f"--mixup is the Beta(α, α) parameter, ≥ 0 (0 = off), got {cfg.mixup}")
    if not (cfg.cutmix >= 0 and math.isfinite(cfg.cutmix)):
        raise FerError(f"--cutmix is the Beta(α, α) parameter, ≥ 0 (0 = off), got {cfg.cutmix}")
    if not 0.0 <= cfg.scale_aug < 1.0:
        raise FerError(f"--scale-aug is the largest relative zoom, in [0, 1) (e.g. 0.2), got {cfg.scale_aug}")
    if not 0.0 <= cfg.photometric <= 1.0:
        raise FerError(f"--photometric is a probability in [0, 1], got {cfg.photometric}")
    if cfg.init_head and not cfg.init_from:
        raise FerError("--init-head copies the classifier of the --init-from model: give --init-from")
    if cfg.mixup > 0 and cfg.cutmix > 0:
        raise FerError("--mixup and --cutmix are alternatives: set one of them to 0")
    if cfg.schedule == "onecycle" and cfg.warmup_epochs:
        raise FerError("--schedule onecycle has its own warm-up (the first 30% of the epochs): "
                       "drop --warmup-epochs")
    if not 0.0 <= cfg.ema < 1.0:
        raise FerError(f"--ema is a decay in [0, 1) (0 = off; e.g. 0.999), got {cfg.ema}")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise FerError(f"--warmup-epochs must be ≥ 0 and < --epochs ({cfg.epochs}), got {cfg.warmup_epochs}")
    if cfg.init_from and (cfg.pretrained or cfg.weights):
        raise FerError("--init-from starts the trunks from a FER2013 model; it cannot be combined with "
                       "ImageNet weights (--pretrained/--weights)")
    checkpoint_cadence(cfg.checkpoint_every)
    check_image_size(cfg.image_size)


def checkpoint_cadence(spec: str) -> tuple[int | None, float | None]:
    """--checkpoint-every: "N" → every N epochs, "Ns" → once N seconds have passed."""
    text = str(spec).strip().lower()
    try:
        if text.endswith("s"):
            seconds = float(text[:-1])
            if seconds >= 0 and math.isfinite(seconds):
                return None, seconds
        elif int(text) >= 1:
            return int(text), None
    except ValueError:
        pass
    raise FerError(f"--checkpoint-every {spec!r} must be a number of epochs (e.g. 5) or of seconds (e.g. 60s)")


def train_command(config: dict[str, Any]) -> str:
    """A `fer train ...` command line that reproduces `config` (non-default options only)."""
    defaults = dataclasses.asdict(TrainConfig())
    skip = {"out", "resume", "force", "keep_last", "eval_batch_size", "channels_last"}  # not the recipe
    parts = ["fer", "train"]
    for key, value in config.items():
        if key in skip or key not in defaults or (value == defaults[key] and key != "dataset"):
            continue
        flag = "--" + key.replace("_", "-")
        if key == "fold" and value == -1:
            value = "all"
        if isinstance(value, bool):
            if key in ("pretrained", "augment"):
                parts.append(flag if value else f"--no-{key}")
            elif value:
                parts.append(flag)
        elif value is None:
            continue
        else:
            parts += [flag, str(value)]
    return " ".join(parts)
