"""What `fer evaluate` and `fer calibrate` are asked to do: their frozen configs, without torch
(the CLI reads its defaults from them before the evaluation, which needs torch, is loaded)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluateConfig:
    target: str  # run dir (single or k-fold root), checkpoint, exported .npz, or "default"
    split: str | None = None  # private-test | public-test | test | fold; None = the report split
    fold: int | None = None  # CK+: the test fold, for a model whose run fold is not known
    tta: str = "none"
    device: str = "auto"
    dataset: str | None = None  # evaluate on this prepared dataset instead of the recorded one
    batch_size: int = 256
    write: bool = True  # metrics.json + confusion.png + reliability.png into a run directory (never for exports)
    out: str | None = None  # write those files here instead (any target, e.g. `default`)


@dataclass(frozen=True)
class CalibrateConfig:
    target: str  # run dir (single or k-fold root), checkpoint, exported .npz, or "default"
    dataset: str | None = None  # the prepared dataset whose selection split T is fitted on
    fold: int | None = None  # CK+: the model's test fold, when it records none (its selection fold is K+1)
    out: str | None = None  # where the calibrated model goes: required for an export, else in place
    device: str = "auto"
    batch_size: int = 256
