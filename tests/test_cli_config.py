"""The CLI's configuration: defaults read from the frozen configs, presets as shipped TOML
recipes, `fer train --config` (a recipe or a run's config.json) under the command line's
flags, help panels, and help text that the terminal wraps rather than the docstring."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import tomllib
from typer.main import get_command
from typer.testing import CliRunner

from fercli import paper
from fercli.ablation.config import AblateConfig
from fercli.bench.config import BenchConfig
from fercli.cli import app
from fercli.cli.train import train_config
from fercli.evaluation.config import CalibrateConfig, EvaluateConfig
from fercli.infer.config import PredictConfig
from fercli.serve.config import ServeConfig
from fercli.train import config
from fercli.train.config import TrainConfig
from tests.fixtures import make_fer_like

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = get_command(app).commands  # type: ignore[attr-defined]
# Options whose value the command turns into another type before its config holds it.
CONVERTED = {("train", "fold"), ("ablate", "seeds"), ("ablate", "devices")}


def parse(argv: list[str]) -> TrainConfig:
    return train_config(COMMANDS["train"].make_context("train", list(argv)))


@pytest.mark.parametrize("command,config_cls", [
    ("train", TrainConfig), ("predict", PredictConfig), ("serve", ServeConfig), ("evaluate", EvaluateConfig),
    ("calibrate", CalibrateConfig), ("bench", BenchConfig), ("ablate", AblateConfig)])
def test_each_option_default_is_its_configs(command: str, config_cls: type) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}
    checked = 0
    for param in COMMANDS[command].params:
        if param.name in defaults and (command, param.name) not in CONVERTED and not getattr(param, "hidden", False):
            assert param.default == defaults[param.name], (command, param.name)
            checked += 1
    assert checked >= min(6, len(defaults) - 2), (command, checked)


def test_the_shipped_presets_are_the_recipe_files() -> None:
    assert sorted(p.stem for p in config.PRESET_DIR.glob("*.toml")) == sorted(config.PRESETS)
    for name in config.PRESETS:
        assert config.PRESET_VALUES[name] == tomllib.loads((config.PRESET_DIR / f"{name}.toml").read_text())
    paper_preset = config.PRESET_VALUES["paper"]  # the paper's §3.2, from the paper's own table
    hp = paper.HYPERPARAMETERS
    assert (paper_preset["batch_size"], paper_preset["lr"], paper_preset["epochs"]) == (
        hp["batch_size"], hp["learning_rate"], hp["epochs"])
    assert '"train/presets/*.toml"' in (REPO / "pyproject.toml").read_text()  # installed with the package


def test_precedence_defaults_preset_config_then_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('lr = 5e-4\nbatch-size = 32\narch = "resnet34"\n')
    assert parse([]) == TrainConfig()
    paper_cfg = parse(["--preset", "paper"])
    assert (paper_cfg.batch_size, paper_cfg.epochs, paper_cfg.schedule) == (16, 200, "constant")
    cfg = parse(["--preset", "paper", "--config", str(recipe)])
    assert (cfg.lr, cfg.batch_size, cfg.model, cfg.epochs) == (5e-4, 32, "resnet34", 200)
    cfg = parse(["--preset", "paper", "--config", str(recipe), "--lr", "1e-2", "--epochs", "3", "--fold", "all"])
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.fold) == (1e-2, 32, 3, -1)
    # A flag given at its default value still wins over the preset: it was given.
    assert parse(["--preset", "paper", "--batch-size", "64"]).batch_size == 64


@pytest.mark.parametrize("text,message", [
    ("lrr = 1\n", "'lrr' is not a `fer train` option"),
    ('lr = "fast"\n', "lr = 'fast' should be a number"),
    ("epochs = 2.5\n", "epochs = 2.5 should be an integer"),
    ("pretrained = 1\n", "pretrained = 1 should be true or false"),
    ("out = 'elsewhere'\n", "'out' is not a `fer train` option"),
    ("lr = = 1\n", "not a recipe"),
])
def test_a_bad_recipe_is_one_line_naming_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    r = runner.invoke(app, ["train", "--config", str(recipe)])
    assert r.exit_code == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: --config {recipe}: ") and message in line
    missing = runner.invoke(app, ["train", "--config", str(tmp_path / "absent.toml")])
    assert missing.exit_code == 2 and "absent.toml: cannot read it" in missing.stderr


def test_a_runs_config_json_trains_the_same_recipe_again(tmp_path: Path) -> None:
    ds = make_fer_like(tmp_path / "fer")
    first = ["--dataset", str(ds), "--arch", "resnet34", "--no-pretrained", "--epochs", "1", "--batch-size", "8",
             "--lr", "3e-4", "--label-smoothing", "0.1", "--device", "cpu", "--seed", "3"]
    r = runner.invoke(app, ["train", *first, "--out", str(tmp_path / "a"), "-q"])
    assert r.exit_code == 0, r.output
    again = runner.invoke(app, ["train", "--config", str(tmp_path / "a" / "config.json"), "--out",
                                str(tmp_path / "b"), "-q"])
    assert again.exit_code == 0, again.output
    a, b = (json.loads((tmp_path / d / "config.json").read_text())["config"] for d in "ab")
    assert a.pop("out") != b.pop("out")
    assert a == b and b["lr"] == 3e-4 and b["label_smoothing"] == 0.1 and b["seed"] == 3


def test_train_help_groups_its_options_in_panels() -> None:
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0
    panels = re.findall(r"╭─ (.+?) ─", r.stdout)
    assert panels == ["Options", "Data", "Model", "Optimizer and schedule", "Augmentation", "Run and hardware"]
    assert "[default: 0.0001]" in r.stdout and "--config" in r.stdout


def _command_rows(text: str) -> dict[str, str]:
    """The Commands panel of `fer --help`: each command's description, its lines joined."""
    panel = text[text.index("Commands"):]
    rows: dict[str, str] = {}
    name = None
    for line in panel.splitlines()[1:]:
        if not line.startswith("│"):
            break
        cells = line.strip("│ ").split(None, 1)
        if line[2] != " ":  # a new command: its name in the first column
            name, rows[cells[0]] = cells[0], cells[1] if len(cells) > 1 else ""
        elif name is not None:
            rows[name] += " " + line.strip("│ ").strip()
    return rows


@pytest.mark.parametrize("columns", ["80", "120"])
def test_help_sentences_are_wrapped_by_the_terminal_not_the_docstring(columns: str) -> None:
    r = runner.invoke(app, ["--help"], env={"COLUMNS": columns})
    rows = _command_rows(r.stdout)
    assert list(rows) == ["prepare", "train", "evaluate", "calibrate", "ablate", "predict", "serve", "export",
                          "bench"]
    for name, command in COMMANDS.items():
        first = command.help.split("\n\n")[0]
        assert "\n" not in first and rows[name] == first, name
        for paragraph in command.help.split("\n\n"):  # every paragraph is one line for the terminal
            assert "\n" not in paragraph, (name, paragraph)


def test_the_recognizers_defaults_are_the_clis() -> None:
    import inspect

    import fercli

    defaults = {f.name: f.default for f in dataclasses.fields(PredictConfig) if f.default is not dataclasses.MISSING}
    params = inspect.signature(fercli.Recognizer.__init__).parameters
    shared = [n for n in params if n in defaults]
    assert {"model", "device", "backend", "precision", "detector", "tta", "margin"} <= set(shared)
    for name in shared:
        assert params[name].default == defaults[name], name
    cli = {p.name: p.default for p in COMMANDS["predict"].params}
    assert all(cli[n] == defaults[n] for n in shared if n in cli)
