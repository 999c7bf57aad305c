"""`fer evaluate` on every kind of model reference, the honest choice of report rows, the paper
beside our per-class numbers, and the shipped model re-measured on the real FER2013."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercli import paper
from fercli.cli import app
from fercli.errors import FerError
from fercli.evaluation.evaluate import EvaluateConfig, evaluate_target, paper_per_class
from fercli.export.npz_format import INDEX_SUFFIX, export_model
from fercli.export.sidecar import read_sidecar
from fercli.model.checkpoints import BEST_CHECKPOINT
from tests.fixtures import fake_run, make_ck_like, make_fer_like

runner = CliRunner()


@pytest.fixture(scope="module")
def fer_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fer")
    ds = make_fer_like(root / "fer")
    return ds, fake_run(root / "run", ds)


def test_run_checkpoint_and_sharded_export_give_the_same_result(fer_run, tmp_path: Path) -> None:
    ds, run = fer_run
    # float32 export: the same weights exactly, so every reference must give the same predictions.
    export_model(run, tmp_path / "exp" / "m.npz", dtype="float32", max_shard_mb=20)
    assert not (tmp_path / "exp" / "m.npz").exists() and (tmp_path / "exp" / f"m.npz{INDEX_SUFFIX}").is_file()
    results = {}
    for name, target in {"run": run, "pt": run / BEST_CHECKPOINT, "npz": tmp_path / "exp" / "m.npz",
                         "index": tmp_path / "exp" / f"m.npz{INDEX_SUFFIX}"}.items():
        results[name] = evaluate_target(EvaluateConfig(target=str(target), device="cpu", write=(name == "run")))
    for name, m in results.items():
        assert m["split"] == "private_test", name  # FER2013's report split, also for an export
        assert m["num_samples"] == 12 and m["confusion"] == results["run"]["confusion"], name
        assert m["dataset"]["same_as_training"] is True
        assert m["model"]["training"] == "from scratch"
    assert results["run"]["model"]["kind"] == "checkpoint" and results["npz"]["model"]["kind"] == "exported"
    assert results["pt"]["model"]["sha256"] == hashlib.sha256((run / BEST_CHECKPOINT).read_bytes()).hexdigest()
    assert results["npz"]["model"]["code_version"] == "abc123"  # the training code, carried by the export
    assert (run / "metrics.json").is_file()
    names = sorted(p.name for p in (tmp_path / "exp").iterdir())
    parts = [n for n in names if n.startswith("m.npz.part")]
    assert parts and sorted(set(names) - set(parts)) == ["m.npz.index.json", "m.npz.json"]  # sidecar: <model>.json
    pub = evaluate_target(EvaluateConfig(target=str(tmp_path / "exp" / "m.npz"), split="public-test",
                                         device="cpu", write=False))
    assert pub["split"] == "public_test"
    with pytest.raises(FerError, match="fixed splits"):
        evaluate_target(EvaluateConfig(target=str(run), fold=1, device="cpu", write=False))


def test_exported_ckplus_model_reports_only_a_fold_it_never_saw(tmp_path: Path) -> None:
    ck = make_ck_like(tmp_path / "ck")
    run = fake_run(tmp_path / "run", ck, fold=1)
    export_model(run, tmp_path / "m.npz", dtype="float32")
    m = evaluate_target(EvaluateConfig(target=str(tmp_path / "m.npz"), device="cpu"))
    assert m["split"] == "fold1" and m["selected_on"] == "fold2"  # the fold the export records
    with pytest.raises(FerError, match="fold 1 as its test fold"):
        evaluate_target(EvaluateConfig(target=str(tmp_path / "m.npz"), fold=0, device="cpu"))
    # Another version of the data: the recorded fold means nothing there, so it must be named.
    other = make_ck_like(tmp_path / "ck2", seed=1)
    with pytest.raises(FerError, match="--fold K"):
        evaluate_target(EvaluateConfig(target=str(tmp_path / "m.npz"), dataset=str(other), device="cpu"))
    m2 = evaluate_target(EvaluateConfig(target=str(tmp_path / "m.npz"), dataset=str(other), fold=2, device="cpu"))
    assert m2["split"] == "fold2" and m2["dataset"]["same_as_training"] is False and m2["dataset"]["note"]


def test_paper_tables_sit_beside_ours() -> None:
    fer = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    m = {"classes": fer}
    ref = paper_per_class("fer2013", m)
    assert ref["table"] == 1
    assert {c: (r["precision"], r["recall"], r["f1"]) for c, r in ref["rows"].items()} == paper.TABLE1.rows
    ck = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
    ref2 = paper_per_class("ck+", {"classes": ck})
    assert ref2["table"] == 2 and ref2["rows"]["anger"]["paper_class"] == "angry"
    assert ref2["rows"]["contempt"]["precision"] == 0.818
    assert paper_per_class("fer2013", {"classes": ["a", "b"]}) is None  # no invented rows


def test_cli_evaluate_json_and_one_line_errors(fer_run) -> None:
    ds, run = fer_run
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["split"] == "private_test" and m["paper_per_class"]["table"] == 1
    r = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert r.exit_code == 0 and "paper P %" in r.stdout and "Table 1" in r.stdout
    bad = runner.invoke(app, ["evaluate", str(run.parent / "nope.npz")])
    assert bad.exit_code != 0 and "nope.npz" in bad.stderr and "Traceback" not in bad.output


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_model_reproduces_its_private_test_accuracy(fer2013_prepared) -> None:  # type: ignore[no-untyped-def]
    from fercli.model.locate import DEFAULT_MODEL

    ds = fer2013_prepared.out
    assets = DEFAULT_MODEL.parent
    before = {p.name: p.stat().st_mtime_ns for p in assets.iterdir()}
    r = runner.invoke(app, ["evaluate", "default", "--dataset", str(ds), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    meta = read_sidecar(DEFAULT_MODEL)
    assert m["split"] == "private_test" and m["num_samples"] == 3589
    assert m["dataset"]["same_as_training"] is True
    # The H200 measured 66.23% with the fp32 weights; this is the fp16 file on another device.
    assert abs(m["accuracy"] - meta["private_test_accuracy"]) <= 0.002
    assert m["model"]["training"] == "from scratch"
    assert m["model"]["code_version"].startswith("e35a97f")  # corrected from "unknown" (device copy)
    assert m["paper_per_class"]["table"] == 1
    # Its temperature (fitted on PublicTest) keeps every label and makes PrivateTest's
    # probabilities better calibrated (docs/results.md: ECE 12.38% -> 3.11%, NLL 1.082 -> 0.952).
    cal = m["calibration"]
    assert cal["temperature_split"] == "public_test" and cal["temperature_source"] == "recorded in the model"
    assert cal["argmax_identical"] and cal["after"]["accuracy"] == m["accuracy"]
    assert cal["after"]["ece"] < cal["before"]["ece"] / 3 and cal["after"]["nll"] < cal["before"]["nll"]
    assert {p.name: p.stat().st_mtime_ns for p in assets.iterdir()} == before
    # (--split public-test is covered on the small fixture above; a second pass over 3,589
    # real faces here would double this test's time for the same code path.)
