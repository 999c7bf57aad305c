"""The `fer` command line: a thin Typer layer over the core modules.

Each command parses flags into one frozen config dataclass, calls one core function that
returns data, and renders that data with fercli.cli.report. Core modules never import Typer or
Rich. The application and its error handling are in fercli.cli.app; each command is a module
here that registers itself on it, imported below in the order of `fer --help`.
"""

from __future__ import annotations

from fercli.cli import ablate, bench, calibrate, evaluate, export, predict, prepare, serve, train  # noqa: F401,E402,I001
from fercli.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point (`fer`, `python -m fercli`)."""
    app(prog_name="fer")
