"""--checkpoint-every: last.pt (with optimizer state) on a cadence and at the end, best.pt
weights only, checkpoint and eval seconds in history.csv, and --resume from a sparse cadence."""

from __future__ import annotations

import csv

import pytest
import torch

from fercli.errors import FerError
from fercli.model import checkpoints
from fercli.train import config, runs
from tests.fixtures import make_fer_like, tiny_cfg


@pytest.fixture()
def writes(monkeypatch):
    """Every checkpoint write: (file name, epoch index, has optimizer state)."""
    seen: list[tuple[str, int, bool]] = []
    real = checkpoints.save_checkpoint

    def spy(path, payload):
        seen.append((path.name, payload["epoch"], "optimizer" in payload))
        real(path, payload)

    monkeypatch.setattr(checkpoints, "save_checkpoint", spy)
    return seen


def small(tmp_path, **kw):
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    return tiny_cfg(ds, tmp_path / "run", **{"batch_size": 4, "epochs": 3, **kw})


@pytest.mark.parametrize("every,expected", [("2", [1, 2]), ("1000s", [0, 2]), ("0s", [0, 1, 2])])
def test_last_checkpoint_follows_the_cadence(tmp_path, writes, every, expected):
    runs.train(small(tmp_path, checkpoint_every=every))
    assert [e for name, e, _ in writes if name == "last.pt"] == expected
    assert all(opt for name, _, opt in writes if name == "last.pt")
    assert not any(opt for name, _, opt in writes if name == "best.pt")  # best.pt: weights only
    assert "optimizer" not in checkpoints.load_checkpoint(tmp_path / "run" / "best.pt")
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert len(rows) == 3
    for row in rows:
        assert float(row["eval_seconds"]) > 0 and float(row["checkpoint_seconds"]) >= 0
    wrote = {e for name, e, _ in writes}
    for i, row in enumerate(rows):  # the device waited for a checkpoint only when one was written
        assert (float(row["checkpoint_seconds"]) > 0) == (i in wrote)


def test_resume_from_a_sparse_cadence_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """Interrupted in epoch 3 with last.pt from epoch 2 (cadence 2): --resume repeats the
    uninterrupted run bit for bit (weights and history). The SIGKILLed-process version of
    this is tests/test_reliability.py. The recipe regularisers are on (random erasing, mixup,
    weight EMA): their draws replay and the EMA resumes from last.pt, and best.pt holds the
    average, not the live weights."""
    cfg = small(tmp_path, checkpoint_every="2", epochs=3, ema=0.9, mixup=0.4, random_erasing=0.5)
    # The uninterrupted run saves last.pt every epoch (the cadence changes no math), and the
    # weight average of each epoch is kept to check best.pt against below.
    averages: dict[int, dict[str, torch.Tensor]] = {}
    real_save = checkpoints.save_checkpoint

    def keep_average(path, payload):
        if path.name == "last.pt":
            averages[payload["epoch"]] = {k: v.clone() for k, v in payload["ema"]["module"].items()}
        real_save(path, payload)

    monkeypatch.setattr(checkpoints, "save_checkpoint", keep_average)
    (full,) = runs.train(config.make_train_config(**{**cfg.__dict__, "checkpoint_every": "1",
                                                      "out": str(tmp_path / "full")}))
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    assert sorted(averages) == [0, 1, 2]

    class Kill(Exception):
        pass

    def die_in_epoch_3(kind, info):
        if kind == "epoch_start" and info["epoch"] == 3:
            raise Kill

    with pytest.raises(Kill):
        runs.train(cfg, on_event=die_in_epoch_3)
    assert checkpoints.load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1  # epochs 1–2 kept
    with pytest.raises(FerError, match="--resume"):  # an interrupted run is never overwritten silently
        runs.train(cfg)
    (resumed,) = runs.train(config.make_train_config(**{**cfg.__dict__, "resume": True}))
    strip = lambda hs: [{k: v for k, v in h.items() if k != "img_per_s" and not k.endswith("_seconds")} for h in hs]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    full_last = checkpoints.load_checkpoint(tmp_path / "full" / "last.pt")
    run_last = checkpoints.load_checkpoint(tmp_path / "run" / "last.pt")
    a, b = full_last["model"], run_last["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = full_last["ema"]["module"], run_last["ema"]["module"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert float(full_last["ema"]["t"]) == float(run_last["ema"]["t"]) == 3 * 2  # 3 epochs × 2 steps
    assert any(not torch.equal(a[k], ema_a[k]) for k in a)  # the average is not the live weights
    best = checkpoints.load_checkpoint(tmp_path / "full" / "best.pt")
    # The selection rule: highest val accuracy, ties to the lower val loss (history's 1-based epochs).
    chosen = max(range(3), key=lambda i: (full.history[i]["val_acc"], -full.history[i]["val_loss"]))
    assert best["epoch"] == chosen
    # best.pt holds the weight average of the chosen epoch, not its live weights.
    assert all(torch.equal(best["model"][k], averages[chosen][k].contiguous()) for k in best["model"])
    with pytest.raises(FerError, match="--mixup"):  # a changed regulariser would not replay the run
        runs.train(config.make_train_config(**{**cfg.__dict__, "resume": True, "mixup": 0.2}))


@pytest.mark.parametrize("bad", ["0", "-3", "soon", "-5s", "s"])
def test_bad_cadence_is_a_one_line_error(bad):
    with pytest.raises(FerError, match="--checkpoint-every"):
        config.checkpoint_cadence(bad)
