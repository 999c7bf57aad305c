"""Per-face and per-photo latency of `fer predict` on this CPU (prints JSON).

    .venv/bin/python devtools/benchmarks/bench_predict.py [--repeats 30] [--threads 2] [--no-compile] [--sequential]

Per face: the paper's model (bcnn-resnet34, two trunks) and its shared-trunk variant at
batch 1 on a 48x48 face, after warm-up, median of --repeats runs, for each way of running
it: eager fp32, channels_last, inference_mode+channels_last, bf16 autocast, TorchScript
trace+freeze (+ optimize_for_inference), torch.compile (skipped if it fails),
and onnxruntime (the graph `fer export --format onnx` writes, fp32 weights, CPU provider,
--threads intra-op threads; what `fer predict --backend auto` runs on the CPU).
Per photo: decode + Haar detection + crop + classification of each sample image with the
runner fercli.infer.predict actually uses. Untrained weights: latency does not depend on them.
--folder N: end-to-end throughput of `fer predict` (fercli.infer.predict.run_predict) over a folder
of N photos (FER2013 PrivateTest faces upscaled to 192 px in a 384 px frame, JPEG), for
torch eager + Haar and the defaults (onnxruntime + auto detector), with the shipped
default model.
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

REPO = Path(__file__).resolve().parents[2]
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

    try:
        import numpy as np

        from fercli.export.onnx_format import onnx_bytes
        from fercli.export.onnx_runtime import OnnxClassifier

        sess = OnnxClassifier(onnx_bytes(model, {"classes": [f"c{i}" for i in range(7)]}, dtype="float32"),
                              threads=torch.get_num_threads()).session

        u8_of: dict[int, np.ndarray] = {}

        def as_u8(inp):
            # Converted once per input, outside the timing: a torch op between onnxruntime
            # calls wakes torch's OpenMP threads, whose spinning took 17 ms per call instead
            # of 10 on 2 cores (2026-11-27, AVX2 EPYC). fer predict feeds numpy crops.
            if id(inp) not in u8_of:
                u8_of[id(inp)] = np.ascontiguousarray((inp * 255).round().to(torch.uint8).numpy())
            return u8_of[id(inp)]

        def run_ort(inp):
            return sess.run(None, {"faces": as_u8(inp)})

        yield "onnxruntime", run_ort, x

        # int8 (static QDQ, `fer export --int8-calibration`): calibrated here on random faces;
        # latency does not depend on the calibration (accuracy does: docs/benchmarks.md).
        from fercli.export.onnx_format import quantize_int8

        calib = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
        fp32 = onnx_bytes(model, {"classes": [f"c{i}" for i in range(7)]}, dtype="float32")
        sess8 = OnnxClassifier(quantize_int8(fp32, calib), threads=torch.get_num_threads()).session

        def run_ort8(inp):
            return sess8.run(None, {"faces": as_u8(inp)})

        yield "onnxruntime int8", run_ort8, x
    except Exception as exc:  # noqa: BLE001 - report and go on
        yield f"onnxruntime skipped: {type(exc).__name__}: {exc}", None, x

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
    return _summary(times)


def _summary(times: dict[str, list[float]]) -> dict:
    return {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2),
                "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 2)} for k, v in times.items()}


def _time_sequential(fns: dict, x: torch.Tensor, repeats: int, warmup: int = 3) -> dict:
    """Median over `repeats` back-to-back runs of each variant in turn: its weights stay in
    the CPU caches between calls, as in a video or webcam loop with one model (round-robin
    evicts them: the int8 shared trunk, 21 MB, fits a large L3; 85 MB of fp32 does not)."""
    times: dict[str, list[float]] = {}
    for k, fn in fns.items():
        for _ in range(warmup):
            fn(x)
        times[k] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times[k].append((time.perf_counter() - t0) * 1000)
    return _summary(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--batch", type=int, default=64, help="also time this batch size (per-face throughput)")
    ap.add_argument("--models", default="bcnn-resnet34,bcnn-resnet34-shared")
    ap.add_argument("--folder", type=int, default=0, help="also time fer predict over a folder of N photos")
    ap.add_argument("--fer-root", default=str(Path.home() / ".cache/fercli-tests/fer2013-unpacked"))
    ap.add_argument("--skip-per-face", action="store_true")
    ap.add_argument("--sequential", action="store_true",
                    help="time each variant's repeats back to back (warm caches) instead of round-robin")
    ap.add_argument("--int8-calibration", default=None,
                    help="with --folder: also time an int8 export of the default model calibrated on these faces")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.jit deprecation and tracer warnings

    from fercli.model.networks import build_model

    load = os.getloadavg()
    out: dict = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "loadavg_at_start": [round(v, 2) for v in load], "repeats": args.repeats,
                 "timing": "sequential" if args.sequential else "round-robin",
                 "per_face_batch1": {}, f"per_face_batch{args.batch}": {}, "build_seconds": {}, "per_photo": {}}
    for name in ([] if args.skip_per_face else args.models.split(",")):
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
        res = (_time_sequential if args.sequential else _time_interleaved)(fns, x1, args.repeats)
        res.update(skipped)
        out["per_face_batch1"][name] = res
        for k, v in res.items():
            if v:
                print(f"{name:22s} b1  {k:45s} {v['median_ms']:8.2f} ms", file=sys.stderr)
        xb = torch.rand(args.batch, 1, 48, 48)
        keep = {k: fns[k] for k in ("inference_mode+channels_last", "jit_trace_freeze+optimize_for_inference",
                                    "onnxruntime", "onnxruntime int8") if k in fns}
        resb = (_time_sequential if args.sequential else _time_interleaved)(keep, xb, max(3, args.repeats // 6), warmup=1)
        out[f"per_face_batch{args.batch}"][name] = {k: {kk: round(vv / args.batch, 2) for kk, vv in v.items()}
                                                     for k, v in resb.items()}
        for k, v in out[f"per_face_batch{args.batch}"][name].items():
            print(f"{name:22s} b{args.batch} {k:45s} {v['median_ms']:8.2f} ms/face", file=sys.stderr)
        from fercli.infer.torch_backend import FaceClassifier

        t0 = time.perf_counter()
        FaceClassifier(model, [f"c{i}" for i in range(7)], torch.device("cpu"), optimize="jit").prepare()
        out["build_seconds"][name] = round(time.perf_counter() - t0, 2)

    # Per photo, end to end with the runner fercli.infer.predict uses.
    from fercli.errors import FerError
    from fercli.infer import predict as P
    from fercli.infer.torch_backend import CPU_OPTIMIZE, FaceClassifier
    from fercli.vision.faces import detect_faces
    from fercli.vision.images import load_grey

    try:
        detect_faces(load_grey(REPO / "sample_images" / "astronaut.jpg"), "haar")
        photo_models = [] if args.skip_per_face else args.models.split(",")
    except FerError as exc:  # e.g. OpenCV 5 (no Haar cascades) on another machine
        photo_models, out["per_photo"] = [], f"skipped: {exc}"
    for name in photo_models:
        shared = name.endswith("-shared")
        torch.manual_seed(0)
        model = build_model("bcnn-resnet34", 7, shared_backbone=shared)
        runner = FaceClassifier(model, [f"c{i}" for i in range(7)], torch.device("cpu"), optimize=CPU_OPTIMIZE)
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
                detect_faces(grey, "haar")
                t_det.append((time.perf_counter() - t0) * 1000)
            photos[img.name]["detect_ms_median"] = round(statistics.median(t_det), 2)
            print(f"{name:24s} {img.name:20s} {photos[img.name]}", file=sys.stderr)
        out["per_photo"][name] = {"runner": runner.describe(), "photos": photos}
    if args.folder:
        out["folder"] = folder_throughput(args.folder, Path(args.fer_root), args.int8_calibration)
    out["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=2))


def folder_throughput(n: int, fer_root: Path, int8_calibration: str | None = None) -> dict:
    """Seconds for run_predict over n photos: torch eager + Haar vs the auto defaults."""
    import tempfile

    import cv2

    from fercli.errors import FerError
    from fercli.infer import predict as P
    from fercli.model.locate import DEFAULT_MODEL

    root = fer_root / "fer2013" if (fer_root / "fer2013").is_dir() else fer_root
    files = sorted((root / "test").rglob("PrivateTest_*.jpg"))[:n]
    res: dict = {"photos": len(files), "photo": "FER2013 PrivateTest face, 192 px in a 384 px frame, JPEG q90"}
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            g = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (192, 192), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(Path(tmp) / (f.stem + ".jpg")), cv2.copyMakeBorder(g, 96, 96, 96, 96, cv2.BORDER_REPLICATE),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
        configs = [("torch eager + haar", "torch", "haar", None),
                   ("torch eager + yunet", "torch", "yunet", None),
                   ("default: onnxruntime + auto (yunet)", "auto", "auto", None)]
        if int8_calibration:
            from fercli.export.onnx_format import export_onnx

            q = Path(tmp + "-int8.onnx")
            export_onnx(DEFAULT_MODEL, q, int8_calibration=int8_calibration)
            configs.append(("onnxruntime int8 export + auto (yunet)", "auto", "auto", str(q)))
        for label, backend, detector, model in configs:
            cfg = P.PredictConfig(inputs=(tmp,), backend=backend, detector=detector, device="cpu", model=model)
            P.make_classifier(cfg)  # warm the ONNX cache: conversion is a one-time cost
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            try:
                r = P.run_predict(cfg)
            except FerError as exc:
                res[label] = f"skipped: {exc}"
                continue
            dt = time.perf_counter() - t0
            res[label] = {"seconds": round(dt, 1), "photos_per_s": round(len(files) / dt, 1),
                          "faces": r.num_faces, "runner": r.runner, "loadavg_1min_before": round(load, 2)}
            print(label, res[label]["seconds"], "s", r.num_faces, "faces", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
