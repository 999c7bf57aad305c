"""Optimizers by name, including the gradient-centralised (GC) variants OBSR-Net trains with.

Gradient centralization (Yong et al. 2020) projects each weight's gradient onto the
hyperplane of zero mean per output unit before the optimizer uses it:

    Phi_GC(grad_w) = grad_w - mean(grad_w)        (8)-(9)  mean over all axes but the first

for every weight with >= 2 dims (conv kernels C_out x C_in x k x k, FC weights out x in);
biases and BatchNorm parameters (1-D) are left alone. Under SGD (with momentum) every
update is then zero-mean per output unit, so e^T (W - W0) = 0 for all time   (12).

The paper trains with AdamW-GC on FER2013 and Adam-GC on CK+ (each dataset's paper_optimizer in
fercli.data.registry; its learning rate and the rest of §3.2 are fercli.paper.HYPERPARAMETERS).

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

# How the base step runs: auto = fused Adam/AdamW where torch has the kernel (CPU, CUDA).
IMPLS: tuple[str, ...] = ("auto", "fused", "foreach", "for-loop")

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


def _unit_contiguous(g: Tensor) -> bool:
    # Each output unit's elements occupy one contiguous memory range when the tensor is dense
    # and dim 0 is outermost: true for contiguous and channels_last (out, in, k, k) tensors.
    # The order inside a unit may differ (channels_last), which a per-unit mean ignores.
    if g.is_contiguous():
        return True
    return g.dim() == 4 and g.is_contiguous(memory_format=torch.channels_last)


class FlatGC:
    """Gradient centralization over ALL gradients of a param group in one flat buffer.

    The per-tensor form launches one mean and one subtract per weight (73 + 73 for a ResNet34
    trunk). Here every gradient is copied into one persistent buffer `buf` (1 foreach op),
    coupled weight decay is added there (1 foreach op), and GC runs on matrix views of `buf`:
    the GC'd tensors are laid out sorted by their unit size r (elements per output unit), so
    all units with the same r are one contiguous (U_r, r) block, centralised with one mean and
    one subtract. A ResNet34 B-CNN has ~8 distinct r, so GC is ~2 + 2*8 kernels in all.

    The buffer is allocated once and reused (static addresses, so a CUDA graph can capture it).
    `views[i]` has grads[i]'s shape and strides, so fused optimizers see the usual layout.
    """

    def __init__(self, like: list[Tensor], conv_only: bool, with_all: bool) -> None:
        self.key = FlatGC.key_of(like, conv_only, with_all)
        gc = [i for i, g in enumerate(like) if _gc_applies(g, conv_only) and _unit_contiguous(g)]
        unit = {i: like[i].numel() // like[i].shape[0] for i in gc}
        gc.sort(key=lambda i: unit[i])
        # with_all (coupled decay): the other grads need new tensors too (g + wd * w).
        rest = [i for i in range(len(like)) if i not in set(gc)] if with_all else []
        self.order = gc + rest
        total = sum(like[i].numel() for i in self.order)
        self.buf = torch.empty(total, dtype=like[0].dtype, device=like[0].device)
        self.views: dict[int, Tensor] = {}
        off = 0
        blocks: list[tuple[int, int, int]] = []  # (start, units, r) of each same-r run
        for i in self.order:
            g = like[i]
            self.views[i] = self.buf.as_strided(g.shape, g.stride(), off)
            if i in unit:
                r = unit[i]
                if blocks and blocks[-1][2] == r and blocks[-1][0] + blocks[-1][1] * r == off:
                    blocks[-1] = (blocks[-1][0], blocks[-1][1] + g.shape[0], r)
                else:
                    blocks.append((off, g.shape[0], r))
            off += g.numel()
        # (U_r, r) matrix views of buf, one per distinct unit size.
        self.blocks = [self.buf[s:s + u * r].view(u, r) for s, u, r in blocks]
        # GC applies but the layout is not unit-contiguous (rare): per-tensor fallback.
        self.loose = [i for i, g in enumerate(like)
                      if _gc_applies(g, conv_only) and not _unit_contiguous(g)]

    @staticmethod
    def key_of(grads: list[Tensor], conv_only: bool, with_all: bool) -> tuple[Any, ...]:
        return (conv_only, with_all, *((g.shape, g.stride(), g.dtype, g.device) for g in grads))

    @staticmethod
    def supports(grads: list[Tensor]) -> bool:
        return bool(grads) and all(g.dtype == grads[0].dtype and g.device == grads[0].device
                                   and not g.is_sparse for g in grads)

    def __call__(self, grads: list[Tensor], params: list[Tensor] | None = None,
                 weight_decay: float = 0.0) -> list[Tensor]:
        """Centralised Phi_GC(g [+ wd * w]) for every grad; grads themselves are not modified."""
        out = list(grads)
        if self.order:
            dst = [self.views[i] for i in self.order]
            torch._foreach_copy_(dst, [grads[i] for i in self.order])
            if weight_decay and params is not None:
                torch._foreach_add_(dst, [params[i].detach() for i in self.order], alpha=weight_decay)
            for block in self.blocks:  # eq. (8)-(9), all units of one size at once
                block.sub_(block.mean(dim=1, keepdim=True))
            for i in self.order:
                out[i] = self.views[i]
        for i in self.loose:  # with decay these are in `order` (views already hold g + wd * w)
            out[i] = centralize_gradient(out[i])
        return out


class _GradientCentralization:
    """Mixin for a torch.optim optimizer: centralise gradients, then the base step.

    Param groups carry "gc_conv_only" (saved by state_dict, restored by load_state_dict).
    GC runs through FlatGC (one buffer per param group, rebuilt only when the set of
    gradients changes shape), so a CUDA graph can capture the whole step.
    """

    decoupled_weight_decay: bool = False  # True for AdamW: its decay is not in the gradient

    def _init_gc(self, conv_only: bool) -> None:
        self.defaults["gc_conv_only"] = conv_only  # later add_param_group() calls inherit it
        for group in self.param_groups:
            group.setdefault("gc_conv_only", conv_only)
        self._flat_gc: dict[int, FlatGC] = {}

    def _coupled(self, group: dict[str, Any]) -> bool:
        return not (self.decoupled_weight_decay or group.get("decoupled_weight_decay", False))

    def _centralized(self, gi: int, params: list[Tensor], grads: list[Tensor], wd: float,
                     conv_only: bool) -> list[Tensor]:
        if not FlatGC.supports(grads):  # mixed dtypes/devices: the per-tensor form
            if wd:
                grads = torch._foreach_add(grads, [p.detach() for p in params], alpha=float(wd))
                centralize_gradient_(grads, conv_only=conv_only)
                return grads
            return centralized_gradients(grads, conv_only=conv_only)
        cache = self.__dict__.setdefault("_flat_gc", {})
        flat = cache.get(gi)
        if flat is None or flat.key != FlatGC.key_of(grads, conv_only, bool(wd)):
            flat = cache[gi] = FlatGC(grads, conv_only, with_all=bool(wd))
        return flat(grads, params, float(wd))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()  # gradients first: GC needs them

        swapped: list[tuple[Tensor, Tensor]] = []  # (param, its real grad), restored below
        decays: list[tuple[dict[str, Any], Any]] = []  # (group, its weight_decay), restored below
        try:
            for gi, group in enumerate(self.param_groups):
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                wd = group.get("weight_decay", 0.0)
                coupled = self._coupled(group) and wd != 0
                # Coupled decay belongs to the gradient, so it is centralised with it:
                # g <- Phi_GC(g + wd * w), and the base step must not add it again.
                grads = self._centralized(gi, params, [p.grad for p in params], wd if coupled else 0.0,
                                          group.get("gc_conv_only", False))
                if coupled:
                    decays.append((group, wd))
                    group["weight_decay"] = 0.0
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
    impl: str = "auto",
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

    if impl not in IMPLS:
        raise FerError(f"optimizer implementation {impl!r} is not one of: {', '.join(IMPLS)}")

    gc = {"gc_conv_only": gc_conv_only}
    # Fused Adam/AdamW kernels: one pass over all parameters instead of a chain of foreach
    # ops (measured ~5% of a CPU training step, docs/benchmarks.md; fewer launches on CUDA).
    # Fused Adam is also capturable in a CUDA graph with a device-tensor lr (set_lr).
    tensors = [p for g in params for p in g["params"]] if isinstance(params[0], dict) else params
    can_fuse = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    fused = {"fused": True} if (impl == "fused" or (impl == "auto" and can_fuse)) else {}
    if impl in ("foreach", "for-loop"):
        fused = {"foreach": impl == "foreach", "fused": False}
    sgd_impl = {"foreach": impl == "foreach"} if impl in ("foreach", "for-loop") else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **sgd_impl)
    if name == "sgd-gc":
        return SGDGC(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **gc, **sgd_impl)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "adam-gc":
        return AdamGC(params, lr=lr, weight_decay=weight_decay, **gc, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)
    return AdamWGC(params, lr=lr, weight_decay=weight_decay, **gc, **fused)  # "adamw-gc"


# -----------------------------------------------------------------------------
# Learning rate as a device tensor (CUDA graphs)


def graph_capturable(optimizer: torch.optim.Optimizer) -> bool:
    """True when a CUDA graph can capture `optimizer.step()` and still follow the schedule:
    fused Adam/AdamW (state steps on the device) whose lr can be a device tensor."""
    return isinstance(optimizer, torch.optim.Adam) and all(g.get("fused") for g in optimizer.param_groups)


def use_tensor_lr(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Make every group's lr a 0-d tensor on its params' device (on=True) or a float again.

    A captured graph reads lr from the tensor's memory at replay, so set_lr's in-place fill
    changes the schedule without re-capturing; a float would be baked into the graph.
    """
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        if on:
            group["lr"] = torch.tensor(lr, dtype=torch.float32, device=group["params"][0].device)
            group["capturable"] = True
        else:
            group["lr"] = lr
            if "capturable" in group:
                group["capturable"] = False


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to the schedule's `lr` times the group's "lr_scale" (1 unless set:
    --trunk-lr): in place for a tensor lr (no re-capture), else a plain float."""
    for group in optimizer.param_groups:
        value = lr * group.get("lr_scale", 1.0)
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
