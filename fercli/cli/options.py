"""Options that several `fer` commands share, declared once: one name, one meaning, one help.

A command declares such an option by its alias, `device: options.Device = PredictConfig.device`,
and gives only the default, read from the frozen config the command builds, so that each
default is declared once and `--help` shows it. A name means the same thing in every command:

    --arch    a network architecture (train, bench)
    --model   a trained model: run directory, checkpoint or export (predict)
    --preset  a named training recipe, the same names in train and ablate

Old spellings keep working for a while and print one `warning:` line on stderr
(`deprecated_alias`, `canonical_preset`).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fercli.errors import FerError
from fercli.train.config import DEPRECATED_PRESETS

# Rich reads "[default: …]" as a markup tag and drops it: help texts escape it as "\\[".
MODEL_REFERENCE = "a `fer train` run directory (its best.pt), a .pt checkpoint or an exported .npz"

Device = Annotated[str, typer.Option(
    "--device",
    help="Where the network runs: auto (CUDA when a GPU is available, else the CPU), cpu or cuda.")]

JsonOut = Annotated[bool, typer.Option(
    "--json",
    help="Print the result as JSON on stdout, for scripts; nothing else goes to stdout.")]

Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress bars or status lines (errors and warnings still go to stderr).")]

Threads = Annotated[Optional[int], typer.Option(
    help="CPU threads torch uses in each process (torch.set_num_threads). On a machine shared with "
         "other jobs, fewer threads than cores is often faster. \\[default: torch's, one per core]")]

Arch = Annotated[Optional[str], typer.Option(
    "--arch",
    help="Network architecture: bcnn-resnet34 (OBSR-Net, the paper's bilinear ResNet34) or resnet34 "
         "(the plain baseline).")]

Model = Annotated[Optional[str], typer.Option(
    "--model", "-m",
    help=f"The trained model: {MODEL_REFERENCE} or .onnx. "
         "\\[default: the shipped model, else the newest ./runs/**/best.pt]")]

SharedBackbone = Annotated[Optional[bool], typer.Option(
    "--shared-backbone", help="Symmetric B-CNN: one trunk for f_A and f_B (half the parameters); bcnn-resnet34 only.")]

ImageSize = Annotated[Optional[int], typer.Option(
    help="Faces are resized on the device to this size before the network (48 → a 2×2 last feature "
         "map, 96 → 3×3); at least 32.")]

Compile = Annotated[Optional[bool], typer.Option(
    "--compile", help="torch.compile the training step's forward and backward (the first steps pay the compile time).")]

Weights = Annotated[Optional[Path], typer.Option(
    help="Offline ImageNet weights for the pretrained trunks: a torchvision resnet34 state dict "
         "(resnet34-b627a593.pth).")]

TrainSubset = Annotated[Optional[int], typer.Option(help="Train each run on only N training images (quick checks).")]

Seeds = Annotated[Optional[str], typer.Option(
    help="Several runs, one per seed, comma-separated (e.g. 0,1,2); results are reported per seed and as mean ± std.")]

Jobs = Annotated[int, typer.Option(
    help="Train up to N runs at once, each its own process (own CUDA context); a failed or killed run does "
         "not stop the others, and running again skips finished runs and resumes the rest.")]

Devices = Annotated[Optional[str], typer.Option(
    help="Spread concurrent runs over these devices, e.g. 'cuda:0,cuda:1' (or 'cpu'). \\[default: --device]")]


def warn(message: str) -> None:
    """One `warning: ...` line on stderr (never on stdout, which --json keeps for data)."""
    typer.echo(f"warning: {message}", err=True)


def canonical_preset(name: Optional[str]) -> Optional[str]:
    """--preset NAME as the current vocabulary spells it; an old name warns once."""
    if name in DEPRECATED_PRESETS:
        warn(f"--preset {name} is deprecated; use --preset {DEPRECATED_PRESETS[name]} (the same settings)")
        return DEPRECATED_PRESETS[name]
    return name


Preset = Annotated[Optional[str], typer.Option(
    callback=canonical_preset,
    help="A named training recipe; options given explicitly override it. "
         "paper: the paper's §3.2 settings (batch 16, lr 1e-4, 200 epochs, constant lr, ImageNet-pretrained, "
         "AdamW-GC on FER2013 / Adam-GC on CK+). "
         "short: batch 64, lr 3e-4, cosine, 10 epochs (short enough to train every row of the ablation ladder). "
         "fer2013-scratch: the best measured from-scratch FER2013 recipe (shared-trunk B-CNN, AdamW-GC lr 1e-3 "
         "wd 1e-2, batch 128, cosine, 64 epochs; docs/results.md). "
         "ckplus-transfer: the best measured CK+ recipe, from the shipped FER2013 model's trunk (--dataset ck+ "
         "--init-from default, shared trunk, Adam-GC lr 3e-4, batch 32, 16 epochs, label smoothing 0.1, EMA 0.99). "
         "In `fer ablate` each row keeps its own architecture, optimizer and starting weights; the preset "
         "gives the rest.")]


def deprecated_alias(old: str, new: str, why: str) -> Callable[[Optional[str]], Optional[str]]:
    """The callback of a hidden option kept under its old name: warns when it is used."""

    def callback(value: Optional[str]) -> Optional[str]:
        if value is not None:
            warn(f"{old} is deprecated here; use {new} ({why})")
        return value

    return callback


def pick(new_name: str, new: Any, old_name: str, old: Any) -> Any:
    """The value of an option that is also accepted under an old name; both at once is an error."""
    if new is not None and old is not None:
        raise FerError(f"{old_name} is the old name of {new_name}: give only {new_name}")
    return new if new is not None else old


def given(ctx: typer.Context, config_cls: type | None = None) -> dict[str, Any]:
    """The parameters given on the command line (or by environment), by name; those left at
    their default are not here, so that a preset or a recipe file can decide them. With
    `config_cls`, only the parameters named as its fields, Paths as strings (configs are JSON)."""
    # By name: Typer may bring its own copy of Click, whose ParameterSource is another enum.
    values = {k: v for k, v in ctx.params.items()
              if getattr(ctx.get_parameter_source(k), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    if config_cls is not None:
        names = {f.name for f in dataclasses.fields(config_cls)}
        values = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if k in names}
    return values


def in_panel(alias: Any, panel: str) -> Any:
    """A shared option alias shown under `panel` in --help (a copy: other commands keep theirs)."""
    base, info = typing.get_args(alias)
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[base, info]
