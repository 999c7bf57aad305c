"""Every throughput row of the GPU targets table (docs/benchmarks.md), in ONE process (one CUDA init, one import):

  shared_b128     shared-trunk bcnn, 48 px, batch 128: train img/s            (target ≥ 25,000)
  paper_b16       paper bcnn (two trunks), 48 px, batch 16, one run           (target ≥ 2,500)
  paper_96_b256   paper bcnn, 96 px, batch 256: % of the measured bf16 rate   (target ≥ 10%)
  vs_reference    paper bcnn, 48 px, batch 64: engine vs DataLoader reference (target ≥ 5×)
  predict_b1      FaceClassifier (fer predict's path), batch 1, ms per face   (target ≤ 2 ms)

Each fer bench row times the graphed step (fer train's CUDA default) AND the eager step
(--no-cuda-graphs) in the same run: the eager numbers are the baseline, rerun here.
The aggregate over concurrent runs is measured by gpu_check.sh with `fer train --jobs`.

    PYTHONPATH=. python3 devtools/gpu_check/gpu_rows.py --device cuda --json OUT.json [--dry]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fercli.bench.engine_bench import BenchConfig, run_bench  # noqa: E402

ROWS = {
    "shared_b128": dict(model="bcnn-resnet34", shared_backbone=True, batch_size=128, reference=False,
                        inference=False),
    "paper_b16": dict(model="bcnn-resnet34", batch_size=16, reference=False, inference=False),
    "paper_96_b256": dict(model="bcnn-resnet34", image_size=96, batch_size=256, reference=False,
                          inference=False),
    "vs_reference": dict(model="bcnn-resnet34", batch_size=64, reference=True, inference=True),
}


def predict_latency(device: str, reps: int) -> dict:
    """ms per face of FaceClassifier.predict_proba on one 48×48 face (batch 1): the code path
    of `fer predict`, for the paper's bcnn (two trunks) and resnet34. Weights are random
    (latency does not depend on their values), so nothing has to travel with the check."""
    from fercli.infer.torch_backend import FaceClassifier
    from fercli.model.networks import build_model

    face = np.random.default_rng(0).integers(0, 256, (1, 48, 48), dtype=np.uint8)
    res = {"path": "fercli.infer.torch_backend.FaceClassifier.predict_proba, batch 1", "reps": reps}
    for name in ("bcnn-resnet34", "resnet34"):
        torch.manual_seed(0)
        clf = FaceClassifier(build_model(name, 7, pretrained=False), [str(i) for i in range(7)],
                             torch.device(device))
        for _ in range(5):  # graph capture / cuDNN autotuning
            clf.predict_proba(face)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            clf.predict_proba(face)  # ends in .cpu(): the host waits for the result
            times.append(1000 * (time.perf_counter() - t0))
        key = "bcnn" if name.startswith("bcnn") else "resnet34"
        res[f"{key}_ms_per_face_median"] = round(statistics.median(times), 3)
        res[f"{key}_classifier"] = clf.describe()
    res["ms_per_face_median"] = res["bcnn_ms_per_face_median"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", dest="json_out", required=True)
    ap.add_argument("--rows", default=",".join([*ROWS, "predict_b1"]))
    ap.add_argument("--dry", action="store_true", help="CPU smoke: tiny batches, 2 steps")
    args = ap.parse_args()
    out: dict = {"device": args.device, "torch": torch.__version__, "rows": {}}
    for name in args.rows.split(","):
        t0 = time.perf_counter()
        try:
            if name == "predict_b1":
                r = predict_latency(args.device, 5 if args.dry else 200)
            else:
                kw = dict(ROWS[name])
                if args.dry:
                    kw.update(batch_size=4, steps=2, warmup=1, inference_batch=4, synthetic=True,
                              image_size=min(kw.get("image_size", 48), 64), time_cap_s=60)
                r = run_bench(BenchConfig(device=args.device, cuda_graphs=True, **kw))
        except Exception as exc:  # one row failing must not lose the others
            r = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
        r["row_seconds"] = round(time.perf_counter() - t0, 1)
        out["rows"][name] = r
        Path(args.json_out).write_text(json.dumps(out, indent=1, default=str))  # after every row
        print(f"{name}: " + ("ERROR " + r["error"] if "error" in r else
                             f"engine {r.get('engine_img_per_s')} img/s (graphed={r.get('engine_graphed')}), "
                             f"eager {r.get('engine_eager_img_per_s')}, speedup vs ref {r.get('speedup')}, "
                             f"{r.get('fraction_of_peak')} of peak" if name != "predict_b1" else
                             f"{r['ms_per_face_median']} ms/face"), flush=True)


if __name__ == "__main__":
    main()
