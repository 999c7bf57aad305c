"""`fer ablate`: the paper's tables, and a tiny from-scratch ladder on a small CK+ fixture."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercli import paper
from fercli.cli import app
from fercli.data.ingest import prepare_ckplus
from fercli.errors import FerError
from fercli.evaluation import ablate
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
    assert "not transcribed" not in out  # every cell of Tables 1-5 is filled now
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
    assert ablate.parse_seeds("0, 1,2") == (0, 1, 2)
    for bad in ("", "a,b", "1,1"):
        with pytest.raises(FerError):
            ablate.parse_seeds(bad)
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
    (table,) = result["tables"]
    assert table["dataset"] == "ck+" and table["ladder"] == ablate.SCRATCH_LABEL
    assert table["folds"]["used"] == 1 and "first 1 of" in table["folds"]["label"]
    assert table["weights"]["available"] is False and "weights" in table["weights"]["reason"].lower()
    rows = {r["name"]: r for r in table["rows"]}
    assert list(rows) == ["ResNet34", "ResNet34_Pretrain", "ResNet34_Pretrain_BCN", "ResNet34_Pretrain_BCN_GC",
                          "ResNet34_BCN", "ResNet34_BCN_GC", "ResNet34_FER2013Pretrain_BCN_GC"]
    transfer = rows["ResNet34_FER2013Pretrain_BCN_GC"]  # fercli's rung: trunk of the shipped FER2013 model
    assert transfer["training"] == "FER2013-pretrained" and transfer["ladder"] == ablate.TRANSFER_LABEL
    assert transfer["in_paper"] is False and transfer["status"] == "done" and transfer["shared_backbone"] is True
    info = json.loads((Path(transfer["runs"][0]["run_dir"]) / "config.json").read_text())
    assert info["training"] == "FER2013-pretrained" and info["init_from"]["ref"] == "default"
    for name in ("ResNet34_Pretrain", "ResNet34_Pretrain_BCN", "ResNet34_Pretrain_BCN_GC"):
        assert rows[name]["status"] == ablate.WEIGHTS_UNAVAILABLE and rows[name]["n_runs"] == 0
    assert rows["ResNet34_Pretrain_BCN_GC"]["paper_pct"] == 98.82  # the paper's value is still shown
    for name in ("ResNet34", "ResNet34_BCN", "ResNet34_BCN_GC"):
        r = rows[name]
        assert r["status"] == "done" and r["n_runs"] == 1 and 0 <= r["ours_mean_pct"] <= 100
        assert r["runs"][0]["split"] == "fold0" and r["runs"][0]["status"] == "trained"
    assert rows["ResNet34_BCN_GC"]["optimizer"] == "adam-gc" and rows["ResNet34_BCN"]["optimizer"] == "adam"
    assert rows["ResNet34_BCN"]["in_paper"] is False
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["tables"][0]["rows"][0]["ours_mean_pct"] == rows["ResNet34"]["ours_mean_pct"]
    csv_rows = list(csv.DictReader(io.StringIO((out / "ablation.csv").read_text())))
    assert [r["row"] for r in csv_rows] == list(rows)
    assert {r["status"] for r in csv_rows[1:4]} == {ablate.WEIGHTS_UNAVAILABLE}

    # Rerun: everything comes from the cache, nothing is retrained.
    before = _mtimes(out)
    assert len(before) == 4
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert _mtimes(out) == before
    assert "4 of 4 runs reused" in " ".join(res.stderr.split())  # independent of line wrapping
    text = " ".join(res.stdout.split())  # independent of line wrapping
    assert "from-scratch ladder (ImageNet weights unavailable)" in text
    assert "weights unavailable" in text

    # An interrupted run (last.pt but no summary) is resumed, not restarted: with --jobs 2 by a
    # scheduler child (the only run that needs training), and reported as resumed, not cached.
    run = out / "ResNet34_BCN" / "seed0" / "fold0"
    (run / "train_summary.json").unlink()
    (run / "metrics.json").unlink()
    res = runner.invoke(app, [*args, "--jobs", "2", "--json"])
    assert res.exit_code == 0, res.output
    runs = {r["name"]: r["runs"] for r in json.loads(res.stdout)["tables"][0]["rows"]}
    assert runs["ResNet34_BCN"][0]["status"] == "resumed"
    assert runs["ResNet34"][0]["status"] == "cached"
    assert (run.parent / f"{run.name}.log").is_file() and (run / "train_summary.json").is_file()
    assert not (out / "ResNet34" / "seed0" / "fold0.log").exists()  # cached runs start no child
    assert json.loads((run / "config.json").read_text())["resumes"]  # resumed, not started over

    # A cached run is reused only if config, dataset sha256 and code version agree.
    tcfg = ablate._train_config(ablate.AblateConfig(dataset=str(tiny_ck), epochs=1, train_subset=8,
                                                    batch_size=4, seeds=(0,), device="cpu"),
                                ablate._resolve_datasets(str(tiny_ck))[0],
                                ablate.SCRATCH_LADDER[1], 0, 0, run)
    sha = ablate._resolve_datasets(str(tiny_ck))[0].sha256
    assert ablate._reuse_problem(run, tcfg, sha) is None
    assert "dataset sha256" in ablate._reuse_problem(run, tcfg, "0" * 64)
    cfg_json = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg_json, "code_version": "0" * 40}))
    assert "trained by code 0000" in ablate._reuse_problem(run, tcfg, sha)
    (run / "config.json").unlink()
    assert "no readable config.json" in ablate._reuse_problem(run, tcfg, sha)

    # Different settings never silently reuse a cached run: it is retrained, and says why.
    # (--jobs children start such a run afresh: tests/test_jobs.py::test_plan_resumes_from_last_checkpoint.)
    before = _mtimes(out)
    res = runner.invoke(app, [*args, "--lr", "0.01", "--init-from", "none", "--json"])
    assert res.exit_code == 0, res.output
    runs = {r["name"]: r["runs"] for r in json.loads(res.stdout)["tables"][0]["rows"]}
    for name in ("ResNet34", "ResNet34_BCN", "ResNet34_BCN_GC"):
        assert runs[name][0]["status"] == "rerun", runs[name]
        assert ("no readable config.json" if name == "ResNet34_BCN" else "lr=") in runs[name][0]["rerun_reason"]
        run_dir = Path(runs[name][0]["run_dir"])
        key = str(run_dir.relative_to(out) / "train_summary.json")
        assert _mtimes(out)[key] != before.get(key)  # really retrained
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
    fer = ablate._Dataset(key="fer2013", ref="fer2013", path=tmp_path, kfold=False, num_folds=0, sha256="")
    assert ablate._ladder(cfg, fer, False)[1] == ablate.SCRATCH_LABEL
    assert ablate._ladder(cfg, plan.datasets[0], True) == (ablate.PAPER_LADDER, "paper")
