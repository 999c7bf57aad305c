"""What a run's files take on disk: the estimate `fer train` prints and returns before the
first epoch, and --no-keep-last, which leaves a finished run with best.pt and its records only."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

from typer.testing import CliRunner

from fercli.cli import app
from fercli.train import checkpointing, runs
from fercli.train.config import train_command
from tests.fixtures import make_fer_like, tiny_cfg

runner = CliRunner()
Usage = namedtuple("Usage", "total used free")
ARGS = ["--arch", "resnet34", "--no-pretrained", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
        "--train-subset", "8"]


def test_train_prints_and_returns_a_disk_estimate_close_to_the_real_files(tmp_path: Path) -> None:
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    res = runner.invoke(app, ["train", "--dataset", str(ds), *ARGS, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())
    assert "disk: ~" in err and "for the checkpoints of the run on the disk of" in err and "MB free" in err
    assert "best.pt ~87 MB + last.pt ~257 MB" in err  # resnet34: fp32 weights, Adam's two moments
    res = runner.invoke(app, ["train", "--dataset", str(ds), *ARGS, "--out", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    (disk,) = json.loads(res.stdout)[0]["disk_estimate"]
    best, last = (tmp_path / "b" / "best.pt").stat().st_size, (tmp_path / "b" / "last.pt").stat().st_size
    assert 0.9 * best < disk["best_pt_bytes"] < 1.2 * best and 0.9 * last < disk["last_pt_bytes"] < 1.2 * last
    assert disk["kept_bytes"] >= best + last and disk["need_bytes"] > disk["kept_bytes"] and disk["fits"]
    assert disk["runs_keeping_only_best_pt"] == 0


def test_no_keep_last_leaves_best_pt_and_the_records(tmp_path: Path) -> None:
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--dataset", str(ds), *ARGS, "--out", str(out), "--no-keep-last", "-q"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert "last.pt" not in names and {"best.pt", "config.json", "history.csv", "train_summary.json"} <= names
    assert json.loads((out / "config.json").read_text())["config"]["keep_last"] is False
    res = runner.invoke(app, ["train", "--dataset", str(ds), *ARGS, "--out", str(out), "--resume", "--epochs", "2"])
    assert res.exit_code != 0 and "kept only best.pt" in res.stderr and len(res.stderr.splitlines()) == 1
    # A recipe read back from this run does not carry the storage choice along.
    assert "keep-last" not in train_command(json.loads((out / "config.json").read_text())["config"])


def test_the_estimate_counts_a_pruned_run_without_its_last_pt(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 0, 10**12))
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    keep = [runs.resolve_optimizer(tiny_cfg(ds, tmp_path / f"k{i}", seed=i), "fer2013") for i in range(3)]
    prune = [runs.resolve_optimizer(tiny_cfg(ds, tmp_path / f"p{i}", seed=i, keep_last=False), "fer2013")
             for i in range(3)]
    best, last = checkpointing.checkpoint_bytes(keep[0])
    (k,) = checkpointing.estimate_checkpoint_space(keep)
    (p,) = checkpointing.estimate_checkpoint_space(prune)
    assert k.kept_bytes - p.kept_bytes == 3 * last  # three last.pt fewer stay
    assert p.need_bytes == p.kept_bytes + 2 * last  # the one training holds last.pt and its temp copy
    assert "best.pt ~87 MB kept each; last.pt ~257 MB while it trains" in p.text()


def test_a_too_small_disk_refuses_a_pruned_run_up_front(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 300 * 10**6, 300 * 10**6))
    res = runner.invoke(app, ["train", "--dataset", str(ds), *ARGS, "--out", str(tmp_path / "run"), "--no-keep-last"])
    assert res.exit_code == 1, res.output
    (line,) = res.stderr.splitlines()
    assert line.startswith("error: not enough disk space for the run") and "300 MB free" in line
    assert "best.pt only is kept once a run finishes" in line
    assert not (tmp_path / "run").exists()
