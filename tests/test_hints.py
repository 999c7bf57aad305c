"""Messages in the caller's vocabulary: every `--flag` a hint names exists on the command that
prints it, and names (splits) are spelled as the option takes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercli.cli import app
from tests.fixtures import fake_run, make_fer_like

runner = CliRunner()


@pytest.fixture(scope="module")
def fer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fer")
    return fake_run(root / "run", make_fer_like(root / "fer"))


def test_a_split_the_dataset_lacks_is_refused_naming_the_splits_as_the_option_spells_them(fer_run: Path):
    r = runner.invoke(app, ["evaluate", str(fer_run), "--split", "test", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert line.startswith("error: --split test:") and "\n" not in line
    assert "private-test" in line and "public-test" in line and "_" not in line.split(":", 1)[1], line


def test_split_help_says_which_splits_each_dataset_has():
    text = " ".join(runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "300"}).stdout.split())
    assert "FER2013: private-test" in text and "public-test" in text and "CK+: fold" in text


# -----------------------------------------------------------------------------
# Every `--flag` a hint names is an option of each command that can print it.

import ast  # noqa: E402
import re  # noqa: E402

import typer  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "fercli"
# "use --x", "pass --x", "give --x", "or --x", "with --x", "drop --x": a hint naming a flag.
HINT = re.compile(r"\b(?:use|pass|give|or|with|drop)\s+(--[a-z][a-z0-9-]*[a-z0-9])")
# A flag inside `fer CMD ...` (backticks) belongs to CMD, wherever the message is printed.
QUOTED = re.compile(r"`(fer [^`]*)`")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")

TORCH_COMMANDS = ("train", "evaluate", "calibrate", "ablate", "predict", "serve", "bench")
PREPARE = ("prepare fer2013", "prepare ck+")
INFERENCE = ("predict", "serve")
# Where a hint is written (file, or file:function) → the commands that can print it. A new hint
# site must be added here, with the commands that reach it.
SITES: dict[str, tuple[str, ...]] = {
    "bench/scaling.py": ("bench",),
    "cli/bench.py": ("bench",),
    "cli/options.py:canonical_preset": ("train", "ablate"),
    "cli/predict.py": ("predict",),
    "cli/train.py": ("train",),
    "data/ingest/common.py": PREPARE,
    "device.py": TORCH_COMMANDS,
    "evaluation/evaluate.py": ("evaluate",),
    "evaluation/evaluate.py:calibrate_target": ("calibrate",),
    "export/onnx_runtime.py": INFERENCE,
    "files.py:atomic_directory": PREPARE,  # data.prepared writes datasets through it
    "infer/classifier.py": INFERENCE,
    "infer/recognizer.py": INFERENCE,
    "model/locate.py": INFERENCE,
    "model/networks.py:_weights_hint": ("train", "ablate"),
    "model/networks.py:init_trunks_from": ("train",),  # ablate's rows take the source's own architecture
    "serve/config.py": ("serve",),
    "serve/auth.py": ("serve",),
    "train/checkpointing.py": ("train", "ablate"),
    "train/config.py": ("train",),  # ablate builds each row's config itself, from valid values
    # ablate plans each run directory (resume/force) itself and runs the pretrained rows only
    # when its plan found the ImageNet weights.
    "train/runs.py": ("train",),
    "vision/faces.py": INFERENCE,
}


COMMANDS = (*TORCH_COMMANDS, *PREPARE, "export")


def _command(path: str) -> typer.core.TyperCommand:
    cmd = typer.main.get_command(app)
    for name in path.split():
        cmd = cmd.commands[name]
    return cmd


def _flags(path: str) -> set[str]:
    try:
        cmd = _command(path)
    except KeyError:
        return set()  # no such command: every flag "missing"
    return {"--help", *(o for p in cmd.params for o in (*p.opts, *p.secondary_opts))}


def _hint_strings(source: str) -> list[tuple[str, str]]:
    """(enclosing function, string literal) for each literal that is not a docstring or a help=."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        up = parents.get(node)
        while isinstance(up, (ast.JoinedStr, ast.FormattedValue, ast.BinOp)):
            up = parents.get(up)
        if isinstance(up, ast.Expr) or (isinstance(up, ast.keyword) and up.arg == "help"):
            continue
        func, q = "", node
        while q in parents and not func:
            q = parents[q]
            if isinstance(q, (ast.FunctionDef, ast.AsyncFunctionDef)):
                func = q.name
        found.append((func, node.value))
    return found


def check_hints(rel: str, source: str) -> tuple[list[str], list[str]]:
    """(hints naming a flag the command lacks, hint sites missing from SITES) in one file."""
    wrong, unlisted = [], []
    for func, text in _hint_strings(source):
        for quoted in QUOTED.findall(text):
            for piece in quoted.split("&&"):
                words = piece.split()
                if words[:1] != ["fer"] or len(words) < 2:
                    continue
                cmd = " ".join(words[1:3]) if words[1] == "prepare" else words[1]
                cmds = sorted(COMMANDS) if words[1].isupper() else [cmd]  # `fer COMMAND --help`
                wrong += [f"{rel}:{func}: `{piece.strip()}`: fer {c} has no {flag}"
                          for flag in FLAG.findall(piece) for c in cmds if flag not in _flags(c)]
        hints = HINT.findall(QUOTED.sub("", text))
        if not hints:
            continue
        commands = SITES.get(f"{rel}:{func}", SITES.get(rel))
        if commands is None:
            unlisted.append(f"{rel}:{func} hints {hints}: add it to SITES with the commands that print it")
            continue
        wrong += [f"{rel}:{func}: {text.strip()!r} names {flag}, which `fer {cmd}` does not have"
                  for flag in hints for cmd in commands if flag not in _flags(cmd)]
    return wrong, unlisted


def test_every_flag_a_hint_names_exists_on_the_commands_that_print_it():
    wrong, unlisted = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        w, u = check_hints(path.relative_to(PACKAGE).as_posix(), path.read_text(encoding="utf-8"))
        wrong += w
        unlisted += u
    assert not unlisted, "\n".join(unlisted)
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_a_hint_with_a_flag_the_command_lacks():
    bad = 'def plan():\n    raise FerError(f"weights missing (use --no-pretrained)")\n'
    assert check_hints("model/networks.py:_weights_hint".split(":")[0], bad.replace("plan", "_weights_hint"))[0]
    assert check_hints("train/runs.py", bad)[0] == []  # fer train has --no-pretrained
    assert check_hints("newmodule.py", bad)[1]  # an unlisted site is reported, not skipped
    quoted = 'def f():\n    return "rerun `fer ablate --resume` to continue"\n'
    assert check_hints("train/runs.py", quoted)[0]
    assert check_hints("data/ingest/common.py", 'X = "pass --no-such-option"\n')[0]
