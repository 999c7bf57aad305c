"""`fer evaluate`: any model (run, checkpoint, export, `default`) on any prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from fercli.cli import options, report
from fercli.cli.app import app
from fercli.evaluation.config import EvaluateConfig
from fercli.model.tta import TTA_MODES


def _pct(x: Optional[float]) -> str:
    return "—" if x is None or x != x else f"{100 * x:.2f}"


def _per_class_table(m: dict[str, Any]) -> Any:
    """Our per-class P/R/F1 (Tables 1–2 layout), with the paper's Table 1/2 beside it."""
    ref = m.get("paper_per_class")
    model = m.get("model") or {}
    title = (f"{m['split']}: accuracy {_pct(m['accuracy'])}%  macro-F1 {_pct(m['macro_f1'])}%  "
             f"(n={m['num_samples']}, {model.get('training', '?')}, single model, tta={m.get('tta', 'none')})")
    t = Table(title=title, title_justify="left")
    t.add_column("class")
    for col in ("P %", "R %", "F1 %", "support"):
        t.add_column(col, justify="right")
    if ref:
        for col in ("paper P %", "paper R %", "paper F1 %"):
            t.add_column(col, justify="right")
    for c in m["classes"]:
        pc = m["per_class"][c]
        row = [c, _pct(pc["precision"]), _pct(pc["recall"]), _pct(pc["f1"]), str(pc["support"])]
        if ref:
            r = ref["rows"][c]
            row += [_pct(r["precision"]), _pct(r["recall"]), _pct(r["f1"])]
        t.add_row(*row)
    if ref:
        t.caption = f"paper = Table {ref['table']}: {ref['what']}"
    return t


def _calibration_table(m: dict[str, Any]) -> Any:
    """ECE / MCE / NLL / Brier before and after T (pooled for a k-fold root, then per fold)."""
    cal = m["calibration"]
    if "temperature" in cal:
        t_text = f"T = {cal['temperature']:.4f} ({cal['temperature_source']}, fitted on {cal['temperature_split']})"
    else:
        t_text = "T per fold, each fitted on its selection fold: " + ", ".join(f"{t:.3f}" for t in cal["temperatures"])
    t = Table(title=f"calibration on {m['split']}: {t_text}", title_justify="left")
    for col in ("", "ECE % (95% CI)", "ECE % if calibrated", "MCE %", "NLL", "Brier", "mean top-1 %", "accuracy %"):
        t.add_column(col, justify="right" if col else "left")
    rows = [("before T", cal["before"]), ("after T", cal["after"])]
    for i, f in enumerate(m.get("per_fold") or []):
        rows.append((f"fold {i}, after T={f['calibration']['temperature']:.3f}", f["calibration"]["after"]))
    for name, c in rows:
        ci = c.get("ece_ci95") or [None, None]
        floor = c.get("ece_if_calibrated") or [None, None]
        t.add_row(name, f"{_pct(c['ece'])} ({_pct(ci[0])}–{_pct(ci[1])})", f"{_pct(floor[0])} / {_pct(floor[1])}",
                  _pct(c["mce"]), f"{c['nll']:.4f}",
                  f"{c['brier']:.4f}", _pct(c["mean_confidence"]), _pct(c["accuracy"]))
    t.caption = " ".join([*([cal["note"] + "."] if cal.get("note") else []),
                          "ECE % if calibrated: the median / 95th percentile of the ECE that a model calibrated by "
                          "construction would show with these probabilities on as many faces; an ECE above the "
                          "95th percentile is more than binning noise."])
    return t


E = EvaluateConfig  # every default below is EvaluateConfig's own


@app.command()
def evaluate(
    target: str = typer.Argument(..., help="A run directory (single run or CK+ k-fold root), a checkpoint .pt, an exported .npz (or its shards), or 'default' (the shipped model)."),
    dataset: Optional[str] = typer.Option(E.dataset, "--dataset", "-d", help="Prepared dataset to evaluate on (fer2013, ck+ or a directory). \\[default: the one the model recorded]"),
    split: Optional[str] = typer.Option(E.split, help="The split to report. FER2013: private-test (the default, the report split) or public-test (the selection split); a FER2013 prepared from train/ test/ folders has only test. CK+: fold (the default: the run's test fold; --fold K for another)."),
    fold: Optional[int] = typer.Option(E.fold, help="CK+: the test fold, for a model that does not record one (an export, or another dataset version)."),
    tta: str = typer.Option(E.tta, help=f"Test-time augmentation: {', '.join(TTA_MODES)}."),
    device: options.Device = E.device,
    out: Optional[Path] = typer.Option(E.out, "--out", "-o", help="Write metrics.json, confusion.png and reliability.png into this folder (any target, e.g. 'default'). \\[default: a run directory gets them]"),
    json_out: options.JsonOut = False,
) -> None:
    """Evaluate a model on its report split: accuracy, per-class P/R/F1 beside the paper's
    Table 1 (FER2013) / Table 2 (CK+), macro-F1 and the confusion matrix (Fig. 9).

    Calibration: ECE (15 bins), MCE, NLL and Brier before and after the model's temperature T
    (the one it records, else fitted for this evaluation on its selection split; see `fer
    calibrate`). Each ECE comes with its 95 % bootstrap interval and the ECE a calibrated model
    would show on as many faces (median / 95th percentile): above that is more than binning noise.

    FER2013 reports PrivateTest (checkpoints were selected on PublicTest). A run directory gets
    metrics.json, confusion.png and reliability.png (or --out DIR, for any target); an exported
    model's folder is never written to.
    """
    # deferred: fercli.evaluation imports torch (~2 s), which predicting and serving never load
    from fercli.evaluation import evaluate as evaluation

    cfg = EvaluateConfig(target=str(Path(target)) if target != "default" else target, split=split,
                                    fold=fold, tta=tta, device=device, dataset=dataset,
                                    out=str(out) if out is not None else None)
    m = evaluation.evaluate_target(cfg)
    if json_out:
        report.print_json(m)
        return
    report.print_table(_per_class_table(m))
    for t in report.metrics_tables(m)[1:]:  # the confusion matrix (+ the k-fold table)
        report.print_table(t)
    report.print_table(_calibration_table(m))
    model = m["model"]
    report.console.print(f"model: {model['path']} ({model['kind']}, {model['training']}, trained on "
                         f"{model.get('trained_on_device') or 'unknown device'}, code {model.get('code_version')}); "
                         f"evaluated on {m['device']}", highlight=False)
    if m["dataset"].get("note"):
        report.err_console.print(f"note: {m['dataset']['note']}", highlight=False)
    if "metrics_json" in m:
        pngs = [m[k] for k in ("confusion_png", "reliability_png") if k in m]
        report.console.print(f"Wrote {m['metrics_json']}" + (f" and {', '.join(pngs)}" if pngs else ""))
