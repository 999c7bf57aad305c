"""Load + one predict, end to end in a fresh process: the time and peak RSS of

    import fercli; fercli.Recognizer().predict("sample_images/astronaut.jpg")

for this checkout and a reference checkout (e.g. an older commit: `git worktree add REF SHA`),
run alternately in the same session so load on the machine hits both alike. Both use this
interpreter (so the same installed packages); PYTHONPATH picks the tree.

    python devtools/benchmarks/bench_load.py --reference /tmp/ref --runs 7 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CODE = ("import sys, fercli; faces = fercli.Recognizer().predict('sample_images/astronaut.jpg'); "
        "print(len(faces), 'torch' in sys.modules)")


def once(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CODE], cwd=tree, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().split() if proc.stdout else []
    if status != 0 or not out:
        raise SystemExit(f"{tree}: the predict run failed (status {status})")
    return {"seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "faces": int(out[0]), "torch": out[1] == "True"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    trees = {"this": REPO, "reference": args.reference.resolve()}
    for tree in trees.values():
        once(tree)  # warm the page cache (and the reference's ONNX conversion cache)
    rows = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            rows[name].append(once(tree))
    out = {name: {"median_seconds": round(statistics.median(r["seconds"] for r in rs), 3),
                  "median_peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs), 1),
                  "imports_torch": rs[0]["torch"], "runs": len(rs)} for name, rs in rows.items()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, r in out.items():
            print(f"{name:10s} {r['median_seconds']:6.2f} s  {r['median_peak_rss_mb']:7.1f} MB  torch: {r['imports_torch']}")


if __name__ == "__main__":
    main()
