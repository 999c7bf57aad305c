"""Table 5's rungs, and how a row of it is tabled (fercli.ablation.ablate runs them).

A rung is one row of the paper's ablation ladder: which model, whether its trunks start
pretrained (ImageNet, or FER2013: a from-scratch FER2013 model's trunk), whether the optimizer
has gradient centralization. A row is the mean ± std of a rung's finished runs beside the
paper's value, its status (done, partial, pending, weights unavailable), its fold count, and
the change it brings over the row above.

No Typer/Rich here.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from fercli import paper

SCRATCH_LABEL = "from-scratch ladder (ImageNet weights unavailable)"
WEIGHTS_UNAVAILABLE = "weights unavailable"

@dataclass(frozen=True)
class Rung:
    name: str
    model: str
    pretrained: bool  # ImageNet trunks
    gc: bool
    shared_backbone: bool = False
    init_from: bool = False  # FER2013-pretrained trunks (AblateConfig.init_from), fresh head
    paper_row: str | None = None  # the paper's Table 5 row this rung stands for (None: its own name)


def paper_row(rung: Rung) -> str:
    return rung.paper_row or rung.name


def rung_training(rung: Rung) -> str:
    return "FER2013-pretrained" if rung.init_from else ("ImageNet-pretrained" if rung.pretrained else "from scratch")


PAPER_LADDER = (
    Rung("ResNet34", "resnet34", False, False),
    Rung("ResNet34_Pretrain", "resnet34", True, False),
    Rung("ResNet34_Pretrain_BCN", "bcnn-resnet34", True, False),
    Rung("ResNet34_Pretrain_BCN_GC", "bcnn-resnet34", True, True),
)
SCRATCH_LADDER = (
    Rung("ResNet34", "resnet34", False, False),
    Rung("ResNet34_BCN", "bcnn-resnet34", False, False),
    Rung("ResNet34_BCN_GC", "bcnn-resnet34", False, True),
)
# CK+ without ImageNet weights: the paper's four rows with "pretrained" meaning FER2013-pretrained,
# the trunk of a from-scratch FER2013 model (--init-from; the shipped one by default) copied into
# every trunk the row builds (the resnet34's one, both of the B-CNN's two), the head fresh. The
# same recipe for every row, so the rows differ only in what the paper's ladder varies.
FER2013_LADDER = (
    Rung("ResNet34", "resnet34", False, False),
    Rung("ResNet34_FER2013Pretrain", "resnet34", False, False, init_from=True, paper_row="ResNet34_Pretrain"),
    Rung("ResNet34_FER2013Pretrain_BCN", "bcnn-resnet34", False, False, init_from=True,
         paper_row="ResNet34_Pretrain_BCN"),
    Rung("ResNet34_FER2013Pretrain_BCN_GC", "bcnn-resnet34", False, True, init_from=True,
         paper_row="ResNet34_Pretrain_BCN_GC"),
)
FER2013_LABEL = ("FER2013-pretrained ladder (ImageNet weights unavailable): 'pretrained' = the trunk of a "
                 "from-scratch FER2013 model, copied into every trunk (both B-CNN trunks)")


def optimizer_for(ds: Any, gc: bool) -> str:
    """The paper's optimizer for the dataset (fercli.data.registry: Adam on CK+, AdamW on
    FER2013), with or without GC."""
    return ds.paper_optimizer.removesuffix("-gc") + ("-gc" if gc else "")


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def row_result(ds: Any, rung: Rung | None, name: str, runs: list[dict[str, Any]], status: str,
                reason: str | None, ladder: str, planned: int = 0) -> dict[str, Any]:
    """One table row. status: done (all `planned` runs finished), partial, pending (none yet),
    or weights unavailable; mean ± std over the finished runs only."""
    pname = paper_row(rung) if rung else name
    # A dataset without a Table 5 column has no paper value, rather than one not transcribed.
    in_table = pname in {r.name for r in paper.TABLE5.rows} and ds.key in paper.TABLE5.columns
    cell = paper.table5_value(pname, ds.key) if in_table else None
    accs = [100 * r["accuracy"] for r in runs]
    mean, std = _stats(accs)
    per_seed: dict[int, list[float]] = {}
    per_fold: dict[str, list[float]] = {}
    for r in runs:
        per_seed.setdefault(r["seed"], []).append(100 * r["accuracy"])
        per_fold.setdefault(str(r["fold"]), []).append(100 * r["accuracy"])
    if status == "done" and planned:
        status = "done" if len(runs) >= planned else ("partial" if runs else "pending")
    paper_val = cell.value if cell else None
    return {
        "name": name,
        "paper_row": pname if cell else None,
        "ladder": ladder,
        "model": rung.model if rung else None,
        "pretrained": rung.pretrained if rung else None,
        "training": rung_training(rung) if rung else None,
        "shared_backbone": rung.shared_backbone if rung else None,
        "optimizer": optimizer_for(ds, rung.gc) if rung else None,
        "status": status,
        "reason": reason,
        "paper_pct": paper_val,
        "paper_source": cell.source if cell else None,
        "in_paper": cell is not None,
        "ours_mean_pct": mean,
        "ours_std_pct": std,
        "std_over": ("folds x seeds" if ds.kfold else "seeds") + " (population std)",
        "per_seed_mean_pct": {str(s): sum(v) / len(v) for s, v in per_seed.items()},
        "per_fold_pct": ({f: sum(v) / len(v) for f, v in sorted(per_fold.items(), key=lambda kv: int(kv[0]))}
                         if ds.kfold else None),
        "folds_done": len(per_fold) if ds.kfold else None,
        "n_runs": len(runs),
        "n_planned": planned,
        "delta_pp": (mean - paper_val) if (mean is not None and paper_val is not None) else None,
        "runs": runs,
    }


def _change(r: dict[str, Any], prev: dict[str, Any]) -> tuple[float | None, bool | None, int]:
    """(change in points, whether it exceeds the fold-to-fold std, folds compared). On k-fold
    rows only the folds both rows have count (paired: a partial ladder never compares one row's
    fold 0 with another's folds 0-5); the std is the larger of the two rows' over those folds,
    and with one fold there is none to beat (None). Without folds: the two means and stds."""
    a, b = r.get("per_fold_pct"), prev.get("per_fold_pct")
    if a is not None and b is not None:
        common = sorted(set(a) & set(b), key=int)
        if not common:
            return None, None, 0
        mine, theirs = [a[f] for f in common], [b[f] for f in common]
        change = sum(mine) / len(mine) - sum(theirs) / len(theirs)
        if len(common) < 2:
            return change, None, len(common)
        spread = max(_stats(mine)[1] or 0.0, _stats(theirs)[1] or 0.0)
        return change, abs(change) > spread, len(common)
    if r["ours_mean_pct"] is None or prev["ours_mean_pct"] is None:
        return None, None, 0
    change = r["ours_mean_pct"] - prev["ours_mean_pct"]
    if min(r["n_runs"], prev["n_runs"]) < 2:
        return change, None, 0
    return change, abs(change) > max(r["ours_std_pct"] or 0.0, prev["ours_std_pct"] or 0.0), 0


def add_changes(rows: list[dict[str, Any]]) -> None:
    """Each ladder row's change over the row before it (rows that ran, in ladder order): ours,
    the paper's, and whether ours exceeds the fold-to-fold std (_change) — a change inside
    that spread is not told apart from noise."""
    prev: dict[str, Any] | None = None
    for r in rows:
        r.update(change_pp=None, change_folds=0, paper_change_pp=None, change_exceeds_std=None)
        if r["status"] == WEIGHTS_UNAVAILABLE:
            continue
        if prev is not None:
            r["change_pp"], r["change_exceeds_std"], r["change_folds"] = _change(r, prev)
            if r["paper_pct"] is not None and prev["paper_pct"] is not None:
                r["paper_change_pp"] = r["paper_pct"] - prev["paper_pct"]
        prev = r


def _span(ids: list[int]) -> str:
    """[3, 4, 5, 7] -> "3–5, 7"."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)


def folds_label(planned: int, total: int, done: int, most: int | None = None,
                ids: list[int] | None = None) -> str:
    """The table heading's fold count: `done` folds in every row, `most` in the furthest row
    (a stopped ladder has some rows one fold ahead: "0–1 of all 10 folds done, by row");
    `ids`, the folds --folds chose."""
    if ids is not None and planned < total:
        what = f"{'fold' if len(ids) == 1 else 'folds'} {_span(ids)} of {total} (--folds)"
    else:
        what = f"first {planned} of {total} folds (--folds-limit)" if planned < total else f"all {total} folds"
    if done >= planned:
        return what
    if most is not None and most > done:
        return f"{done}–{most} of {what} done, by row"
    return f"{done} of {what} done"


def ablation_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "ladder", "row", "paper_row", "training", "status", "paper_pct", "paper_source",
                "ours_mean_pct", "ours_std_pct", "n_runs", "folds_done", "delta_pp", "change_pp", "change_folds",
                "paper_change_pp", "change_exceeds_std", "folds"])

    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"

    for t in result["tables"]:
        folds = t["folds"]["label"] if t["folds"] else ""
        for r in t["rows"]:
            w.writerow([t["dataset"], r["ladder"], r["name"], r["paper_row"] or "", r["training"] or "", r["status"],
                        f(r["paper_pct"]) if r["in_paper"] else "", r["paper_source"] or "",
                        f(r["ours_mean_pct"]), f(r["ours_std_pct"]), r["n_runs"],
                        "" if r["folds_done"] is None else r["folds_done"], f(r["delta_pp"]), f(r["change_pp"]),
                        r["change_folds"], f(r["paper_change_pp"]), "" if r["change_exceeds_std"] is None else r["change_exceeds_std"],
                        folds])
    return buf.getvalue()
