"""Per-face and per-photo latency of `fer predict` on this CPU (prints JSON).

    .venv/bin/python bench/bench_predict.py [--repeats 30] [--threads 2] [--no-compile]

Per face: the paper's model (bcnn-resnet34, two trunks) and its shared-trunk variant at
batch 1 on a 48x48 face, after warm-up, median of --repeats runs, for each way of running
it: eager fp32, channels_last, inference_mode+channels_last, bf16 autocast, TorchScript
trace+freeze (+ optimize_for_inference), and torch.compile (skipped if it fails).
Per photo: decode + Haar detection + crop + classification of each sample image with the
runner fercli.predict actually uses. Untrained weights: latency does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def variants(model: torch.nn.Module, x: torch.Tensor, try_compile: bool):
    """(name, callable) pairs; each callable runs one batch."""
    model.eval()

    def eager(inp):
        with torch.no_grad():
            return model(inp)

    yield "eager_fp32", eager, x

    cl = model.to(memory_format=torch.channels_last)

    def chl(inp):
        with torch.no_grad():
            return cl(inp)

    yield "channels_last", chl, x

    def inf_cl(inp):
        with torch.inference_mode():
            return cl(inp)

    yield "inference_mode+channels_last", inf_cl, x

    def bf16(inp):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return cl(inp)

    yield "inference_mode+channels_last+bf16_autocast", bf16, x

    with torch.no_grad():
        traced = torch.jit.trace(cl, x, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())

    def run_frozen(inp):
        with torch.inference_mode():
            return frozen(inp)

    yield "jit_trace_freeze+channels_last", run_frozen, x

    with torch.no_grad():
        opt = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(cl, x, check_trace=False).eval()))

    def run_opt(inp):
        with torch.inference_mode():
            return opt(inp)

    yield "jit_trace_freeze+optimize_for_inference", run_opt, x

    if try_compile:
        try:
            t0 = time.perf_counter()
            comp = torch.compile(cl)
            with torch.inference_mode():
                comp(x)
            compile_s = time.perf_counter() - t0

            def run_comp(inp):
                with torch.inference_mode():
                    return comp(inp)

            yield f"torch.compile (compile {compile_s:.0f} s)", run_comp, x
        except Exception as exc:  # noqa: BLE001 - any failure just skips the variant
            yield f"torch.compile skipped: {type(exc).__name__}", None, x


def _time_interleaved(fns: dict, x: torch.Tensor, repeats: int, warmup: int = 3) -> dict:
    """Median over `repeats` rounds, each round running every variant once (round-robin), so
    a change in background load hits all variants alike instead of whichever ran then."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2),
                "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 2)} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--batch", type=int, default=64, help="also time this batch size (per-face throughput)")
    ap.add_argument("--models", default="bcnn-resnet34,bcnn-resnet34-shared")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.jit deprecation and tracer warnings

    from fercli.model import build_model

    load = os.getloadavg()
    out: dict = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "loadavg_at_start": [round(v, 2) for v in load], "repeats": args.repeats,
                 "per_face_batch1": {}, f"per_face_batch{args.batch}": {}, "build_seconds": {}, "per_photo": {}}
    for name in args.models.split(","):
        shared = name.endswith("-shared")
        torch.manual_seed(0)
        model = build_model("bcnn-resnet34", 7, shared_backbone=shared)
        fns, skipped = {}, {}
        x1 = torch.rand(1, 1, 48, 48)
        for vname, fn, _ in variants(model, x1, not args.no_compile):
            if fn is None:
                skipped[vname] = None
            else:
                fns[vname] = fn
        res = _time_interleaved(fns, x1, args.repeats)
        res.update(skipped)
        out["per_face_batch1"][name] = res
        for k, v in res.items():
            if v:
                print(f"{name:22s} b1  {k:45s} {v['median_ms']:8.2f} ms", file=sys.stderr)
        xb = torch.rand(args.batch, 1, 48, 48)
        keep = {k: fns[k] for k in ("inference_mode+channels_last", "jit_trace_freeze+optimize_for_inference") if k in fns}
        resb = _time_interleaved(keep, xb, max(3, args.repeats // 6), warmup=1)
        out[f"per_face_batch{args.batch}"][name] = {k: {kk: round(vv / args.batch, 2) for kk, vv in v.items()}
                                                     for k, v in resb.items()}
        for k, v in out[f"per_face_batch{args.batch}"][name].items():
            print(f"{name:22s} b{args.batch} {k:45s} {v['median_ms']:8.2f} ms/face", file=sys.stderr)
        from fercli.predict import FaceClassifier

        t0 = time.perf_counter()
        FaceClassifier(model, [f"c{i}" for i in range(7)], torch.device("cpu"), optimize="jit").prepare()
        out["build_seconds"][name] = round(time.perf_counter() - t0, 2)

    # Per photo, end to end with the runner fercli.predict uses.
    from fercli import predict as P
    from fercli.images import load_grey

    for name in args.models.split(","):
        shared = name.endswith("-shared")
        torch.manual_seed(0)
        model = build_model("bcnn-resnet34", 7, shared_backbone=shared)
        runner = P.FaceClassifier(model, [f"c{i}" for i in range(7)], torch.device("cpu"), optimize=P.CPU_OPTIMIZE)
        photos = {}
        for img in sorted((REPO / "sample_images").glob("*.jpg")):
            cfg = P.PredictConfig(inputs=(str(img),), model="unused")
            P.run_predict(cfg, classifier=runner)  # warm-up (cascade load, first forward)
            times, faces = [], 0
            for _ in range(max(5, args.repeats // 3)):
                t0 = time.perf_counter()
                r = P.run_predict(cfg, classifier=runner)
                times.append((time.perf_counter() - t0) * 1000)
                faces = len(r.images[0].faces)
            photos[img.name] = {"faces": faces, "median_ms": round(statistics.median(times), 2),
                                "detect_ms_median": None}
            t_det = []
            for _ in range(5):
                grey = load_grey(img)
                t0 = time.perf_counter()
                P.detect_faces(grey)
                t_det.append((time.perf_counter() - t0) * 1000)
            photos[img.name]["detect_ms_median"] = round(statistics.median(t_det), 2)
            print(f"{name:24s} {img.name:20s} {photos[img.name]}", file=sys.stderr)
        out["per_photo"][name] = {"runner": runner.describe(), "photos": photos}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
