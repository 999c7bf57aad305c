"""`fer ablate`: the paper's Table 5 ladder; `fer ablate --paper` prints Tables 1–5."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fercli import paper
from fercli.ablation.config import AblateConfig
from fercli.cli import options, report
from fercli.cli.app import app
from fercli.data import registry
from fercli.train.launch import parse_devices, parse_folds, parse_seeds

A = AblateConfig  # every default below is AblateConfig's own


def _pct(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}"


def _paper_tables() -> list[Any]:
    """All of the paper's tables, as published: 1–2 per class (fractions shown as %), 3–5 accuracy %."""
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
            tab.add_column(registry.paper_label(c), justify="right")
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


def _change(r: dict[str, Any]) -> str:
    """Ours (the paper's) change over the row above; '*' when ours exceeds the fold-to-fold std."""
    if r["change_pp"] is None:
        return "—" if r["paper_change_pp"] is None else f"— ({r['paper_change_pp']:+.2f})"
    mark = "*" if r["change_exceeds_std"] else ""
    paper_txt = "" if r["paper_change_pp"] is None else f" ({r['paper_change_pp']:+.2f})"
    return f"{r['change_pp']:+.2f}{mark}{paper_txt}"


def _p(x: Optional[float]) -> str:
    return "—" if x is None else (f"{x:.3f}" if x >= 0.001 else "<0.001")


def _steps_table(t: dict[str, Any]) -> Table:
    """Each step of the ladder paired fold by fold (seed by seed), beside the paper's step."""
    over = t["steps"][0]["paired_on"]
    tab = Table(title=f"Paired steps on {t['dataset']}: row − row above, {over[:-1]} by {over[:-1]}",
                title_justify="left")
    tab.add_column("row", min_width=24)
    tab.add_column("minus", min_width=12)
    tab.add_column(over, justify="right", no_wrap=True)
    tab.add_column("paired Δ", justify="right", no_wrap=True)
    tab.add_column("95% interval", justify="right", no_wrap=True)
    tab.add_column("t p", justify="right", no_wrap=True)
    tab.add_column("Wilcoxon p", justify="right", no_wrap=True)
    tab.add_column("paper step", justify="right", no_wrap=True)
    for s in t["steps"]:
        ci = "—" if s["ci95"] is None else f"[{s['ci95'][0]:+.2f}, {s['ci95'][1]:+.2f}]"
        mean = "—" if s["mean_diff"] is None else f"{s['mean_diff']:+.2f}"
        paper_step = "—" if s["paper_step"] is None else f"{s['paper_step']:+.2f}"
        tab.add_row(s["to"], s["from"], str(s["n"]), mean, ci, _p(s["t_p"]), _p(s["wilcoxon_p"]), paper_step)
    notes = [f"paired Δ = mean of this row − the row above over the {over} both finished (points); "
             "95% interval = Student t on those differences (assumes them roughly normal and the "
             f"{over} independent); t p = paired t-test, Wilcoxon p = exact signed-rank, both two-sided."]
    notes += [f"{s['to']}: {s['note']}." for s in t["steps"] if s["note"]]
    tab.caption = escape(" ".join(notes))
    return tab


def _ours(r: dict[str, Any]) -> str:
    if r["status"] in ("pending", "weights unavailable"):
        return f"[yellow]{r['status']}[/]"
    text = f"{_pct(r['ours_mean_pct'])} ± {_pct(r['ours_std_pct'])}" if r["n_runs"] > 1 else _pct(r["ours_mean_pct"])
    return text + (" [yellow](partial)[/]" if r["status"] == "partial" else "")


def _result_tables(result: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    footnote = False
    for t in result["tables"]:
        title = f"Table 5 ladder on {t['dataset']} — {t['metric']}"
        if t["folds"]:
            title += f", {t['folds']['label']}"
        title += "; ours = mean ± std over " + ("folds × seeds" if t["folds"] else "seeds")
        tab = Table(title=title, title_justify="left")
        tab.add_column("row", min_width=24)
        tab.add_column("start", no_wrap=True)
        tab.add_column("paper %", justify="right", max_width=13)
        tab.add_column("ours %", justify="right", no_wrap=True)
        tab.add_column("folds" if t["folds"] else "runs", justify="right", no_wrap=True)
        tab.add_column("Δ vs paper", justify="right", no_wrap=True)
        tab.add_column("change (paper)", justify="right", no_wrap=True)
        section = None
        for r in t["rows"]:
            if r["ladder"] != "paper" and r["ladder"] != section:
                section = r["ladder"]
                tab.add_section()
                # "FER2013-pretrained ladder": its "(ImageNet weights unavailable)" is in the caption
                tab.add_row(f"[bold]{escape(section.split(':')[0].split(' (')[0])}[/]", "", "", "", "", "", "")
            if not r["in_paper"]:
                paper_txt = "— (not in paper)"
            elif r["paper_pct"] is None:
                paper_txt = paper.NOT_TRANSCRIBED + "*"
                footnote = True
            else:
                paper_txt = f"{r['paper_pct']:.2f}"
            count = (f"{r['folds_done']}/{t['folds']['planned']}" if t["folds"] and r["n_planned"]
                     else str(r["n_runs"]))
            delta = "—" if r["delta_pp"] is None else f"{r['delta_pp']:+.2f}"
            tab.add_row(r["name"], r["training"] or "", paper_txt, _ours(r), count, delta, _change(r))
        notes = [f"'pretrained' = {t['pretrained_means']}."]
        if any(r["paper_row"] and r["paper_row"] != r["name"] for r in t["rows"]):
            notes.append("Each row stands for the paper's row in the same place (paper % is that row's).")
        if not t["weights"]["available"]:
            notes.append(f"ImageNet weights: {t['weights']['reason'].rstrip('.')}.")
        notes.append("change = this row − the row above, over the folds both have (the paper's in brackets); "
                     "* = larger than the fold-to-fold std of either row.")
        tab.caption = escape(" ".join(notes))
        out.append(tab)
        if t.get("steps"):
            out.append(_steps_table(t))
    if footnote:
        out.append(f"* {paper.NOT_TRANSCRIBED_NOTE}")
    return out


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _print_estimate(est: dict[str, Any]) -> None:
    rows = ", ".join(f"{name} {_hours(sec)}" for name, sec in est["per_row_seconds"].items())
    report.err_console.print(
        f"expected wall time: about {_hours(est['seconds'])} for {est['runs_to_train']} of {est['runs_total']} runs "
        f"on {est['device']} (from {est['steps_timed']} timed steps per architecture; {rows})", highlight=False)
    if est["advice"]:
        report.err_console.print(f"[yellow]warning:[/] {est['advice']}", highlight=False)


def _print_progress(cfg: Any, json_out: bool) -> None:
    # deferred: the ladder's status reads runs through fercli.train, which imports torch (~2 s)
    from fercli.ablation.ablate_status import ladder_progress

    result = ladder_progress(cfg)  # reads what is on disk, never the network
    if json_out:
        report.print_json(result)
        return
    for t in _result_tables(result):
        report.print_table(t)
    prog = result["progress"]
    for st in prog["runs"]:
        if st["state"] in ("started", "trained", "other"):
            fold = "" if st["fold"] is None else f" fold {st['fold']}"
            what = {"started": f"epoch {st['epochs_done']}/{st['epochs']} (running, or interrupted: resumes)",
                    "trained": "trained, test fold not read yet", "other": f"other settings ({st.get('reason')})"}
            report.console.print(f"{st['row']} seed {st['seed']}{fold}: {what[st['state']]}", highlight=False)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(prog["counts"].items()))
    report.console.print(f"{result['out']}: {prog['total']} runs planned: {counts}", highlight=False)
    other_code = [c for c in prog["code_versions"] if c != prog["this_code"]]
    if other_code:
        report.console.print(f"trained by code {', '.join(other_code)} (this is {prog['this_code']}): "
                             f"`fer ablate` from this code would retrain them", highlight=False)


@app.command()
def ablate(
    dataset: str = typer.Option(A.dataset, "--dataset", "-d", help="fer2013, ck+, all, or a prepared dataset directory."),
    epochs: Optional[int] = typer.Option(A.epochs, help="Epochs per run. \\[default: the preset's (short: 10)]"),
    seeds: options.Seeds = ",".join(map(str, A.seeds)),
    device: options.Device = A.device,
    preset: options.Preset = A.preset,
    out: Optional[Path] = typer.Option(A.out, "--out", "-o", help="Where the per-run directories and ablation.json/csv go. \\[default: runs/ablate-<dataset>]"),
    folds_limit: Optional[int] = typer.Option(A.folds_limit, "--folds-limit", help="CK+: run only the first N folds (labelled as such)."),
    folds: Optional[str] = typer.Option(None if A.folds is None else ",".join(map(str, A.folds)), "--folds", help="CK+: run only these fold ids, e.g. 3-9 or 0,2,5 (labelled as such): a ladder too long for one sitting runs as parts of whole folds, and `--progress` over their run directories reads them as one table."),
    train_subset: options.TrainSubset = A.train_subset,
    batch_size: Optional[int] = typer.Option(A.batch_size, help="Batch size of every run. \\[default: the preset's]"),
    lr: Optional[float] = typer.Option(A.lr, help="Peak learning rate of every run. \\[default: the preset's]"),
    weights: options.Weights = A.weights,
    threads: options.Threads = A.threads,
    jobs: options.Jobs = A.jobs,
    devices: options.Devices = None,
    init_from: str = typer.Option(A.init_from, "--init-from", help="CK+ without ImageNet weights: the from-scratch FER2013 model whose trunk starts every trunk of the 'pretrained' rows (FER2013-pretrained; RUN_DIR, CHECKPOINT.pt, EXPORT.npz or 'default', the shipped model); 'none' runs the from-scratch ladder instead."),
    force: bool = typer.Option(A.force, "--force", help="Retrain every run even if a finished one is cached."),
    progress_only: bool = typer.Option(False, "--progress", help="Show what the ladder under --out has done (rows done, partial with fold counts, pending; runs in flight) and exit: trains and writes nothing."),
    estimate: bool = typer.Option(A.estimate, "--estimate/--no-estimate", help="Before training, time a few steps and print the expected wall time (it runs anyway)."),
    keep_last: bool = typer.Option(A.keep_last, "--keep-last/--no-keep-last", help="Keep each finished run's last.pt (optimizer state, for `fer train --resume`; ~3x best.pt). By default only best.pt and the records stay."),
    json_out: options.JsonOut = False,
    quiet: options.Quiet = False,
    paper_only: bool = typer.Option(False, "--paper", help="Print all of the paper's Tables 1–5 and its §3.2 settings, and exit (runs nothing)."),
) -> None:
    """Reproduce the paper's ablation (Table 5): ResNet34 → +ImageNet pretraining → +bilinear
    (B-CNN) → +gradient centralization, each trained by the same engine as `fer train`.

    Finished runs are cached under --out and interrupted ones resume, so rerunning continues
    where it stopped; `--progress` shows how far it got. Before training it prints the
    expected wall time from a few timed steps. Without ImageNet weights, CK+ runs the same four
    rows with FER2013-pretrained trunks (the shipped from-scratch FER2013 model's trunk in every
    trunk), labelled so; FER2013 (or --init-from none) runs the from-scratch ladder
    (ResNet34 → ResNet34_BCN → ResNet34_BCN_GC) and marks the pretrained rows "weights unavailable".
    """
    if paper_only:
        if json_out:
            report.print_json(paper.as_dict())
            return
        for t in _paper_tables():
            report.print_table(t)
        return
    cfg = AblateConfig(dataset=dataset, epochs=epochs, seeds=parse_seeds(seeds) or (), device=device,
                       preset=preset, out=str(out) if out is not None else None, folds_limit=folds_limit,
                       folds=parse_folds(folds),
                       train_subset=train_subset, weights=str(weights) if weights is not None else None,
                       batch_size=batch_size, lr=lr, force=force, threads=threads, jobs=jobs,
                       devices=parse_devices(devices), init_from=None if init_from.lower() == "none" else init_from,
                       estimate=estimate, keep_last=keep_last)
    if progress_only:
        _print_progress(cfg, json_out)
        return

    result, interrupted = _run_with_progress(cfg, quiet, json_out)
    err = report.err_console
    if interrupted:
        # Ctrl-C: say what is done, not nothing (finished runs are kept; the interrupted one resumes).
        err.print("interrupted: finished runs are kept and the interrupted one resumes on a rerun; so far:")
        _print_progress(cfg, False)
        raise typer.Exit(130)
    if json_out:
        report.print_json(result)
        return
    for t in _result_tables(result):
        report.print_table(t)
    err.print(f"wrote {', '.join(result['files'])} ({result['runs']['cached']} of {result['runs']['total']} "
              f"runs reused from cache)", highlight=False)


def _run_with_progress(cfg: Any, quiet: bool, json_out: bool) -> tuple[dict[str, Any] | None, bool]:
    """core.run_ablation with its progress bars and one line per run; (result, interrupted)."""
    # deferred: the ladder trains through fercli.train, which imports torch (~2 s)
    from fercli.ablation import ablate as core

    with report.TrainProgress(quiet=quiet or json_out) as progress:
        def on_event(kind: str, info: dict[str, Any]) -> None:
            if kind == "ablate_run" and not (quiet or json_out):
                fold = "" if info["fold"] is None else f" fold {info['fold']}"
                progress.progress.console.print(
                    f"[{info['index']}/{info['total']}] {info['dataset']} {info['row']} seed {info['seed']}{fold}: "
                    f"{ {'cached': 'cached, not retrained', 'resumed': 'resuming', 'trained': 'training', 'rerun': 'retraining'}[info['status']] }"
                    + (f" ({info['reason']})" if info.get("reason") else ""),
                    highlight=False)
            if kind == "ablate_estimate" and not json_out:
                _print_estimate(info)
            if kind == "ablate_disk" and not json_out:
                for line in info["lines"]:
                    report.err_console.print(line, highlight=False, soft_wrap=True)
            progress(kind, info)

        try:
            return core.run_ablation(cfg, on_event=on_event), False
        except KeyboardInterrupt:
            return None, True
