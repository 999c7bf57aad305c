"""Rich rendering of what the core returns: tables, progress bars, JSON for scripts.

Only this module and fercli.cli import Rich. Tables go to stdout; progress bars and
status lines go to stderr so that `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(table: Any, target: Console | None = None) -> None:
    """Print a table as wide as its cells need, even past a narrower terminal (or the 80
    columns of a pipe): squeezed below that, Rich collapses whole columns to nothing (the
    Table 5 ladder's row names, at 80 columns). A wrapped line is ugly; a lost column is
    wrong. Anything else prints as given."""
    from rich.measure import Measurement

    out = target or console
    need = Measurement.get(out, out.options.update_width(10_000), table).maximum if isinstance(table, Table) else 0
    if need > out.width:  # Console.print(width=) cannot exceed the console's own width: a wider console, same file
        out = Console(file=out.file, width=need, color_system=out.color_system, force_terminal=out.is_terminal)
    out.print(table, highlight=False)


def pct(x: float | None) -> str:
    return "—" if x is None or x != x else f"{100 * x:.2f}"


class TrainProgress:
    """Epoch bar + batch bar with img/s, fed by the engine's on_event callback. The bars draw
    only on a terminal; stderr into a file or pipe gets one plain line per epoch instead (a
    bar there is a stream of `0:00…` frames), and quiet gets neither."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err_console, transient=False, disable=quiet or not err_console.is_terminal,
        )
        self.epoch_task: Any = None
        self.batch_task: Any = None
        self.steps = 0
        self.images = 0
        self.t0 = 0.0
        self.started = False

    # The bars start with the first event, not on entry: a setting or dataset refused before
    # any run starts then leaves stderr as one `error:` line (a started, empty Live prints a
    # blank line when it stops).
    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.progress.__exit__(*exc)

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        import time

        p = self.progress
        if not self.started:
            p.start()
            self.started = True
        if kind == "warning":
            err_console.print(f"[yellow]warning:[/] {info['message']}", highlight=False, soft_wrap=True)
        elif kind == "swept_temps":
            if not self.quiet:
                err_console.print(f"removed {len(info['files'])} temporary file(s), {info['bytes'] / 1e6:,.1f} MB, that "
                                  f"a killed writer left in {info['run_dir']}", highlight=False, soft_wrap=True)
        elif kind == "run_start":
            self.steps = info["steps_per_epoch"]
            if self.epoch_task is not None:
                p.remove_task(self.epoch_task)
                p.remove_task(self.batch_task)
            self.epoch_task = p.add_task("epochs", total=info["epochs"], completed=info["start_epoch"],
                                         info=f"{info['train_images']} train images on {info['device']}")
            self.batch_task = p.add_task("batches", total=self.steps, info="")
        elif kind == "epoch_start":
            p.reset(self.batch_task, total=self.steps, description=f"epoch {info['epoch']}/{info['epochs']}", info="")
            self.images, self.t0 = 0, time.perf_counter()
        elif kind == "step":
            self.images += info["images"]
            rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
            p.update(self.batch_task, advance=1, info=f"{rate:,.0f} img/s")
        elif kind == "epoch_end":
            line = (f"train {pct(info['train_acc'])}%  val {pct(info['val_acc'])}%  "
                    f"loss {info['val_loss']:.3f}  {info['img_per_s']:,.0f} img/s")
            p.update(self.epoch_task, advance=1, info=line)
            if not err_console.is_terminal and not self.quiet:
                # Logs and nohup'ed runs get a plain line per epoch (no live bars there).
                err_console.print(f"epoch {info['epoch']}: {line}", highlight=False)


def train_summary_table(results: list[Any]) -> Table:
    t = Table(title="Training summary (checkpoint selected on validation only)")
    for col in ("run", "fold", "best epoch", "selected on", "val acc %", "report split", "img/s", "minutes"):
        t.add_column(col, justify="right" if col not in ("run", "selected on", "report split") else "left")
    for r in results:
        t.add_row(str(r.run_dir), "—" if r.fold is None else str(r.fold), str(r.best_epoch), r.val_split,
                  pct(r.best_val_acc), r.test_split, f"{r.images_per_second:,.1f}", f"{r.seconds / 60:.1f}")
    return t


def metrics_tables(m: dict[str, Any]) -> list[Table]:
    """Per-class P/R/F1 in the layout of the paper's Tables 1–2, plus the confusion matrix."""
    classes = m["classes"]
    t = Table(title=f"{m['split']}: accuracy {pct(m['accuracy'])}%  macro-F1 {pct(m['macro_f1'])}%  "
                    f"(n={m['num_samples']}, tta={m.get('tta', 'none')})")
    t.add_column("class")
    for col in ("precision %", "recall %", "F1 %", "support"):
        t.add_column(col, justify="right")
    for c in classes:
        pc = m["per_class"][c]
        t.add_row(c, pct(pc["precision"]), pct(pc["recall"]), pct(pc["f1"]), str(pc["support"]))
    cm = Table(title="Confusion matrix (rows: true, columns: predicted)")
    cm.add_column("true \\ pred")
    for c in classes:
        cm.add_column(c[:8], justify="right")
    for i, c in enumerate(classes):
        row = m["confusion"][i]
        cm.add_row(c, *[f"[bold]{v}[/]" if j == i else str(v) for j, v in enumerate(row)])
    tables = [t, cm]
    if "kfold" in m:
        k = m["kfold"]
        kt = Table(title=f"{k['folds']}-fold subject-independent cross-validation")
        kt.add_column("fold")
        kt.add_column("accuracy %", justify="right")
        kt.add_column("macro-F1 %", justify="right")
        kt.add_column("n", justify="right")
        kt.add_column("selection fold, acc %", justify="right")
        for f in m["per_fold"]:
            sel = f"{f['selected_on']} {pct(f.get('selection_accuracy'))}"
            kt.add_row(f["split"], pct(f["accuracy"]), pct(f["macro_f1"]), str(f["num_samples"]), sel)
        kt.add_row("mean ± std", f"{pct(k['accuracy_mean'])} ± {pct(k['accuracy_std'])}",
                   f"{pct(k['macro_f1_mean'])} ± {pct(k['macro_f1_std'])}", "",
                   f"mean {pct(k.get('selection_accuracy_mean'))}")
        kt.add_row("pooled", pct(m["accuracy"]), pct(m["macro_f1"]), str(m["num_samples"]), "")
        tables.append(kt)
    return tables
