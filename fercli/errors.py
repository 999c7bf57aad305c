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
