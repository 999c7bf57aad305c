"""Recipe regularisers of the train step: random erasing, mixup, cutmix and a weight EMA.

All three are graph-friendly like the affine augmentation in fercli.data.resident: their random numbers
are drawn once per epoch outside the step (from the epoch's generator, so a resumed run replays
them) and enter the step as tensors, so the whole step can still be one CUDA graph.

    x (B, 1, H, W) in [0, 1] → augment_with (affine, fercli.data.resident)
      → erase_with   (--random-erasing P: a grey rectangle in each image with probability P)
      → mix_with     (--mixup ALPHA: x·λ + x.flip(0)·(1−λ), λ ~ Beta(α, α) per step)
        or cut_with  (--cutmix ALPHA: a box of x.flip(0) pasted into x, area ≈ (1−λ)·H·W)
      → model → mixed_cross_entropy (λ·CE(y) + (1−λ)·CE(y.flip(0)); cutmix: λ = kept area)
    after optimizer.step(): WeightEMA.update() (--ema DECAY), whose copy of the model is what
    is validated, selected and saved to best.pt.

Nothing here imports Typer or Rich.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------ random erasing

ERASE_DRAWS = 6  # per image: apply, area, log-aspect, top, left, grey
ERASE_AREA = (0.02, 0.33)  # fraction of the image (Zhong et al. 2020; torchvision's defaults)
ERASE_RATIO = (0.3, 3.3)  # height / width, drawn log-uniformly


def erase_with(x: torch.Tensor, r: torch.Tensor, p: float) -> torch.Tensor:
    """Random erasing with its draws given: x float (B, 1, H, W); r float32 (B, 6) uniform in
    [0, 1) = (apply, area, log-aspect, top, left, grey).

    Image b is erased when r[b, 0] < p: a rectangle of area a·H·W (a uniform in ERASE_AREA) and
    height/width ratio ρ (log-uniform in ERASE_RATIO), so h = √(a·H·W·ρ), w = √(a·H·W/ρ)
    (clamped to the image), placed wholly inside the image (top = r3·(H − h), left = r4·(W − w)),
    is filled with the grey level r5. A pixel belongs to it when its centre does.
    """
    b, _, height, width = x.shape
    area = (ERASE_AREA[0] + r[:, 1] * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width  # (B,) pixels
    lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = torch.exp(lo + r[:, 2] * (hi - lo))  # (B,) h / w
    h = torch.sqrt(area * aspect).clamp(1.0, height)
    w = torch.sqrt(area / aspect).clamp(1.0, width)
    top, left = r[:, 3] * (height - h), r[:, 4] * (width - w)  # (B,)
    ys = torch.arange(height, device=x.device, dtype=r.dtype) + 0.5  # pixel centres (H,)
    xs = torch.arange(width, device=x.device, dtype=r.dtype) + 0.5
    in_y = (ys >= top[:, None]) & (ys < (top + h)[:, None])  # (B, H)
    in_x = (xs >= left[:, None]) & (xs < (left + w)[:, None])  # (B, W)
    mask = in_y[:, :, None] & in_x[:, None, :] & (r[:, 0] < p)[:, None, None]  # (B, H, W)
    return torch.where(mask[:, None], r[:, 5].view(b, 1, 1, 1).to(x.dtype), x)


# ------------------------------------------------------------------------------ mixup


def mixup_lambdas(gen: torch.Generator, steps: int, alpha: float, device: torch.device) -> torch.Tensor:
    """(steps,) float32 mixing weights λ ~ Beta(α, α), one per step, on `device`.

    torch has no seeded Beta sampler, so one 62-bit seed is drawn from the epoch's generator
    (one host sync per epoch) and numpy draws the λs: a resumed epoch replays them exactly."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
    lam = np.random.default_rng(seed).beta(alpha, alpha, size=steps).astype(np.float32)
    return torch.from_numpy(lam).to(device)


def mix_with(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Mixup (Zhang et al. 2018) within the batch: image b becomes λ·x_b + (1 − λ)·x_{B−1−b}
    (the batch reversed: its partner is another random image, since batches are shuffled).
    lam: 0-d float tensor."""
    return x * lam + x.flip(0) * (1 - lam)


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, lam: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """The mixup loss: λ·CE(logits, y) + (1 − λ)·CE(logits, y reversed), each with smoothing."""
    ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    ce_partner = F.cross_entropy(logits, y.flip(0), label_smoothing=label_smoothing)
    return lam * ce + (1 - lam) * ce_partner


# ------------------------------------------------------------------------------ cutmix

CUTMIX_DRAWS = 3  # per step: λ ~ Beta(α, α), box centre row and column (uniform in [0, 1))


def cutmix_draws(gen: torch.Generator, steps: int, alpha: float, device: torch.device) -> torch.Tensor:
    """(steps, 3) float32 per-step cutmix draws (λ, cy, cx): λ as mixup_lambdas draws it, then
    the box centres from the same generator, so a resumed epoch replays all of them."""
    lam = mixup_lambdas(gen, steps, alpha, device)  # (steps,)
    centre = torch.rand(steps, 2, generator=gen, device=gen.device).to(device)  # (steps, 2)
    return torch.cat([lam[:, None], centre], dim=1)


def cut_with(x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019) within the batch, its draws given: x float (B, 1, H, W);
    d float32 (3,) = (λ, cy, cx). Returns (x', λ') with λ' a 0-d tensor.

    The box has sides H·√(1−λ) and W·√(1−λ), centre (cy·H, cx·W), clipped to the image; a pixel
    belongs to it when its centre does. Inside the box every image b shows its partner
    x_{B−1−b} (the batch reversed, as in mix_with). λ' = 1 − box pixels / (H·W) is the share of
    the image that stayed its own, and weighs the loss: mixed_cross_entropy(logits, y, λ')."""
    _, _, height, width = x.shape
    cut = torch.sqrt(1 - d[0])  # side fraction of the box
    h, w = cut * height, cut * width
    cy, cx = d[1] * height, d[2] * width
    ys = torch.arange(height, device=x.device, dtype=d.dtype) + 0.5  # pixel centres (H,)
    xs = torch.arange(width, device=x.device, dtype=d.dtype) + 0.5
    in_y = (ys >= cy - h / 2) & (ys < cy + h / 2)  # (H,)
    in_x = (xs >= cx - w / 2) & (xs < cx + w / 2)  # (W,)
    box = in_y[:, None] & in_x[None, :]  # (H, W)
    lam = 1 - box.sum().to(d.dtype) / (height * width)
    return torch.where(box, x.flip(0), x), lam


# ------------------------------------------------------------------------------ weight EMA


class WeightEMA:
    """An exponential moving average of the weights (Polyak averaging), updated after every
    optimizer step:  ema ← d·ema + (1 − d)·w,  d_t = min(decay, (1 + t) / (10 + t)).

    The warm-up in d_t (t = updates so far) lets the average forget the random init quickly
    in short runs. Float parameters and buffers (BatchNorm statistics) are averaged; integer
    buffers (num_batches_tracked) are copied. `module` is a frozen copy of the model in eval
    mode: validation, best.pt and so export and predict use it. The update is a few fused
    foreach ops with d as a device tensor: no host sync, capturable in a CUDA graph.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        live = [*model.parameters(), *model.buffers()]
        avg = [*self.module.parameters(), *self.module.buffers()]
        self._src = [t for t in live if t.is_floating_point()]
        self._dst = [t for t in avg if t.is_floating_point()]
        self._src_int = [t for t in live if not t.is_floating_point()]
        self._dst_int = [t for t in avg if not t.is_floating_point()]
        device = self._dst[0].device if self._dst else torch.device("cpu")
        self.t = torch.zeros((), dtype=torch.float32, device=device)  # updates so far

    @torch.no_grad()
    def update(self) -> None:
        self.t += 1
        d = torch.clamp((1 + self.t) / (10 + self.t), max=self.decay)  # 0-d, on the device
        torch._foreach_mul_(self._dst, d)
        torch._foreach_add_(self._dst, torch._foreach_mul(self._src, 1 - d))
        for a, b in zip(self._dst_int, self._src_int, strict=True):
            a.copy_(b)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor update() changes (for the graph capture's snapshot and restore)."""
        return [*self._dst, *self._dst_int, self.t]

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "t": self.t.detach().clone(), "decay": self.decay}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.t.copy_(state["t"])
