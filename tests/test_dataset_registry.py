"""fercli.data.registry: a dataset registered in one place goes through prepare → train →
evaluate → ablate with its own reader, split rule, optimizer and paper column, and nothing
outside this file knows about it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fercli.cli import app
from fercli.data import registry
from fercli.data.ingest import PrepareResult
from fercli.data.prepared import write_prepared
from fercli.data.resident import plan_splits
from fercli.errors import FerError

runner = CliRunner()

TINY_CLASSES = ("calm", "glad", "cross")
# Named splits the generic rule would not pick: it would hold out 10% of train and ignore `val`.
TINY_SPLITS = {"train": 12, "val": 6, "test": 6}


def make_tiny_source(root: Path, seed: int = 0) -> Path:
    """root/<split>/<class>/NNN.png: 48x48 grey faces, a class-dependent mean brightness."""
    rng = np.random.default_rng(seed)
    for split, n in TINY_SPLITS.items():
        for i in range(n):
            label = i % len(TINY_CLASSES)
            d = root / split / TINY_CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(rng.normal(60 + 60 * label, 20, (48, 48)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / f"{i:03d}.png")
    return root


def read_tiny(src: Path | str, *, out: Path | str, force: bool = False, skip_bad: bool = False,
              progress: Any = None) -> PrepareResult:
    """The fixture dataset's `fer prepare` reader: every PNG under src/<split>/<class>/."""
    rows = [(p, p.parent.parent.name, TINY_CLASSES.index(p.parent.name)) for p in sorted(Path(src).glob("*/*/*.png"))]
    images = np.stack([np.asarray(Image.open(p).convert("L")) for p, _, _ in rows])
    manifest = write_prepared(Path(out), name="tiny", classes=TINY_CLASSES, images=images,
                              labels=np.array([lab for _, _, lab in rows]), split=np.array([s for _, s, _ in rows]),
                              source=np.array([str(p.relative_to(src)) for p, _, _ in rows]), force=force)
    return PrepareResult(out=Path(out), manifest=manifest, seconds=0.0)


TINY = registry.DatasetSpec(
    name="tiny", folder="tiny-faces", classes=TINY_CLASSES, splits=(registry.FixedSplits("train", "val", "test"),),
    paper_optimizer="sgd-gc", paper_column="tiny", paper_label="Tiny %", reader=read_tiny, aliases=("tiny-faces",),
)


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """TINY registered, FER_DATA_DIR a fresh folder, the synthetic source under tmp_path/src."""
    monkeypatch.setenv("FER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no ImageNet weights: the scratch ladder
    registry.register(TINY)
    try:
        yield make_tiny_source(tmp_path / "src")
    finally:
        registry.unregister("tiny")


def test_lookup_names_aliases_and_unknown_names() -> None:
    assert registry.get("CK+48") is registry.get("ckplus") is registry.CKPLUS
    assert registry.get("FER2013") is registry.FER2013
    assert registry.find("raf-db") is None
    with pytest.raises(FerError, match=r"unknown dataset 'raf-db': known datasets are fer2013, ck\+$"):
        registry.get("raf-db")
    with pytest.raises(FerError, match="dataset ck-other: ckplus, ck\\+48, ckplus48 already registered"):
        registry.register(registry.DatasetSpec(**{**registry.CKPLUS.__dict__, "name": "ck-other"}))
    assert registry.names() == ["fer2013", "ck+"]


def test_registered_dataset_runs_prepare_train_evaluate_ablate(tiny: Path, tmp_path: Path) -> None:
    assert registry.get("TINY-FACES") is TINY and "tiny" in registry.names()
    with pytest.raises(FerError, match="known datasets are fer2013, ck\\+, tiny"):
        registry.get("nope")

    # prepare: the registered reader, into the registered folder under FER_DATA_DIR
    result = registry.prepare("tiny", tiny)
    assert result.out == tmp_path / "data" / "tiny-faces"
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["name"] == "tiny" and manifest["classes"] == list(TINY_CLASSES)
    assert {s: sum(c.values()) for s, c in manifest["counts"].items()} == TINY_SPLITS
    ds = registry.load_dataset("tiny")
    plan = plan_splits(ds, None)
    assert (plan.val_name, plan.test_name, len(plan.val), len(plan.test)) == ("val", "test", 6, 6)

    # train by name: the registry's optimizer, selection and report splits
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--dataset", "tiny", "--model", "resnet34", "--no-pretrained", "--epochs", "1",
                              "--batch-size", "4", "--device", "cpu", "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["optimizer"] == "sgd-gc" and config["config"]["dataset"] == "tiny"
    assert (run / "best.pt").is_file() and (run / "train_summary.json").is_file()

    # evaluate: the report split of the registered rule, no paper table for a dataset it has none for
    res = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["split"] == "test" and metrics["num_samples"] == 6 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["paper_per_class"] is None and metrics["classes"] == list(TINY_CLASSES)
    assert (run / "metrics.json").is_file()

    # ablate: keyed and labelled by the registry, the registered optimizer with and without GC
    out = tmp_path / "abl"
    res = runner.invoke(app, ["ablate", "--dataset", "tiny", "--epochs", "1", "--train-subset", "8", "--batch-size", "4",
                              "--seeds", "0", "--device", "cpu", "--no-estimate", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    (table,) = json.loads((out / "ablation.json").read_text())["tables"]
    assert (table["dataset"], table["column"]) == ("tiny", "Tiny %")
    rows = {r["name"]: r for r in table["rows"] if r["status"] == "done"}
    assert {n: r["optimizer"] for n, r in rows.items()} == {
        "ResNet34": "sgd", "ResNet34_BCN": "sgd", "ResNet34_BCN_GC": "sgd-gc"}
    assert all(r["ours_mean_pct"] is not None and not r["in_paper"] for r in rows.values())
    runs = [json.loads(p.read_text())["config"] for p in sorted(out.rglob("config.json"))]
    assert sorted(r["optimizer"] for r in runs) == ["sgd", "sgd", "sgd-gc"]
    assert (out / "ablation.csv").read_text().count("\ntiny,") == len(table["rows"])
