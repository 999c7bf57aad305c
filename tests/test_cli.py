"""CLI layer: `fer train` / `fer evaluate` through Typer's CliRunner on tiny data, --version, help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fercli import __version__
from fercli.cli import app
from tests.fixtures import make_ck_like, make_fer_like

runner = CliRunner()
TINY = ["--arch", "resnet34", "--no-pretrained", "--epochs", "1", "--batch-size", "8", "--device", "cpu"]


def test_version_and_module_entry_point():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"fer {__version__}"
    p = subprocess.run([sys.executable, "-m", "fercli", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    for cmd in ("prepare", "train", "evaluate", "predict", "export", "ablate", "bench"):
        assert cmd in p.stdout


def test_train_help_explains_the_protocol():
    r = runner.invoke(app, ["train", "--help"])
    assert r.exit_code == 0
    for needle in ("PublicTest", "--preset", "--resume", "--shared-backbone", "--freeze-backbone", "--image-size"):
        assert needle in r.stdout, needle


@pytest.mark.parametrize("cmd,default", [("train", "[default: runs/<dataset>-<arch>-<optimizer>-<time>]"),
                                         ("ablate", "[default: the preset's (short: 10)]"),
                                         ("predict", "[default: the shipped model")])
def test_help_shows_the_defaults_it_documents(cmd, default):
    """Rich reads "[default: …]" in a help text as a markup tag and drops it; each must be
    escaped, or --help silently hides the defaults."""
    r = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "250"})
    assert r.exit_code == 0
    assert default in r.stdout


def test_train_then_evaluate_json(tmp_path):
    ds = make_fer_like(tmp_path / "fer")
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--dataset", str(ds), *TINY, "--out", str(run), "--json"])
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)
    assert res["val_split"] == "public_test" and res["test_split"] == "private_test"
    assert res["best_epoch"] == 1 and len(res["history"]) == 1
    r = runner.invoke(app, ["evaluate", str(run), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["split"] == "private_test" and m["num_samples"] == 12
    assert set(m["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert (run / "metrics.json").is_file() and (run / "confusion.png").is_file()


def test_train_and_evaluate_tables(tmp_path):
    ds = make_ck_like(tmp_path / "ck")
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--dataset", str(ds), *TINY, "--fold", "1", "--out", str(run), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "Training summary" in r.stdout and "fold2" in r.stdout  # selected on the next fold
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "fold1: accuracy" in r.stdout and "Confusion matrix" in r.stdout


def test_train_refuses_existing_run_without_resume(tmp_path):
    ds = make_fer_like(tmp_path / "fer")
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", "--dataset", str(ds), *TINY, "--out", str(run), "-q"]).exit_code == 0
    r = runner.invoke(app, ["train", "--dataset", str(ds), *TINY, "--out", str(run), "-q"])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: run directory") and "--resume" in r.stderr


def test_train_bad_flag_value_lists_allowed_values(tmp_path):
    ds = make_fer_like(tmp_path / "fer")
    r = runner.invoke(app, ["train", "--dataset", str(ds), *TINY, "--optimizer", "lion", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2
    assert "adamw-gc" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_pretrained_without_weights_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    ds = make_fer_like(tmp_path / "fer")
    r = runner.invoke(app, ["train", "--dataset", str(ds), "--arch", "resnet34", "--epochs", "1", "--pretrained",
                            "--device", "cpu", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "resnet34-b627a593.pth" in lines[0] and "--no-pretrained" in lines[0]
    assert not (tmp_path / "r").exists()


# -----------------------------------------------------------------------------
# Options declared once (fercli/cli/options.py)


def _all_commands():
    """Every leaf command of `fer` (prepare's subcommands included), by its full name."""
    from typer.main import get_command

    out = {}
    for name, cmd in get_command(app).commands.items():
        subs = getattr(cmd, "commands", None)
        for sub_name, sub in (subs or {name: cmd}).items():
            out[name if subs is None else f"{name} {sub_name}"] = sub
    return out


@pytest.mark.parametrize("flag, at_least", [("--device", 5), ("--json", 8), ("--quiet", 3), ("--threads", 3),
                                            ("--preset", 2), ("--seeds", 2), ("--jobs", 2), ("--arch", 2)])
def test_a_shared_option_has_one_help_text_everywhere(flag, at_least):
    helps = {name: p.help for name, cmd in _all_commands().items() for p in cmd.params if flag in p.opts}
    assert len(helps) >= at_least, helps
    assert len(set(helps.values())) == 1, helps


def test_help_says_what_options_do_without_measured_numbers():
    """A measured figure (ms, img/s, %, "x faster") belongs in docs/benchmarks.md with its machine
    and date, not in --help, where it would outlive the measurement."""
    import re

    measured = re.compile(r"\d\s*(ms|s/img|img/s)\b|instead of \d|\d+(\.\d+)?x (smaller|faster)|\d\.\d+\s*%")
    for name, cmd in _all_commands().items():
        for p in cmd.params:
            assert not measured.search(p.help or ""), (name, p.opts, p.help)


def test_help_prints_types_and_usage_like_click():
    r = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "fer export [OPTIONS] SOURCE" in r.stdout and "{source}" not in r.stdout
    out_line = next(line for line in r.stdout.splitlines() if "--out" in line)
    assert "PATH" in out_line and "<path>" not in out_line
    assert "<bool>" not in r.stdout and "<str>" not in r.stdout  # flags show no type, TEXT for strings
    r = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert "fer predict [OPTIONS] [INPUTS]..." in r.stdout


def test_arch_names_an_architecture_and_model_a_trained_model():
    cmds = _all_commands()
    assert any("--arch" in p.opts for p in cmds["train"].params)
    assert any("--arch" in p.opts for p in cmds["bench"].params)
    model_opt = next(p for p in cmds["predict"].params if "--model" in p.opts)
    assert "run directory" in model_opt.help and not model_opt.hidden
    for name in ("train", "bench"):  # kept for old command lines, not advertised
        assert all(p.hidden for p in cmds[name].params if "--model" in p.opts)


def test_old_model_spelling_still_works_with_one_warning_line(tmp_path):
    from fercli.cli.train import train_config

    r = runner.invoke(app, ["train", "--model", "resnet34", "--dataset", str(tmp_path / "nowhere"),
                            "--no-pretrained", "--device", "cpu", "--out", str(tmp_path / "r")])
    assert r.exit_code != 0  # the dataset does not exist: the option itself was accepted
    warning, error = r.stderr.strip().splitlines()
    assert warning.startswith("warning: --model is deprecated") and "--arch" in warning
    assert error.startswith("error:") and "nowhere" in error
    ctx = _all_commands()["train"].make_context("train", ["--model", "resnet34"])
    assert train_config(ctx).model == "resnet34"
    ctx = _all_commands()["train"].make_context("train", ["--arch", "resnet34"])
    assert train_config(ctx).model == "resnet34"
    r = runner.invoke(app, ["train", "--model", "resnet34", "--arch", "resnet34"])
    assert r.exit_code == 2 and "give only --arch" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["bench", "--model", "vgg16", "--device", "cpu", "--json"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and lines[0].startswith("warning: --model is deprecated")
    assert lines[-1].startswith("error: --arch 'vgg16'") and r.stdout == ""


def test_one_preset_vocabulary_for_train_and_ablate(tmp_path):
    import re

    from fercli.ablation import ablate
    from fercli.cli.train import train_config
    from fercli.train import config

    help_text = next(p.help for p in _all_commands()["train"].params if "--preset" in p.opts)
    for i, name in enumerate(config.PRESETS):  # the help states each preset's own settings
        start = help_text.index(f"{name}: ")
        end = min([help_text.index(f"{n}: ") for n in config.PRESETS[i + 1:]] + [len(help_text)])
        values = config.PRESET_VALUES[name]
        segment = help_text[start:end]
        assert f"batch {values['batch_size']}" in segment and f"{values['epochs']} epochs" in segment, name
        assert float(re.search(r"lr (\d[\d.e-]*)", segment).group(1)) == values["lr"], name
    for name in config.PRESETS:  # every name is a recipe for both commands
        recipe = ablate._recipe(ablate.AblateConfig(preset=name))
        assert recipe and not set(recipe) & set(ablate.LADDER_KEYS)  # each row keeps what it varies
        assert config.make_train_config(name).epochs == config.PRESET_VALUES[name]["epochs"]
    assert ablate._recipe(ablate.AblateConfig(preset="ckplus-transfer"))["label_smoothing"] == 0.1
    # The old ablate name keeps working, says so once, and means the same settings.
    ctx = _all_commands()["train"].make_context("train", ["--preset", "fast"])
    assert ctx.params["preset"] == "short" and train_config(ctx).epochs == 10
    r = runner.invoke(app, ["ablate", "--preset", "fast", "--dataset", str(tmp_path / "nowhere")])
    assert r.exit_code == 2
    warning, error = r.stderr.strip().splitlines()
    assert warning == "warning: --preset fast is deprecated; use --preset short (the same settings)"
    assert "does not exist" in error
    r = runner.invoke(app, ["train", "--preset", "fastest"])
    assert r.exit_code == 2 and "--preset 'fastest' is not one of: paper, short" in r.stderr
