"""Optimizers by name, including the gradient-centralised (GC) variants OBSR-Net trains with.

Gradient centralization (Yong et al. 2020) projects each weight's gradient onto the
hyperplane of zero mean per output unit before the optimizer uses it:

    Phi_GC(grad_w) = grad_w - mean(grad_w)        (8)-(9)  mean over all axes but the first

for every weight with >= 2 dims (conv kernels C_out x C_in x k x k, FC weights out x in);
biases and BatchNorm parameters (1-D) are left alone. Under SGD (with momentum) every
update is then zero-mean per output unit, so e^T (W - W0) = 0 for all time   (12).

The paper trains with AdamW-GC on FER2013 and Adam-GC on CK+, lr 1e-4 (PAPER_OPTIMIZERS).

Weight decay and GC. Coupled decay (SGD, Adam) is part of the gradient, so it goes in
before GC: g <- Phi_GC(g + wd * w), then the base step runs with weight_decay 0 (not
applied twice). AdamW's decoupled decay acts on the weights, not the gradient: untouched.

The GC optimizers never modify p.grad: the centralised gradients are new tensors swapped
in for the base step and swapped back out, so logging, clipping or a second step see the
real gradients, and params whose grad is None are simply skipped (as the base step does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fercli.errors import FerError

OPTIMIZER_NAMES: tuple[str, ...] = ("sgd", "adam", "adamw", "sgd-gc", "adam-gc", "adamw-gc")

# The paper's settings: AdamW-GC for FER2013, Adam-GC for CK+, both at lr 1e-4.
PAPER_LR = 1e-4
PAPER_OPTIMIZERS: dict[str, str] = {"fer2013": "adamw-gc", "ck+": "adam-gc", "ckplus": "adam-gc"}


# -----------------------------------------------------------------------------
# Gradient centralization, eq. (8)-(9)


def _gc_applies(g: Tensor, conv_only: bool) -> bool:
    # >= 2 dims: conv and FC weights. conv_only: 4-D conv kernels only (Yong et al.'s GC_CONV).
    return g.dim() >= (4 if conv_only else 2) and not g.is_sparse


def _unit_means(gs: list[Tensor]) -> list[Tensor]:
    # (out, ...) -> (out, 1, ..., 1): the mean of each output unit's slice, ready to broadcast.
    return [g.mean(dim=tuple(range(1, g.dim())), keepdim=True) for g in gs]


def centralize_gradient(g: Tensor, conv_only: bool = False) -> Tensor:
    """Phi_GC(g) = g - mean(g) per output unit, eq. (8)-(9); returns g itself if GC does not apply."""
    if not _gc_applies(g, conv_only):
        return g
    return g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)  # eq. (8)-(9)


def centralized_gradients(grads: list[Tensor], conv_only: bool = False) -> list[Tensor]:
    """Out-of-place GC over a list: new tensors where GC applies, the same objects elsewhere."""
    out = list(grads)
    idx = [i for i, g in enumerate(grads) if _gc_applies(g, conv_only)]
    if idx:
        gs = [grads[i] for i in idx]
        for i, c in zip(idx, torch._foreach_sub(gs, _unit_means(gs)), strict=True):  # eq. (8)-(9)
            out[i] = c
    return out


def centralize_gradient_(grads: list[Tensor | None], conv_only: bool = False) -> None:
    """In-place GC, eq. (8)-(9), on every gradient with >= 2 dims (4 with conv_only); None skipped."""
    gs = [g for g in grads if g is not None and _gc_applies(g, conv_only)]
    if gs:
        torch._foreach_sub_(gs, _unit_means(gs))  # eq. (8)-(9)


# -----------------------------------------------------------------------------
# GC optimizers: the torch optimizers, fed centralised gradients


class _GradientCentralization:
    """Mixin for a torch.optim optimizer: centralise gradients, then the base step.

    Param groups carry "gc_conv_only" (saved by state_dict, restored by load_state_dict).
    """

    decoupled_weight_decay: bool = False  # True for AdamW: its decay is not in the gradient

    def _init_gc(self, conv_only: bool) -> None:
        self.defaults["gc_conv_only"] = conv_only  # later add_param_group() calls inherit it
        for group in self.param_groups:
            group.setdefault("gc_conv_only", conv_only)

    def _coupled(self, group: dict[str, Any]) -> bool:
        return not (self.decoupled_weight_decay or group.get("decoupled_weight_decay", False))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()  # gradients first: GC needs them

        swapped: list[tuple[Tensor, Tensor]] = []  # (param, its real grad), restored below
        decays: list[tuple[dict[str, Any], Any]] = []  # (group, its weight_decay), restored below
        try:
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                grads = [p.grad for p in params]
                wd = group.get("weight_decay", 0.0)
                if self._coupled(group) and wd != 0:
                    # Coupled decay belongs to the gradient, so it is centralised with it:
                    # g <- g + wd * w (new tensors), and the base step must not add it again.
                    grads = torch._foreach_add(grads, [p.detach() for p in params], alpha=float(wd))
                    decays.append((group, wd))
                    group["weight_decay"] = 0.0
                    centralize_gradient_(grads, conv_only=group.get("gc_conv_only", False))
                else:
                    grads = centralized_gradients(grads, conv_only=group.get("gc_conv_only", False))
                for p, g in zip(params, grads, strict=True):
                    if g is not p.grad:
                        swapped.append((p, p.grad))
                        p.grad = g
            super().step()  # type: ignore[misc]
        finally:
            for p, g in swapped:
                p.grad = g
            for group, wd in decays:
                group["weight_decay"] = wd
        return loss


class SGDGC(_GradientCentralization, torch.optim.SGD):
    """torch.optim.SGD on centralised gradients: Phi_GC(g + wd * w), then momentum."""

    def __init__(self, params: Any, *args: Any, gc_conv_only: bool = False, **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        self._init_gc(gc_conv_only)


class AdamGC(_GradientCentralization, torch.optim.Adam):
    """torch.optim.Adam on centralised gradients: Phi_GC(g + wd * w), then the moments."""

    def __init__(self, params: Any, *args: Any, gc_conv_only: bool = False, **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        self._init_gc(gc_conv_only)


class AdamWGC(_GradientCentralization, torch.optim.AdamW):
    """torch.optim.AdamW on centralised gradients Phi_GC(g); decoupled decay left to AdamW."""

    decoupled_weight_decay = True

    def __init__(self, params: Any, *args: Any, gc_conv_only: bool = False, **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        self._init_gc(gc_conv_only)


# -----------------------------------------------------------------------------
# Registry


def _trainable(params_or_model: nn.Module | Iterable[Any]) -> list[Any]:
    """Parameters (or param-group dicts) restricted to those with requires_grad."""
    items = list(params_or_model.parameters() if isinstance(params_or_model, nn.Module) else params_or_model)
    if items and isinstance(items[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
        return [g for g in groups if g["params"]]
    return [p for p in items if p.requires_grad]


def build_optimizer(
    name: str,
    params_or_model: nn.Module | Iterable[Any],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    gc_conv_only: bool = False,
) -> torch.optim.Optimizer:
    """Build an optimizer by name (OPTIMIZER_NAMES) over the trainable parameters.

    `momentum` is used by sgd / sgd-gc only; Adam(W) use betas (0.9, 0.999). weight_decay is
    coupled (L2 in the gradient) for sgd/adam and decoupled for adamw, as in torch.
    """
    if name not in OPTIMIZER_NAMES:
        raise FerError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}")
    if not lr > 0:
        raise FerError(f"learning rate must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise FerError(f"weight decay must be >= 0, got {weight_decay!r}")
    if not 0 <= momentum < 1:
        raise FerError(f"momentum must be in [0, 1), got {momentum!r}")
    params = _trainable(params_or_model)
    if not params:
        raise FerError("nothing to optimise: the model has no trainable parameters")

    gc = {"gc_conv_only": gc_conv_only}
    # Fused Adam/AdamW kernels: one pass over all parameters instead of a chain of foreach
    # ops (measured ~5% of a CPU training step, docs/benchmarks.md; fewer launches on CUDA).
    tensors = [p for g in params for p in g["params"]] if isinstance(params[0], dict) else params
    fused = {"fused": True} if all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors) else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd-gc":
        return SGDGC(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **gc)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "adam-gc":
        return AdamGC(params, lr=lr, weight_decay=weight_decay, **gc, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)
    return AdamWGC(params, lr=lr, weight_decay=weight_decay, **gc, **fused)  # "adamw-gc"
