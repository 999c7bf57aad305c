"""`fer calibrate`: fit a model's temperature on its selection split and record it in the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fercli.cli import options, report
from fercli.cli.app import app
from fercli.evaluation.config import CalibrateConfig


def _line(r: dict[str, Any]) -> str:
    c = r["calibration"]
    b, a = c["before"], c["after"]
    fit = f"not fitted ({c['unidentifiable']})" if c.get("unidentifiable") else "fitted"
    return (f"{r['model']}: T = {c['temperature']:.4f} {fit} on {c['split']} ({c['num_samples']} faces): "
            f"ECE {100 * b['ece']:.2f}% -> {100 * a['ece']:.2f}%, NLL {b['nll']:.4f} -> {a['nll']:.4f}; "
            f"wrote {', '.join(r['written'])}")


C = CalibrateConfig  # every default below is CalibrateConfig's own


@app.command()
def calibrate(
    target: str = typer.Argument(..., help="A run directory (single run or CK+ k-fold root), a checkpoint .pt, an exported .npz (or its shards), or 'default' (the shipped model)."),
    dataset: Optional[str] = typer.Option(C.dataset, help="Prepared dataset to fit on (fer2013, ck+ or a directory). \\[default: the one the model recorded]"),
    fold: Optional[int] = typer.Option(C.fold, help="CK+: the model's test fold, for a model that does not record one (T is fitted on fold K+1)."),
    out: Optional[Path] = typer.Option(C.out, "--out", "-o", help="Write the calibrated model here: required for an exported .npz (never modified in place); a checkpoint is otherwise updated in place."),
    device: options.Device = C.device,
    json_out: options.JsonOut = False,
) -> None:
    """Fit the temperature T that makes the model's probabilities calibrated, and record it.

    T divides the logits before the softmax (labels and accuracy never change). It is fitted
    by minimising the NLL on the selection split only: FER2013 PublicTest, CK+ fold K+1 for
    test fold K; never on PrivateTest or a test fold. `fer train` does this for every run;
    this command does it for an existing model. `fer predict`, the ONNX export and
    `fer evaluate` then use T; `fer evaluate` reports ECE, MCE, NLL and Brier before and after.
    """
    # deferred: fercli.evaluation imports torch (~2 s), which predicting and serving never load
    from fercli.evaluation import evaluate as evaluation

    cfg = CalibrateConfig(target=str(Path(target)) if target != "default" else target,
                          dataset=dataset, fold=fold, out=str(out) if out else None, device=device)
    res = evaluation.calibrate_target(cfg)
    if json_out:
        report.print_json(res)
        return
    for r in res.get("folds", [res]):
        report.console.print(_line(r), highlight=False)
