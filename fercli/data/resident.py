"""Data on the device: resident splits, split planning and batched augmentation.

    PreparedDataset (numpy uint8, N×48×48)            fercli.data.prepared.load_prepared
      → DeviceSplit: one torch.uint8 tensor (N, 1, 48, 48) on the device, labels int64
      → batches: slices of a torch.randperm made on the device (no DataLoader, no workers)
      → augment_batch: one affine_grid + grid_sample for the whole batch (crop/translate,
        flip, rotation), on the device

Each epoch's shuffling and augmentation draw from a generator seeded by (seed, epoch), so a
run resumed from the last epoch checkpoint replays exactly what the uninterrupted run would
have done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fercli.data import registry
from fercli.data.prepared import PreparedDataset
from fercli.errors import FerError


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
    """The rows of the dataset's split rule (fercli.data.registry).

    Fixed splits (FER2013): train / PublicTest (selection) / PrivateTest (report); without a
    selection split, a seeded 10% of train selects and `test` is reported.

    Subject folds (CK+): test = fold K; validation = fold K+1 (mod k), carved from the
    training folds and grouped by subject like every fold; train = the rest. Selection never
    sees the test fold.
    """
    rule = registry.dataset_split_rule(ds)
    if isinstance(rule, registry.FixedSplits):
        train = ds.indices(rule.train)
        if rule.selection is not None:
            return SplitPlan(train, ds.indices(rule.selection), ds.indices(rule.report), rule.selection, rule.report)
        # Deterministic: the same rows are held out in every run.
        mask = np.random.default_rng(0).random(train.size) < rule.holdout
        return SplitPlan(train[~mask], train[mask], ds.indices(rule.report), rule.selection_name, rule.report)
    return _subject_folds(ds, fold, rule)


def _subject_folds(ds: PreparedDataset, fold: int | None, rule: registry.SubjectFolds) -> SplitPlan:
    folds = ds.fold
    k = int(folds.max()) + 1 if folds.size else 0
    if k < rule.min_folds:
        raise FerError(f"{ds.path}: needs ≥ {rule.min_folds} subject folds for train/val/test, found {k}")
    test_fold = 0 if fold is None else fold
    if not 0 <= test_fold < k:
        raise FerError(f"--fold {test_fold} is out of range: {ds.name} has folds 0..{k - 1}")
    val_fold = (test_fold + 1) % k
    test = np.flatnonzero(folds == test_fold)
    val = np.flatnonzero(folds == val_fold)
    train = np.flatnonzero((folds != test_fold) & (folds != val_fold))
    return SplitPlan(train, val, test, rule.selection_name(test_fold, k), rule.report_name(test_fold))


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
    r = torch.rand(x.shape[0], 4, generator=gen, device=x.device, dtype=torch.float32)
    return augment_with(x, r, max_shift, max_rotate_deg, flip)


def augment_with(x: torch.Tensor, r: torch.Tensor, max_shift: float = 0.1,
                 max_rotate_deg: float = 10.0, flip: bool = True, max_scale: float = 0.0) -> torch.Tensor:
    """augment_batch with its uniform draws given: r float32 (B, 4) in [0, 1) = (angle, tx,
    ty, flip). No RNG inside, so a CUDA graph can capture it with r as a static input.

    max_scale > 0 (--scale-aug): r is (B, 5) and its 5th draw zooms each image by
    z = 1 + (2·r4 − 1)·max_scale (z > 1: the face fills more of the frame), about the centre:
    the sampling grid is divided by z."""
    angle = (r[:, 0] * 2 - 1) * math.radians(max_rotate_deg)
    tx = (r[:, 1] * 2 - 1) * 2 * max_shift  # affine_grid coordinates span [-1, 1] = 2 units
    ty = (r[:, 2] * 2 - 1) * 2 * max_shift
    sx = torch.where(r[:, 3] < 0.5, -1.0, 1.0) if flip else torch.ones_like(tx)
    cos, sin = torch.cos(angle), torch.sin(angle)
    if max_scale > 0:
        inv_zoom = 1 / (1 + (r[:, 4] * 2 - 1) * max_scale)  # (B,)
        cos, sin = cos * inv_zoom, sin * inv_zoom
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

