"""`fer prepare fer2013|ck+ SRC`: turn a downloaded dataset into the prepared format.

Thin layer: parse flags, call fercli.data.ingest, render its PrepareResult with Rich (or print
it as JSON with --json). Progress goes to stderr as a transient Rich bar.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fercli.cli import options
from fercli.cli.app import FerTyper, app
from fercli.data import registry

prepare_app = FerTyper(
    name="prepare",
    help="Prepare FER2013 or CK+ (CSV, image folders, raw CK+ release, CK+48, or a .zip) "
    "into a checked, fast-loading dataset directory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare_app, name="prepare")

_OUT = typer.Option(
    None, "--out", "-o", help="Output directory \\[default: $FER_DATA_DIR/<name> or ./data/<name>]."
)
_FORCE = typer.Option(False, "--force", help="Replace an existing output directory.")
_SKIP = typer.Option(
    False, "--skip-bad", help="Skip (and count) corrupt images, bad rows and bad label files."
)


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


@prepare_app.command("fer2013")
def fer2013(
    src: Path = typer.Argument(..., help="fer2013.csv, the train/+test/ image folders, or a .zip."),
    out: Path | None = _OUT,
    force: bool = _FORCE,
    skip_bad: bool = _SKIP,
    as_json: options.JsonOut = False,
) -> None:
    """Prepare FER2013 (48x48 faces, 7 classes; splits train, public_test, private_test)."""
    with _progress("reading FER2013") as cb:
        result = registry.prepare("fer2013", src, out=out, force=force, skip_bad=skip_bad, progress=cb)
    _render(result, as_json)


@prepare_app.command("ck+")
def ckplus(
    src: Path = typer.Argument(..., help="The raw CK+ release folder, the CK+48 folder, or a .zip."),
    out: Path | None = _OUT,
    force: bool = _FORCE,
    peak_frames: int = typer.Option(
        3, "--peak-frames", min=1, help="Raw CK+: take the last K frames of each sequence."
    ),
    neutral_first_frame: bool = typer.Option(
        False, "--neutral-first-frame", help="Raw CK+: add each sequence's first frame as 'neutral'."
    ),
    size: int = typer.Option(48, "--size", min=8, max=1024, help="Face crop size in pixels."),
    folds: int = typer.Option(
        10, "--folds", min=2, help="Subject-independent cross-validation folds."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the fold assignment."),
    skip_bad: bool = _SKIP,
    as_json: options.JsonOut = False,
) -> None:
    """Prepare CK+ (7 classes; subject ids and subject-independent folds kept)."""
    with _progress("reading CK+") as cb:
        result = registry.prepare(
            "ck+", src, out=out, force=force, peak_frames=peak_frames,
            neutral_first_frame=neutral_first_frame, size=size, folds=folds, seed=seed,
            skip_bad=skip_bad, progress=cb,
        )
    _render(result, as_json)


def _render(result: Any, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2))
        return
    m = result.manifest
    console = Console()
    classes: list[str] = list(m["classes"])
    counts: dict[str, dict[str, int]] = m["counts"]
    splits = list(counts)
    console.print(
        f"[bold]{m['name']}[/]: {m['num_images']} images → {result.out} ({result.seconds:.1f} s)",
        highlight=False,
    )
    table = Table()
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    if len(splits) > 1:
        table.add_column("total", justify="right")
    for c in classes:
        row = [counts[s].get(c, 0) for s in splits]
        table.add_row(c, *map(str, row), *([str(sum(row))] if len(splits) > 1 else []))
    totals = [sum(counts[s].values()) for s in splits]
    table.add_section()
    table.add_row(
        "[bold]total[/]", *(f"[bold]{t}[/]" for t in totals),
        *([f"[bold]{sum(totals)}[/]"] if len(splits) > 1 else []),
    )
    console.print(table)
    if "num_subjects" in m:
        console.print(
            f"subjects: {m['num_subjects']}   sequences: {m.get('num_sequences', 0)}   "
            f"folds: {m.get('num_folds', 0)} (subject-independent, seed {m.get('fold_seed', 0)})"
        )
    check = m.get("canonical_check", {})
    if check.get("matches"):
        console.print("[green]counts match the canonical release[/]")
    elif check:
        console.print(f"[yellow]differs from the canonical counts ({check.get('reference', '')}):[/]")
        diffs = check.get("differences", [])
        for d in diffs[:12]:
            console.print(f"[yellow]  {d}[/]")
        if len(diffs) > 12:
            console.print(f"[yellow]  … and {len(diffs) - 12} more[/]")
    dup = m.get("duplicates", {})
    if dup.get("count"):
        console.print(
            f"duplicates: {dup['count']} groups of identical images ({dup['extra_copies']} extra "
            f"copies; {dup['cross_split']} groups span splits; {dup['label_conflicts']} with "
            "conflicting labels)"
        )
        for line in _duplicates_meaning(dup):
            console.print(line, highlight=False)
        for ex in dup.get("examples", [])[:3]:
            more = f" (+{ex['copies'] - len(ex['sources'])} more)" if ex["copies"] > len(ex["sources"]) else ""
            console.print(f"  e.g. {', '.join(ex['sources'])}{more}", markup=False, highlight=False)
    else:
        console.print("duplicates: none")
    conv = m.get("converted", {})
    if conv.get("total"):
        reasons = ", ".join(f"{k} {v}" for k, v in conv["reasons"].items())
        console.print(f"converted: {conv['total']} images ({reasons})")
    sk = m.get("skipped", {})
    if sk.get("total"):
        reasons = ", ".join(f"{k} {v}" for k, v in sk["reasons"].items())
        console.print(f"[yellow]skipped: {sk['total']} ({reasons})[/]")
    for note in m.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


def _duplicates_meaning(dup: dict) -> list[str]:  # type: ignore[type-arg]
    """What the duplicates mean for the protocol, in one or two lines."""
    lines = []
    seen = dup.get("also_in_train") or {}
    if dup.get("cross_split"):
        where = ", ".join(f"{n} {s}" for s, n in seen.items())
        lines.append("cross-split duplicates: the splits are kept as published (nothing moved or dropped), so "
                     "results stay comparable with the paper's"
                     + (f"; {where} image(s) also appear in train, so part of their accuracy is on images "
                        "the model trained on" if where else ""))
    if dup.get("label_conflicts"):
        lines.append(f"{dup['label_conflicts']} group(s) carry different labels on identical images: kept as "
                     "labelled, so no model can get all of them right")
    return lines
