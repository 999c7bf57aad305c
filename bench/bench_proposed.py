#!/usr/bin/env python3
"""`fer bench` with the two proposed engine changes patched in, before they land in fercli.

  * fercli.model.normalize_bilinear -> ablation_engine.fused_normalize_bilinear (SqrtNormalize)
  * the engine's optimizer -> AdamWGC(..., fused=True)

Both pipelines build the same model, so the fused head speeds up the reference too; the
fused optimizer is the engine's only.

    PYTHONPATH=. python3 bench/bench_proposed.py --device cpu --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation_engine import fused_normalize_bilinear  # noqa: E402

import fercli.model  # noqa: E402
import fercli.optim  # noqa: E402
from fercli.bench import BenchConfig, run_bench  # noqa: E402


def _fused_optimizer(name, model, *, lr, weight_decay=0.0, **_):  # type: ignore[no-untyped-def]
    if name != "adamw-gc":
        raise SystemExit(f"bench_proposed patches adamw-gc only, not {name}")
    params = [p for p in model.parameters() if p.requires_grad]
    return fercli.optim.AdamWGC(params, lr=lr, weight_decay=weight_decay, fused=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="bcnn-resnet34")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    fercli.model.normalize_bilinear = fused_normalize_bilinear
    fercli.optim.build_optimizer = _fused_optimizer  # run_bench imports it at call time
    r = run_bench(BenchConfig(device=args.device, model=args.model, batch_size=args.batch_size,
                              image_size=args.image_size, steps=args.steps, threads=args.threads))
    r["notes"].append("proposed engine: fused B-CNN head (both pipelines) + fused AdamW (engine)")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
