"""The hot loops: one train step, one epoch, and validation (the forward pass with TTA is
fercli.model.inference.predict_logits).

    DeviceSplit (uint8 on the device, fercli.data.resident)
      → x.float()/255 → augment_batch → channels_last
      → model: FaceInput resizes to --image-size, repeats grey to 3 channels, normalises
      → bf16 autocast (CUDA; CPU when the CPU has bf16 kernels) → cross-entropy (eq. 7)

No `.item()` or other host sync happens inside an epoch: running loss and accuracy are
accumulated on the device and read once per epoch.

Static shapes. Every step is a full batch of B images (B = min(batch size, N)): the epoch's
permutation is padded by wrapping around to ceil(N / B) * B indices, so every image is seen
at least once per epoch and fewer than B of them twice. One step is one TrainStep: the batch
indices and augmentation draws are copied into static buffers, then one body runs gather →
augment → forward → loss → backward → GC → optimizer. On CUDA (default, --no-cuda-graphs to
opt out) that body is captured once as a CUDA graph and replayed; on CPU the same body runs
eagerly.

Nothing here imports Typer or Rich: progress is reported through a callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fercli.data.resident import DeviceSplit, augment_with
from fercli.errors import FerError
from fercli.model.inference import autocast, predict_logits
from fercli.train import distributed
from fercli.train.optim import graph_capturable, use_tensor_lr
from fercli.train.photometric import PHOTO_DRAWS, photometric_with
from fercli.train.regularize import (
    ERASE_DRAWS,
    WeightEMA,
    cut_with,
    cutmix_draws,
    erase_with,
    mix_with,
    mixed_cross_entropy,
    mixup_lambdas,
)


def epoch_batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(steps, B) int64 batch indices for one epoch: a random permutation of 0..n-1, padded
    by wrapping to steps * B (B = min(batch_size, n), steps = ceil(n / B)), so every step
    has the same shape and every image appears at least once."""
    bs = min(batch_size, n)
    steps = math.ceil(n / bs)
    perm = torch.randperm(n, generator=gen, device=device)
    pad = steps * bs - n  # < bs
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm.view(steps, bs)


class TrainStep:
    """One optimisation step on a full batch: step(idx, r) -> (loss, correct), no host sync.

    idx: int64 (B,) rows of `data`; r: float32 (B, draw_width) augmentation draws: 4 for
    augment_with (5 with --scale-aug), then ERASE_DRAWS for erase_with when random erasing is
    on, then PHOTO_DRAWS for photometric_with (--photometric); None without augmentation.
    lam: the step's mixing draws, 0-d float32 λ (mixup on) or (λ, cy, cx) float32 (3,)
    (cutmix on). Returns 0-d tensors: mean loss (float32) and the number of correct
    predictions (int64; under mixup or cutmix, of the first label).
    With a graph they live in graph memory that the next step overwrites: accumulate them
    before calling again (train_one_epoch does). ema (WeightEMA) is updated after each step.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 data: DeviceSplit, *, batch_size: int, amp_dtype: torch.dtype | None,
                 augment: bool = True, channels_last: bool = False, cuda_graphs: bool = False,
                 label_smoothing: float = 0.0, model: nn.Module | None = None,
                 random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0,
                 ema: WeightEMA | None = None, scale_aug: float = 0.0, photometric: float = 0.0) -> None:
        if mixup > 0 and cutmix > 0:
            raise FerError("mixup and cutmix are alternatives: turn one of them off")
        self.forward, self.optimizer, self.data = forward, optimizer, data
        self.model = model if model is not None else forward
        self.device = data.x.device
        self.batch = min(batch_size, len(data))
        self.amp_dtype, self.augment, self.channels_last = amp_dtype, augment, channels_last
        self.label_smoothing = label_smoothing
        self.random_erasing, self.mixup, self.cutmix, self.ema = random_erasing, mixup, cutmix, ema
        self.scale_aug = scale_aug if augment else 0.0
        self.photometric = photometric if augment else 0.0
        # Per-image draws: 4 affine (+1 zoom with scale_aug), then erasing's, then the
        # photometric jitter's. Widths grow only with the options on, so runs without them
        # keep their random stream.
        self.affine_width = 4 + (1 if self.scale_aug > 0 else 0)
        self.erase_end = self.affine_width + (ERASE_DRAWS if augment and random_erasing > 0 else 0)
        self.draw_width = self.erase_end + (PHOTO_DRAWS if self.photometric > 0 else 0)
        # Static inputs: each step copies its indices and draws into these, then runs `_body`.
        self.idx = torch.zeros(self.batch, dtype=torch.int64, device=self.device)
        self.r = torch.full((self.batch, self.draw_width), 0.5, dtype=torch.float32, device=self.device)
        # Mixing draws: mixup's λ (0-d) or cutmix's (λ, cy, cx); λ = 1 leaves the batch as it is.
        self.lam = (torch.tensor([1.0, 0.5, 0.5], device=self.device) if cutmix > 0
                    else torch.ones((), dtype=torch.float32, device=self.device))
        self.graph: Any = None
        self.graphed = bool(cuda_graphs and self.device.type == "cuda"
                            and isinstance(self.model, nn.Module) and graph_capturable(optimizer))
        # The schedule fills a device-tensor lr in place under a graph; a float otherwise.
        use_tensor_lr(optimizer, self.graphed)
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None

    def _body(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data.x[self.idx].float().div_(255)  # (B, 1, H, W) in [0, 1]
        y = self.data.y[self.idx]  # (B,)
        if self.augment:
            x = augment_with(x, self.r[:, :self.affine_width], max_scale=self.scale_aug)
            if self.photometric > 0:  # the photo's look, then (below) what covers the face
                x = photometric_with(x, self.r[:, self.erase_end:], self.photometric)
            if self.erase_end > self.affine_width:
                x = erase_with(x, self.r[:, self.affine_width:self.erase_end], self.random_erasing)
        lam = self.lam  # the loss's weight of y: mixup's λ, or the share cutmix left unpasted
        if self.mixup > 0:
            x = mix_with(x, self.lam)
        elif self.cutmix > 0:
            x, lam = cut_with(x, self.lam)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Under a graph the grads stay allocated (graph memory) and are zeroed in place.
        self.optimizer.zero_grad(set_to_none=not self.graphed)
        with autocast(self.device, self.amp_dtype, cache=not self.graphed):
            logits = self.forward(x)  # (B, C)
            if self.mixup > 0 or self.cutmix > 0:
                loss = mixed_cross_entropy(logits.float(), y, lam, self.label_smoothing)
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def __call__(self, idx: torch.Tensor, r: torch.Tensor | None,
                 lam: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if idx.shape != self.idx.shape:
            raise FerError(f"train step built for batch {self.batch}, got {tuple(idx.shape)}")
        self.idx.copy_(idx)
        if r is not None:
            self.r.copy_(r)
        if lam is not None:
            self.lam.copy_(lam)
        if not self.graphed:
            return self._body()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        assert self.out is not None
        return self.out

    def _capture(self) -> None:
        """Warm up on a side stream (lazy optimizer state, cuDNN autotuning), restore the
        weights and optimizer state the warm-up steps changed, then capture `_body`."""
        saved = snapshot_training_state(self.model, self.optimizer, self._ema_tensors())
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        restore_training_state(self.model, self.optimizer, saved, self._ema_tensors())
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._body()

    def _ema_tensors(self) -> list[torch.Tensor]:
        return self.ema.tensors() if self.ema is not None else []


def snapshot_training_state(model: Any, optimizer: torch.optim.Optimizer,
                            extra: list[torch.Tensor] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """Copies of the weights, buffers (BN statistics), existing optimizer state and `extra`
    tensors (the weight EMA's)."""
    tensors = [t.detach().clone() for t in (*model.parameters(), *model.buffers(), *extra)]
    state = {id(p): {k: v.clone() for k, v in st.items() if torch.is_tensor(v)}
             for p, st in optimizer.state.items()}
    return {"tensors": tensors, "state": state}


@torch.no_grad()
def restore_training_state(model: Any, optimizer: torch.optim.Optimizer, saved: dict[str, Any],
                           extra: list[torch.Tensor] = ()) -> None:  # type: ignore[assignment]
    """Undo steps taken since snapshot_training_state, in place (a graph keeps the addresses):
    weights and buffers copied back, optimizer state copied back, or zeroed where the steps
    created it (Adam's fresh moments and step count are zeros)."""
    for t, v in zip((*model.parameters(), *model.buffers(), *extra), saved["tensors"], strict=True):
        t.copy_(v)
    for p, st in optimizer.state.items():
        old = saved["state"].get(id(p))
        for k, v in st.items():
            if torch.is_tensor(v):
                v.copy_(old[k]) if old is not None else v.zero_()


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
    max_steps: int | None = None,
    dist: Any = None,
) -> dict[str, float]:
    """The steps of one epoch: one pass over `data` in random order (full batches, tail wrapped:
    epoch_batches); returns mean loss, accuracy and the images processed (steps * B, ≥ len(data)).
    A run calls it through fercli.train.loop.run_epoch (schedule, seeded draws, its step).
    max_steps stops early (fer bench times a fixed number of steps). on_step(images) runs
    after every step: a run checks its background checkpoint writer there.

    dist (fercli.train.distributed.DistInfo, data parallel): every rank draws the same global
    batches and augmentation draws, then trains its 1/W slice of each (step_fn is built for
    B / W); the returned metrics are the global batch's (all-reduced once per epoch)."""
    model.train()
    device = data.x.device
    if step_fn is None:
        step_fn = make_train_step(model, optimizer, data, batch_size=batch_size, amp_dtype=amp_dtype,
                                  augment=augment, channels_last=channels_last, cuda_graphs=False)
    batches = epoch_batches(len(data), batch_size, gen, device)[:max_steps]  # (steps, B)
    steps, bs = batches.shape
    # All of the epoch's augmentation draws at once: (steps, B, draw_width), one kernel; then
    # the mixing draws, after them so runs without mixing keep their stream: mixup's λ (steps,)
    # or cutmix's (λ, cy, cx) (steps, 3).
    # (getattr: a stand-in step without these attributes, as in tests and benches, draws 4.)
    width, mixup = getattr(step_fn, "draw_width", 4), getattr(step_fn, "mixup", 0.0)
    cutmix = getattr(step_fn, "cutmix", 0.0)
    draws = torch.rand(steps, bs, width, generator=gen, device=device) if augment else None
    lams = (mixup_lambdas(gen, steps, mixup, device) if mixup > 0
            else cutmix_draws(gen, steps, cutmix, device) if cutmix > 0 else None)
    world = dist.world_size if dist is not None else 1
    if world > 1 and not dist.sharded:  # this rank's columns of every global batch: (steps, B / W)
        b = bs // world
        batches = batches[:, dist.rank * b:(dist.rank + 1) * b]
        draws = draws[:, dist.rank * b:(dist.rank + 1) * b] if draws is not None else None
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for s in range(steps):
        r = draws[s] if draws is not None else None
        loss, hits = step_fn(batches[s], r) if lams is None else step_fn(batches[s], r, lams[s])
        loss_sum += loss
        correct += hits
        if on_step is not None:
            on_step(bs)  # host-side only (no sync); the caller throttles what it shows
    # The global batches, all ranks together (--shard-data: each rank drew B / W of its own).
    seen = steps * bs * (world if world > 1 and dist.sharded else 1)
    if world > 1:
        # Sum of the ranks' per-step mean losses (÷ W: the global mean) and of their hits.
        sums = distributed.all_reduce_sum(torch.stack([loss_sum.double(), correct.double()]), dist)
        loss_sum, correct = sums[0] / world, sums[1]
    # The one host sync of the epoch.
    return {"loss": float(loss_sum) / steps, "acc": float(correct) / seen, "images": seen}


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




def make_train_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                    data: DeviceSplit, *, batch_size: int, amp_dtype: torch.dtype | None,
                    augment: bool = True, channels_last: bool = False, cuda_graphs: bool = False,
                    label_smoothing: float = 0.0, model: nn.Module | None = None,
                    random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0,
                    ema: WeightEMA | None = None, scale_aug: float = 0.0,
                    photometric: float = 0.0) -> TrainStep:
    """The train step for `data`: `forward` is the model, or torch.compile(model) for
    --compile (then pass `model`). cuda_graphs captures the step on CUDA when the optimizer
    is capturable (fused Adam/AdamW: adam*, adamw*); sgd* and CPU run the same body eagerly.
    `step.graphed` says which happened."""
    return TrainStep(forward, optimizer, data, batch_size=batch_size, amp_dtype=amp_dtype,
                     augment=augment, channels_last=channels_last, cuda_graphs=cuda_graphs,
                     label_smoothing=label_smoothing, model=model, random_erasing=random_erasing,
                     mixup=mixup, cutmix=cutmix, ema=ema, scale_aug=scale_aug, photometric=photometric)
