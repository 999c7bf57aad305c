#!/usr/bin/env python3
"""Ablation of the engine's speed choices, one at a time, on device-resident data.

Every variant trains through fercli.train.engine.train_one_epoch (device-resident uint8 data,
device randperm batches, augment_batch on the device); only the step differs:

  fp32                 fp32 eager, contiguous, AdamW(foreach=False) + python-loop GC, .item()/step
  +channels_last       ... model and batches channels_last
  +bf16                ... bf16 autocast (the bilinear head stays fp32, as in the model)
  +foreach_gc          fercli's AdamWGC (GC as one foreach op; torch's default AdamW impl)
  -item = engine       no .item() per step (the engine's default step)
  +fused_adamw         AdamWGC(fused=True): one fused AdamW kernel (the engine's default)
  +fused_head          + the B-CNN head's signed sqrt + L2 normalisation as one autograd
                       Function (fercli.model.networks's default; earlier variants patch in the
                       unfused F.normalize(signed_sqrt(x)) to measure what it buys)
  fp32+foreach_gc      the engine with --precision fp32 (channels_last, foreach GC, no .item())
  compile              the engine with torch.compile (mode from --compile-mode; slow to compile on CPU)
  reduce-overhead      torch.compile(mode="reduce-overhead"): CUDA graphs (CUDA only)

Variants are measured round-robin, `--rounds` times, each from a fresh model, so a
background load that comes and goes hits them alike; the median img/s is reported, and the
median CPU time per image (this process, all threads), which a shared CPU disturbs much
less than wall time (use --threads 1 there: with 2 threads an OpenMP barrier waits for a
descheduled thread, so even CPU time inflates).

    PYTHONPATH=. python3 devtools/benchmarks/ablation_engine.py --device cpu --batch-size 64 --steps 5 --rounds 2
    python3 devtools/benchmarks/ablation_engine.py --device cuda --batch-size 16 --variants engine,compile,reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import fercli.model.networks  # noqa: E402
from fercli.bench import engine_bench as bench  # noqa: E402
from fercli.bench.measure import centralize_python_loop, engine_throughput  # noqa: E402
from fercli.data.resident import DeviceSplit  # noqa: E402
from fercli.device import device_name, resolve_device  # noqa: E402
from fercli.model.networks import build_model  # noqa: E402
from fercli.train import engine
from fercli.train.optim import AdamWGC  # noqa: E402

CHAIN = ("fp32", "+channels_last", "+bf16", "+foreach_gc", "engine", "+fused_adamw", "+fused_head")
VARIANTS = (*CHAIN, "fp32+foreach_gc", "compile", "reduce-overhead", "+cuda_graphs")
DEFAULT = CHAIN


def unfused_normalize_bilinear(m: torch.Tensor) -> torch.Tensor:
    """Eq. (4)-(6) as separate ops: what fercli.model.networks did before its fused Function."""
    return torch.nn.functional.normalize(fercli.model.networks.signed_sqrt(m.flatten(1)), dim=1)


def spec(variant: str) -> dict:
    """channels_last, bf16, foreach GC (vs python loop), .item() per step, fused, compile mode."""
    base = {"cl": False, "bf16": False, "foreach_gc": False, "item": True, "fused": False,
            "fused_head": False, "compile": None}
    if variant in CHAIN:
        s = dict(base)
        for v in CHAIN[1: CHAIN.index(variant) + 1]:
            s.update({"+channels_last": {"cl": True}, "+bf16": {"bf16": True},
                      "+foreach_gc": {"foreach_gc": True}, "engine": {"item": False},
                      "+fused_adamw": {"fused": True}, "+fused_head": {"fused_head": True}}[v])
        return s
    if variant == "+cuda_graphs":  # fer train's default on CUDA: the whole step captured
        return {**spec("+fused_head"), "graphs": True}
    if variant == "fp32+foreach_gc":
        return {**base, "cl": True, "foreach_gc": True, "item": False}
    if variant in ("compile", "reduce-overhead"):
        return {**base, "cl": True, "bf16": True, "foreach_gc": True, "item": False,
                "compile": "default" if variant == "compile" else "reduce-overhead"}
    raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def measure(variant: str, args: argparse.Namespace, device: torch.device, x: torch.Tensor,
            y: torch.Tensor) -> tuple[float, float]:
    """(img/s, CPU ms per image) of one variant, from a fresh model."""
    s = spec(variant)
    torch.manual_seed(0)
    model = build_model(args.model, 7, image_size=args.image_size, shared_backbone=args.shared_backbone).to(device)
    if s["cl"]:
        model.to(memory_format=torch.channels_last)
    amp = torch.bfloat16 if s["bf16"] else None
    if s["foreach_gc"]:
        kw = {"fused": True} if s["fused"] else {}
        opt = AdamWGC(model.parameters(), lr=1e-4, weight_decay=1e-4, **kw)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, foreach=False)

    data = DeviceSplit(x, y)

    class LoopGC:
        """Plain AdamW behind a python loop that centralises each >= 2-D gradient."""

        param_groups = opt.param_groups

        def zero_grad(self, set_to_none: bool = True) -> None:
            opt.zero_grad(set_to_none=set_to_none)

        def step(self) -> None:
            centralize_python_loop(model)
            opt.step()

    class ItemStep(engine.TrainStep):
        """loss.item() after every step: a host sync, like the usual training loop."""

        def __call__(self, idx, r):  # type: ignore[no-untyped-def]
            out = super().__call__(idx, r)
            out[0].item()
            return out

    step_cls = ItemStep if s["item"] else engine.TrainStep
    forward = torch.compile(model, mode=s["compile"]) if s["compile"] else model
    step_fn = step_cls(forward, opt if s["foreach_gc"] else LoopGC(), data, batch_size=args.batch_size,
                       amp_dtype=amp, channels_last=s["cl"], model=model,
                       cuda_graphs=bool(s.get("graphs")))

    warm = args.warmup if not s["compile"] else max(args.warmup, 3)
    original = fercli.model.networks.normalize_bilinear
    if not s["fused_head"]:
        fercli.model.networks.normalize_bilinear = unfused_normalize_bilinear  # BilinearResNet34.pooled uses it
    try:
        ips, ms, _ = engine_throughput(model, opt, step_fn, data, batch_size=args.batch_size,
                                       steps=args.steps, warmup=warm, amp_dtype=amp,
                                       channels_last=s["cl"])
        return ips, ms
    finally:
        fercli.model.networks.normalize_bilinear = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="bcnn-resnet34")
    ap.add_argument("--shared-backbone", action="store_true")
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(DEFAULT))
    ap.add_argument("--dataset", default="fer2013")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the result to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        spec(v)
    data = bench.load_bench_data(bench.BenchConfig(dataset=args.dataset))
    xi, yi = bench.tiled(data, max(args.steps, args.warmup, 3) * args.batch_size)
    x = torch.from_numpy(xi).unsqueeze(1).to(device)
    y = torch.from_numpy(yi).to(device)
    load0 = os.getloadavg()
    results: dict[str, list[float]] = {v: [] for v in variants}
    cpu_ms: dict[str, list[float]] = {v: [] for v in variants}
    errors: dict[str, str] = {}
    t0 = time.perf_counter()

    def summary() -> dict:
        done = [v for v in variants if results[v]]
        return {
            "model": args.model, "shared_backbone": args.shared_backbone, "image_size": args.image_size,
            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
            "device": device_name(device), "threads": torch.get_num_threads(), "data": data.kind,
            "torch_version": torch.__version__,
            "load_average": {"start": [round(v, 2) for v in load0],
                             "end": [round(v, 2) for v in os.getloadavg()]},
            "seconds": round(time.perf_counter() - t0, 1),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "img_per_s_median": {v: round(statistics.median(results[v]), 2) for v in done},
            "img_per_s_all": {v: [round(x, 2) for x in results[v]] for v in done},
            "cpu_ms_per_image_median": {v: round(statistics.median(cpu_ms[v]), 3) for v in done},
            "cpu_ms_per_image_all": {v: [round(x, 3) for x in cpu_ms[v]] for v in done},
            "errors": errors,
        }

    for r in range(args.rounds):
        for v in variants:
            if v in errors:
                continue
            try:
                ips, ms = measure(v, args, device, x, y)
            except Exception as exc:  # one variant failing (a compile mode, say) is a result too
                errors[v] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
                print(f"round {r + 1} {v:>16}: FAILED {errors[v]}", file=sys.stderr, flush=True)
                continue
            finally:
                if v in ("compile", "reduce-overhead"):
                    torch._dynamo.reset()
            results[v].append(ips)
            cpu_ms[v].append(ms)
            print(f"round {r + 1} {v:>16}: {ips:8.1f} img/s  {ms:8.2f} CPU ms/img", file=sys.stderr, flush=True)
            if args.json_out:  # after every measurement: a run stopped by a timeout keeps what it has
                Path(args.json_out).write_text(json.dumps(summary(), indent=2) + "\n")
    out = summary()
    done = list(out["img_per_s_median"])
    if done:
        base, base_ms = out["img_per_s_median"][done[0]], out["cpu_ms_per_image_median"][done[0]]
        print(f"\n{'variant':>16}  {'img/s':>8}  {'vs ' + done[0]:>9}  {'CPU ms/img':>10}  {'vs ' + done[0]:>9}")
        for v in done:
            m, ms = out["img_per_s_median"][v], out["cpu_ms_per_image_median"][v]
            print(f"{v:>16}  {m:8.1f}  {m / base:8.2f}×  {ms:10.2f}  {base_ms / ms:8.2f}×")
    text = json.dumps(out, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")

if __name__ == "__main__":
    main()
