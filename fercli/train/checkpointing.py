"""A run's checkpoints: what best.pt and last.pt hold, when they are written, the thread that
writes them, what a failed write tells the user, and the disk space they need.

    best.pt  the selected epoch's weights (the weight average with --ema); no optimizer state
    last.pt  the live weights, optimizer state, the weight average (--ema) and the history:
             what --resume continues from; written on the --checkpoint-every cadence

Both go through fercli.model.checkpoints.save_checkpoint (temp file + rename), so a kill or a
full disk leaves the previous complete file. The writes run on one background thread while the
device trains on; a write that fails stops the run at the next train step with one FerError
naming the file, the epoch and the step, and saying how to continue.

Before the first epoch, `ensure_checkpoint_space` compares what the checkpoints will need with
the free space of the disk they go to, refuses a run that cannot fit, and returns the estimate
that `fer train` and `fer ablate` print. A run with keep_last off (`--no-keep-last`; `fer ablate`'s
default) removes last.pt once it has finished (fercli.train.runs).
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fercli.errors import FerError
from fercli.files import WriteFault
from fercli.model import checkpoints as checkpoint_files  # save_checkpoint looked up at call time
from fercli.model.checkpoints import BEST_CHECKPOINT, CHECKPOINT_FORMAT, LAST_CHECKPOINT, cpu_copy
from fercli.model.networks import freeze_trunks, model_from_spec
from fercli.train.config import TrainConfig, checkpoint_cadence

MB = 1e6
# A machine fault, not a bug: these end the run with one line (exit code 1).
_FULL = (errno.ENOSPC, errno.EDQUOT)
_TORCH_WRITE_FAILED = ("inline_container", "unexpected pos", "PytorchStreamWriter")
# Room for what a checkpoint holds besides tensors (zip records, history, config), per file.
FILE_OVERHEAD = 1 << 20
WRITER_THREAD = "fer-checkpoint-writer"


@dataclass
class Cadence:
    """--checkpoint-every state: last.pt every `epochs` epochs, or once `seconds` passed
    since the last write (and after this process's first epoch, so an early kill can
    resume); always after the final epoch. best.pt (weights only) whenever selection improves."""

    epochs: int | None
    seconds: float | None
    last: float
    wrote: bool = False

    @classmethod
    def parse(cls, spec: str) -> Cadence:
        return cls(*checkpoint_cadence(spec), last=time.perf_counter())

    def due(self, epoch: int, total: int) -> bool:
        if epoch + 1 == total:
            return True
        if self.epochs:
            return (epoch + 1) % self.epochs == 0
        return not self.wrote or time.perf_counter() - self.last >= (self.seconds or 0.0)


@dataclass(frozen=True)
class _Job:
    path: Path
    payload: dict[str, Any]
    epoch: int  # 0-based epoch whose state the payload holds


class Checkpointer:
    """best.pt and last.pt of one run (rank 0), written on one background thread.

    At most one write is in flight, so files land in order. A failure in the thread is kept and
    raised in the training thread by check() (every train step), wait() or the next save(),
    as a FerError that says which file, epoch and step, and which last.pt survives.
    """

    def __init__(self, run_dir: Path, identity: dict[str, Any], *, cadence: Cadence, epochs: int,
                 steps_per_epoch: int, last_good: int | None) -> None:
        """identity: the fields every payload repeats (model_spec, classes, config, dataset,
        versions, world_size). last_good: 0-based epoch of the last.pt already on disk
        (--resume), None when this run has not written one."""
        self.run_dir, self.cadence, self.epochs = Path(run_dir), cadence, epochs
        self.steps_per_epoch = steps_per_epoch
        self.last_good = last_good
        self._head = {"format": CHECKPOINT_FORMAT, "model_spec": identity["model_spec"],
                      "classes": identity["classes"]}
        self._tail = {k: v for k, v in identity.items() if k not in ("model_spec", "classes")}
        self._thread: threading.Thread | None = None
        self._failed: tuple[_Job, BaseException] | None = None

    # ------------------------------------------------------------------ payloads (the one place)

    def payloads(self, epoch: int, *, model: Any, optimizer: Any, ema: Any, best: dict[str, Any],
                 history: list[dict[str, Any]], improved: bool, due: bool) -> list[_Job]:
        """CPU copies of this moment's state, so training goes on while they are written:
        best.pt when selection improved, last.pt when the cadence is due."""
        weights = None
        if due or ema is None:  # live weights; compile's `_orig_mod.` prefix stripped
            weights = cpu_copy({k.replace("_orig_mod.", ""): v for k, v in model.state_dict().items()}, True)
        selected = weights if ema is None else cpu_copy(ema.module.state_dict(), True)
        base = {**self._head, "model": selected, "epoch": epoch, "best": dict(best), **self._tail,
                "history": [dict(h) for h in history]}
        jobs = [_Job(self.run_dir / BEST_CHECKPOINT, base, epoch)] if improved else []
        if due:
            last = {**base, "optimizer": cpu_copy(optimizer.state_dict()), "model": weights}
            if ema is not None:
                last["ema"] = cpu_copy(ema.state_dict())
            jobs.append(_Job(self.run_dir / LAST_CHECKPOINT, last, epoch))
        return jobs

    def save(self, epoch: int, *, model: Any, optimizer: Any, ema: Any, best: dict[str, Any],
             history: list[dict[str, Any]], improved: bool) -> None:
        """Queue this epoch's checkpoints. history[-1] is the epoch's row: its
        checkpoint_seconds (how long the device waited: the previous write, then the CPU
        copies) is filled in here, in the row and in the payloads' copy of it."""
        due = self.cadence.due(epoch, self.epochs)
        if not (improved or due):
            return
        t0 = time.perf_counter()
        self.wait()
        jobs = self.payloads(epoch, model=model, optimizer=optimizer, ema=ema, best=best, history=history,
                             improved=improved, due=due)
        history[-1]["checkpoint_seconds"] = round(time.perf_counter() - t0, 3)
        for job in jobs:  # (best.pt and last.pt share one copy of the history)
            job.payload["history"][-1]["checkpoint_seconds"] = history[-1]["checkpoint_seconds"]
        if due:
            self.cadence.last, self.cadence.wrote = time.perf_counter(), True
        self._thread = threading.Thread(target=self._write, args=(jobs,), name=WRITER_THREAD, daemon=True)
        self._thread.start()

    def _write(self, jobs: list[_Job]) -> None:
        job = None
        try:
            for job in jobs:
                checkpoint_files.save_checkpoint(job.path, job.payload)
                if job.path.name == LAST_CHECKPOINT:
                    self.last_good = job.epoch
        except BaseException as exc:  # raised in the training thread by check() / wait()
            self._failed = (job, exc)  # type: ignore[assignment]

    # ------------------------------------------------------------------ the training thread's side

    def check(self) -> None:
        """Raise a failed background write without waiting for anything (every train step)."""
        if self._failed is not None:
            self.wait()

    def wait(self) -> None:
        """Wait for the write in flight; raise its failure."""
        self._join()
        if self._failed is not None:
            job, exc = self._failed
            self._failed = None
            raise self.stopped(job.path, job.epoch, exc, need=_tensor_bytes(job.payload)) from None

    def abandon(self) -> None:
        """The run is stopping for another reason: let a started write land (atomically) and
        keep its failure, if any, from hiding that reason."""
        self._join()
        self._failed = None

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stopped(self, path: Path, epoch: int, exc: BaseException, need: int | None = None) -> BaseException:
        """The one-line error for a run file that could not be written during `epoch`
        (0-based): what failed, why, and how to continue. A bug is returned unchanged."""
        reason = _write_failure(path, exc, need)
        if reason is None:
            return exc
        self.abandon()  # the write in flight decides which last.pt survives
        step = (epoch + 1) * self.steps_per_epoch
        last = self.run_dir / LAST_CHECKPOINT
        fix = "free space" if _is_full(exc) else f"make {self.run_dir} writable"
        # `fer train` and `fer ablate` both get here; each continues in its own way.
        if self.last_good is not None:
            then = (f"{last} from epoch {self.last_good + 1} is kept: {fix}, then `fer train ... --resume` "
                    f"(same --out) continues it and a rerun of `fer ablate` resumes it by itself")
        else:
            then = (f"no {LAST_CHECKPOINT} was written yet: {fix}, then `fer train ... --force` (same --out) "
                    f"starts it over and a rerun of `fer ablate` does so by itself")
        return FerError(f"training stopped in epoch {epoch + 1} (step {step}): cannot write {path}: "
                        f"{reason}; {then}", exit_code=1)


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, WriteFault)) and exc.errno:
        return exc.errno in _FULL
    text = str(exc)
    return any(s in text for s in _TORCH_WRITE_FAILED) or "no space" in text.lower()


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a payload (what its file needs, give or take FILE_OVERHEAD)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write_failure(path: Path, exc: BaseException, need: int | None = None) -> str | None:
    """Why writing `path` failed, in words (free space when the disk is full), or None when
    `exc` is not a failed write (a bug: it keeps its traceback)."""
    if isinstance(exc, WriteFault) and exc.errno in _FULL:  # same words, with this file's size
        return f"{os.strerror(exc.errno).lower()} ({free_space_text(path, need if need is not None else exc.needed)})"
    if isinstance(exc, WriteFault) and any(s in str(exc) for s in _TORCH_WRITE_FAILED):
        exc = RuntimeError(str(exc))  # torch's short write, diagnosed by fercli.files as no errno
    if isinstance(exc, FerError):  # fercli.files said it in one line, maybe naming the file
        return str(exc).removeprefix(f"{path}: ")
    if isinstance(exc, OSError):
        text = (exc.strerror or str(exc) or type(exc).__name__).lower()
        return f"{text} ({free_space_text(path, need)})" if exc.errno in _FULL else text
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILED):
        # torch's zip writer reports a short write as "unexpected pos": the disk filled up.
        return f"torch could not finish the file, the disk is probably full ({free_space_text(path, need)})"
    return None


# ---------------------------------------------------------------------------- space


def _existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (a run directory is made later)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_space_text(path: Path, need: int | None = None) -> str:
    """'needs ~N MB, M MB free' for a file `path` of about `need` bytes."""
    needs = f"needs ~{math.ceil((need + FILE_OVERHEAD) / MB)} MB, " if need is not None else ""
    try:
        return f"{needs}{shutil.disk_usage(_existing(Path(path).parent)).free / MB:.0f} MB free"
    except OSError:
        return f"{needs}free space unknown"


def checkpoint_bytes(cfg: TrainConfig, num_classes: int = 7) -> tuple[int, int]:
    """(best.pt, last.pt) bytes of a run of `cfg`, counted on its architecture built on the
    meta device (no memory, no weights read). last.pt adds the optimizer state (Adam/AdamW:
    two moments per trainable weight; SGD: one momentum buffer) and with --ema the average."""
    spec = {"name": cfg.model, "num_classes": num_classes, "image_size": cfg.image_size,
            "shared_backbone": cfg.shared_backbone}
    with torch.device("meta"):
        model = model_from_spec(spec)
    if cfg.freeze_backbone:
        freeze_trunks(model)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    moments = 1 if cfg.optimizer.startswith("sgd") else 2
    last = weights + moments * trainable + (weights if cfg.ema > 0 else 0)
    return weights + FILE_OVERHEAD, last + FILE_OVERHEAD


@dataclass(frozen=True)
class SpaceEstimate:
    where: Path  # the folder whose disk was measured
    runs: int
    best_bytes: int  # one best.pt (the largest, of several runs)
    last_bytes: int  # one last.pt (the largest)
    need_bytes: int  # free space the runs need on this disk, at the peak
    free_bytes: int
    kept_bytes: int = 0  # what the runs leave on this disk once all have finished
    pruned: int = 0  # runs that remove their last.pt when they finish (keep_last off)

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.free_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"where": str(self.where), "runs": self.runs, "best_pt_bytes": self.best_bytes,
                "last_pt_bytes": self.last_bytes, "need_bytes": self.need_bytes, "kept_bytes": self.kept_bytes,
                "free_bytes": self.free_bytes, "runs_keeping_only_best_pt": self.pruned, "fits": self.fits}

    def text(self) -> str:
        """'disk: ~N MB for the checkpoints of ... in WHERE (...), M MB free' (one line)."""
        runs = f"{self.runs} runs" if self.runs > 1 else "the run"
        each = " each" if self.runs > 1 else ""
        if self.pruned == self.runs:
            files = f"best.pt ~{_mb(self.best_bytes)} MB kept{each}; last.pt ~{_mb(self.last_bytes)} MB while it trains"
        else:
            files = f"best.pt ~{_mb(self.best_bytes)} MB + last.pt ~{_mb(self.last_bytes)} MB{each}"
        return (f"disk: ~{_mb(self.need_bytes)} MB for the checkpoints of {runs} on the disk of {self.where} ({files}; "
                f"~{_mb(self.kept_bytes)} MB stay afterwards), {self.free_bytes / MB:,.0f} MB free")


def _mb(n: int) -> str:
    return f"{math.ceil(n / MB):,}"


def estimate_checkpoint_space(cfgs: Sequence[TrainConfig], num_classes: int = 7,
                              concurrent: int = 1) -> list[SpaceEstimate]:
    """What the checkpoints of `cfgs` (one run each, in cfg.out) need, per disk.

    Each run keeps one best.pt and one last.pt (a run with keep_last off removes last.pt
    once it has finished); --checkpoint-every sets how often last.pt is replaced, not how many
    are kept. Replacing a file needs room for its temp copy beside the old one, so the peak adds
    one last.pt per run writing at once (`concurrent`), two where last.pt is not kept (it is
    not counted among the kept files). Checkpoints already in a run directory (--resume,
    --force) are replaced, so their space counts as free.
    """
    sizes: dict[tuple[Any, ...], tuple[int, int]] = {}
    disks: dict[int, dict[str, Any]] = {}
    for cfg in cfgs:
        key = (cfg.model, cfg.image_size, cfg.shared_backbone, cfg.freeze_backbone, cfg.optimizer, cfg.ema > 0)
        if key not in sizes:
            sizes[key] = checkpoint_bytes(cfg, num_classes)
        best, last = sizes[key]
        run_dir = Path(cfg.out) if cfg.out else Path("runs")
        try:
            where = _existing(run_dir)
            old = sum(f.stat().st_size for f in (run_dir / BEST_CHECKPOINT, run_dir / LAST_CHECKPOINT) if f.is_file())
            disk = disks.setdefault(os.stat(where).st_dev, {"where": where, "runs": 0, "kept": 0, "old": 0,
                                                            "best": 0, "last": 0, "pruned": 0})
        except OSError:  # a folder that cannot be looked at: the run's own error will say so
            continue
        disk["runs"] += 1
        disk["pruned"] += not cfg.keep_last
        # + history.csv, config.json, loss_curve.png
        disk["kept"] += best + (last if cfg.keep_last else 0) + FILE_OVERHEAD
        disk["old"] += old
        disk["best"], disk["last"] = max(disk["best"], best), max(disk["last"], last)
    out = []
    for d in disks.values():
        writing = min(concurrent, d["runs"]) * (2 if d["pruned"] else 1)
        need = max(0, d["kept"] - d["old"]) + d["last"] * writing
        try:
            free = shutil.disk_usage(d["where"]).free
        except OSError:
            continue
        out.append(SpaceEstimate(where=d["where"], runs=d["runs"], best_bytes=d["best"], last_bytes=d["last"],
                                 need_bytes=need, free_bytes=free, kept_bytes=d["kept"], pruned=d["pruned"]))
    return out


def ensure_checkpoint_space(cfgs: Sequence[TrainConfig], num_classes: int = 7,
                            concurrent: int = 1) -> list[SpaceEstimate]:
    """Refuse, before the first epoch, runs whose checkpoints cannot fit on their disk; else
    return the estimate per disk (what `fer train` and `fer ablate` print)."""
    estimates = estimate_checkpoint_space(cfgs, num_classes, concurrent)
    for est in estimates:
        if not est.fits:
            runs, per = (f"{est.runs} runs", "per run, up to ") if est.runs > 1 else ("the run", "")
            keep = (" (best.pt only is kept once a run finishes)" if est.pruned == est.runs else
                    "; --no-keep-last keeps only best.pt of a finished run" if not est.pruned else "")
            raise FerError(
                f"not enough disk space for {runs} in {est.where}: the checkpoints need ~"
                f"{_mb(est.need_bytes)} MB ({per}best.pt ~{_mb(est.best_bytes)} MB + "
                f"last.pt ~{_mb(est.last_bytes)} MB with the optimizer state, and a temporary "
                f"copy while replacing one){keep}, {est.free_bytes / MB:.0f} MB free: free space or choose another "
                f"--out", exit_code=1)
    return estimates
