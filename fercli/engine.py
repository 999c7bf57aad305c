"""The hot loops: one train step, one epoch, batched inference with TTA.

    DeviceSplit (uint8 on the device, fercli.data)
      → x.float()/255 → augment_batch → channels_last
      → model: FaceInput resizes to --image-size, repeats grey to 3 channels, normalises
      → bf16 autocast (CUDA; CPU when the CPU has bf16 kernels) → cross-entropy (eq. 7)

No `.item()` or other host sync happens inside an epoch: running loss and accuracy are
accumulated on the device and read once per epoch.

Nothing here imports Typer or Rich: progress is reported through a callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fercli.data import DeviceSplit, augment_batch
from fercli.errors import FerError

# One optimisation step on a batch: (x, y) -> (loss, logits), see make_train_step.
TrainStep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]



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


def compiled_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                   amp_dtype: torch.dtype | None) -> TrainStep:
    """`fer train --compile`: forward+backward through torch.compile; the optimizer step stays eager."""
    return make_train_step(torch.compile(model), optimizer, device, amp_dtype)


