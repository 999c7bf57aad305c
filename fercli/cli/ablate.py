"""`fer ablate`: the paper's Table 5 ladder; `fer ablate --paper` prints Tables 1–5."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from fercli.cli import app, options


def _pct(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}"


def _paper_tables() -> list[Any]:
    """All of the paper's tables, as published: 1–2 per class (fractions shown as %), 3–5 accuracy %."""
    from rich.markup import escape
    from rich.table import Table

    from fercli import paper

    out: list[Any] = []
    for pt in paper.PER_CLASS_TABLES:
        tab = Table(title=f"Table {pt.number}. {pt.title}", title_justify="left")
        tab.add_column("class", no_wrap=True)
        for col in ("precision %", "recall %", "F1 %"):
            tab.add_column(col, justify="right")
        for cls, values in pt.rows.items():
            tab.add_row(cls, *[f"{100 * v:.1f}" for v in values])
        out.append(tab)
    for t in paper.TABLES:
        tab = Table(title=f"Table {t.number}. {t.title}", title_justify="left")
        tab.add_column("row", no_wrap=True)
        for c in t.columns:
            tab.add_column({"fer2013": "FER2013 %", "ck+": "CK+ %"}.get(c, c), justify="right")
        notes = any(r.note for r in t.rows)
        if notes:
            tab.add_column("what")
        for r in t.rows:
            cells = [r.cells[c].text() for c in t.columns]
            tab.add_row(escape(r.printed or r.name), *cells, *([r.note] if notes else []))
        if t.note:
            tab.caption = escape(t.note)
        out.append(tab)
    hp = paper.HYPERPARAMETERS
    out.append(f"§3.2 settings: batch {hp['batch_size']}, lr {hp['learning_rate']}, {hp['epochs']} epochs, "
               f"{hp['loss']}; FER2013: {hp['optimizer_fer2013']}; CK+: {hp['optimizer_ckplus']} "
               f"({hp['ckplus_image_size']}).")
    out.append(f"Source: {paper.CITATION}, {paper.URL}")
    return out


def _result_tables(result: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    from fercli import paper

    out: list[Any] = []
    footnote = False
    for t in result["tables"]:
        title = f"Table 5 ladder on {t['dataset']} — {t['metric']}"
        if t["folds"]:
            title += f", {t['folds']['label']}"
        title += "; ours = mean ± std over " + ("folds × seeds" if t["folds"] else "seeds")
        tab = Table(title=title, title_justify="left")
        tab.add_column("row", min_width=24)
        tab.add_column("paper %", justify="right", max_width=13)
        tab.add_column("ours %", justify="right", no_wrap=True)
        tab.add_column("runs", justify="right", no_wrap=True)
        tab.add_column("Δ pp", justify="right", no_wrap=True)
        section = None
        for r in t["rows"]:
            if r["ladder"] != "paper" and r["ladder"] != section:
                section = r["ladder"]
                tab.add_section()
                tab.add_row(f"[bold]{section}[/]", "", "", "", "")
            if not r["in_paper"]:
                paper_txt = "— (not in paper)"
            elif r["paper_pct"] is None:
                paper_txt = paper.NOT_TRANSCRIBED + "*"
                footnote = True
            else:
                paper_txt = f"{r['paper_pct']:.2f}"
            if r["status"] != "done":
                ours = f"[yellow]{r['status']}[/]"
            elif r["n_runs"] > 1:
                ours = f"{_pct(r['ours_mean_pct'])} ± {_pct(r['ours_std_pct'])}"
            else:
                ours = _pct(r["ours_mean_pct"])
            delta = "—" if r["delta_pp"] is None else f"{r['delta_pp']:+.2f}"
            tab.add_row(r["name"], paper_txt, ours, str(r["n_runs"]), delta)
        notes = []
        if not t["weights"]["available"]:
            notes.append(f"{t['ladder']}: {t['weights']['reason']}")
        tab.caption = " ".join(notes) if notes else None
        out.append(tab)
    if footnote:
        out.append(f"* {paper.NOT_TRANSCRIBED_NOTE}")
    return out


@app.command()
def ablate(
    dataset: str = typer.Option("fer2013", "--dataset", "-d", help="fer2013, ck+, all, or a prepared dataset directory."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per run. \\[default: the preset's (short: 10)]"),
    seeds: options.Seeds = "0",
    device: options.Device = "auto",
    preset: options.Preset = "short",
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where the per-run directories and ablation.json/csv go. \\[default: runs/ablate-<dataset>]"),
    folds_limit: Optional[int] = typer.Option(None, "--folds-limit", help="CK+: run only the first N folds (labelled as such)."),
    train_subset: options.TrainSubset = None,
    batch_size: Optional[int] = typer.Option(None, help="Batch size of every run. \\[default: the preset's]"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate of every run. \\[default: the preset's]"),
    weights: options.Weights = None,
    threads: options.Threads = None,
    jobs: options.Jobs = 1,
    devices: options.Devices = None,
    init_from: str = typer.Option("default", "--init-from", help=f"CK+: the FER2013 model whose trunk starts fercli's extra 'FER2013-pretrained' rung ({options.MODEL_REFERENCE}, or 'default': the shipped one); 'none' skips that rung."),
    force: bool = typer.Option(False, "--force", help="Retrain every run even if a finished one is cached."),
    json_out: options.JsonOut = False,
    quiet: options.Quiet = False,
    paper_only: bool = typer.Option(False, "--paper", help="Print all of the paper's Tables 1–5 and its §3.2 settings, and exit (runs nothing)."),
) -> None:
    """Reproduce the paper's ablation (Table 5): ResNet34 → +ImageNet pretraining → +bilinear
    (B-CNN) → +gradient centralization, each trained by the same engine as `fer train`.

    Finished runs are cached under --out and interrupted ones resume, so rerunning continues
    where it stopped. Without ImageNet weights the pretrained rows say "weights unavailable"
    and the from-scratch ladder (ResNet34 → ResNet34_BCN → ResNet34_BCN_GC) runs instead.
    """
    params = dict(locals())
    from fercli import paper
    from fercli.cli import report
    from fercli.evaluation import ablate as core

    if paper_only:
        if json_out:
            report.print_json(paper.as_dict())
            return
        for t in _paper_tables():
            report.console.print(t, highlight=False)
        return
    from fercli.train.jobs import parse_devices, parse_seeds

    cfg = core.AblateConfig(**options.config_values(
        core.AblateConfig, params, seeds=parse_seeds(seeds) or (), devices=parse_devices(devices),
        init_from=None if init_from.lower() == "none" else init_from))
    err = report.err_console
    with report.TrainProgress(quiet=quiet or json_out) as progress:
        def on_event(kind: str, info: dict[str, Any]) -> None:
            if kind == "ablate_run" and not (quiet or json_out):
                fold = "" if info["fold"] is None else f" fold {info['fold']}"
                progress.progress.console.print(
                    f"[{info['index']}/{info['total']}] {info['dataset']} {info['row']} seed {info['seed']}{fold}: "
                    f"{ {'cached': 'cached, not retrained', 'resumed': 'resuming', 'trained': 'training', 'rerun': 'retraining'}[info['status']] }"
                    + (f" ({info['reason']})" if info.get("reason") else ""),
                    highlight=False)
            progress(kind, info)

        result = core.run_ablation(cfg, on_event=on_event)
    if json_out:
        report.print_json(result)
        return
    for t in _result_tables(result):
        report.console.print(t, highlight=False)
    err.print(f"wrote {', '.join(result['files'])} ({result['runs']['cached']} of {result['runs']['total']} "
              f"runs reused from cache)", highlight=False)
