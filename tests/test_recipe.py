"""Recipe options for the from-scratch FER2013 search: warm-up, no decay on BN/bias, label
smoothing, and the `fer2013-scratch` preset. Off by default, they leave training as it is without them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fercli import provenance
from fercli.errors import FerError
from fercli.export.sidecar import read_sidecar
from fercli.model.locate import DEFAULT_MODEL
from fercli.train import config, runs
from fercli.train.optim import build_optimizer
from tests.fixtures import make_fer_like, tiny_cfg

RECIPES_FILE = Path(__file__).resolve().parents[1] / "devtools" / "gpu_check" / "recipes_fer2013.json"


def test_defaults_keep_the_old_schedule_and_warmup_ramps() -> None:
    cfg = config.make_train_config(None, epochs=10, lr=1e-3)
    assert [runs._lr_at(cfg, e) for e in range(10)] == [0.5 * 1e-3 * (1 + math.cos(math.pi * e / 10))
                                                      for e in range(10)]
    w = config.make_train_config(None, epochs=10, lr=1e-3, warmup_epochs=2)
    lrs = [runs._lr_at(w, e) for e in range(10)]
    assert lrs[:3] == [pytest.approx(5e-4), pytest.approx(1e-3), pytest.approx(1e-3)]  # ramp, then cosine
    assert all(a > b for a, b in zip(lrs[2:-1], lrs[3:], strict=True))
    c = config.make_train_config(None, epochs=4, lr=1e-3, warmup_epochs=1, schedule="constant")
    assert [runs._lr_at(c, e) for e in range(4)] == [1e-3] * 4
    for bad in ({"warmup_epochs": 4}, {"warmup_epochs": -1}, {"label_smoothing": 1.0}):
        with pytest.raises(FerError):
            config.validate_config(config.make_train_config(None, epochs=4, **bad))


def test_onecycle_rises_for_30_percent_of_the_epochs_then_falls() -> None:
    """10 epochs at lr 1e-3: u = 3 rising epochs from 1e-3/25 (half cosine: 4e-5, 2.8e-4, 7.6e-4),
    the peak at epoch 3, then a half cosine over 7 epochs towards 4e-9."""
    cfg = config.make_train_config(None, epochs=10, lr=1e-3, schedule="onecycle")
    lrs = [runs._lr_at(cfg, e) for e in range(10)]
    start, end = 1e-3 / 25, 1e-3 / 25 / 1e4
    want_up = [start + (1e-3 - start) * (1 - math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    want_down = [end + (1e-3 - end) * (1 + math.cos(math.pi * (e - 3) / 7)) / 2 for e in range(3, 10)]
    assert lrs == pytest.approx(want_up + want_down)
    assert lrs[0] == pytest.approx(4e-5) and lrs[3] == pytest.approx(1e-3) and max(lrs) == lrs[3]
    assert all(a < b for a, b in zip(lrs[:3], lrs[1:4], strict=True))
    assert all(a > b for a, b in zip(lrs[3:-1], lrs[4:], strict=True))
    with pytest.raises(FerError, match="onecycle"):  # it has its own warm-up
        config.validate_config(config.make_train_config(None, epochs=10, schedule="onecycle", warmup_epochs=2))


def test_no_decay_on_bn_and_bias() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    cfg = config.make_train_config(None, no_decay_bn_bias=True)
    opt = build_optimizer("adamw-gc", runs._param_groups(model, cfg), lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only the decay can move a weight
    opt.step()
    for k, v in model.named_parameters():
        if v.ndim > 1:
            assert torch.allclose(v, before[k] * (1 - 0.1 * 0.5)), k  # decoupled decay applied
        else:
            assert torch.equal(v, before[k]), k  # BatchNorm weight/bias and the Linear bias: no decay
    assert runs._param_groups(model, config.make_train_config(None)) is model  # default: one group


def test_fer2013_scratch_preset_is_the_measured_h200_recipe() -> None:
    cfg = config.make_train_config("fer2013-scratch")
    meta = read_sidecar(DEFAULT_MODEL)
    for key, value in meta["train_config"].items():  # the shipped model's own recorded config
        if key in ("device", "out", "dataset", "threads", "eval_batch_size"):
            continue  # where and how fast it ran, not the recipe
        assert getattr(cfg, key) == value, key
    assert (cfg.label_smoothing, cfg.warmup_epochs, cfg.no_decay_bn_bias) == (0.0, 0, False)
    assert config.make_train_config("fer2013-scratch", epochs=40).epochs == 40  # flags override


def test_ckplus_transfer_preset_is_the_measured_ck_recipe(tmp_path: Path) -> None:
    """The preset is the chosen CK+ run's recorded config (docs/cpu/...), and on the command
    line it brings --dataset ck+ with it."""
    cfg = config.make_train_config("ckplus-transfer")
    rec = json.loads((Path(__file__).resolve().parents[1] / "docs" / "cpu" / "2026-11-27-epyc-avx2"
                      / "ckplus_chosen_config.json").read_text())
    for key, value in rec["config"].items():
        if key in ("device", "out", "fold", "threads", "eval_batch_size"):
            continue  # where and how fast it ran, and which fold: not the recipe
        assert getattr(cfg, key) == value, key
    assert rec["training"] == provenance.training_label(rec["config"]) == "FER2013-pretrained"
    from typer.testing import CliRunner

    from fercli.cli import app

    r = CliRunner().invoke(app, ["train", "--preset", "ckplus-transfer", "--out", str(tmp_path / "run")],
                           env={"FER_DATA_DIR": str(tmp_path)})
    assert r.exit_code != 0 and "dataset ck+ is not prepared" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_options_reach_the_train_step_and_config_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = runs.make_train_step

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "make_train_step", spy)
    ds = make_fer_like(tmp_path / "fer")
    (res,) = runs.train(tiny_cfg(ds, tmp_path / "run", epochs=1, label_smoothing=0.1, no_decay_bn_bias=True,
                                 cutmix=1.0, schedule="onecycle", scale_aug=0.2))
    assert seen["label_smoothing"] == 0.1 and seen["cutmix"] == 1.0 and seen["scale_aug"] == 0.2
    saved = json.loads((res.run_dir / "config.json").read_text())["config"]
    assert saved["label_smoothing"] == 0.1 and saved["no_decay_bn_bias"] is True and saved["warmup_epochs"] == 0
    assert saved["cutmix"] == 1.0 and saved["schedule"] == "onecycle" and saved["scale_aug"] == 0.2
    assert res.history[0]["lr"] == pytest.approx(1e-3 / 25)  # one-cycle starts at lr / 25


def test_the_device_calls_recipes_are_valid_fer_train_command_lines() -> None:
    """devtools/gpu_check/recipes_fer2013.json is run unattended on a lent GPU: every recipe (and the CK+
    transfer) must parse as `fer train` options (a typo would cost the call) and differ."""
    from typer.main import get_command

    from fercli.cli import app
    from fercli.cli.train import train_config

    recipes = json.loads(RECIPES_FILE.read_text())["recipes"]
    train_cmd = get_command(app).commands["train"]  # type: ignore[attr-defined]
    seen = set()
    for r in recipes:
        argv = ["--preset", "fer2013-scratch", "--image-size", str(r["image_size"]), *r["args"]]
        cfg = train_config(train_cmd.make_context("train", list(argv)))
        config.validate_config(cfg)
        assert cfg.image_size == r["image_size"] and not cfg.pretrained
        seen.add(tuple(argv))
    assert len(seen) == len(recipes)
    # The robustness recipe: zoom and photometric jitter on top of every option of another
    # recipe (the pair then measures the two together), FER2013 Training only like the rest.
    cfgs = {r["name"]: train_config(train_cmd.make_context("train", ["--preset", "fer2013-scratch", *r["args"]]))
            for r in recipes}
    robust = [r for r in recipes if cfgs[r["name"]].photometric > 0 and cfgs[r["name"]].scale_aug > 0]
    assert len(robust) == 1
    assert any(set(o["args"]) < set(robust[0]["args"]) and cfgs[o["name"]].photometric == 0 for o in recipes)
    assert all(cfg.dataset == "fer2013" for cfg in cfgs.values())
    # The CK+ transfer step: the same check, with the options recipe_search adds itself.
    ck = json.loads(RECIPES_FILE.read_text())["ck_transfer"]
    ctx = train_cmd.make_context("train", ["--dataset", "ck+", "--init-from", "default", "--fold", "all", *ck["args"]])
    cfg = train_config(ctx)
    config.validate_config(cfg)
    assert cfg.init_from == "default" and cfg.dataset == "ck+" and cfg.epochs >= 1 and ck["reserve_s"] >= 60


def test_recipe_search_sizes_epochs_to_the_share() -> None:
    from devtools.gpu_check import recipe_search as rs

    # 21,500 img/s (the H200's graphed rate at 48 px): 28,709 + 3,589/3 images ≈ 1.39 s + 0.25 s per epoch.
    per_epoch = 28709 / 21500 + 3589 / (3 * 21500) + 0.25
    assert rs.epochs_for(135.0, 21500.0, 200, 28709) == int((135 - rs.START_S) / per_epoch) == 60
    assert rs.epochs_for(135.0, 21500.0, 40, 28709) == 40  # the recipe's cap
    assert rs.epochs_for(10.0, 21500.0, 200, 28709) == 1  # never zero


def test_wild_inputs_are_the_recognizers_crops_and_scored_like_bench_wild(tmp_path: Path) -> None:
    """gpu_payload/wild_inputs.npz holds what fercli.Recognizer's default path (--detector none)
    gives the classifier for each image, and wild_eval scores it as bench_wild does."""
    import cv2
    import numpy as np

    from devtools.gpu_check.make_wild_inputs import wild_inputs
    from devtools.gpu_check.wild_eval import scores
    from fercli.infer.recognizer import Recognizer, to_grey

    rng = np.random.default_rng(0)
    rows = ["label,file"]
    for i, (label, shape) in enumerate([("happy", (60, 50)), ("sad", (48, 48)), ("happy", (31, 77))]):
        (tmp_path / label).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / label / f"{i}.jpg"), rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        rows.append(f"{label},{i}.jpg")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    arrays = wild_inputs(tmp_path)

    class NoModel:  # the crops are made before any model runs
        classes = ("happy", "sad")

    rec = Recognizer(classifier=NoModel(), detector="none")  # type: ignore[arg-type]
    want = [rec.find_faces_in_grey(to_grey(tmp_path / f))[0][1] for f in ("happy/0.jpg", "sad/1.jpg", "happy/2.jpg")]
    assert arrays["inputs"].shape == (3, 48, 48) and arrays["inputs"].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(arrays["inputs"], want, strict=True))
    assert list(arrays["classes"]) == ["happy", "sad"] and list(arrays["labels"]) == [0, 1, 0]
    assert str(arrays["tta"]) == rec.tta and len(str(arrays["labels_csv_sha256"])) == 64
    s = scores(np.array([0, 1, 0, 0]), np.array([0, 0, 0, 1]), ["happy", "sad"])
    assert (s["accuracy"], s["mean_recall"], s["per_class_recall"]) == (50.0, 33.33, {"happy": 66.67, "sad": 0.0})
