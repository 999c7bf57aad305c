"""The one exception type the CLI turns into a one-line message and a non-zero exit.

Core modules raise FerError for anything the user can fix (bad path, bad file, bad value).
The message must name the culprit (file, line, row, value) and fit on one line; the CLI
prints it as `error: <message>` with no traceback.
"""


class FerError(Exception):
    """A user-facing error: one line, names the culprit, exit code `exit_code`."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(" ".join(str(message).split()))  # force one line
        self.exit_code = exit_code


# What `pip install 'fercli[train]'` adds to the inference core (pyproject.toml).
TRAIN_EXTRA_MODULES = ("torch", "torchvision", "sklearn", "onnx")
TRAIN_EXTRA_HINT = "pip install 'fercli[train]'"


def missing_extra(what: str, exc: ModuleNotFoundError) -> Exception:
    """The one-line FerError (exit 2) for `what` when a module of the [train] extra is not
    installed; any other missing module is returned as it was (a broken install, not a choice)."""
    root = (exc.name or "").split(".")[0]
    if root not in TRAIN_EXTRA_MODULES:
        return exc
    return FerError(f"{what} needs the training extra: {TRAIN_EXTRA_HINT} ({root} is not installed)")
