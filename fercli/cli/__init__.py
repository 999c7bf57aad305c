"""The `fer` command line: a thin Typer layer over the core modules.

Each command parses flags into one frozen config dataclass, calls one core function that
returns data, and renders that data with fercli.cli.report. Core modules never import Typer or
Rich. A FerError from the core becomes `error: <one line>` on stderr and a non-zero exit,
with no traceback and (thanks to the atomic writers) no partial output.
"""

from __future__ import annotations

import typer

from fercli import __version__
from fercli.errors import FerError

# `fer --help` lists commands in workflow order, not registration order (Typer appends
# sub-apps such as `prepare` after plain commands).
COMMAND_ORDER = ("prepare", "train", "evaluate", "calibrate", "ablate", "predict", "export", "bench")


_PY_TO_CLICK = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN",
                "Path": "PATH", "UUID": "UUID"}


def _click_type_name(param, ctx):  # type: ignore[no-untyped-def]
    """Option types as Click and most CLIs print them (TEXT, INTEGER, PATH, [a|b]), and
    nothing for on/off flags. Typer 0.2x prints Python-ish `<str>`/`<bool>` instead."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    if getattr(param, "metavar", None):
        return param.metavar
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    bare = param.bare_type()
    return _PY_TO_CLICK.get(bare, bare.upper())


def _click_usage_name(param):  # type: ignore[no-untyped-def]
    """`fer export [OPTIONS] SOURCE`, not Typer 0.2x's `{source}`."""
    name = (param.metavar or param.name or "").upper()
    name = name if param.required else f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")


# Typer 0.2x renders types itself; these two hooks are its only rendering entry points.
for _cls in (typer.core.TyperOption, typer.core.TyperArgument):
    if hasattr(_cls, "display_type_rich"):
        _cls.display_type_rich = _click_type_name  # type: ignore[method-assign]
if hasattr(typer.core.TyperArgument, "_usage_display_name"):
    typer.core.TyperArgument._usage_display_name = _click_usage_name  # type: ignore[method-assign]


class _FerGroup(typer.core.TyperGroup):
    """Turns a FerError from any command into `error: <one line>` and its exit code."""

    def list_commands(self, ctx):  # type: ignore[no-untyped-def]
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))

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

    for module in ("prepare", "train", "evaluate", "calibrate", "ablate", "predict", "export", "bench"):
        importlib.import_module(f"fercli.cli.{module}")


_register()


def main() -> None:
    """Console-script entry point (`fer`, `python -m fercli`)."""
    app(prog_name="fer")
