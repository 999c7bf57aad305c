"""`fer export`: a trained model → a compact, pickle-free file that `fer predict --model` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fercli.cli import options, report
from fercli.cli.app import app
from fercli.errors import FerError


@app.command("export")
def export_cmd(
    source: str = typer.Argument(..., help="A `fer train` run directory (its best.pt), a .pt checkpoint, or (for --format onnx) an exported .npz or 'default' (the shipped model)."),
    out: Path = typer.Option(..., "--out", "-o", help="The .npz (or .onnx) file to write (its metadata goes beside it as <file>.json)."),
    fmt: str = typer.Option("npz", "--format", help="npz: pickle-free weights for fercli; onnx: the whole classifier (preprocessing + softmax, opset 17, dynamic batch) for onnxruntime or any ONNX runtime."),
    max_shard_mb: Optional[float] = typer.Option(None, "--max-shard-mb", help="Split the file into parts of at most N MB (FILE.part0, ... + FILE.index.json)."),
    dtype: str = typer.Option("float16", help="float16 (half the size) or float32."),
    int8_calibration: Optional[Path] = typer.Option(None, "--int8-calibration", help="--format onnx: quantise to int8 (static, per-channel), calibrating activation ranges on 256 face images from this folder (e.g. the FER2013 Training images): one byte per weight instead of four, and faster on the CPU."),
    json_out: options.JsonOut = False,
) -> None:
    """Export a trained model to a compact, pickle-free .npz or an ONNX graph; `fer predict --model` loads both."""
    if int8_calibration is not None and fmt != "onnx":
        raise FerError("--int8-calibration applies to --format onnx only")
    if fmt == "npz":
        # deferred: both writers import torch (~1.2 s), which predicting and serving never load
        from fercli.export import npz_format as export

        info = export.export_model(source, out, dtype=dtype, max_shard_mb=max_shard_mb)
    elif fmt == "onnx":
        if max_shard_mb is not None:
            raise FerError("--max-shard-mb applies to --format npz only")
        # deferred: the ONNX writer imports torch and onnx, which predicting and serving never load
        from fercli.export import onnx_format as onnx_export

        info = onnx_export.export_onnx(source, out, dtype=dtype, int8_calibration=int8_calibration)
    else:
        raise FerError(f"--format {fmt!r} is not one of: npz, onnx")
    if json_out:
        report.print_json(info)
        return
    mb = info["bytes"] / 1e6
    where = ", ".join(info["files"])
    acc = info.get("private_test_accuracy")
    acc_text = ""
    if isinstance(acc, (int, float)):
        acc_text = f"; PrivateTest accuracy {100 * acc:.2f}%"
        if info["dtype"] == "int8":
            acc_text += " (of the float model it was quantised from)"
    report.console.print(
        f"exported {info['model_spec']['name']} as {fmt} ({info['num_parameters'] / 1e6:.1f} M parameters, {info['dtype']}) "
        f"— {mb:.1f} MB to {where}{acc_text}", highlight=False)
    report.console.print(f"metadata: {info['sidecar']}", highlight=False)
