"""fercli.train.jobs: whole runs as concurrent processes (--jobs 2 on the CPU), a killed and a failed
run that leave the others alone, resume that skips finished runs, --seeds from the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest
import torch
from typer.testing import CliRunner

from fercli.cli import app
from fercli.errors import FerError
from fercli.model import checkpoints
from fercli.train import jobs, launch
from tests.fixtures import make_fer_like, tiny_cfg


def test_two_at_a_time_with_a_killed_and_a_failed_run_then_resume(tmp_path):
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    cfgs = [tiny_cfg(ds, tmp_path / "runs" / name, batch_size=4, epochs=1, threads=1)
            for name in ("a", "b", "c")]
    cfgs[2] = tiny_cfg(tmp_path / "no-such-dataset", tmp_path / "runs" / "c", epochs=1)
    events = []
    peak = {"running": 0, "now": 0}

    def on_event(kind, info):
        events.append((kind, info))
        peak["now"] += 1 if kind == "job_start" else (-1 if info["status"] in ("done", "failed", "killed") else 0)
        peak["running"] = max(peak["running"], peak["now"])
        if kind == "job_start" and info["name"].endswith("b"):
            os.kill(info["pid"], signal.SIGKILL)  # a run killed mid-flight

    rep = jobs.run_configs(cfgs, jobs=2, devices=("cpu",), on_event=on_event)
    status = {r.name.split("/")[-1]: r for r in rep["results"]}
    assert status["a"].status == "done" and status["a"].images == 8
    assert status["b"].status == "killed" and status["b"].returncode == -signal.SIGKILL
    assert status["c"].status == "failed" and "no-such-dataset" in status["c"].error
    assert "Traceback" not in (tmp_path / "runs" / "c.log").read_text()  # one-line error
    assert peak["running"] == 2  # two ran side by side, never more
    assert rep["failed"] == 2 and rep["images"] == 8 and rep["img_per_s"] > 0
    a_weights = checkpoints.load_checkpoint(tmp_path / "runs" / "a" / "last.pt")["model"]

    # Again: the finished run is skipped (not retrained), the killed one runs.
    rep2 = jobs.run_configs(cfgs[:2], jobs=2, devices=("cpu",))
    s2 = {r.name.split("/")[-1]: r for r in rep2["results"]}
    assert s2["a"].status == "skipped" and s2["a"].mode == "finished"
    assert s2["b"].status == "done" and s2["b"].mode in ("fresh", "restart")
    again = checkpoints.load_checkpoint(tmp_path / "runs" / "a" / "last.pt")["model"]
    assert all(torch.equal(a_weights[k], again[k]) for k in a_weights)


def test_plan_resumes_from_last_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path / "fer", tmp_path / "run")
    assert jobs._plan(cfg, force=False)[0] == "fresh"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    mode, c = jobs._plan(cfg, force=False)
    assert mode == "restart" and c.force
    (tmp_path / "run" / "last.pt").write_bytes(b"x")
    mode, c = jobs._plan(cfg, force=False)
    assert mode == "resume" and c.resume and not c.force
    assert jobs._plan(cfg, force=True)[0] == "fresh"
    (tmp_path / "run" / jobs.SUMMARY).write_text("{}")
    assert jobs._plan(cfg, force=False)[0] == "finished"
    mode, c = jobs._plan(dataclasses.replace(cfg, force=True), force=False)  # fer ablate's reruns
    assert mode == "fresh" and c.force and not c.resume


def test_cli_seeds_run_concurrently_with_distinct_seeds(tmp_path):
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    res = CliRunner().invoke(app, ["train", "--dataset", str(ds), "--arch", "resnet34", "--no-pretrained",
                                   "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1",
                                   "--seeds", "0,1", "--jobs", "2", "--out", str(tmp_path / "multi"), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert [r["status"] for r in rep["results"]] == ["done", "done"]
    seeds = [json.loads((tmp_path / "multi" / f"seed-{s}" / "config.json").read_text())["seed"] for s in (0, 1)]
    assert seeds == [0, 1]
    w = [checkpoints.load_checkpoint(tmp_path / "multi" / f"seed-{s}" / "best.pt")["model"] for s in (0, 1)]
    assert not all(torch.equal(w[0][k], w[1][k]) for k in w[0])  # really different seeds


@pytest.mark.parametrize("text", ["cuda:x", "gpu", ","])
def test_bad_devices_are_errors(text):
    with pytest.raises(FerError, match="--devices"):
        launch.parse_devices(text)


def test_bad_seeds_are_errors():
    with pytest.raises(FerError, match="--seeds"):
        launch.parse_seeds("0,0")
    assert launch.parse_seeds("0, 1,2") == (0, 1, 2)


def test_fold_all_with_jobs_writes_every_fold_and_the_kfold_index(tmp_path):
    from tests.fixtures import make_ck_like

    ds = make_ck_like(tmp_path / "ck")
    cfg = tiny_cfg(ds, tmp_path / "kfold", batch_size=4, epochs=1, fold=-1, threads=1)
    rep = jobs.train_many(cfg, jobs=2, devices=("cpu",))
    assert [r.status for r in rep["results"]] == ["done"] * 3
    index = json.loads((tmp_path / "kfold" / "kfold.json").read_text())
    assert index["folds"] == 3
    for k in range(3):  # each fold tested on its own fold, like runs.train's --fold all
        info = json.loads((tmp_path / "kfold" / f"fold-{k}" / "config.json").read_text())
        assert info["config"]["fold"] == k and info["dataset"]["test_split"] == f"fold{k}"
