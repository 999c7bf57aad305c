"""The `fer` command line: a thin Typer layer over the core modules.

Each command parses flags into one frozen config dataclass, calls one core function that
returns data, and renders that data with fercli.report. Core modules never import Typer or
Rich. A FerError from the core becomes `error: <one line>` on stderr and a non-zero exit,
with no traceback and (thanks to the atomic writers) no partial output.
"""

from __future__ import annotations

import typer

from fercli import __version__
from fercli.errors import FerError


class _FerGroup(typer.core.TyperGroup):
    """Turns a FerError from any command into `error: <one line>` and its exit code."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except FerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_FerGroup,
    name="fer",
    help=(
        "Facial expression recognition with the OBSR-Net bilinear ResNet34 "
        "(Optimized Bilinear ResNet34, 2024): prepare FER2013/CK+, train, evaluate, "
        "ablate and predict."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Facial expression recognition with the OBSR-Net bilinear ResNet34."""


def _register() -> None:
    # Imported here so `fer --version` stays fast and each command lives in its own module.
    # Order = order in `fer --help`: the data → model → results path, then tools.
    import importlib

    for module in ("prepare", "train", "ablate", "predict", "export", "bench"):
        importlib.import_module(f"fercli.cli.{module}")


_register()


def main() -> None:
    """Console-script entry point (`fer`, `python -m fercli`)."""
    app(prog_name="fer")
