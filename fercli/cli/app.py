"""The Typer application behind `fer`: its command and group classes (help, errors) and the root.

Every command module registers itself on `app` (fercli.cli imports them all). A FerError from
the core becomes `error: <one line>` on stderr and its exit code, with no traceback and (the
writers being atomic) no partial output; so does a full disk, and a command whose [train]
extra is not installed (exit 2, naming `pip install 'fercli[train]'`).
"""

from __future__ import annotations

import inspect
from typing import Any

import typer

from fercli import __version__
from fercli.errors import FerError, missing_extra
from fercli.files import fault_from_oserror

# `fer --help` lists commands in workflow order, not registration order (Typer appends
# sub-apps such as `prepare` after plain commands).
COMMAND_ORDER = ("prepare", "train", "evaluate", "calibrate", "ablate", "predict", "serve", "export", "bench")


_PY_TO_CLICK = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "UUID": "UUID"}


def _click_type_name(param: typer.core.TyperOption) -> str:
    """An option's value type as Click and most CLIs print it: TEXT, INTEGER, PATH, [a|b]."""
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    bare = param.bare_type()
    return _PY_TO_CLICK.get(bare, bare.upper())


class _ClickStyleHelp:
    """Help that reads like Click's: value types as TEXT, INTEGER, PATH, [a|b] (Typer writes
    <str>, <int>, <path>) and none for on/off flags (Typer writes <bool>), through the public
    `metavar` of each option, which help prints in the type column."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:  # type: ignore[attr-defined]
            _set_metavar(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            _set_metavar(option)
        return option


def _set_metavar(param: Any) -> None:
    # Only Typer versions that render types themselves (those with a type_descriptor) need it;
    # older ones print Click's names already.
    if not hasattr(param, "type_descriptor"):
        return
    if isinstance(param, typer.core.TyperOption) and param.metavar is None:
        param.metavar = "" if param.is_flag or param.count else _click_type_name(param)
    elif isinstance(param, typer.core.TyperArgument):
        # An argument's metavar is its name on the usage line; only its type column changes.
        param.display_type = lambda ctx, p=param: _click_type_name(p)


def reflow(text: str) -> str:
    """A docstring as help: its paragraphs (blank-line separated) each on one line, so that the
    terminal wraps them at its own width and `fer --help` lists each command's first sentence
    whole (a docstring's line breaks would otherwise survive into the help)."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class FerCommand(_ClickStyleHelp, typer.core.TyperCommand):
    """A `fer` command: Click-style help types, help reflowed to the terminal, and arguments in
    capitals on the usage line (`fer export [OPTIONS] SOURCE`, where Typer writes `{source}`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = reflow(self.help)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = (param.metavar or param.name or "").upper()
                pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class FerGroup(_ClickStyleHelp, typer.core.TyperGroup):
    """A group of `fer` commands: lists them in workflow order, and turns a FerError from any
    of them into `error: <one line>` and its exit code, and so does an OSError that is a fault
    of the machine (full disk, read-only, vanished folder) and a missing module of the [train]
    extra (torch, torchvision, scikit-learn, onnx) in an install without it."""

    def list_commands(self, ctx):  # type: ignore[no-untyped-def]
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except FerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except ModuleNotFoundError as exc:
            # `pip install fercli` predicts and serves; training, evaluation, export and bench
            # need the [train] extra. Any other missing module is a broken install: re-raised.
            error = missing_extra(f"fer {ctx.invoked_subcommand or ctx.info_name}", exc)
            if error is exc:
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            # Last line of defence for a write no atomic writer made: a full disk, a read-only
            # or vanished folder end in one line, exit code 1, like the writers' own errors.
            fault = fault_from_oserror(exc)
            if fault is None:
                raise
            typer.echo(f"error: {fault}", err=True)
            raise typer.Exit(fault.exit_code) from None


class FerTyper(typer.Typer):
    """typer.Typer whose groups are FerGroups and commands FerCommands (unless one asks for
    another class): every `fer` command and sub-app gets the same help and error handling."""

    def __init__(self, *args: Any, cls: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, cls=cls or FerGroup, **kwargs)

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().command(*args, cls=cls or FerCommand, **kwargs)


# `fer --help` (and `fer` alone) opens with the three ways in, then the commands.
ROOT_HELP = """Facial expression recognition with the OBSR-Net bilinear ResNet34 (Optimized Bilinear ResNet34, 2024).

Three ways in:

`fer predict photo.jpg` (a folder, a video): faces and their expressions with the shipped model, no set-up.

`fer serve`: the same over HTTP, with a web page at http://127.0.0.1:8000/.

`fer prepare fer2013 fer2013.csv` (or `fer prepare ck+ CK+48/`), then `fer train --dataset fer2013` and `fer evaluate runs/RUN`: train and measure a model of your own.

`fer COMMAND --help` explains each command."""


app = FerTyper(
    name="fer",
    help=ROOT_HELP,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fer {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """`fer` alone prints the help above and exits 0 (it is a question, not a mistake)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
