"""Offline first: without ImageNet weights a plain `fer train` trains from scratch with one
warning and says so in config.json; asked for (--pretrained, --preset paper) it refuses in one
line; `fer ablate --progress` never touches the network. No test here reaches the network:
every connection attempt is refused and counted."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.train.runs import NO_WEIGHTS_WARNING
from tests.fixtures import make_ck_like, make_fer_like

runner = CliRunner()
TINY = ["--arch", "resnet34", "--epochs", "1", "--batch-size", "8", "--train-subset", "16", "--device", "cpu"]


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """No weights in torch's cache, and every connection fails at once (and is recorded)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("FER_OFFLINE", raising=False)
    tried: list[tuple] = []

    def refuse(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        tried.append(address)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return tried


@pytest.fixture(scope="module")
def fer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fer_like(tmp_path_factory.mktemp("fer") / "fer")


def test_plain_train_offline_warns_once_and_trains_from_scratch_and_says_so(fer: Path, tmp_path: Path, offline):
    run = tmp_path / "r"
    r = runner.invoke(app, ["train", "--dataset", str(fer), *TINY, "--out", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert r.stderr.strip().splitlines() == [f"warning: {NO_WEIGHTS_WARNING}"]
    assert "--weights FILE" in NO_WEIGHTS_WARNING and "--no-pretrained" in NO_WEIGHTS_WARNING
    info = json.loads((run / "config.json").read_text())
    assert info["config"]["pretrained"] is False and info["training"] == "from scratch"
    assert info["pretrained_note"] == NO_WEIGHTS_WARNING and "--no-pretrained" in info["training_command"]
    assert offline  # it did look for a download, and took the refusal as "offline"


@pytest.mark.parametrize("asked", [["--pretrained"], ["--preset", "paper"]])
def test_asked_for_imagenet_weights_offline_is_refused_naming_both_ways_out(fer: Path, tmp_path: Path, offline,
                                                                            asked: list[str]):
    r = runner.invoke(app, ["train", "--dataset", str(fer), *TINY, *asked, "--out", str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ImageNet weights for resnet34 not found")
    assert "--weights FILE" in lines[0] and "--no-pretrained" in lines[0], lines[0]
    assert not (tmp_path / "r").exists() and r.stdout == ""


def test_no_pretrained_is_silent(fer: Path, tmp_path: Path, offline):
    r = runner.invoke(app, ["train", "--dataset", str(fer), *TINY, "--no-pretrained", "--out", str(tmp_path / "r"),
                            "-q"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert not offline  # nothing looked for


def test_pretrained_help_states_the_rule():
    text = " ".join(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).stdout.split())
    assert "Neither flag: ImageNet weights when at hand, else from scratch with one warning" in text
    assert "--pretrained (or --preset paper) refuses" in text


def test_ablate_progress_never_touches_the_network(tmp_path: Path, offline):
    ck = make_ck_like(tmp_path / "ck")
    r = runner.invoke(app, ["ablate", "--dataset", str(ck), "--out", str(tmp_path / "abl"), "--init-from", "none",
                            "--progress", "--json"])
    assert r.exit_code == 0, r.output
    assert offline == []
    weights = json.loads(r.stdout)["tables"][0]["weights"]
    assert weights["available"] is False and "--no-pretrained" not in weights["reason"]
    assert "--weights FILE" in weights["reason"]
    assert not (tmp_path / "abl").exists()  # it writes nothing
