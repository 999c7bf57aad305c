"""What `fer ablate` is asked to run: its frozen config, without torch (the CLI reads its
defaults from it before the ladder, which needs torch, is loaded)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AblateConfig:
    dataset: str = "fer2013"  # fer2013 | ck+ | all | a prepared dataset directory
    epochs: int | None = None
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    preset: str = "short"  # a name of fercli.train.config.PRESETS
    out: str | None = None
    folds_limit: int | None = None
    # k-fold: train and report only these fold ids (a ladder too long for one sitting is run as
    # parts, each a set of whole folds; `--progress` over their run directories reads them together)
    folds: tuple[int, ...] | None = None
    train_subset: int | None = None
    weights: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    force: bool = False
    threads: int | None = None  # not part of a run's identity: only how fast it runs
    jobs: int = 1  # runs trained at once, each its own process (fercli.train.jobs); not identity
    devices: tuple[str, ...] | None = None  # spread concurrent runs: ("cuda:0", "cuda:1")
    # CK+ without ImageNet weights: the FER2013 model whose trunk the "pretrained" rows start from
    # (FER2013_LADDER); None runs the from-scratch ladder instead.
    init_from: str | None = "default"
    estimate: bool = True  # time a few train steps and report the expected wall time first; not identity
    # a finished run keeps only best.pt (its last.pt, ~3x larger, is for --resume); not identity
    keep_last: bool = False
