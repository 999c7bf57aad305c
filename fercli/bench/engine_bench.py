"""`fer bench`: the project's training engine against a reference pipeline and the hardware,
in one run.

This module holds the run: its config (BenchConfig, validate), the images it trains on (the
first training images of a prepared dataset, else synthetic faces), the order of the
measurements (FLOPs, engine, eager engine on CUDA, inference, reference, matmul rate), the
notes a reader of the numbers needs (contention, compile time, the time cap) and the flat
result dict that `fer bench --json` prints. What each measurement does, and what the two
pipelines are, is in measure.py.

Nothing here imports Typer or Rich: progress goes through a callback, results are a dict.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import nn

from fercli.bench.config import COMPILE_MODES, BenchConfig  # noqa: F401  (part of this module's API)
from fercli.bench.measure import (
    REFERENCE_DESCRIPTION,
    default_workers,
    engine_step,
    engine_throughput,
    flops_per_image,
    inference_timing,
    matmul_tflops,
    reference_throughput,
)
from fercli.data import registry
from fercli.data.resident import DeviceSplit, plan_splits
from fercli.device import autocast_dtype, configure_backends, device_name, resolve_device
from fercli.errors import FerError
from fercli.model.networks import MODEL_NAMES, build_model, check_image_size
from fercli.train.optim import build_optimizer
from fercli.vision.faces import FACE_SIZE

# ("phase", {"name": ...}) before each measurement; ("result", {...}) after.
ProgressCallback = Callable[[str, dict[str, Any]], None]






def validate(cfg: BenchConfig) -> None:
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
    if cfg.synthetic:
        return synthetic_data(min(cfg.max_images, 1024), seed=cfg.seed)
    try:
        ds = registry.load_dataset(cfg.dataset)
    except FerError as exc:
        if registry.find(cfg.dataset) is None:
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
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, num_classes, image_size=cfg.image_size, pretrained=False,
                       shared_backbone=cfg.shared_backbone).to(device)


def _run_bench(cfg: BenchConfig, on_event: ProgressCallback | None) -> dict[str, Any]:
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
        # The vector ISA torch dispatches to (AVX2, AVX512, ...): what the peak depends on.
        "cpu_isa": torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else None,
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
