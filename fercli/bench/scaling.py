"""`fer bench --nproc N`: data-parallel scaling of the real `fer train`, measured in one run.

Both measurements train the same model on the same synthetic faces (throughput does not
depend on pixel values) through the real command line, so they include DDP's gradient
all-reduce and everything `fer train` does per step:

    reference   `fer train` in 1 process
    scaled      `fer train --nproc N` (torchrun, gloo on CPU / NCCL on CUDA)

img/s is the last epoch's (history.csv `img_per_s`: training steps only, after the first
epoch has paid start-up and warm-up). Scaling efficiency = N-process img/s ÷ (N × 1-process
img/s): 1.0 is perfect. On CPU each process gets `threads_per_proc` threads (1 by default),
so N processes use N cores where the reference uses one.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fercli.data.prepared import FER2013_CLASSES, write_prepared
from fercli.errors import FerError


@dataclass(frozen=True)
class ScalingConfig:
    nproc: int = 2
    device: str = "cpu"
    model: str = "resnet34"
    batch_size: int = 32  # the global batch, in both runs
    steps: int = 6  # optimizer steps per epoch
    epochs: int = 2  # the last one is timed
    threads_per_proc: int = 1  # CPU: torch threads in each process
    timeout_s: float = 600.0


def _synthetic(path: Path, train: int) -> Path:
    rng = np.random.default_rng(0)
    n = train + 16
    split = np.array(["train"] * train + ["public_test"] * 8 + ["private_test"] * 8)
    write_prepared(path, name="fer2013", classes=FER2013_CLASSES,
                   images=rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
                   labels=rng.integers(0, 7, n), split=split,
                   source=np.array([f"synthetic:{i}" for i in range(n)]))
    return path


def _run(cfg: ScalingConfig, data: Path, out: Path, nproc: int | None) -> float:
    cmd = [sys.executable, "-m", "fercli", "train", "--dataset", str(data), "--model", cfg.model,
           "--no-pretrained", "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
           "--device", cfg.device, "--checkpoint-every", str(cfg.epochs), "--out", str(out), "-q"]
    env = dict(os.environ, FER_OFFLINE="1", OMP_NUM_THREADS=str(cfg.threads_per_proc))
    if nproc:
        cmd += ["--nproc", str(nproc)]
    elif cfg.device == "cpu":
        cmd += ["--threads", str(cfg.threads_per_proc)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=cfg.timeout_s)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise FerError(f"scaling run {'with --nproc ' + str(nproc) if nproc else 'in 1 process'} failed: {last}")
    rows = list(csv.DictReader((out / "history.csv").open()))
    return float(rows[-1]["img_per_s"])


def run_scaling(cfg: ScalingConfig) -> dict[str, Any]:
    if cfg.nproc < 2:
        raise FerError(f"--nproc must be ≥ 2 to measure scaling, got {cfg.nproc}")
    if cfg.batch_size % cfg.nproc:
        raise FerError(f"--batch-size {cfg.batch_size} must divide evenly across {cfg.nproc} processes")
    with tempfile.TemporaryDirectory(prefix="fer-scaling-") as tmp:
        root = Path(tmp)
        data = _synthetic(root / "data", cfg.steps * cfg.batch_size)
        one = _run(cfg, data, root / "one", None)
        many = _run(cfg, data, root / "many", cfg.nproc)
    return {
        "nproc": cfg.nproc, "device": cfg.device, "model": cfg.model, "global_batch": cfg.batch_size,
        "steps_per_epoch": cfg.steps, "threads_per_proc": cfg.threads_per_proc,
        "one_process_img_per_s": round(one, 2), "n_process_img_per_s": round(many, 2),
        "speedup": round(many / one, 3), "scaling_efficiency": round(many / (cfg.nproc * one), 3),
        "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
    }
