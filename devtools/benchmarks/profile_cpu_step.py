"""The training step on the CPU: where its time goes, and which levers make it faster, in one run.

    PYTHONPATH=. python devtools/benchmarks/profile_cpu_step.py [--arch bcnn-resnet34] [--shared-backbone]
        [--variants baseline,contiguous,b128,...] [--rounds 3] [--steps 6] [--profile] [--json FILE]

Every variant is the engine's own step (fercli.train.engine.make_train_step on a DeviceSplit,
AdamW-GC, the on-device augmentation) with one thing changed; variants are timed in turns
(A B C A B C ...) for --rounds rounds, so load on the machine hits them alike, and each reports
its median img/s, its ratio to `baseline` and its achieved TFLOP/s (FlopCounterMode's conv +
matmul FLOPs per image × img/s) against the dense bf16 (or fp32) matmul rate measured at the
start and end of the same run. --profile adds a torch.profiler table of one baseline step:
self CPU time per op, and for the convolutions their FLOPs and achieved rate.

Variants (VARIANTS): baseline (the engine's defaults: bf16 autocast on a CPU with bf16
kernels, channels_last, batch 64), contiguous (NCHW), b128 / b256 (batch size), fp32
(no autocast), compile (torch.compile of the model, inductor: `fer train --compile`).
Process-wide settings are compared in alternating processes: --threads, and the environment
variable THP_MEM_ALLOC_ENABLE (1: torch's CPU allocator on transparent huge pages), recorded
in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

from fercli.bench.measure import Timer, flops_per_image, matmul_tflops
from fercli.data.resident import DeviceSplit, epoch_generator
from fercli.device import autocast_dtype
from fercli.model.networks import build_model
from fercli.train.engine import make_train_step, train_one_epoch
from fercli.train.optim import build_optimizer

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "contiguous": {"channels_last": False},
    "b128": {"batch_size": 128},
    "b256": {"batch_size": 256},
    "fp32": {"amp": False},
    "compile": {"compile": True},
}


def build(args: argparse.Namespace, v: dict[str, Any]) -> dict[str, Any]:
    """One variant's model, optimizer, step and data (random faces: speed does not look at pixels)."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(args.arch, 7, image_size=args.image_size, pretrained=False,
                        shared_backbone=args.shared_backbone)
    channels_last = v.get("channels_last", True)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer("adamw-gc", model, lr=1e-4, weight_decay=1e-2)
    bs = v.get("batch_size", args.batch_size)
    n = bs * (args.steps + 2)
    g = torch.Generator().manual_seed(0)
    data = DeviceSplit(torch.randint(0, 256, (n, 1, 48, 48), dtype=torch.uint8, generator=g),
                       torch.randint(0, 7, (n,), generator=g))
    amp = autocast_dtype(device, "auto") if v.get("amp", True) else None
    forward = torch.compile(model) if v.get("compile") else model
    step = make_train_step(forward, opt, data, batch_size=bs, amp_dtype=amp, channels_last=channels_last,
                           model=model)
    # warm-up: lazy optimizer state, oneDNN primitive creation, compilation
    train_one_epoch(model, opt, data, batch_size=bs, gen=epoch_generator(0, 0, device), amp_dtype=amp,
                    channels_last=channels_last, step_fn=step, max_steps=2)
    x = torch.rand(8, 1, 48, 48)
    flops = flops_per_image(model, x, torch.zeros(8, dtype=torch.int64))
    return {"model": model, "opt": opt, "step": step, "data": data, "bs": bs, "amp": amp,
            "channels_last": channels_last, "flops": flops}


def timed(b: dict[str, Any], steps: int, seed: int) -> float:
    with Timer(torch.device("cpu")) as t:
        r = train_one_epoch(b["model"], b["opt"], b["data"], batch_size=b["bs"], gen=epoch_generator(0, seed, torch.device("cpu")),
                            amp_dtype=b["amp"], channels_last=b["channels_last"], step_fn=b["step"], max_steps=steps)
    return r["images"] / t.seconds


DENSE_OPS = ("convolution", "mkldnn_conv", "aten::mm", "aten::bmm", "aten::addmm", "matmul")


def profile_table(b: dict[str, Any], top: int = 25) -> dict[str, Any]:
    """Self CPU time per op over two steps; convolutions' FLOPs from their recorded shapes."""
    from torch.profiler import ProfilerActivity, profile

    timed(b, 1, 99)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        timed(b, 2, 100)
    rows = []
    total = 0.0
    for e in prof.key_averages():
        total += e.self_cpu_time_total
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]:
        rows.append({"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000 / 2, 2), "calls": e.count // 2,
                     "share": round(e.self_cpu_time_total / total, 4)})
    # The FLOPs FlopCounterMode counts are convolutions' and matmuls' (fwd + bwd): the rate
    # they run at while they run, against the rest of the step's time.
    dense = sum(e.self_cpu_time_total for e in prof.key_averages()
                if any(k in e.key for k in DENSE_OPS)) / 1e6 / 2  # s per step
    step_flops = b["flops"] * b["bs"]
    return {"total_ms_per_step": round(total / 1000 / 2, 1), "dense_ms_per_step": round(1000 * dense, 1),
            "dense_share": round(dense * 1e6 * 2 / total, 4),
            "dense_tflops_while_running": round(step_flops / dense / 1e12, 4) if dense else None, "ops": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="bcnn-resnet34")
    ap.add_argument("--shared-backbone", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--variants", default="baseline,contiguous,b128,b256,fp32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "baseline" not in names:
        sys.exit(f"--variants: give baseline and any of {', '.join(VARIANTS)} (unknown: {unknown})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    dtype = autocast_dtype(device, "auto") or torch.float32
    peak0 = matmul_tflops(device, dtype, n=1024)
    built = {n: build(args, VARIANTS[n]) for n in names}
    ips: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            ips[n].append(timed(built[n], args.steps, r + 1))
    peak1 = matmul_tflops(device, dtype, n=1024)
    peak = max(peak0, peak1)
    base = statistics.median(ips["baseline"])
    rows = []
    for n in names:
        med = statistics.median(ips[n])
        tflops = built[n]["flops"] * med / 1e12
        rows.append({"variant": n, "img_per_s": round(med, 1), "vs_baseline": round(med / base, 3),
                     "tflops": round(tflops, 4), "fraction_of_peak": round(tflops / peak, 4),
                     "rounds": [round(x, 1) for x in ips[n]]})
    out = {"benchmark": "profile_cpu_step", "command": " ".join(sys.argv), "arch": args.arch,
           "shared_backbone": args.shared_backbone, "batch_size": args.batch_size, "image_size": args.image_size,
           "isa": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "peak_dtype": str(dtype).replace("torch.", ""), "peak_matmul_tflops": [round(peak0, 3), round(peak1, 3)],
           "flops_per_image": int(built["baseline"]["flops"]), "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"), "load_average": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    if args.profile:
        out["profile"] = profile_table(built["baseline"])
    print(f"THP_MEM_ALLOC_ENABLE={out['huge_pages']}, ISA {out['isa']}, {out['threads']} threads, {args.arch}{' shared' if args.shared_backbone else ''}, "
          f"peak {out['peak_dtype']} matmul {peak0:.3f}/{peak1:.3f} TFLOP/s")
    for r in rows:
        print(f"{r['variant']:>12}  {r['img_per_s']:7.1f} img/s  x{r['vs_baseline']:.3f}  "
              f"{r['tflops']:.3f} TFLOP/s  {100 * r['fraction_of_peak']:.1f} % of peak  {r['rounds']}")
    if args.profile:
        p = out["profile"]
        print(f"profile: {p['total_ms_per_step']} ms/step; conv+matmul {p['dense_ms_per_step']} ms "
              f"({100 * p['dense_share']:.1f} %) at {p['dense_tflops_while_running']} TFLOP/s while running")
        for o in p["ops"]:
            print(f"  {o['op'][:40]:40} {o['self_ms']:9.2f} ms  {o['calls']:5d}  {100 * o['share']:5.1f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
