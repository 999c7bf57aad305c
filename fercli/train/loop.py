"""The epoch loop of a run: the Run object, and what one epoch does with it.

    Run                    one run's state: config, process (DDP rank), model, optimizer,
                           schedule, EMA, the train step, device data, history, best, checkpoints
    fit(run, emit)         the epoch loop, the same in one process and in every DDP rank
      run_epoch(run, epoch)         lr from the schedule, the epoch's draws, the steps
                                    (fercli.train.engine.train_one_epoch)
      end_epoch(run, epoch, ...)    rank 0 only: validate, select, checkpoint, history.csv

fercli.train.runs builds the Run (dataset, model, resume, run directory) and reports the result.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fercli.data.resident import DeviceSplit, epoch_generator
from fercli.errors import FerError
from fercli.files import atomic_write_text
from fercli.train import distributed, engine
from fercli.train.checkpointing import Checkpointer
from fercli.train.config import TrainConfig
from fercli.train.engine import TrainStep, evaluate
from fercli.train.optim import set_lr
from fercli.train.regularize import WeightEMA

# Progress events: ("epoch_start", {...}), ("step", {"images": n}), ("epoch_end", row).
ProgressCallback = Callable[[str, dict[str, Any]], None]
HISTORY_FILE = "history.csv"


@dataclass
class Run:
    """One run's state: everything an epoch reads or changes.

    history, best and start_epoch come from last.pt on --resume. checkpoints is rank 0's
    (None on the other ranks of a data-parallel run: they train the same steps and write
    nothing). The EMA is rank 0's too: it is what rank 0 validates and saves."""

    cfg: TrainConfig
    dist: distributed.DistInfo
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float]  # lr of a 0-based epoch
    ema: WeightEMA | None
    step: TrainStep  # the run's one train step (CUDA graph, compiled, DDP or eager)
    train_data: DeviceSplit
    val_data: DeviceSplit
    amp_dtype: torch.dtype | None
    run_dir: Path
    checkpoints: Checkpointer | None
    history: list[dict[str, Any]]
    best: dict[str, Any]
    start_epoch: int = 0

    @property
    def draw_batch(self) -> int:
        """The batch each epoch's permutation is cut into: the global B (every rank then takes
        its B / W columns), or B / W of a rank's own shard with --shard-data."""
        if self.dist.sharded:
            return distributed.local_batch(self.cfg.batch_size, self.dist)
        return self.cfg.batch_size

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: ceil(N / B) full batches (engine.epoch_batches)."""
        n = len(self.train_data)
        return -(-n // min(self.draw_batch, n))


def run_epoch(run: Run, epoch: int, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Epoch `epoch` (0-based) of `run`'s training: the schedule's lr, the epoch's seeded
    order and augmentation draws, then the steps. Returns mean loss, accuracy and images
    (the global batch's, all ranks together). on_step(images) runs after every step."""
    set_lr(run.optimizer, run.schedule(epoch))  # in place for a graph's device-tensor lr: no re-capture
    gen = epoch_generator(run.cfg.seed, epoch, run.train_data.x.device)
    return engine.train_one_epoch(run.model, run.optimizer, run.train_data, batch_size=run.draw_batch, gen=gen,
                                  amp_dtype=run.amp_dtype, augment=run.cfg.augment,
                                  channels_last=run.cfg.channels_last, step_fn=run.step, on_step=on_step,
                                  dist=run.dist)


def fit(run: Run, emit: ProgressCallback) -> int:
    """The epochs from run.start_epoch to the end; returns the images trained.

    Every process runs this loop (DDP keeps the ranks' weights identical); rank 0 also
    validates, selects and checkpoints after each epoch. A failed checkpoint write stops the
    loop at the next step (Checkpointer.check); any other stop lets a started write land."""
    ck = run.checkpoints
    report = _StepReport(emit, ck) if ck is not None else None
    images = 0
    try:
        for epoch in range(run.start_epoch, run.cfg.epochs):
            emit("epoch_start", {"epoch": epoch + 1, "epochs": run.cfg.epochs})
            if report is not None:
                report.flush()  # (starts the epoch's progress clock)
            t0 = time.perf_counter()
            tr = run_epoch(run, epoch, on_step=report)
            images += int(tr["images"])
            if ck is None or report is None:
                continue  # ranks > 0: no validation, no files
            report.flush()
            row = end_epoch(run, epoch, tr, t0)
            if epoch + 1 == run.cfg.epochs:
                ck.wait()  # the final last.pt is on disk before the run reports done
            emit("epoch_end", row)
        if ck is not None:
            ck.wait()
    except BaseException:
        if ck is not None:
            ck.abandon()  # a Ctrl-C or error still lets a started write land (atomically)
        raise
    return images


def end_epoch(run: Run, epoch: int, tr: dict[str, float], t0: float) -> dict[str, Any]:
    """Rank 0 after epoch `epoch`'s steps (begun at perf_counter `t0`): validate, keep the
    best by the selection rule (val accuracy, ties to the lower val loss), checkpoint, write
    history.csv; returns the history row. With --ema the average is validated and goes to
    best.pt; last.pt keeps the live weights (and the average) for --resume."""
    cfg, ck = run.cfg, run.checkpoints
    assert ck is not None
    train_seconds = time.perf_counter() - t0
    t_eval = time.perf_counter()
    selected = run.ema.module if run.ema is not None else run.model  # the weights selection is about
    va = evaluate(selected, run.val_data, batch_size=cfg.eval_batch_size, amp_dtype=run.amp_dtype,
                  channels_last=cfg.channels_last)
    # *_seconds and img_per_s are timings: the only columns a resumed run may not repeat.
    row = {"epoch": epoch + 1, "train_loss": round(tr["loss"], 6), "train_acc": round(tr["acc"], 6),
           "val_loss": round(va["loss"], 6), "val_acc": round(va["acc"], 6), "lr": run.schedule(epoch),
           "img_per_s": round(tr["images"] / max(train_seconds, 1e-9), 2),
           "epoch_seconds": round(time.perf_counter() - t0, 3),  # train + validation
           "eval_seconds": round(time.perf_counter() - t_eval, 3), "checkpoint_seconds": 0.0}
    run.history.append(row)
    best = run.best
    improved = va["acc"] > best["val_acc"] or (va["acc"] == best["val_acc"] and va["loss"] < best["val_loss"])
    if improved:
        run.best = {"epoch": epoch + 1, "val_acc": va["acc"], "val_loss": va["loss"]}
    ck.save(epoch, model=run.model, optimizer=run.optimizer, ema=run.ema, best=run.best, history=run.history,
            improved=improved)
    try:
        write_history(run.run_dir, run.history)
    except (OSError, FerError) as exc:
        raise ck.stopped(run.run_dir / HISTORY_FILE, epoch, exc) from None
    return row


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run_dir / HISTORY_FILE, buf.getvalue())


class _StepReport:
    """After every train step: surface a failed background checkpoint write, and report
    progress at most 4×/s (a per-step UI update costs host time a GPU step has not)."""

    def __init__(self, emit: ProgressCallback, checkpoints: Checkpointer) -> None:
        self.emit, self.checkpoints = emit, checkpoints
        self.pending, self.last = 0, time.perf_counter()

    def __call__(self, images: int) -> None:
        self.checkpoints.check()
        self.pending += images
        if time.perf_counter() - self.last >= 0.25:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.emit("step", {"images": self.pending})
        self.pending, self.last = 0, time.perf_counter()
