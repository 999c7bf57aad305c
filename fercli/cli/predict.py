"""`fer predict`: faces in photos → expressions, tables, JSON/CSV, annotated images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fercli.cli import app


class _Progress:
    """A transient stderr bar per stage (detect, classify, annotate), only on a terminal."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from fercli import report

        self.enabled = not quiet and report.err_console.is_terminal
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=report.err_console, transient=True,
                            disable=not self.enabled)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)


def _tables(result):  # type: ignore[no-untyped-def]
    """One Rich table per image: face, box, top emotion, every class probability (%)."""
    from rich import box
    from rich.table import Table

    classes = result.model.classes
    for r in result.images:
        if r.error is not None:
            continue
        if not r.faces:
            yield f"[bold]{r.path}[/]: no face found"
            continue
        t = Table(title=f"{r.path}: {len(r.faces)} face(s), probabilities in %", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1), collapse_padding=True)
        t.add_column("#", justify="right", no_wrap=True)
        t.add_column("box x,y,w,h", no_wrap=True)
        t.add_column("emotion", no_wrap=True)
        for c in classes:
            t.add_column(c[:5], justify="right", no_wrap=True)
        for i, f in enumerate(r.faces):
            cells = [f"[bold]{100 * f.probs[c]:.1f}[/]" if c == f.label else f"{100 * f.probs[c]:.1f}"
                     for c in classes]
            t.add_row(str(i), ",".join(map(str, f.box)), f"[bold]{f.label}[/]", *cells)
        yield t


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Images and/or folders (walked recursively: jpg jpeg png bmp webp tif tiff)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A `fer train` run directory (best.pt), a .pt checkpoint or an exported .npz. [default: the bundled model, else the newest ./runs/**/best.pt]"),
    detector: str = typer.Option("haar", help="haar: find every face (OpenCV Haar cascade); none: each image is one already-cropped face."),
    tta: str = typer.Option("none", help="Test-time augmentation: none or flip (average with the mirrored face)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list on stdout (nothing else there)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write one CSV row per face to this file."),
    annotate: Optional[Path] = typer.Option(None, "--annotate", help="Write copies with boxes and labels drawn into this folder (inputs are never modified)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    margin: float = typer.Option(0.2, help="Enlarge each detected box by this fraction of its size before cropping (0.2 = 10% per side)."),
    batch_size: int = typer.Option(64, help="Faces per forward pass."),
) -> None:
    """Find every face in images and classify its expression.

    Unreadable files are reported (one line each) and skipped; the exit code is 1 if any
    failed. `--json` prints a list of {"path", "faces", "error"}; each face has "box"
    (x, y, w, h), "label" and "probs" (class -> probability, summing to 1).
    """
    from fercli import predict as core
    from fercli import report

    if json_out and csv_out is not None and str(csv_out) == "-":
        raise typer.BadParameter("--csv - and --json both want stdout")
    cfg = core.PredictConfig(
        inputs=tuple(str(p) for p in inputs), model=model, detector=detector, tta=tta, device=device,
        margin=margin, batch_size=batch_size, annotate=str(annotate) if annotate else None,
        csv=str(csv_out) if csv_out else None,
    )
    with _Progress(quiet=json_out) as progress:
        result = core.run_predict(cfg, on_progress=progress)
    err = report.err_console
    err.print(f"model: {result.model.description} [dim]({result.model.source}: {result.model.path})[/]",
              highlight=False, soft_wrap=True)
    for r in result.failed:
        err.print(f"[red]error:[/] {r.path}: {r.error}", highlight=False, soft_wrap=True)
    if json_out:
        report.print_json([r.as_dict() for r in result.images])
    else:
        for table in _tables(result):
            report.console.print(table, highlight=False, soft_wrap=isinstance(table, str))
        n_img = len(result.images)
        report.console.print(
            f"{result.num_faces} face(s) in {n_img - len(result.failed)} image(s)"
            + (f", {len(result.failed)} failed" if result.failed else "")
            + f" in {result.seconds:.2f} s on {result.device}", highlight=False)
    if result.csv:
        err.print(f"wrote {result.csv}", highlight=False)
    if result.annotate_dir:
        n = sum(1 for r in result.images if r.annotated)
        err.print(f"wrote {n} annotated image(s) to {result.annotate_dir}", highlight=False)
    if result.failed:
        raise typer.Exit(1)
