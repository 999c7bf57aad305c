"""Engine: device-resident data, augmentation, honest selection, checkpoints and resume."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from fercli.data import resident as data
from fercli.data.prepared import FER2013_CLASSES, load_prepared
from fercli.errors import FerError
from fercli.evaluation import evaluate as evaluation
from fercli.model import checkpoints, inference
from fercli.model.networks import build_model
from fercli.provenance import code_version
from fercli.train import config, runs
from tests.fixtures import make_ck_like, make_fer_like, tiny_cfg

# ----------------------------------------------------------------------------- augmentation


def test_augment_identity_when_all_ranges_are_zero():
    x = torch.rand(4, 1, 48, 48)
    g = torch.Generator().manual_seed(0)
    y = data.augment_batch(x, g, max_shift=0.0, max_rotate_deg=0.0, flip=False)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_augment_is_seeded_and_changes_images():
    x = torch.rand(8, 1, 48, 48)
    a = data.augment_batch(x, torch.Generator().manual_seed(1))
    b = data.augment_batch(x, torch.Generator().manual_seed(1))
    c = data.augment_batch(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.allclose(a, x)
    assert a.shape == x.shape


def test_augment_flip_only_mirrors():
    x = torch.rand(64, 1, 48, 48)
    y = data.augment_batch(x, torch.Generator().manual_seed(0), max_shift=0.0, max_rotate_deg=0.0)
    mirrored = torch.isclose(y, x.flip(3), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(y, x, atol=1e-5).flatten(1).all(1)
    assert bool((mirrored | same).all())
    assert 10 < int(mirrored.sum()) < 54  # p = 0.5


# ----------------------------------------------------------------------------- splits


def test_fer_splits_select_on_public_report_private(tmp_path):
    ds = load_prepared(make_fer_like(tmp_path / "fer"))
    plan = data.plan_splits(ds, None)
    assert (plan.val_name, plan.test_name) == ("public_test", "private_test")
    assert set(ds.split[plan.train]) == {"train"}
    assert set(ds.split[plan.val]) == {"public_test"}
    assert set(ds.split[plan.test]) == {"private_test"}


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_ck_splits_are_subject_disjoint(tmp_path, fold):
    ds = load_prepared(make_ck_like(tmp_path / "ck"))
    plan = data.plan_splits(ds, fold)
    groups = [set(ds.subject[i]) for i in (plan.train, plan.val, plan.test)]
    assert groups[0] and groups[1] and groups[2]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert plan.test_name == f"fold{fold}" and plan.val_name == f"fold{(fold + 1) % 3}"


def test_ck_fold_out_of_range(tmp_path):
    ds = load_prepared(make_ck_like(tmp_path / "ck"))
    with pytest.raises(FerError, match="--fold 7 is out of range"):
        data.plan_splits(ds, 7)


def test_training_never_touches_the_report_split(tmp_path, monkeypatch):
    """Selection is honest: no device copy of PrivateTest rows is ever made by train()."""
    ds_path = make_fer_like(tmp_path / "fer")
    ds = load_prepared(ds_path)
    private = set(ds.indices("private_test").tolist())
    seen: list[set[int]] = []
    real = data.to_device

    def spy(d, idx, device):
        seen.append(set(np.asarray(idx).tolist()))
        return real(d, idx, device)

    monkeypatch.setattr(runs, "to_device", spy)
    runs.train(tiny_cfg(ds_path, tmp_path / "run", epochs=1))
    assert seen and all(not (s & private) for s in seen)


# ----------------------------------------------------------------------------- config


def test_paper_preset_and_explicit_override():
    cfg = config.make_train_config("paper")
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.pretrained) == (16, 1e-4, 200, True)
    assert config.resolve_optimizer(cfg, "fer2013").optimizer == "adamw-gc"
    assert config.resolve_optimizer(cfg, "ck+").optimizer == "adam-gc"
    assert config.make_train_config("paper", batch_size=64).batch_size == 64
    with pytest.raises(FerError, match="paper"):
        config.make_train_config("fastest")


@pytest.mark.parametrize("field,value,needle", [
    ("model", "vgg", "resnet34"), ("optimizer", "lamb", "adamw-gc"), ("schedule", "step", "cosine"),
    ("device", "tpu", "cuda"), ("epochs", 0, "epochs"), ("lr", -1.0, "--lr"), ("image_size", 16, "image-size"),
])
def test_invalid_config_lists_allowed_values(tmp_path, field, value, needle):
    cfg = dataclasses.replace(tiny_cfg(make_fer_like(tmp_path / "fer"), tmp_path / "run"), **{field: value})
    with pytest.raises(FerError, match=needle):
        runs.train(cfg)


# ----------------------------------------------------------------------------- run dir, checkpoints, resume


def test_run_directory_records_provenance(tmp_path):
    ds_path = make_fer_like(tmp_path / "fer")
    (res,) = runs.train(tiny_cfg(ds_path, tmp_path / "run"))
    run = res.run_dir
    for name in ("config.json", "history.csv", "loss_curve.png", "last.pt", "best.pt", "train_summary.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "config.json").read_text())
    assert info["dataset"]["sha256"] == load_prepared(ds_path).sha256
    assert info["seed"] == 0 and info["device"].startswith("cpu")
    assert info["code_version"] == code_version()  # what provenance says of this code, not just non-empty
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", info["code_version"]), info["code_version"]
    assert info["config"]["optimizer"] == "adamw-gc"  # auto → the paper's FER2013 choice
    lines = (run / "history.csv").read_text().strip().splitlines()
    assert lines[0].split(",")[:5] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert len(lines) == 3
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_round_trip_reproduces_predictions(tmp_path, monkeypatch):
    # Keep the live model the run trains, to compare it with what last.pt gives back.
    built = []
    real_build = runs.build_model
    monkeypatch.setattr(runs, "build_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    ds_path = make_fer_like(tmp_path / "fer")
    (res,) = runs.train(tiny_cfg(ds_path, tmp_path / "run", epochs=1))
    (trained,) = built
    ckpt = checkpoints.load_checkpoint(res.run_dir / "last.pt")
    loaded = checkpoints.model_from_checkpoint(ckpt)
    live = trained.state_dict()
    assert set(ckpt["model"]) == set(live)
    assert all(torch.equal(ckpt["model"][k], live[k].cpu()) for k in live)  # bit-exact, BN stats included
    x = torch.from_numpy(load_prepared(ds_path).images[:6]).unsqueeze(1)
    # Same weights; the trained model is channels_last, so kernels differ in float rounding only.
    torch.testing.assert_close(inference.predict_logits(loaded, x), inference.predict_logits(trained, x), rtol=1e-4, atol=1e-4)
    assert ckpt["classes"] == list(FER2013_CLASSES) and ckpt["epoch"] == 0


def test_resume_refuses_changed_settings(tmp_path):
    ds_path = make_fer_like(tmp_path / "fer")
    runs.train(tiny_cfg(ds_path, tmp_path / "run", epochs=1))
    with pytest.raises(FerError, match="--batch-size"):
        runs.train(tiny_cfg(ds_path, tmp_path / "run", epochs=2, batch_size=4, resume=True))


def test_training_refuses_data_that_no_longer_matches_its_manifest(tmp_path):
    ds_path = make_fer_like(tmp_path / "fer")
    data = ds_path / "data.npz"
    raw = bytearray(data.read_bytes())
    raw[-100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(FerError, match="sha256"):
        runs.train(tiny_cfg(ds_path, tmp_path / "run"))


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_reports_private_test_and_writes_metrics(tmp_path):
    ds_path = make_fer_like(tmp_path / "fer")
    (res,) = runs.train(tiny_cfg(ds_path, tmp_path / "run", epochs=1))
    m = evaluation.evaluate_target(evaluation.EvaluateConfig(target=str(res.run_dir), device="cpu"))
    assert m["split"] == "private_test" and m["selected_on"] == "public_test"
    assert m["num_samples"] == 12
    # The reported numbers are those of the selected checkpoint on the PrivateTest rows.
    ds = load_prepared(ds_path)
    rows = ds.indices("private_test")
    model = checkpoints.model_from_checkpoint(checkpoints.load_checkpoint(res.run_dir / "best.pt")).eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(ds.images[rows]).unsqueeze(1).float() / 255).argmax(1).numpy()
    assert m["accuracy"] == pytest.approx(float((pred == ds.labels[rows]).mean()))
    assert m["confusion"] == confusion_matrix(ds.labels[rows], pred, labels=range(7)).tolist()
    assert json.loads((res.run_dir / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    assert (res.run_dir / "confusion.png").is_file()
    pub = evaluation.evaluate_target(evaluation.EvaluateConfig(target=str(res.run_dir), split="public-test",
                                                       device="cpu", write=False))
    assert pub["split"] == "public_test" and pub["num_samples"] == 12
    ten = evaluation.evaluate_target(evaluation.EvaluateConfig(target=str(res.run_dir), tta="ten-crop",
                                                       device="cpu", write=False))
    assert ten["num_samples"] == 12 and ten["tta"] == "ten-crop"


def test_tta_averages_the_views_it_names():
    torch.manual_seed(0)
    model = build_model("resnet34", 7, pretrained=False).eval()
    x = torch.randint(0, 256, (5, 1, 48, 48), dtype=torch.uint8)
    xf = x.float() / 255

    def probs(v):
        with torch.no_grad():
            return model(v).float().softmax(1)

    # Compared as probabilities: predict_logits clamps them at 1e-12 before the log.
    plain = inference.predict_logits(model, x, tta="none").exp()
    torch.testing.assert_close(plain, probs(xf))
    flip = inference.predict_logits(model, x, tta="flip").exp()
    torch.testing.assert_close(flip, (probs(xf) + probs(xf.flip(3))) / 2)
    # ten-crop: the four corners and the centre at 90% (43 px of 48), each also mirrored.
    c = 43
    crops = [xf[..., :c, :c], xf[..., :c, -c:], xf[..., -c:, :c], xf[..., -c:, -c:], xf[..., 2:2 + c, 2:2 + c]]
    want = sum(probs(v) + probs(v.flip(3)) for v in crops) / 10
    torch.testing.assert_close(inference.predict_logits(model, x, tta="ten-crop").exp(), want)
    assert not torch.allclose(flip, plain)  # the views really differ


def test_kfold_train_and_aggregate(tmp_path):
    ds_path = make_ck_like(tmp_path / "ck")
    results = runs.train(tiny_cfg(ds_path, tmp_path / "kfold", epochs=1, fold=-1))
    assert [r.fold for r in results] == [0, 1, 2]
    m = evaluation.evaluate_target(evaluation.EvaluateConfig(target=str(tmp_path / "kfold"), device="cpu"))
    assert m["kfold"]["folds"] == 3
    assert m["num_samples"] == 36  # every image is in exactly one test fold
    accs = [f["accuracy"] for f in m["per_fold"]]
    assert m["kfold"]["accuracy_mean"] == pytest.approx(float(np.mean(accs)))
    assert m["kfold"]["accuracy_std"] == pytest.approx(float(np.std(accs)))
    # The selection folds' accuracy (what recipes are compared by) is training's, at the chosen epoch.
    by_fold = {f"fold{(r.fold + 1) % 3}": r.best_val_acc for r in results}
    assert [f["selected_on"] for f in m["per_fold"]] == ["fold1", "fold2", "fold0"]
    assert [f["selection_accuracy"] for f in m["per_fold"]] == [by_fold[f["selected_on"]] for f in m["per_fold"]]
    assert m["kfold"]["selection_accuracy_mean"] == pytest.approx(float(np.mean(list(by_fold.values()))))
    # `fer evaluate ROOT` shows them beside each test fold, and their mean.
    from typer.testing import CliRunner

    from fercli.cli import app

    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "kfold"), "--device", "cpu"], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    sel_mean = 100 * m["kfold"]["selection_accuracy_mean"]
    assert "selection fold, acc %" in res.stdout and f"mean {sel_mean:.2f}" in res.stdout
    assert re.search(rf"fold0 .* fold1 {100 * by_fold['fold1']:.2f}", res.stdout)


def test_evaluate_refuses_other_class_set(tmp_path):
    fer = make_fer_like(tmp_path / "fer")
    ck = make_ck_like(tmp_path / "ck")
    (res,) = runs.train(tiny_cfg(fer, tmp_path / "run", epochs=1))
    with pytest.raises(FerError, match="classes"):
        evaluation.evaluate_target(evaluation.EvaluateConfig(target=str(res.run_dir), dataset=str(ck), device="cpu"))


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.slow
def test_overfits_16_real_ck_faces(tmp_path, ckplus48_dir):
    from typer.testing import CliRunner

    from fercli.cli import app

    out = tmp_path / "ck"
    r = CliRunner().invoke(app, ["prepare", "ck+", str(ckplus48_dir), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    cfg = config.make_train_config(dataset=str(out), model="bcnn-resnet34", shared_backbone=True,
                                   pretrained=False, epochs=8, batch_size=16, train_subset=16, lr=1e-3,
                                   weight_decay=0.0, schedule="constant", augment=False,
                                   optimizer="adam-gc", device="cpu", out=str(tmp_path / "run"))
    (res,) = runs.train(cfg)
    # Measured on a 2-core AVX2 CPU: 100% from epoch 6 of 8 (16 faces; 32 faces took 10 epochs).
    assert res.history[-1]["train_acc"] >= 0.95, res.history
