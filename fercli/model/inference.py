"""The forward pass every consumer shares: batched inference over uint8 faces with test-time
augmentation (predict_logits), raw logits for fitting a temperature (model_logits), a model
with its fitted temperature applied (TemperatureScaled), and the CUDA-graph replay of the
inference forward (GraphedInference). Training's validation, `fer evaluate`, `fer calibrate`
and the torch backend of `fer predict` all run these.

    uint8 (N, 1, H, W) → float / 255 → TTA views → [channels_last] → autocast → model
      → softmax per view → mean over views → log (clamped at 1e-12)      (N, C)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from fercli.errors import FerError
from fercli.model.temperature import check_temperature
from fercli.model.tta import ONNX_TTA_MODES, TTA_MODES, face_views


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True):  # type: ignore[no-untyped-def]
    """bf16/fp16 autocast on `device` when `dtype` is given, else a no-op context.
    cache=False inside CUDA graphs: autocast's weight-cast cache must not outlive a capture."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                          enabled=dtype is not None, cache_enabled=cache)


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

    tta: none | flip (average with the mirrored face) | shift | flip-shift (fercli.model.tta)
    | ten-crop (4 corners + centre at 90% size, each also mirrored; the model resizes crops
    back to its input size).
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
            with autocast(device, amp_dtype):
                logits = model(v)
            probs = probs + logits.float().softmax(1)
        out.append((probs / len(views)).clamp_min(1e-12).log())
    return torch.cat(out) if out else torch.zeros(0, 0)



def _tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    if tta == "none":
        return [x]
    if tta in ONNX_TTA_MODES:  # same-size views: the numpy ones, on x's device
        return [torch.from_numpy(v).to(x.device) for v in face_views(x.cpu().numpy(), tta)]
    h, w = x.shape[-2:]
    ch, cw = round(h * 0.9), round(w * 0.9)
    crops = [x[..., :ch, :cw], x[..., :ch, w - cw:], x[..., h - ch:, :cw], x[..., h - ch:, w - cw:],
             x[..., (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]]
    return crops + [c.flip(3) for c in crops]


@torch.inference_mode()
def model_logits(model: nn.Module, x_uint8: torch.Tensor, *, batch_size: int = 256,
                 amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Raw logits (N, C) float64 of uint8 faces (N, 1, H, W), batched, no TTA: what T divides.

    Not predict_logits: that returns log-probabilities clamped at 1e-12, which is
    harmless for labels and losses but would distort the fit for a large T (a clamped -27.6
    divided by T=30 is not the true -300/30)."""
    if x_uint8.shape[0] == 0:
        raise FerError("no faces to compute calibration logits on (empty split)")
    model.eval()
    on = amp_dtype is not None  # the caller's autocast (fercli.device.autocast_dtype), as predict_logits
    out = []
    for s in range(0, x_uint8.shape[0], batch_size):
        x = x_uint8[s:s + batch_size].float().div_(255).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype or torch.float32, enabled=on):
            out.append(model(x).double())  # (B, C)
    return torch.cat(out).cpu().numpy()


class TemperatureScaled(nn.Module):
    """model(x) / T: the logits a calibrated model's softmax sees. Wrapping the model (not
    rescaling afterwards) makes every path apply T per view before the softmax: eager,
    TorchScript, CUDA graphs, flip and ten-crop TTA, and the ONNX graph alike."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = check_temperature(temperature)
        self.spec = getattr(model, "spec", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature  # (N, C)


class GraphedInference:
    """A model's inference forward replayed from CUDA graphs, one per input shape (at most
    `max_shapes`; other shapes and non-CUDA inputs run eager). Batch 1 on a GPU is launch
    bound: ~10³ small kernels per face, replayed as one graph (`fer predict --device cuda`).

    Returns a copy of the graph's output, so results stay valid after the next call.
    """

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None, max_shapes: int = 4) -> None:
        self.model, self.amp_dtype, self.max_shapes = model, amp_dtype, max_shapes
        self.graphs: dict[tuple[Any, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def eval(self) -> GraphedInference:
        self.model.eval()
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.stride(), x.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            if x.device.type != "cuda" or len(self.graphs) >= self.max_shapes:
                return self.model(x)
            entry = self.graphs[key] = self._capture(x)
        graph, static_x, static_out = entry
        static_x.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        static_x = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        static_x.copy_(x)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), autocast(x.device, self.amp_dtype, cache=False):
            for _ in range(2):  # cuDNN autotuning and lazy init outside the capture
                self.model(static_x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), autocast(x.device, self.amp_dtype, cache=False):
            static_out = self.model(static_x)
        return graph, static_x, static_out
