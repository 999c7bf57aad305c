"""`fer bench`: the project's training engine against a reference pipeline and the hardware.

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

Throughput is steady state: warm-up steps first (DataLoader workers start, cuDNN picks
algorithms, torch.compile compiles), then `steps` timed steps; on CUDA timed with
torch.cuda.Event. FLOPs per image come from torch.utils.flop_counter.FlopCounterMode over one
fp32 forward+backward (matmul/conv FLOPs only, 2 per multiply-add; elementwise ops are not
counted), so TFLOP/s = FLOPs/image x img/s. The hardware limit is a dense matmul timed in
the same run (8192^3 bf16 on CUDA, 2048^3 bf16 and fp32 on CPU).

Nothing here imports Typer or Rich: progress goes through a callback, results are a dict.

Why one file of ~680 lines: the engine measurement, its reference pipeline and the hardware
rate are one concern — a speed claim and the baseline it is measured against in the same run —
and splitting the reference away from the engine would let them drift apart.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fercli.errors import FerError
from fercli.vision.faces import FACE_SIZE

# ("phase", {"name": ...}) before each measurement; ("result", {...}) after.
ProgressCallback = Callable[[str, dict[str, Any]], None]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

REFERENCE_DESCRIPTION = (
    "torch Dataset + DataLoader(num_workers={workers}, persistent_workers, pin_memory={pin}) with "
    "per-image torchvision.transforms.v2 (RandomAffine(10°, translate 0.1), RandomHorizontalFlip, "
    "ToDtype float32); fp32 eager, contiguous; torch.optim.AdamW(foreach=False) after a python-loop "
    "gradient centralization; loss.item() every step"
)


@dataclass(frozen=True)
class BenchConfig:
    device: str = "auto"  # auto | cpu | cuda
    model: str = "bcnn-resnet34"
    shared_backbone: bool = False
    image_size: int = FACE_SIZE  # the network input; the default needs no resize
    batch_size: int = 64
    steps: int | None = None  # timed steps per pipeline; None: 10 on CPU, 50 on CUDA
    warmup: int | None = None  # None: 1 on CPU, 10 on CUDA, 15 with --compile
    dataset: str = "fer2013"  # fer2013 | ck+ | a prepared directory
    synthetic: bool = False  # force synthetic data even if the dataset is prepared
    max_images: int = 4096  # distinct training images used (tiled to fill the steps)
    compile: bool = False
    compile_mode: str = "default"
    reference: bool = True
    inference: bool = True
    workers: int | None = None  # reference DataLoader workers; None: 2 on CPU, 8 on CUDA
    inference_batch: int | None = None  # None: 64 on CPU, 256 on CUDA
    threads: int | None = None  # torch.set_num_threads for the run; None: torch's default
    seed: int = 0
    cuda_graphs: bool = True  # CUDA: time the graphed step (fer train's default) AND eager
    time_cap_s: float | None = None  # None: 80 s on CPU (timed steps shrink to fit), none on CUDA


def validate(cfg: BenchConfig) -> None:
    from fercli.model.networks import MODEL_NAMES, check_image_size

    if cfg.model not in MODEL_NAMES:
        raise FerError(f"--arch {cfg.model!r} is not one of: {', '.join(MODEL_NAMES)}")
    if cfg.shared_backbone and cfg.model != "bcnn-resnet34":
        raise FerError("--shared-backbone only applies to --arch bcnn-resnet34")
    if cfg.compile_mode not in COMPILE_MODES:
        raise FerError(f"--compile-mode {cfg.compile_mode!r} is not one of: {', '.join(COMPILE_MODES)}")
    check_image_size(cfg.image_size)
    for name in ("batch_size", "steps", "max_images", "inference_batch", "threads"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise FerError(f"--{name.replace('_', '-')} must be ≥ 1, got {v}")
    for name in ("warmup", "workers"):
        v = getattr(cfg, name)
        if v is not None and v < 0:
            raise FerError(f"--{name} must be ≥ 0, got {v}")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BenchData:
    images: np.ndarray  # uint8 (N, H, W)
    labels: np.ndarray  # int64 (N,)
    num_classes: int
    kind: str  # dataset name, or "synthetic"
    path: str | None
    note: str | None


def synthetic_data(n: int = 1024, size: int = FACE_SIZE, num_classes: int = 7, seed: int = 0) -> BenchData:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    return BenchData(images, labels, num_classes, "synthetic", None, None)


def load_bench_data(cfg: BenchConfig) -> BenchData:
    """The first `max_images` training images of a prepared dataset, else synthetic faces.

    A dataset *name* (fer2013, ck+) that is not prepared falls back to synthetic data and
    says so; an explicit directory that does not exist is an error.
    """
    from fercli.data.prepared import DATASET_DIRS, load_prepared
    from fercli.data.resident import plan_splits

    if cfg.synthetic:
        return synthetic_data(min(cfg.max_images, 1024), seed=cfg.seed)
    try:
        ds = load_prepared(cfg.dataset)
    except FerError as exc:
        if cfg.dataset not in DATASET_DIRS:
            raise
        d = synthetic_data(min(cfg.max_images, 1024), seed=cfg.seed)
        return BenchData(d.images, d.labels, d.num_classes, "synthetic", None,
                         f"synthetic data: {exc}")
    idx = plan_splits(ds, None).train[: cfg.max_images]
    return BenchData(np.ascontiguousarray(ds.images[idx]), ds.labels[idx].astype(np.int64),
                     len(ds.classes), ds.name, str(ds.path), None)


def tiled(data: BenchData, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images drawn from data (a random permutation, repeated as needed)."""
    rng = np.random.default_rng(seed)
    reps = math.ceil(n / len(data.labels))
    idx = np.concatenate([rng.permutation(len(data.labels)) for _ in range(reps)])[:n]
    return data.images[idx], data.labels[idx]


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
    from torch.utils.flop_counter import FlopCounterMode

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
    from fercli.train.engine import make_train_step

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
    from fercli.data.resident import epoch_generator
    from fercli.train.engine import train_one_epoch

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
    from fercli.model.inference import predict_logits

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


# --------------------------------------------------------------------------- the bench


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def run_bench(cfg: BenchConfig, on_event: ProgressCallback | None = None) -> dict[str, Any]:
    """Measure both pipelines (and inference, FLOPs, the matmul rate); return a flat dict."""
    validate(cfg)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_bench(cfg, on_event)
    finally:
        torch.set_num_threads(threads)  # an in-process caller keeps its own setting


@dataclass(frozen=True)
class _Plan:
    """cfg's None defaults resolved for the device the run uses."""

    device: torch.device
    cap: float | None  # seconds; None: uncapped
    steps: int
    warmup: int
    workers: int
    infer_batch: int
    amp_dtype: torch.dtype | None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass(frozen=True)
class _EngineResult:
    flops: float  # per image, forward + backward
    ips: float
    cpu_ms: float
    steps: int  # timed steps actually run (fewer under a time cap)
    graphed: bool
    eager_ips: float | None  # the same engine without the CUDA graph; None when not graphed
    infer_ms: float | None
    infer_ips: float | None


def _plan(cfg: BenchConfig, device: torch.device) -> _Plan:
    from fercli.device import autocast_dtype

    cuda = device.type == "cuda"
    return _Plan(
        device=device,
        cap=cfg.time_cap_s if cfg.time_cap_s is not None else (None if cuda else 80.0),
        steps=cfg.steps or (50 if cuda else 10),
        warmup=cfg.warmup if cfg.warmup is not None else ((15 if cfg.compile else 10) if cuda else 1),
        workers=cfg.workers if cfg.workers is not None else default_workers(device),
        infer_batch=cfg.inference_batch or (256 if cuda else 64),
        amp_dtype=autocast_dtype(device, "auto"),
    )


def _fresh_model(cfg: BenchConfig, num_classes: int, device: torch.device) -> nn.Module:
    """The benchmarked network, seeded so that every pipeline starts from the same weights."""
    from fercli.model.networks import build_model

    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, num_classes, image_size=cfg.image_size, pretrained=False,
                       shared_backbone=cfg.shared_backbone).to(device)


def _run_bench(cfg: BenchConfig, on_event: ProgressCallback | None) -> dict[str, Any]:
    from fercli.device import configure_backends, resolve_device

    emit = on_event or (lambda kind, info: None)
    device = resolve_device(cfg.device)
    configure_backends(device, deterministic=False)  # what fer train does: cudnn.benchmark, TF32
    plan = _plan(cfg, device)
    t_start = time.perf_counter()
    load_start = _load()
    notes: list[str] = []

    emit("phase", {"name": "loading data"})
    data = load_bench_data(cfg)
    if data.note:
        notes.append(data.note)
    n_needed = max(plan.steps, plan.warmup, 1) * cfg.batch_size
    xi, yi = tiled(data, max(n_needed, plan.infer_batch), seed=cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(xi)).unsqueeze(1).to(device)  # uint8 (N, 1, H, W)
    y = torch.from_numpy(yi).to(device)

    eng = _engine_phase(cfg, plan, data, x, y, emit)
    ref_ips = ref_cpu_ms = None
    if cfg.reference:
        ref_ips, ref_cpu_ms = _reference_phase(cfg, plan, data, eng.steps, emit)

    emit("phase", {"name": "matmul peak"})
    peak_dtype, rates = _matmul_rates(plan)
    load_end = _load()
    notes += _run_notes(cfg, plan, load_start, load_end, t_start)
    return _report(cfg, plan, data, eng, ref_ips, ref_cpu_ms, peak_dtype, rates,
                   load_start, load_end, t_start, notes)


def _engine_phase(cfg: BenchConfig, plan: _Plan, data: BenchData, x: torch.Tensor, y: torch.Tensor,
                  emit: ProgressCallback) -> _EngineResult:
    """The project's engine with its defaults: FLOPs, timed steps, eager comparison, inference."""
    from fercli.data.resident import DeviceSplit
    from fercli.train.optim import build_optimizer

    cuda, bs, warmup = plan.cuda, cfg.batch_size, plan.warmup
    model = _fresh_model(cfg, data.num_classes, plan.device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer("adamw-gc", model, lr=1e-4, weight_decay=1e-4)
    emit("phase", {"name": "counting FLOPs"})
    fb = min(bs, 8)
    flops = flops_per_image(model, x[:fb].float().div(255).contiguous(memory_format=torch.channels_last),
                            y[:fb])
    split = DeviceSplit(x, y)
    graphed = cuda and cfg.cuda_graphs and not cfg.compile
    compile_mode = cfg.compile_mode if cfg.compile else None
    # Under a cap each pipeline gets 30% of it for timed steps; the rest is warm-up,
    # inference, FLOP counting and the matmul rate.
    budget = 0.3 * plan.cap if plan.cap else None
    step_fn = engine_step(model, optimizer, split, batch_size=bs, amp_dtype=plan.amp_dtype,
                          cuda_graphs=graphed, compile_mode=compile_mode)
    graphed = step_fn.graphed
    emit("phase", {"name": f"engine: {warmup} warm-up + ≤{plan.steps} timed steps"
                           + (" (CUDA graph)" if graphed else "")
                           + (f" (torch.compile {cfg.compile_mode})" if cfg.compile else "")})
    engine_ips, engine_cpu_ms, steps = engine_throughput(
        model, optimizer, step_fn, split, batch_size=bs, steps=plan.steps,
        warmup=max(warmup, 1 if graphed else 0), amp_dtype=plan.amp_dtype, seed=cfg.seed, budget_s=budget)
    emit("result", {"name": "engine" + (" (graphed)" if graphed else ""), "img_per_s": engine_ips})
    eager_ips = _eager_engine_ips(cfg, plan, data, split, steps, emit) if graphed else None

    infer_ms = infer_ips = None
    if cfg.inference:
        emit("phase", {"name": "inference: batch 1 and batched"})
        infer_ms, infer_ips = inference_timing(
            model, x, amp_dtype=plan.amp_dtype, channels_last=True, batch=plan.infer_batch,
            reps1=50 if cuda else 5, reps_batched=20 if cuda else 1, warmup=10 if cuda else 1)
    del model, optimizer, step_fn, split
    if cfg.compile:
        torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
    return _EngineResult(flops, engine_ips, engine_cpu_ms, steps, graphed, eager_ips, infer_ms, infer_ips)


def _eager_engine_ips(cfg: BenchConfig, plan: _Plan, data: BenchData, split: Any, steps: int,
                      emit: ProgressCallback) -> float:
    """The same engine without the CUDA graph, same steps: what the graph buys."""
    from fercli.train.optim import build_optimizer

    emodel = _fresh_model(cfg, data.num_classes, plan.device).to(memory_format=torch.channels_last)
    eopt = build_optimizer("adamw-gc", emodel, lr=1e-4, weight_decay=1e-4)
    estep = engine_step(emodel, eopt, split, batch_size=cfg.batch_size, amp_dtype=plan.amp_dtype,
                        cuda_graphs=False)
    eager_ips, _, _ = engine_throughput(emodel, eopt, estep, split, batch_size=cfg.batch_size, steps=steps,
                                        warmup=plan.warmup, amp_dtype=plan.amp_dtype, seed=cfg.seed)
    emit("result", {"name": "engine (eager)", "img_per_s": eager_ips})
    return eager_ips


def _reference_phase(cfg: BenchConfig, plan: _Plan, data: BenchData, steps: int,
                     emit: ProgressCallback) -> tuple[float, float]:
    """The usual way (DataLoader workers, fp32 eager, per-image transforms): img/s, CPU ms/image."""
    bs, warmup, workers = cfg.batch_size, plan.warmup, plan.workers
    emit("phase", {"name": f"reference: DataLoader({workers} workers), {steps} timed steps"})
    ref_model = _fresh_model(cfg, data.num_classes, plan.device)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-4, weight_decay=1e-4, foreach=False)
    # The same images as the engine, tiled to cover warm-up + timed steps.
    ri, ry = tiled(data, (max(warmup, 1) + steps) * bs, seed=cfg.seed)
    ref_ips, ref_cpu_ms = reference_throughput(
        ref_model, ref_opt, ri, ry, plan.device, batch_size=bs, steps=steps, warmup=warmup,
        workers=workers, seed=cfg.seed)
    emit("result", {"name": "reference", "img_per_s": ref_ips})
    del ref_model, ref_opt
    if plan.cuda:
        torch.cuda.empty_cache()
    return ref_ips, ref_cpu_ms


def _matmul_rates(plan: _Plan) -> tuple[str, dict[str, float]]:
    """The hardware's dense matmul TFLOP/s in the dtype the engine trains in."""
    peak_dtype = "bf16" if plan.amp_dtype == torch.bfloat16 else "fp32"
    # Only the dtype the engine trains in: on a CPU without native bf16 a bf16 matmul is
    # emulated and crawls (12 min on an AVX2-only day), and the engine never uses it there.
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    rates = {peak_dtype: matmul_tflops(plan.device, dtypes[peak_dtype], n=None if plan.cuda else 1024)}
    return peak_dtype, rates


def _run_notes(cfg: BenchConfig, plan: _Plan, load_start: list[float], load_end: list[float],
               t_start: float) -> list[str]:
    """What a reader of the numbers must know: contention, compile time in the timing, the cap."""
    notes = []
    cpus = os.cpu_count() or 1
    if not plan.cuda and load_start and max(load_start[0], load_end[0]) > 0.5 * cpus:
        notes.append(f"CPU contended: load average {load_start[0]} at start, {load_end[0]} at end "
                     f"on {cpus} CPUs (other processes were running)")
    if plan.cuda and cfg.compile and plan.warmup < 3:
        notes.append("torch.compile with fewer than 3 warm-up steps: compile time is in the timing")
    cap = plan.cap
    if cap and time.perf_counter() - t_start > cap:
        notes.append(f"took {time.perf_counter() - t_start:.0f} s, over the {cap:.0f} s cap "
                     "(warm-up and inference are not capped)")
    return notes


def _report(cfg: BenchConfig, plan: _Plan, data: BenchData, eng: _EngineResult,
            ref_ips: float | None, ref_cpu_ms: float | None, peak_dtype: str, rates: dict[str, float],
            load_start: list[float], load_end: list[float], t_start: float,
            notes: list[str]) -> dict[str, Any]:
    """The flat result dict `fer bench --json` prints (one key per number, rounded)."""
    from fercli.device import device_name

    device, bs, workers = plan.device, cfg.batch_size, plan.workers
    engine_ips, eager_ips, infer_ms, infer_ips = eng.ips, eng.eager_ips, eng.infer_ms, eng.infer_ips
    peak = rates[peak_dtype]
    engine_tflops = eng.flops * engine_ips / 1e12
    ref_tflops = eng.flops * ref_ips / 1e12 if ref_ips else None
    return {
        "engine_img_per_s": round(engine_ips, 2),
        "engine_graphed": eng.graphed,
        "engine_eager_img_per_s": round(eager_ips, 2) if eager_ips else None,
        "graph_speedup": round(engine_ips / eager_ips, 3) if eager_ips else None,
        "seconds": round(time.perf_counter() - t_start, 1),
        "time_cap_s": plan.cap,
        "reference_img_per_s": round(ref_ips, 2) if ref_ips else None,
        "speedup": round(engine_ips / ref_ips, 3) if ref_ips else None,
        "engine_cpu_ms_per_image": round(eng.cpu_ms, 3),
        "reference_cpu_ms_per_image": round(ref_cpu_ms, 3) if ref_cpu_ms is not None else None,
        "flops_per_image": int(eng.flops),
        "engine_tflops": round(engine_tflops, 4),
        "reference_tflops": round(ref_tflops, 4) if ref_tflops is not None else None,
        "peak_matmul_tflops": round(peak, 3),
        "peak_dtype": peak_dtype,
        "fraction_of_peak": round(engine_tflops / peak, 4),
        "reference_fraction_of_peak": round(ref_tflops / peak, 4) if ref_tflops is not None else None,
        "matmul_tflops": {k: round(v, 3) for k, v in rates.items()},
        "inference_ms_per_face_batch1": round(infer_ms, 3) if infer_ms is not None else None,
        "inference_batch": plan.infer_batch,
        "inference_img_per_s_batched": round(infer_ips, 1) if infer_ips is not None else None,
        "device": device_name(device),
        "device_type": device.type,
        "data": data.kind,
        "data_path": data.path,
        "distinct_images": int(len(data.labels)),
        "model": cfg.model,
        "shared_backbone": cfg.shared_backbone,
        "batch_size": bs,
        "image_size": cfg.image_size,
        "steps": eng.steps,
        "warmup": plan.warmup,
        "engine": {
            "precision": peak_dtype if plan.amp_dtype else "fp32",
            "channels_last": True,
            "optimizer": "adamw-gc (fercli.train.optim.AdamWGC: flat-buffer GC, fused AdamW kernel)",
            "compile": cfg.compile_mode if cfg.compile else None,
            "cuda_graphs": eng.graphed,
            "data": "device-resident uint8, full device randperm batches, augment_with on the device",
        },
        "reference": {
            "precision": "fp32",
            "channels_last": False,
            "optimizer": "torch.optim.AdamW(foreach=False) + python-loop GC",
            "workers": workers,
            "pipeline": REFERENCE_DESCRIPTION.format(workers=workers, pin=device.type == "cuda"),
        } if cfg.reference else None,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count() or 1,
        "platform": platform.platform(),
        "load_average": {"start": load_start, "end": load_end},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notes": notes,
    }
