"""What `fer bench` times, each measurement on its own: the two training pipelines, the
hardware's matmul rate, FLOPs per image and inference latency. engine_bench.run_bench runs them
in one process on the same model, data and device.

Two training pipelines, same model, batch size, input size, device and process:

  engine     fercli.train.engine.train_one_epoch on a DeviceSplit, with the engine's defaults:
             the whole (uint8) dataset on the device, batches sliced from a device randperm,
             augment_batch on the device (one affine_grid + grid_sample per batch), bf16
             autocast where fercli.device.autocast_dtype says, channels_last, AdamW-GC whose
             gradient centralization is one foreach op, no host sync inside the epoch;
             optionally torch.compile (mode "default" = exactly `fer train --compile`;
             "reduce-overhead" adds CUDA graphs).
  reference  the usual way: a torch Dataset over the same decoded uint8 images, a
             DataLoader with worker processes (persistent_workers, pin_memory on CUDA), the
             same augmentations per image with torchvision.transforms.v2 (RandomAffine
             translate 0.1 + rotate 10, RandomHorizontalFlip, ToDtype float32 scaled),
             fp32 eager, contiguous memory format, torch.optim.AdamW(foreach=False) after a
             python loop that centralises each >= 2-D gradient (the same AdamW-GC math), and
             `loss.item()` every step for the running loss.

The engine and its reference live in this one module so that the speed claim and the baseline
it is measured against cannot drift apart.

Throughput is steady state: warm-up steps first (DataLoader workers start, cuDNN picks
algorithms, torch.compile compiles), then `steps` timed steps; on CUDA timed with
torch.cuda.Event. FLOPs per image come from torch.utils.flop_counter.FlopCounterMode over one
fp32 forward+backward (matmul/conv FLOPs only, 2 per multiply-add; elementwise ops are not
counted), so TFLOP/s = FLOPs/image x img/s. The hardware limit is a dense matmul timed in
the same run (8192^3 bf16 on CUDA, 2048^3 bf16 and fp32 on CPU).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fercli.data.resident import epoch_generator
from fercli.model.inference import predict_logits
from fercli.train.engine import make_train_step, train_one_epoch

REFERENCE_DESCRIPTION = (
    "torch Dataset + DataLoader(num_workers={workers}, persistent_workers, pin_memory={pin}) with "
    "per-image torchvision.transforms.v2 (RandomAffine(10°, translate 0.1), RandomHorizontalFlip, "
    "ToDtype float32); fp32 eager, contiguous; torch.optim.AdamW(foreach=False) after a python-loop "
    "gradient centralization; loss.item() every step"
)

# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall time of a block: torch.cuda.Event pairs on CUDA, perf_counter on CPU.

    Also the CPU time of this process (all its threads) over the block: on a shared CPU,
    wall time depends on the other load; CPU time per image much less so.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = float("nan")
        self.cpu_seconds = float("nan")

    def __enter__(self) -> Timer:
        _sync(self.device)
        self._cpu0 = time.process_time()
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._cpu0


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None,
                  reps: int | None = None) -> float:
    """Dense n×n×n matmul rate in TFLOP/s (2n³ per product), after warm-up."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 2048)
    reps = reps or (20 if cuda else 4)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.float32, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, dtype=torch.float32, generator=g).to(dtype)
    for _ in range(3 if cuda else 1):
        c = a @ b
    with Timer(device) as t:
        for _ in range(reps):
            c = a @ b
    del c
    return 2 * n**3 * reps / t.seconds / 1e12


def flops_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one fp32 forward+backward divided by the batch (FlopCounterMode)."""
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


# --------------------------------------------------------------------------- engine


def engine_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: Any, *, batch_size: int,
                amp_dtype: torch.dtype | None, channels_last: bool = True, augment: bool = True,
                cuda_graphs: bool = False, compile_mode: str | None = None):  # type: ignore[no-untyped-def]
    """The engine's TrainStep (fercli.train.engine.make_train_step) on `data`. compile_mode
    "default" is exactly `fer train --compile`; other modes compile forward+backward with
    that torch.compile mode; cuda_graphs is `fer train`'s default captured step on CUDA."""
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model
    return make_train_step(forward, optimizer, data, batch_size=batch_size, amp_dtype=amp_dtype,
                           augment=augment, channels_last=channels_last, model=model,
                           cuda_graphs=cuda_graphs and not compile_mode)


def engine_throughput(model: nn.Module, optimizer: torch.optim.Optimizer, step_fn: Any, data: Any, *,
                      batch_size: int, steps: int, warmup: int, amp_dtype: torch.dtype | None,
                      channels_last: bool = True, augment: bool = True, seed: int = 0,
                      budget_s: float | None = None) -> tuple[float, float, int]:
    """(img/s, CPU ms per image, timed steps) of engine.train_one_epoch over at most `steps`
    full batches of `data` (a DeviceSplit), after `warmup` batches (graph capture, cuDNN
    autotuning, compilation happen there).

    budget_s caps the timed part: from the warm-up's speed, the number of timed steps is cut
    so the measurement takes about budget_s (at least 2 steps). train_one_epoch ends in its
    one host sync, so the timer sees all the work.
    """
    device = data.x.device
    kw = dict(batch_size=batch_size, amp_dtype=amp_dtype, augment=augment, channels_last=channels_last,
              step_fn=step_fn)
    if warmup:
        with Timer(device) as tw:
            train_one_epoch(model, optimizer, data, gen=epoch_generator(seed, 0, device),
                            max_steps=warmup, **kw)
        if budget_s is not None:
            # Warm-up steps estimate a step (the first also pays one-time costs: conservative).
            per_step = tw.seconds / warmup
            steps = max(2, min(steps, int(budget_s / max(per_step, 1e-9))))
    with Timer(device) as t:
        r = train_one_epoch(model, optimizer, data, gen=epoch_generator(seed, 1, device),
                            max_steps=steps, **kw)
    n = int(r["images"])
    return n / t.seconds, 1000 * t.cpu_seconds / n, n // batch_size


# --------------------------------------------------------------------------- reference


class FaceDataset(torch.utils.data.Dataset):
    """Decoded uint8 faces (N, H, W) + labels, a transform applied per image."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[..., Any]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def reference_transform() -> Callable[..., Any]:
    """The engine's augmentations, the usual per-image torchvision way."""
    # Imported here: only the reference pipeline uses torchvision, whose import adds about a
    # second to torch's, so `fer bench --no-reference` and the engine-only callers never pay it.
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),  # (H, W) uint8 ndarray -> (1, H, W) uint8 image tensor
        v2.RandomAffine(degrees=10, translate=(0.1, 0.1)),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),  # the ToTensor of v2: [0, 1] floats
    ])


def centralize_python_loop(model: nn.Module) -> None:
    """Gradient centralization the usual way: one python iteration per parameter."""
    for p in model.parameters():
        g = p.grad
        if g is not None and g.dim() > 1:
            g.sub_(g.mean(dim=tuple(range(1, g.dim())), keepdim=True))


def default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    return min(8, cpus) if device.type == "cuda" else min(2, cpus)


def reference_throughput(model: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray,
                         labels: np.ndarray, device: torch.device, *, batch_size: int, steps: int,
                         warmup: int, workers: int, seed: int = 0) -> tuple[float, float]:
    """(img/s, main-process CPU ms per image) of the usual DataLoader + per-image
    transforms + fp32 eager loop (the workers' CPU time is not included)."""
    ds = FaceDataset(images, labels, reference_transform())
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=g)
    model.train()
    running = 0.0

    def one_step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        nonlocal running
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        centralize_python_loop(model)
        optimizer.step()
        running += loss.item()

    batches = iter(loader)
    try:
        for _ in range(max(warmup, 1)):  # ≥ 1: the first batch waits for the workers to start
            one_step(next(batches))
        with Timer(device) as t:
            for _ in range(steps):
                one_step(next(batches))
    finally:
        del batches, loader  # shuts the worker processes down
    return steps * batch_size / t.seconds, 1000 * t.cpu_seconds / (steps * batch_size)


# --------------------------------------------------------------------------- inference


def inference_timing(model: nn.Module, x: torch.Tensor, *, amp_dtype: torch.dtype | None,
                     channels_last: bool, batch: int, reps1: int, reps_batched: int,
                     warmup: int) -> tuple[float, float]:
    """(median ms per face at batch 1, img/s at `batch`) through model.inference.predict_logits."""
    device = x.device
    model.eval()
    one = x[:1]
    xb = x[:batch]

    def run(inp: torch.Tensor, bs: int) -> None:
        out = predict_logits(model, inp, batch_size=bs, amp_dtype=amp_dtype, channels_last=channels_last)
        _sync(device)
        del out

    for _ in range(warmup):
        run(one, 1)
        run(xb, batch)
    times = []
    for _ in range(reps1):
        t0 = time.perf_counter()
        run(one, 1)
        times.append(time.perf_counter() - t0)
    with Timer(device) as t:
        for _ in range(reps_batched):
            predict_logits(model, xb, batch_size=batch, amp_dtype=amp_dtype, channels_last=channels_last)
    model.train()
    return 1000 * statistics.median(times), reps_batched * xb.shape[0] / t.seconds

