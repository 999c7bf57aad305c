"""CLI layer: `fer train` / `fer evaluate` through Typer's CliRunner on tiny data, --version, help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_engine import make_ck_like, make_fer_like
from typer.testing import CliRunner

from fercli import __version__
from fercli.cli import app

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


@pytest.mark.parametrize("cmd,default", [("train", "[default: 30; paper preset: 200]"),
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
    r = runner.invoke(app, ["train", "--dataset", str(ds), "--arch", "resnet34", "--epochs", "1",
                            "--device", "cpu", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "resnet34-b627a593.pth" in lines[0] and "--no-pretrained" in lines[0]
    assert not (tmp_path / "r").exists()
