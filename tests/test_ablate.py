"""`fer ablate`: the paper's tables, and a tiny from-scratch ladder on a small CK+ fixture."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercli import paper
from fercli.ablation import ablate
from fercli.cli import app
from fercli.data.ingest import prepare_ckplus
from fercli.errors import FerError
from fercli.train import launch
from tests.fixtures import make_ckplus48_tree

runner = CliRunner()


def test_paper_tables_print_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["ablate", "--paper"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    for text in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "77.65", "98.82", "70.55", "74.29",
                 "97.81", "GARAN [35]", "ResNet34 (baseline)", "ResNet34_Pretrain_BCN_GC", "81.8", paper.URL):
        assert text in out, text
    assert "not transcribed" not in out  # every cell of Tables 1-5 is filled
    assert not (tmp_path / "runs").exists()  # nothing ran
    data = json.loads(runner.invoke(app, ["ablate", "--paper", "--json"]).stdout)
    t5 = next(t for t in data["tables"] if t["number"] == 5)
    rows = {r["name"]: r for r in t5["rows"]}
    assert rows["ResNet34_Pretrain_BCN_GC"]["fer2013"] == {"value": 77.65, "source": "Table 5"}
    assert rows["ResNet34_Pretrain"]["ck+"]["value"] == 97.98
    assert [t["number"] for t in data["per_class_tables"]] == [1, 2]


def test_paper_tables_hold_every_row_of_tables_3_to_5() -> None:
    assert [len(t.rows) for t in paper.TABLES] == [9, 8, 4]
    assert all(c.value is not None and c.source for t in paper.TABLES for r in t.rows for c in r.cells.values())


def test_seeds_and_settings_are_checked(tmp_path: Path) -> None:
    assert launch.parse_seeds("0, 1,2") == (0, 1, 2)
    for bad in ("", "a,b", "1,1"):
        with pytest.raises(FerError):
            launch.parse_seeds(bad)
    res = runner.invoke(app, ["ablate", "--dataset", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ck")
    src = make_ckplus48_tree(root / "src")
    return prepare_ckplus(src, out=root / "ck").out


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("train_summary.json"))}


@pytest.mark.slow
def test_tiny_ablation_runs_caches_and_resumes(tiny_ck: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights
    out = tmp_path / "abl"
    args = ["ablate", "--dataset", str(tiny_ck), "--epochs", "1", "--train-subset", "8", "--batch-size", "4",
            "--folds-limit", "1", "--seeds", "0", "--device", "cpu", "--out", str(out)]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["runs"] == {"total": 4, "cached": 0}  # the FER2013-pretrained ladder: 4 rows × 1 fold
    est = result["estimate"]
    assert est["runs_to_train"] == 4 and est["seconds"] > 0 and set(est["per_row_seconds"]) == {
        "ResNet34", "ResNet34_FER2013Pretrain", "ResNet34_FER2013Pretrain_BCN", "ResNet34_FER2013Pretrain_BCN_GC"}
    (table,) = result["tables"]
    assert table["dataset"] == "ck+" and table["ladder"] == ablate.FER2013_LABEL
    assert table["pretrained_means"].startswith("FER2013-pretrained: the trunk of the shipped from-scratch")
    assert table["folds"]["used"] == 1 and "first 1 of" in table["folds"]["label"]
    assert table["weights"]["available"] is False and "weights" in table["weights"]["reason"].lower()
    rows = {r["name"]: r for r in table["rows"]}
    assert list(rows) == ["ResNet34", "ResNet34_FER2013Pretrain", "ResNet34_FER2013Pretrain_BCN",
                          "ResNet34_FER2013Pretrain_BCN_GC"]
    assert [r["paper_row"] for r in rows.values()] == [r.name for r in ablate.PAPER_LADDER]
    assert [r["paper_pct"] for r in rows.values()] == [97.81, 97.98, 98.31, 98.82]
    for name, r in rows.items():
        assert r["status"] == "done" and r["n_runs"] == 1 and r["folds_done"] == 1 and 0 <= r["ours_mean_pct"] <= 100
        assert r["runs"][0]["split"] == "fold0" and r["runs"][0]["status"] == "trained"
        info = json.loads((Path(r["runs"][0]["run_dir"]) / "config.json").read_text())
        if name == "ResNet34":
            assert r["training"] == "from scratch" and info["training"] == "from scratch"
        else:  # FER2013-pretrained: the shipped model's trunk in every trunk
            assert r["training"] == "FER2013-pretrained" and info["training"] == "FER2013-pretrained"
            trunks = 2 if name.endswith(("_BCN", "_BCN_GC")) else 1
            assert info["init_from"]["ref"] == "default" and info["init_from"]["tensors_copied"] % trunks == 0
            assert r["shared_backbone"] is False
    assert rows["ResNet34_FER2013Pretrain_BCN"]["optimizer"] == "adam"
    assert rows["ResNet34_FER2013Pretrain_BCN_GC"]["optimizer"] == "adam-gc"
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["tables"][0]["rows"][0]["ours_mean_pct"] == rows["ResNet34"]["ours_mean_pct"]
    csv_rows = list(csv.DictReader(io.StringIO((out / "ablation.csv").read_text())))
    assert [r["row"] for r in csv_rows] == list(rows)
    assert {r["training"] for r in csv_rows[1:]} == {"FER2013-pretrained"}

    # The disk the ladder needs was said (and checked) before it trained: 4 runs that keep only
    # best.pt once finished, which is what each run directory holds now (no last.pt).
    (disk,) = result["disk"]
    assert disk["runs"] == 4 and disk["runs_keeping_only_best_pt"] == 4 and disk["fits"]
    best_files = [Path(r["runs"][0]["run_dir"]) / "best.pt" for r in rows.values()]
    assert all(p.is_file() and not p.with_name("last.pt").exists() for p in best_files)
    assert all((p.parent / "train_summary.json").is_file() for p in best_files)
    real = sum(p.stat().st_size for p in best_files)
    assert 0.8 * real < disk["kept_bytes"] < 1.5 * real, (disk, real)
    assert disk["need_bytes"] > disk["kept_bytes"] + disk["last_pt_bytes"]  # + last.pt and its temp while training

    # Rerun: everything comes from the cache (finished runs without last.pt), nothing is
    # retrained, no estimate is needed.
    before = _mtimes(out)
    assert len(before) == 4
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert _mtimes(out) == before
    err = " ".join(res.stderr.split())  # independent of line wrapping
    assert "4 of 4 runs reused" in err and "expected wall time" not in err
    text = " ".join(res.stdout.split())
    assert "FER2013-pretrained ladder" in text and "ImageNet weights for resnet34 not found" in text
    assert "'pretrained' = FER2013-pretrained" in text

    # --keep-last keeps a finished run's last.pt (only the removed run trains again).
    run = out / "ResNet34_FER2013Pretrain_BCN" / "seed0" / "fold0"
    shutil.rmtree(run)
    res = runner.invoke(app, [*args, "--keep-last", "--json", "--no-estimate"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["runs"] == {"total": 4, "cached": 3} and (run / "last.pt").is_file()

    # An interrupted run (last.pt but no summary) is resumed, not restarted: with --jobs 2 by a
    # scheduler child (the only run that needs training), and reported as resumed, not cached.
    (run / "train_summary.json").unlink()
    (run / "metrics.json").unlink()
    res = runner.invoke(app, [*args, "--jobs", "2", "--json", "--no-estimate"])
    assert res.exit_code == 0, res.output
    runs = {r["name"]: r["runs"] for r in json.loads(res.stdout)["tables"][0]["rows"]}
    assert runs["ResNet34_FER2013Pretrain_BCN"][0]["status"] == "resumed"
    assert runs["ResNet34"][0]["status"] == "cached"
    assert (run.parent / f"{run.name}.log").is_file() and (run / "train_summary.json").is_file()
    assert not (out / "ResNet34" / "seed0" / "fold0.log").exists()  # cached runs start no child
    assert json.loads((run / "config.json").read_text())["resumes"]  # resumed, not started over
    # read as its child ended: the table's accuracy is the metrics.json written then
    assert runs["ResNet34_FER2013Pretrain_BCN"][0]["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]

    # A cached run is reused only if config, dataset sha256 and code version agree.
    cfg = ablate.AblateConfig(dataset=str(tiny_ck), epochs=1, train_subset=8, batch_size=4, seeds=(0,), device="cpu")
    ck = ablate._resolve_datasets(str(tiny_ck))[0]
    tcfg = ablate._train_config(cfg, ck, ablate.FER2013_LADDER[2], 0, 0, run)
    assert ablate._reuse_problem(run, tcfg, ck.sha256) is None
    assert "dataset sha256" in ablate._reuse_problem(run, tcfg, "0" * 64)
    cfg_json = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg_json, "code_version": "0" * 40}))
    assert "trained by code 0000" in ablate._reuse_problem(run, tcfg, ck.sha256)
    assert ablate.config_problem(run, tcfg, ck.sha256) is None  # --progress still shows it, by that code
    (run / "config.json").unlink()
    assert "no readable config.json" in ablate._reuse_problem(run, tcfg, ck.sha256)

    # Different settings never silently reuse a cached run: it is retrained, and says why.
    # (--jobs children start such a run afresh: tests/test_jobs.py::test_plan_resumes_from_last_checkpoint.)
    before = _mtimes(out)
    res = runner.invoke(app, [*args, "--lr", "0.01", "--init-from", "none", "--json", "--no-estimate"])
    assert res.exit_code == 0, res.output
    runs = {r["name"]: r["runs"] for r in json.loads(res.stdout)["tables"][0]["rows"]}
    assert runs["ResNet34"][0]["status"] == "rerun" and "lr=" in runs["ResNet34"][0]["rerun_reason"]
    for name in ("ResNet34_BCN", "ResNet34_BCN_GC"):  # the from-scratch ladder: new directories
        assert runs[name][0]["status"] == "trained", runs[name]
    key = "ResNet34/seed0/fold0/train_summary.json"
    assert _mtimes(out)[key] != before[key]  # really retrained
    assert json.loads(res.stdout)["runs"] == {"total": 3, "cached": 0}  # retrained now: never "cached"


def test_fer2013_ladder_is_planned_for_ckplus_without_imagenet(tiny_ck: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights
    cfg = ablate.AblateConfig(dataset=str(tiny_ck), seeds=(0,), device="cpu", out=str(tmp_path / "o"))
    plan = ablate.plan_ablation(cfg)
    assert not plan.weights_ok and cfg.init_from == "default"
    k = plan.datasets[0].num_folds
    # Fold by fold: every row of fold 0 before any of fold 1.
    assert [(r.fold, r.rung.name) for r in plan.runs[:5]] == [
        (0, "ResNet34"), (0, "ResNet34_FER2013Pretrain"), (0, "ResNet34_FER2013Pretrain_BCN"),
        (0, "ResNet34_FER2013Pretrain_BCN_GC"), (1, "ResNet34")]
    assert len(plan.runs) == 4 * k
    got = {r.rung.name: (r.tcfg.model, r.tcfg.init_from, r.tcfg.shared_backbone, r.tcfg.pretrained, r.tcfg.optimizer)
           for r in plan.runs if r.fold == 0}
    assert got == {"ResNet34": ("resnet34", None, False, False, "adam"),
                   "ResNet34_FER2013Pretrain": ("resnet34", "default", False, False, "adam"),
                   "ResNet34_FER2013Pretrain_BCN": ("bcnn-resnet34", "default", False, False, "adam"),
                   "ResNet34_FER2013Pretrain_BCN_GC": ("bcnn-resnet34", "default", False, False, "adam-gc")}
    same = {(r.tcfg.epochs, r.tcfg.batch_size, r.tcfg.lr, r.tcfg.schedule) for r in plan.runs}
    assert len(same) == 1  # one recipe for every row
    # --init-from none, or a dataset with fixed splits: the from-scratch ladder.
    scratch = ablate.plan_ablation(dataclasses.replace(cfg, init_from=None))
    assert {r.rung.name for r in scratch.runs} == {"ResNet34", "ResNet34_BCN", "ResNet34_BCN_GC"}
    fer = ablate._Dataset(key="fer2013", ref="fer2013", path=tmp_path, kfold=False, num_folds=0, sha256="",
                          paper_optimizer="adamw-gc", label="FER2013 %")
    assert ablate._ladder(cfg, fer, False)[1] == ablate.SCRATCH_LABEL
    assert ablate._ladder(cfg, plan.datasets[0], True) == (ablate.PAPER_LADDER, "paper")


def _fake_done_run(run: ablate.PlannedRun, accuracy: float | None, code: str = "c0de", epochs_done: int = 0,
                   device: str = "cpu (x86_64, 1 threads)") -> None:
    """A run directory as `fer train` + `fer evaluate` leave it: finished with `accuracy`, or
    (None) interrupted after `epochs_done` epochs."""
    d = run.run_dir
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config": dataclasses.asdict(run.tcfg), "code_version": code,
                                               "dataset": {"sha256": run.ds.sha256}, "device": device,
                                               "precision": "fp32", "torch_version": "2.14.1",
                                               "started": "2026-12-07T00:40:21+00:00"}))
    if accuracy is None:
        (d / "history.csv").write_text("epoch,val_acc\n" + "".join(f"{e},0.5\n" for e in range(1, epochs_done + 1)))
        return
    (d / "train_summary.json").write_text(json.dumps({"seconds": 120.0, "best_epoch": 3}))
    (d / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "split": f"fold{run.fold}", "best_epoch": 3}))


def test_partial_ladder_progress_prints_done_rows_and_pending_without_training(
        tiny_ck: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights
    out = tmp_path / "abl"
    cfg = ablate.AblateConfig(dataset=str(tiny_ck), epochs=10, device="cpu", out=str(out))
    plan = ablate.plan_ablation(cfg)
    k = plan.datasets[0].num_folds
    by = {(r.rung.name, r.fold): r for r in plan.runs}
    # Two whole folds of rows 1-2, one fold of row 3, row 3's fold 1 interrupted at epoch 4, row 4 pending.
    for fold, accs in ((0, (0.80, 0.90, 0.95)), (1, (0.60, 0.70, None))):
        for name, acc in zip(("ResNet34", "ResNet34_FER2013Pretrain", "ResNet34_FER2013Pretrain_BCN"), accs,
                             strict=True):
            _fake_done_run(by[(name, fold)], acc, epochs_done=4)
    before = sorted(str(p) for p in out.rglob("*"))
    res = runner.invoke(app, ["ablate", "--dataset", str(tiny_ck), "--epochs", "10", "--device", "cpu",
                              "--out", str(out), "--progress", "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(str(p) for p in out.rglob("*")) == before  # nothing trained, nothing written
    result = json.loads(res.stdout)
    (table,) = result["tables"]
    rows = {r["name"]: r for r in table["rows"]}
    r1, r2, r3, r4 = (rows[r.name] for r in ablate.FER2013_LADDER)
    assert (r1["status"], r1["folds_done"], r1["n_planned"]) == ("partial", 2, k)
    assert r1["per_fold_pct"] == {"0": pytest.approx(80.0), "1": pytest.approx(60.0)}
    assert r1["ours_mean_pct"] == pytest.approx(70.0) and r1["ours_std_pct"] == pytest.approx(10.0)
    assert r2["ours_mean_pct"] == pytest.approx(80.0) and r2["ours_std_pct"] == pytest.approx(10.0)
    assert r2["change_pp"] == pytest.approx(10.0) and r2["change_exceeds_std"] is False  # 10 is not > 10
    assert r2["paper_change_pp"] == pytest.approx(97.98 - 97.81)
    assert (r3["status"], r3["folds_done"], r3["ours_mean_pct"]) == ("partial", 1, pytest.approx(95.0))
    # Paired on the folds both rows have (fold 0: 95 − 90), not 95 − row 2's two-fold mean; one fold: no std.
    assert r3["change_pp"] == pytest.approx(5.0) and r3["change_folds"] == 1 and r3["change_exceeds_std"] is None
    assert r2["change_folds"] == 2
    assert (r4["status"], r4["n_runs"], r4["ours_mean_pct"], r4["change_pp"]) == ("pending", 0, None, None)
    # Rows 1-2 have two folds, row 4 none: the heading says both ends, not just "0 of all k done".
    assert table["folds"]["done_every_row"] == 0 and table["folds"]["done_some_row"] == 2
    assert table["folds"]["label"] == f"0–2 of all {k} folds done, by row"
    prog = result["progress"]
    assert prog["counts"] == {"done": 5, "started": 1, "pending": 4 * k - 6} and prog["code_versions"] == ["c0de"]
    started = next(st for st in prog["runs"] if st["state"] == "started")
    assert (started["row"], started["fold"], started["epochs_done"]) == ("ResNet34_FER2013Pretrain_BCN", 1, 4)

    res = runner.invoke(app, ["ablate", "--dataset", str(tiny_ck), "--epochs", "10", "--device", "cpu",
                              "--out", str(out), "--progress"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "pending" in text and "(partial)" in text and f"2/{k}" in text and f"1/{k}" in text
    assert f"0–2 of all {k} folds done, by row" in text and f"0 of all {k} folds done" not in text
    assert "70.00 ± 10.00" in text and "+10.00 (+0.17)" in text
    assert "FER2013-pretrained ladder" in text and "ImageNet weights for resnet34 not found" in text
    # on an 80-column console every column is there (Rich, left to fit 80, squeezes the row names
    # and the paper's column to nothing): each row by name, beside the paper's number
    from fercli.cli import report

    monkeypatch.setattr(report.console, "_width", 80)
    res = runner.invoke(app, ["ablate", "--dataset", str(tiny_ck), "--epochs", "10", "--device", "cpu",
                              "--out", str(out), "--progress"])
    for row, paper_pct in (("ResNet34", "97.81"), ("ResNet34_FER2013Pretrain_BCN_GC", "98.82")):
        assert re.search(rf"│ {row} +│ [^│]+│ +{paper_pct} │", res.stdout), row
    assert "ResNet34_FER2013Pretrain_BCN seed 0 fold 1: epoch 4/10" in text
    assert "trained by code c0de" in text  # runs by other code are shown, and named
    assert not (tmp_path / "runs").exists()


def test_estimate_scales_timed_steps_and_warns_over_an_hour(tiny_ck: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from fercli.ablation import ablate_estimate

    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cfg = ablate.AblateConfig(dataset=str(tiny_ck), epochs=10, batch_size=4, folds_limit=2, device="cpu",
                              out=str(tmp_path / "o"))
    plan = ablate.plan_ablation(cfg)
    timed: list[str] = []

    def fake_step(run: ablate.PlannedRun, classes: int, steps: int) -> float:
        timed.append(run.tcfg.model)
        return 2.0 if run.tcfg.model == "bcnn-resnet34" else 1.0

    monkeypatch.setattr(ablate_estimate, "_time_step", fake_step)
    train, val = ablate_estimate.split_sizes(plan.runs[0])
    manifest = json.loads((tiny_ck / "manifest.json").read_text())
    n, kf = manifest["num_images"], manifest["num_folds"]
    assert (train, val) == (n * (kf - 2) // kf, n // kf)
    per_epoch = math.ceil(train / 4) + val / 4 / 3  # train steps + the selection pass (a third of a step)
    statuses = ["trained"] * len(plan.runs)
    statuses[0] = "cached"  # ResNet34 fold 0 is done: not counted
    est = ablate_estimate.estimate_wall_time(plan.runs, statuses, "cpu")
    assert timed == ["resnet34", "bcnn-resnet34", "bcnn-resnet34"]  # once per architecture × optimizer
    assert est["per_row_seconds"]["ResNet34"] == pytest.approx(10 * per_epoch * 1.0)  # one fold left
    assert est["per_row_seconds"]["ResNet34_FER2013Pretrain_BCN_GC"] == pytest.approx(2 * 10 * per_epoch * 2.0)
    assert est["seconds"] == pytest.approx(10 * per_epoch * (1 + 2 + 2 * 2 + 2 * 2))
    assert est["runs_to_train"] == 7 and est["over_an_hour_on_cpu"] is (est["seconds"] > 3600)
    monkeypatch.setattr(ablate_estimate, "_time_step", lambda run, classes, steps: 600.0)
    slow = ablate_estimate.estimate_wall_time(plan.runs, statuses, "cpu")
    assert slow["over_an_hour_on_cpu"] and "--folds-limit" in slow["advice"] and "GPU" in slow["advice"]
    # A resumed run counts only the epochs it has left.
    ablate_estimate_runs = plan.runs[:1]
    _fake_done_run(plan.runs[0], None, epochs_done=7)
    resumed = ablate_estimate.estimate_wall_time(ablate_estimate_runs, ["resumed"], "cpu")
    assert resumed["seconds"] == pytest.approx(3 * per_epoch * 600.0)


def test_cli_prints_the_estimate_before_training(tiny_ck: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fercli.ablation import ablate_estimate

    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(ablate_estimate, "_time_step", lambda run, classes, steps: 400.0)
    order: list[str] = []
    monkeypatch.setattr(ablate, "_run_one", lambda *a, **k: (order.append("train"), {
        "seed": 0, "fold": a[4]["fold"], "run_dir": str(a[2]), "status": "trained", "accuracy": 0.5,
        "split": "fold0", "best_epoch": 1, "rerun_reason": None})[1])
    res = runner.invoke(app, ["ablate", "--dataset", str(tiny_ck), "--epochs", "10", "--folds-limit", "1",
                              "--device", "cpu", "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())
    assert "expected wall time: about" in err and "for 4 of 4 runs on cpu" in err
    assert "warning: about" in err and "h on the CPU" in err and "It runs anyway" in err
    assert order == ["train"] * 4  # it still runs
    assert err.index("expected wall time") < err.index("wrote ")


def test_interrupted_ladder_prints_what_it_has(tiny_ck: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "o"
    plan = ablate.plan_ablation(ablate.AblateConfig(dataset=str(tiny_ck), epochs=10, folds_limit=2, device="cpu",
                                                    out=str(out)))
    _fake_done_run(plan.runs[0], 0.75)  # ResNet34 fold 0 finished earlier

    def stop(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ablate, "_run_one", stop)
    res = runner.invoke(app, ["ablate", "--dataset", str(tiny_ck), "--epochs", "10", "--folds-limit", "2",
                              "--device", "cpu", "--out", str(out), "--no-estimate", "--quiet"])
    assert res.exit_code == 130, res.output
    assert "interrupted: finished runs are kept" in " ".join(res.stderr.split())
    text = " ".join(res.stdout.split())
    assert "75.00 (partial)" in text and "1/2" in text and text.count("pending │") == 3  # rows 2-4
    assert not (out / "ablation.json").exists()  # no partial file: --progress reads the runs themselves


def test_changes_without_folds_compare_means_and_skip_unavailable_rows() -> None:
    from fercli.ablation import ladder

    def row(mean: float | None, std: float | None, n: int, status: str = "done") -> dict:
        return {"status": status, "ours_mean_pct": mean, "ours_std_pct": std, "n_runs": n, "per_fold_pct": None,
                "paper_pct": None}

    rows = [row(60.0, 1.0, 3), row(None, None, 0, ablate.WEIGHTS_UNAVAILABLE), row(62.5, 2.0, 3), row(63.0, 1.5, 3),
            row(70.0, None, 1)]
    ladder.add_changes(rows)
    assert rows[1]["change_pp"] is None  # not run: skipped, the next row compares with the one before it
    assert rows[2]["change_pp"] == pytest.approx(2.5) and rows[2]["change_exceeds_std"] is True  # 2.5 > max(1, 2)
    assert rows[3]["change_pp"] == pytest.approx(0.5) and rows[3]["change_exceeds_std"] is False
    assert rows[4]["change_pp"] == pytest.approx(7.0) and rows[4]["change_exceeds_std"] is None  # one seed: no std


def test_fold_heading_counts_the_rows_ahead_not_only_the_slowest() -> None:
    from fercli.ablation.ladder import folds_label

    assert folds_label(10, 10, 0, 1) == "0–1 of all 10 folds done, by row"  # two rows at 1/10, two at 0/10
    assert folds_label(10, 10, 1, 1) == "1 of all 10 folds done"
    assert folds_label(3, 10, 3, 3) == "first 3 of 10 folds (--folds-limit)"
    assert folds_label(4, 10, 2, 3, ids=[3, 4, 5, 7]) == "2–3 of folds 3–5, 7 of 10 (--folds) done, by row"
    assert folds_label(10, 10, 10, 10, ids=list(range(10))) == "all 10 folds"
    assert folds_label(1, 10, 1, 1, ids=[3]) == "fold 3 of 10 (--folds)"


def test_jobs_read_each_test_fold_as_its_run_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_evaluate(ecfg: object) -> dict:
        calls.append(ecfg.target)  # type: ignore[attr-defined]
        if ecfg.target == "bad":  # type: ignore[attr-defined]
            raise FerError("bad: no best.pt")
        return {"accuracy": 0.9}

    monkeypatch.setattr(ablate, "evaluate_target", fake_evaluate)
    seen: list[str] = []
    evaluated: dict[str, dict] = {}
    on_event = ablate._evaluate_finished_job(ablate.AblateConfig(device="cpu"), lambda k, i: seen.append(k), evaluated)
    for status, out in (("done", "a"), ("skipped", "b"), ("failed", "c"), ("killed", "d"), ("done", "bad")):
        on_event("job_end", {"status": status, "out": out})
    on_event("job_start", {"name": "e"})
    assert calls == ["a", "bad"] and evaluated == {"a": {"accuracy": 0.9}}  # a failed one is left to _run_one
    assert seen == ["job_end"] * 5 + ["job_start"]  # every event still reaches the progress display


def test_folds_parse_ranges_and_lists() -> None:
    assert launch.parse_folds("3-5, 8") == (3, 4, 5, 8)
    assert launch.parse_folds("9,0") == (0, 9) and launch.parse_folds(None) is None
    for bad in ("", "a", "5-3", "1,1", "2-4,3", "-1"):
        with pytest.raises(FerError):
            launch.parse_folds(bad)


def test_ladder_in_parts_of_whole_folds_reads_as_one_table(tiny_ck: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights
    out = tmp_path / "abl"
    k = ablate.plan_ablation(ablate.AblateConfig(dataset=str(tiny_ck), epochs=10, device="cpu",
                                                 out=str(out))).datasets[0].num_folds
    part = ablate.plan_ablation(ablate.AblateConfig(dataset=str(tiny_ck), epochs=10, device="cpu", out=str(out),
                                                    folds=(1, 2)))
    assert sorted({r.fold for r in part.runs}) == [1, 2] and len(part.runs) == 8  # whole folds: every row
    names = [r.name for r in ablate.FER2013_LADDER]
    # part one (fold 0) by one code on one machine, part two (folds 1-2) by another
    first = ablate.plan_ablation(ablate.AblateConfig(dataset=str(tiny_ck), epochs=10, device="cpu", out=str(out),
                                                     folds=(0,)))
    for r in first.runs:
        _fake_done_run(r, 0.70 + 0.05 * names.index(r.rung.name), code="aaaa", device="cpu (x86_64, 1 threads)")
    for r in part.runs:
        _fake_done_run(r, 0.60 + 0.05 * names.index(r.rung.name) + 0.01 * r.fold, code="bbbb",
                       device="cuda (NVIDIA H200)")
    base = ["ablate", "--dataset", str(tiny_ck), "--epochs", "10", "--device", "cpu", "--out", str(out)]
    res = runner.invoke(app, [*base, "--folds", "1-2", "--progress", "--json"])
    assert res.exit_code == 0, res.output
    (table,) = json.loads(res.stdout)["tables"]
    assert table["folds"]["ids"] == [1, 2] and table["folds"]["label"] == f"folds 1–2 of {k} (--folds)"
    assert [r["folds_done"] for r in table["rows"]] == [2] * 4
    # the whole ladder's view reads both parts: three folds in every row, each run naming its code and machine
    res = runner.invoke(app, [*base, "--progress", "--json"])
    assert res.exit_code == 0, res.output
    (table,) = json.loads(res.stdout)["tables"]
    assert [r["folds_done"] for r in table["rows"]] == [3] * 4
    assert [s["n"] for s in table["steps"]] == [3] * 3
    assert [s["mean_diff"] for s in table["steps"]] == [pytest.approx(5.0)] * 3
    runs = {r["fold"]: r for r in table["rows"][0]["runs"]}
    assert (runs[0]["code_version"], runs[0]["device"]) == ("aaaa", "cpu (x86_64, 1 threads)")
    assert (runs[2]["code_version"], runs[2]["device"], runs[2]["precision"]) == ("bbbb", "cuda (NVIDIA H200)", "fp32")
    for bad, why in ((["--folds", str(k)], f"has folds 0–{k - 1}"),
                     (["--folds", "1", "--folds-limit", "2"], "give one"),
                     (["--folds", "x"], "fold ids or ranges")):
        res = runner.invoke(app, [*base, *bad, "--progress"])
        assert res.exit_code != 0 and why in " ".join(res.stderr.split()) and "Traceback" not in res.output, bad



def test_ablate_shows_each_step_paired_fold_by_fold(tiny_ck: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached ImageNet weights
    out = tmp_path / "abl"
    cfg = ablate.AblateConfig(dataset=str(tiny_ck), epochs=10, folds_limit=4, device="cpu", out=str(out))
    plan = ablate.plan_ablation(cfg)
    by = {(r.rung.name, r.fold): r for r in plan.runs}
    names = [r.name for r in ablate.FER2013_LADDER]
    # rows finished different folds: each step pairs only the folds both rows have
    accs = {names[0]: {0: 0.80, 1: 0.70, 2: 0.60, 3: 0.90}, names[1]: {0: 0.81, 1: 0.72, 2: 0.63},
            names[2]: {1: 0.75, 2: 0.60, 3: 0.95}, names[3]: {3: 0.96}}
    for name, folds in accs.items():
        for fold, acc in folds.items():
            _fake_done_run(by[(name, fold)], acc)
    args = ["ablate", "--dataset", str(tiny_ck), "--epochs", "10", "--folds-limit", "4", "--device", "cpu",
            "--out", str(out)]
    res = runner.invoke(app, [*args, "--progress", "--json"])  # reads the runs on disk, trains nothing
    assert res.exit_code == 0, res.output
    (table,) = json.loads(res.stdout)["tables"]
    s1, s2, s3 = table["steps"]
    assert [(s["from"], s["to"]) for s in table["steps"]] == list(zip(names[:-1], names[1:], strict=True))
    # 1, 2, 3 points: mean 2, sd 1, t = 2√3 on 2 df (p = 1 − √(6/7)), all three positive (Wilcoxon 2/8)
    assert (s1["n"], s1["folds"], s1["paired_on"]) == (3, ["0", "1", "2"], "folds")
    assert s1["mean_diff"] == pytest.approx(2.0)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert s1["ci95"] == pytest.approx([2 - half, 2 + half])
    assert s1["t_p"] == pytest.approx(1 - math.sqrt(6 / 7)) and s1["wilcoxon_p"] == pytest.approx(0.25)
    assert s1["paper_step"] == pytest.approx(97.98 - 97.81)
    assert (s2["folds"], s2["mean_diff"], s2["t_p"], s2["wilcoxon_p"]) == (["1", "2"], pytest.approx(0.0),
                                                                           pytest.approx(1.0), 1.0)
    assert (s3["n"], s3["folds"], s3["ci95"], s3["t_p"]) == (1, ["3"], None, None) and "at least 2" in s3["note"]
    assert s3["mean_diff"] == pytest.approx(1.0)

    res = runner.invoke(app, [*args, "--progress"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "Paired steps on ck+" in text and "fold by fold" in text
    assert f"[{2 - half:+.2f}, {2 + half:+.2f}]" in text and "0.074" in text and "+0.17" in text
    assert re.search(rf"{names[3]} │ {names[2]} │ +1 │ +\+1\.00 │ +— │", text), text

    # a whole ladder (runs faked) writes the steps into ablation.json beside the keys it had
    monkeypatch.setattr(ablate, "_run_one", lambda *a, **k: {
        "seed": 0, "fold": a[4]["fold"], "run_dir": str(a[2]), "status": "cached", "split": "fold",
        "accuracy": 0.5 + 0.01 * a[4]["fold"] + 0.02 * names.index(a[4]["row"]), "best_epoch": 1,
        "rerun_reason": None})
    res = runner.invoke(app, [*args, "--no-estimate", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    written = json.loads((out / "ablation.json").read_text())["tables"][0]
    assert written["steps"] == json.loads(res.stdout)["tables"][0]["steps"]
    assert [(s["n"], s["mean_diff"]) for s in written["steps"]] == [(4, pytest.approx(2.0))] * 3
    assert written["rows"][1]["change_pp"] == pytest.approx(2.0)  # the old keys stay
