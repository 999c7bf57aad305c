"""Two CK+ Table 5 ladders of one recipe at different epoch counts, row by row, fold by fold:
whether a row still moves when it trains longer (docs/results.md's convergence rule).

    python devtools/release/compare_ladders.py docs/results/ablate-ckplus.json \
        docs/results/ablate-ckplus-e16.json [--json]

Each file is a `fer ablate --json` / `--progress --json` result (rows under "tables") or the
curated docs/results/ablate-ckplus.json (rows at the top). Rows are matched by name, folds by
id; only folds both ladders finished count. Per row: the folds, each ladder's mean over them,
and the paired change (second − first) with its Student-t 95 % interval, paired t and exact
Wilcoxon p (fercli.ablation.paired), in percentage points.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fercli.ablation.paired import paired_stats


def ladder_rows(path: Path) -> dict[str, dict[str, float]]:
    """{row name: {fold id: accuracy %}} of one ladder file."""
    data = json.loads(path.read_text())
    rows = data["rows"] if "rows" in data else data["tables"][0]["rows"]
    return {r["name"]: {str(k): float(v) for k, v in (r.get("per_fold_pct") or {}).items()} for r in rows}


def compare(first: dict[str, dict[str, float]], second: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    out = []
    for name, a in first.items():
        b = second.get(name, {})
        folds = sorted(set(a) & set(b), key=int)
        if not folds:
            continue
        diffs = [b[f] - a[f] for f in folds]
        stats = paired_stats(diffs)
        out.append({"row": name, "folds": folds, "first_mean_pct": sum(a[f] for f in folds) / len(folds),
                    "second_mean_pct": sum(b[f] for f in folds) / len(folds), "diffs_pp": diffs,
                    "mean_change_pp": stats["mean_diff"], "ci95": stats["ci95"], "t_p": stats["t_p"],
                    "wilcoxon_p": stats["wilcoxon_p"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", type=Path, help="the shorter ladder's JSON")
    ap.add_argument("second", type=Path, help="the longer ladder's JSON")
    ap.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = ap.parse_args(argv)
    try:
        rows = compare(ladder_rows(args.first), ladder_rows(args.second))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"compare_ladders: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    def num(x: float | None, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    print(f"{'row':34} {'folds':>19} {'first %':>8} {'second %':>9} {'change':>7} {'95% interval':>17} "
          f"{'t p':>6} {'Wilcoxon p':>10}")
    for r in rows:
        ci = "—" if r["ci95"] is None else f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]"
        print(f"{r['row']:34} {','.join(r['folds']):>19} {r['first_mean_pct']:8.2f} {r['second_mean_pct']:9.2f} "
              f"{r['mean_change_pp']:+7.2f} {ci:>17} {num(r['t_p'], '.3f'):>6} {num(r['wilcoxon_p'], '.3f'):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
