"""Ship a model a device call exported: re-pack it as fercli/assets/default_model.* with the
code version the device could not know (its copy of the tree has no fercli checkout, so the
export rightly recorded "unknown").

    python3 devtools/release/ship_model.py RETURNED/model/model.npz --commit SHA \
        --why "the device call ran main at SHA (devtools/gpu_check/gpu_check.sh MODE=recipes)" \
        [--out fercli/assets/default_model.npz]

The weight arrays are copied unchanged; `provenance_corrections` in the metadata records the
recorded value, the correction, why, how and the original archive's sha256
(fercli.export.npz_format.amend_metadata). Then update the README's shipped-model table and
docs/results.md, and run tests/test_evaluate.py (it checks the shipped model's PrivateTest).

A 96 px model (the recipe search's candidates) does ~4× the trunk work of the 48 px default
per face, in `fer predict` too: rerun `devtools/benchmarks/bench_predict.py --sequential` on the
candidate before shipping it and weigh its accuracy against the latency target (default model
≤ 6 ms per face at batch 1 on a laptop-class CPU; docs/benchmarks.md gives the figure at 48 px).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    from fercli.errors import FerError
    from fercli.export.npz_format import amend_metadata

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="the returned export (.npz, or its .npz.index.json)")
    ap.add_argument("--commit", required=True, help="the fercli commit that travelled to the device")
    ap.add_argument("--why", required=True)
    ap.add_argument("--out", default=str(REPO / "fercli" / "assets" / "default_model.npz"))
    ap.add_argument("--max-shard-mb", type=float, default=15.0)
    args = ap.parse_args()
    try:
        full = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{args.commit}^{{commit}}"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        sys.exit(f"ship_model: {args.commit!r} is not a commit of this repository")
    try:
        info = amend_metadata(args.src, args.out, {"code_version": full}, why=args.why,
                              how="re-packed from the call's exported shards: weight arrays copied unchanged, "
                                  "only __meta__ rewritten (devtools/release/ship_model.py)",
                              max_shard_mb=args.max_shard_mb)
    except FerError as exc:
        sys.exit(f"ship_model: {exc}")
    print(f"wrote {len(info['files'])} file(s) + {Path(info['sidecar']).name}; code_version {full[:12]}; "
          f"sha256 {info['sha256'][:12]}")


if __name__ == "__main__":
    main()
