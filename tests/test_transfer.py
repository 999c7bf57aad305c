"""`fer train --init-from`: FER2013-pretrained trunks, a fresh head, on the real CK+48."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fercli.cli import app
from fercli.data.prepared import load_prepared
from fercli.errors import FerError
from fercli.export.sidecar import read_sidecar
from fercli.infer.sources import load_model_source
from fercli.model.locate import DEFAULT_MODEL
from fercli.model.networks import build_model
from fercli.provenance import training_label
from fercli.train import config, runs
from tests.fixtures import fake_run, make_ck_like, make_fer_like

runner = CliRunner()


@pytest.fixture(scope="module")
def ck48(ckplus48_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fercli.data.ingest import prepare_ckplus

    return prepare_ckplus(ckplus48_dir, out=tmp_path_factory.mktemp("ck") / "ckplus").out


def _archive_sha256() -> str:
    return json.loads(Path(f"{DEFAULT_MODEL}.index.json").read_text())["sha256"]


def _shipped_code() -> str:
    """The code version the shipped model's own provenance records (not a literal: it ships anew)."""
    return read_sidecar(DEFAULT_MODEL)["code_version"]


def test_init_copies_the_trunk_and_leaves_a_fresh_head() -> None:
    src = load_model_source("default")
    torch.manual_seed(0)
    model = build_model("bcnn-resnet34", 7, shared_backbone=True)
    cfg = config.make_train_config(None, dataset="ck+", init_from="default", shared_backbone=True)
    assert cfg.pretrained is False  # --init-from replaces the ImageNet default
    info = runs._init_from(cfg, None, model)  # no dataset: a transfer reads only the source
    for (k, v), (k2, v2) in zip(model.trunk_a.state_dict().items(), src.model.trunk_a.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2), k  # weights and BatchNorm statistics
    assert model.fc.weight.shape == src.model.fc.weight.shape  # both 7 classes, different sets
    assert not torch.equal(model.fc.weight, src.model.fc.weight)  # the head is not carried over
    assert info["label"] == "FER2013-pretrained" and info["sha256"] == _archive_sha256()
    assert info["code_version"] == _shipped_code() and info["training"] == "from scratch"


def test_one_source_trunk_starts_every_trunk() -> None:
    """The shipped shared-trunk model's one trunk starts a resnet34 and both trunks of a two-trunk
    B-CNN (Table 5's Pretrain rows), as ImageNet weights do."""
    src = load_model_source("default").model.trunk_a.state_dict()
    cfg = config.make_train_config(None, init_from="default")
    for model in (build_model("resnet34", 7), build_model("bcnn-resnet34", 7)):
        info = runs._init_from(cfg, None, model)  # no dataset: a transfer reads only the source
        assert info["tensors_copied"] == len(src) * len(model.trunks())
        for trunk in model.trunks():
            for k, v in trunk.state_dict().items():
                assert torch.equal(v, src[k]), k
    two = build_model("bcnn-resnet34", 7)
    assert two.trunk_a is not two.trunk_b  # two trunks, each its own copy: they fine-tune apart


def test_architecture_mismatch_and_imagenet_mix_are_refused(tmp_path: Path) -> None:
    from fercli.model.networks import init_trunks_from

    with pytest.raises(FerError, match="ambiguous"):  # two source trunks into one
        init_trunks_from(build_model("resnet34", 7), build_model("bcnn-resnet34", 7))
    with pytest.raises(FerError, match="cannot be combined"):
        config.validate_config(config.make_train_config(None, init_from="default", pretrained=True))
    ck = make_ck_like(tmp_path / "ck")
    ck_run = fake_run(tmp_path / "ckrun", ck)  # a model trained on CK+
    with pytest.raises(FerError, match="not FER2013"):
        runs._init_from(config.make_train_config(None, init_from=str(ck_run), model="resnet34"),
                        load_prepared(ck), build_model("resnet34", 7))


def test_init_head_copies_the_whole_model_and_is_labelled_a_fine_tune(tmp_path: Path) -> None:
    fer = make_fer_like(tmp_path / "fer2013")
    src_run = fake_run(tmp_path / "src", fer, seed=3)  # a from-scratch resnet34 on FER2013's classes
    src = load_model_source(str(src_run), "--init-from").model
    cfg = config.make_train_config(None, init_from=str(src_run), init_head=True, model="resnet34")
    torch.manual_seed(0)
    model = build_model("resnet34", 7)
    info = runs._init_from(cfg, load_prepared(fer), model)
    assert info["head"] == "copied" and info["label"] == "from scratch, fine-tuned"
    for (name, a), b in zip(model.state_dict().items(), src.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # head (fc) included
    assert training_label(dataclasses.asdict(cfg)) == "from scratch, fine-tuned"
    # without --init-head the head stays the fresh one
    fresh = build_model("resnet34", 7)
    head = fresh.fc.weight.detach().clone()
    runs._init_from(dataclasses.replace(cfg, init_head=False), load_prepared(fer), fresh)
    assert torch.equal(fresh.fc.weight, head) and not torch.equal(fresh.fc.weight, src.fc.weight)
    # a fine-tune of a from-scratch model may start a transfer (the chain saw FER2013 only)
    assert training_label({"init_from": "x", "init_head": True}) in ("from scratch, fine-tuned",)


def test_init_head_refuses_another_dataset_or_architecture(tmp_path: Path) -> None:
    fer = make_fer_like(tmp_path / "fer2013")
    src_run = fake_run(tmp_path / "src", fer)
    cfg = config.make_train_config(None, init_from=str(src_run), init_head=True, model="resnet34")
    ck = make_ck_like(tmp_path / "ck")
    with pytest.raises(FerError, match="drop --init-head"):
        runs._init_from(cfg, load_prepared(ck), build_model("resnet34", 7))
    with pytest.raises(FerError, match="--init-head: .* this run builds"):
        runs._init_from(dataclasses.replace(cfg, model="bcnn-resnet34"), load_prepared(fer),
                        build_model("bcnn-resnet34", 7, shared_backbone=True))
    with pytest.raises(FerError, match="give --init-from"):
        config.validate_config(config.make_train_config(None, init_head=True))


@pytest.mark.realdata
@pytest.mark.slow
def test_tiny_transfer_run_on_real_ckplus(ck48: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # A handful of steps (16 images, batch 8, one epoch): the wiring, not the accuracy.
    args = ["train", "--dataset", str(ck48), "--init-from", "default", "--shared-backbone", "--epochs", "1",
            "--train-subset", "16", "--batch-size", "8", "--lr", "1e-4", "--device", "cpu", "--threads", "1",
            "--fold", "3", "--out", str(run), "--json", "--quiet"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    info = json.loads((run / "config.json").read_text())
    assert info["training"] == "FER2013-pretrained" and info["config"]["pretrained"] is False
    assert info["init_from"]["ref"] == "default" and info["init_from"]["sha256"] == _archive_sha256()
    assert info["init_from"]["code_version"] == _shipped_code()
    e = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--json"])
    assert e.exit_code == 0, e.output
    m = json.loads(e.stdout)
    assert m["split"] == "fold3" and m["model"]["training"] == "FER2013-pretrained"
    assert m["paper_per_class"]["table"] == 2
    # A source that cannot be read is one line, exit non-zero, and leaves no run directory.
    bad_args = list(args)
    bad_args[bad_args.index(str(run))] = str(tmp_path / "bad")
    bad_args[bad_args.index("default")] = str(tmp_path / "no-such-model.pt")
    bad = runner.invoke(app, bad_args)
    assert bad.exit_code != 0 and "no-such-model.pt" in bad.stderr and "Traceback" not in bad.output
    assert not (tmp_path / "bad").exists()
