"""The README's `fer ...` commands run as written.

Every command in README.md (its tables, code blocks and inline `fer ...` spans) must parse:
each option exists on that command, each value is one it takes, and nothing required is left
out (`fer serve` named alone, as a reference, only has to exist). The cheap ones also run
for real, with the sample images standing in for the reader's photos; the rest need a GPU,
the real datasets or hours, and get their `--help` run instead. The "Python API" block is run
by .ci/inference_only.sh.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fercli.cli import app
from tests.fixtures import SAMPLE_DIR

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def readme_commands(text: str) -> list[str]:
    """Each `fer ...` command of the README: code-block lines and backticked spans, in order,
    comments dropped, `a && b` split."""
    found: list[str] = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        spans = [line] if in_code else re.findall(r"`(fer [^`]*)`", line)
        for span in spans:
            for piece in span.split("&&"):
                words = shlex.split(piece, comments=True)
                if words[:1] == ["fer"]:
                    found.append(" ".join(shlex.quote(w) for w in words))
    return found


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def _resolve(words: list[str]) -> tuple[typer.core.TyperCommand, list[str], str]:
    """The Click command a `fer ...` line names, its remaining arguments, and its name."""
    cmd = typer.main.get_command(app)  # (Typer carries its own copy of Click: no click.Group here)
    name: list[str] = []
    rest = words[1:]
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        assert rest[0] in cmd.commands, f"fer {' '.join(name + rest[:1])}: no such command"
        name.append(rest[0])
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    return cmd, rest, " ".join(name)


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) > 20
    names = {_resolve(shlex.split(c))[2] for c in COMMANDS}
    assert {"prepare fer2013", "prepare ck+", "train", "evaluate", "calibrate", "ablate", "predict", "serve",
            "export", "bench"} <= names


@pytest.mark.parametrize("line", COMMANDS)
def test_every_readme_command_parses_as_written(line: str):
    cmd, rest, name = _resolve(shlex.split(line))
    if not rest and (hasattr(cmd, "commands") or any(p.required for p in cmd.params)):
        return  # a bare `fer prepare` or `fer export`: a reference in prose, not a command
    if "--help" in rest:
        assert runner.invoke(app, shlex.split(line)[1:]).exit_code == 0, line
        return
    with cmd.make_context(f"fer {name}", list(rest)) as ctx:
        assert ctx.params is not None


def test_the_check_refuses_what_the_command_does_not_take():
    cmd, rest, name = _resolve(["fer", "export", "RUN"])
    with pytest.raises(Exception) as missing:  # --out is required
        cmd.make_context(name, rest)
    assert type(missing.value).__name__ == "MissingParameter"
    cmd, rest, name = _resolve(["fer", "ablate", "--no-pretrained"])
    with pytest.raises(Exception) as unknown:
        cmd.make_context(name, rest)
    assert type(unknown.value).__name__ == "NoSuchOption"


# The reader's files, for the commands that are cheap enough to run for real.
STAND_INS = {"my_photo.jpg": str(SAMPLE_DIR / "grace_hopper.jpg"), "face.jpg": str(SAMPLE_DIR / "two_faces.jpg"),
             "photo.jpg": str(SAMPLE_DIR / "astronaut.jpg")}
CHEAP = ("predict ", "ablate --paper")


def _cheap(line: str) -> bool:
    """A predict on the reader's photos (stand-ins here) or `fer ablate --paper`; not a
    placeholder (IMAGES..., RUN_DIR), a video, a camera or another model."""
    words = shlex.split(line)
    if words[1:2] == ["predict"] and not any(w in STAND_INS for w in words):
        return False  # `fer predict --json` in prose names the output format, not a command to run
    return (any(line.startswith(f"fer {p}") for p in CHEAP) and "--camera" not in words and "--model" not in words
            and not any(w.rstrip(".").isupper() for w in words)
            and all(w in STAND_INS or not w.endswith((".jpg", ".png", ".mp4")) for w in words))


@pytest.mark.parametrize("line", [c for c in COMMANDS if _cheap(c)])
def test_the_cheap_readme_commands_run(line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # outputs such as `--annotate out/` land here
    words = [STAND_INS.get(w, w) for w in shlex.split(line)[1:]]
    r = runner.invoke(app, words)
    assert r.exit_code == 0, (line, r.output)


@pytest.mark.parametrize("name", sorted({_resolve(shlex.split(c))[2] for c in COMMANDS} - {""}))
def test_each_readme_command_has_help(name: str):
    r = runner.invoke(app, [*name.split(), "--help"])
    assert r.exit_code == 0 and "Usage: fer" in r.stdout, r.output


def test_the_readme_and_train_help_list_every_file_a_run_directory_gets():
    text = " ".join(README.read_text(encoding="utf-8").split())
    helptext = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).stdout.split())
    for name in ("config.json", "history.csv", "loss_curve.png", "best.pt", "last.pt", "train_summary.json"):
        assert name in text and name in helptext, name
    assert "fits the softmax temperature on the selection split" in text
    assert "the softmax temperature is fitted on the selection split" in helptext
