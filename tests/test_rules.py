"""Rules that hold in several rooms are defined once: they agree wherever they are applied."""

from __future__ import annotations

import pytest

from fercli import paper
from fercli.data import registry
from fercli.errors import FerError
from fercli.model.networks import MIN_IMAGE_SIZE, build_model
from fercli.train import config


def test_one_minimum_image_size_for_train_bench_and_the_model() -> None:
    from fercli.bench.engine_bench import BenchConfig
    from fercli.bench.engine_bench import validate as validate_bench

    config.validate_config(config.make_train_config(None, image_size=MIN_IMAGE_SIZE))
    validate_bench(BenchConfig(image_size=MIN_IMAGE_SIZE))
    too_small = MIN_IMAGE_SIZE - 1
    for check in (lambda: config.validate_config(config.make_train_config(None, image_size=too_small)),
                  lambda: validate_bench(BenchConfig(image_size=too_small)),
                  lambda: build_model("resnet34", 7, image_size=too_small, pretrained=False)):
        with pytest.raises(FerError, match=f"--image-size must be an integer ≥ {MIN_IMAGE_SIZE}"):
            check()


@pytest.mark.parametrize("dataset, expected", [("fer2013", "adamw-gc"), ("ck+", "adam-gc"), ("ckplus", "adam-gc"),
                                               ("CK+48", "adam-gc"), ("my-faces", "adamw-gc")])
def test_the_papers_optimizers_come_from_one_table(dataset: str, expected: str) -> None:
    assert registry.paper_optimizer(dataset) == expected
    assert config.resolve_optimizer(config.make_train_config("paper"), dataset).optimizer == expected


def test_the_ablation_ladder_uses_the_papers_optimizers() -> None:
    from fercli.ablation import ablate, ladder

    for key, expected in (("fer2013", "adamw-gc"), ("ck+", "adam-gc")):
        ds = ablate._Dataset(key=key, ref=key, path=None, kfold=key == "ck+", num_folds=10, sha256="",  # type: ignore[arg-type]
                             paper_optimizer=registry.get(key).paper_optimizer, label=key)
        assert ladder.optimizer_for(ds, gc=True) == expected
        assert ladder.optimizer_for(ds, gc=False) == expected.removesuffix("-gc")


def test_the_paper_preset_is_the_papers_table() -> None:
    hp = paper.HYPERPARAMETERS
    cfg = config.make_train_config("paper")
    assert (cfg.batch_size, cfg.lr, cfg.epochs) == (hp["batch_size"], hp["learning_rate"], hp["epochs"])
