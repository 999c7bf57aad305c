"""How long a `fer ablate` ladder will take, from a few timed train steps, before it starts.

`estimate_wall_time` times a few real train steps (the engine's TrainStep, on random faces of
the ladder's size, batch, optimizer and thread count) per architecture that still has runs to
train, and scales them by the epochs and images each run has left. The selection pass per
epoch counts as a forward pass (a third of a train step per image). It is an estimate: on a
shared machine the load changes while the ladder runs.

Takes the ladder's planned runs (fercli.ablation.ablate.PlannedRun: ds, rung, run_dir, tcfg)
without importing that module, which calls this one. No Typer/Rich here.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from fercli.data.prepared import MANIFEST_FILE
from fercli.data.resident import DeviceSplit
from fercli.device import autocast_dtype, resolve_device
from fercli.model.networks import build_model
from fercli.train.engine import make_train_step
from fercli.train.optim import build_optimizer

HOUR = 3600.0
FORWARD_SHARE = 1 / 3  # an eval image costs about a third of a train image (no backward, no step)


def epochs_done(run_dir: Path) -> int:
    """Epochs an unfinished run has recorded (rows of its history.csv)."""
    try:
        with (run_dir / "history.csv").open(newline="") as fh:
            return sum(1 for _ in csv.DictReader(fh))
    except OSError:
        return 0


def _manifest(path: Path) -> dict[str, Any]:

    try:
        obj = json.loads((path / MANIFEST_FILE).read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def split_sizes(run: Any) -> tuple[int, int]:
    """(train, selection) images of one planned run, from its dataset's manifest."""
    manifest = _manifest(run.ds.path)
    counts = manifest.get("counts") or {}

    def total(split: str) -> int:
        return int(sum((counts.get(split) or {}).values()))

    if run.ds.kfold:
        n = int(manifest.get("num_images") or total("all"))
        k = max(run.ds.num_folds, 3)
        train, val = n * (k - 2) // k, n // k  # test fold and selection fold held out
    else:
        train, val = total("train"), total("PublicTest") or total("val")
    if run.tcfg.train_subset:
        train = min(train, int(run.tcfg.train_subset))
    return max(train, 1), max(val, 0)


def _time_step(run: Any, classes: int, steps: int) -> float:
    """Seconds per train step of `run`'s architecture, optimizer, batch and threads (median of
    `steps` after one warm-up), on random uint8 faces."""
    import torch


    t = run.tcfg
    device = resolve_device(t.device)
    threads = torch.get_num_threads()
    if t.threads is not None and device.type == "cpu":
        torch.set_num_threads(max(1, t.threads))
    try:
        gen = torch.Generator().manual_seed(0)
        bs = int(t.batch_size)
        x = torch.randint(0, 256, (bs, 1, t.image_size, t.image_size), dtype=torch.uint8, generator=gen)
        data = DeviceSplit(x.to(device), torch.randint(0, classes, (bs,), generator=gen).to(device))
        model = build_model(t.model, classes, image_size=t.image_size, shared_backbone=t.shared_backbone).to(device)
        model.train()
        opt = build_optimizer(t.optimizer if t.optimizer != "auto" else "adam", model, lr=t.lr,
                              weight_decay=t.weight_decay)
        step = make_train_step(model, opt, data, batch_size=bs, amp_dtype=autocast_dtype(device, t.precision),
                               augment=t.augment)
        idx = torch.arange(bs, device=device)
        r = torch.rand((bs, step.draw_width), generator=gen).to(device)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            loss, _ = step(idx, r)
            float(loss)  # wait for the device
            if i:
                times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]
    finally:
        torch.set_num_threads(threads)


def estimate_wall_time(runs: list[Any], statuses: list[str], device_name: str, steps: int = 2,
                       on_event: Any = None) -> dict[str, Any]:
    """Expected wall time of the planned `runs` that still train (statuses[i] != "cached"; a
    "resumed" one only for the epochs it has left), from `steps` timed train steps per
    architecture. Returns seconds, per-row seconds, and advice when it is over an hour on a CPU."""
    emit = on_event or (lambda kind, info: None)
    step_s: dict[tuple[Any, ...], float] = {}
    per_row: dict[str, float] = {}
    total = 0.0
    for run, status in zip(runs, statuses, strict=True):
        if status == "cached":
            continue
        t = run.tcfg
        key = (t.model, t.shared_backbone, t.optimizer, t.batch_size, t.image_size)
        if key not in step_s:
            emit("ablate_estimate_step", {"model": t.model, "shared_backbone": t.shared_backbone})
            classes = len(_manifest(run.ds.path).get("classes") or [0] * 7)
            step_s[key] = _time_step(run, classes, steps)
        train, val = split_sizes(run)
        left = t.epochs - (epochs_done(run.run_dir) if status == "resumed" else 0)
        per_epoch = step_s[key] * (math.ceil(train / t.batch_size) + FORWARD_SHARE * val / t.batch_size)
        seconds = max(left, 0) * per_epoch
        per_row[run.rung.name] = per_row.get(run.rung.name, 0.0) + seconds
        total += seconds
    device = resolve_device(device_name)
    to_train = sum(s != "cached" for s in statuses)
    advice = None
    if device.type == "cpu" and total > HOUR:
        smaller = ("--folds-limit N (fewer folds, labelled so)" if any(r.ds.kfold for r in runs)
                   else "--dataset ck+ (981 images, minutes per run)")
        advice = (f"about {total / HOUR:.1f} h on the CPU: try {smaller}, or a GPU (--device cuda). "
                  f"It runs anyway; an interrupted ladder continues where it stopped.")
    return {"seconds": total, "runs_to_train": to_train, "runs_total": len(statuses), "device": str(device),
            "per_row_seconds": per_row,
            "step_seconds": {f"{k[0]}{' (shared trunk)' if k[1] else ''} {k[2]} batch {k[3]}": v
                             for k, v in step_s.items()},
            "steps_timed": steps, "over_an_hour_on_cpu": advice is not None, "advice": advice}
