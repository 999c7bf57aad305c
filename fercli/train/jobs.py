"""Several whole training runs at once, each in its own process (its own CUDA context).

A batch-16 run leaves a GPU mostly idle; N runs side by side fill it. `run_configs` takes
finished TrainConfigs (each with its own `out`), starts up to `jobs` child processes

    python -m fercli.train.jobs CONFIG.json        (runs.train on that one config)

and spreads them over `devices` ("cuda:0,cuda:1" → each child sees one GPU through
CUDA_VISIBLE_DEVICES and trains on "cuda"; "cpu" entries train on the CPU). A child that
fails or is killed is reported and the others go on. Running it again skips finished runs
(train_summary.json present), resumes those with a last.pt, and restarts those that died
before their first checkpoint. Aggregate img/s = all images trained / wall time.

`fer train --seeds 0,1,2`, `fer train --fold all --jobs N` and `fer ablate --jobs N` use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fercli.data import registry
from fercli.errors import FerError
from fercli.files import atomic_write_json, read_json
from fercli.train.config import TrainConfig, resolve_optimizer, validate_config
from fercli.train.runs import check_fold_all, resolve_pretraining, run_dir_for, train

# ("job_start", {"name", "pid", "device", "mode"}), ("job_end", JobResult as dict)
JobEvent = Callable[[str, dict[str, Any]], None]

SUMMARY = "train_summary.json"


@dataclass(frozen=True)
class JobResult:
    name: str
    out: str
    status: str  # done | skipped (finished before) | failed | killed
    mode: str  # fresh | resume | restart | finished
    device: str
    returncode: int | None
    seconds: float
    images: int
    error: str | None  # the child's last stderr line, for failed/killed runs




def _plan(cfg: TrainConfig, force: bool) -> tuple[str, TrainConfig]:
    """What to do with one run directory: finished → skip; last.pt → resume; else start."""
    out = Path(str(cfg.out))
    if force or cfg.force:  # a config that asks for a fresh start gets one (fer ablate's reruns)
        return "fresh", dataclasses.replace(cfg, force=True, resume=False)
    if (out / SUMMARY).is_file():
        return "finished", cfg
    if (out / "last.pt").is_file():
        return "resume", dataclasses.replace(cfg, resume=True, force=False)
    if out.exists() and any(out.iterdir()):
        # Died before its first checkpoint: nothing to keep.
        return "restart", dataclasses.replace(cfg, force=True, resume=False)
    return "fresh", cfg


def _child_env(device: str) -> tuple[dict[str, str], str]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device[5:]  # the child sees exactly one GPU
        return env, "cuda"
    return env, device


def _last_line(path: Path) -> str | None:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def run_configs(cfgs: list[TrainConfig], *, jobs: int = 1, devices: tuple[str, ...] | None = None,
                force: bool = False, on_event: JobEvent | None = None,
                poll_s: float = 0.1) -> dict[str, Any]:
    """Run every config (each needs its own `out`), at most `jobs` at a time; returns
    {"results": [JobResult...], "seconds", "images", "img_per_s", "jobs", "devices"}."""
    if jobs < 1:
        raise FerError(f"--jobs must be ≥ 1, got {jobs}")
    outs = [c.out for c in cfgs]
    if any(o is None for o in outs) or len(set(outs)) != len(outs):
        raise FerError("every concurrent run needs its own --out directory")
    emit = on_event or (lambda kind, info: None)
    devs = devices or ("auto",)
    queue = list(enumerate(cfgs))
    running: dict[int, tuple[subprocess.Popen[bytes], str, str, str, float, Path, Any]] = {}
    results: dict[int, JobResult] = {}
    t0 = time.perf_counter()
    started = 0
    try:
        while queue or running:
            while queue and len(running) < jobs:
                i, cfg = queue.pop(0)
                name = Path(str(cfg.out)).name if len(cfgs) == 1 else str(Path(str(cfg.out)))
                mode, cfg = _plan(cfg, force)
                if mode == "finished":
                    results[i] = JobResult(name, str(cfg.out), "skipped", mode, "", 0, 0.0, 0, None)
                    emit("job_end", dataclasses.asdict(results[i]))
                    continue
                device = devs[started % len(devs)]
                started += 1
                env, dev = _child_env(device)
                if dev != "auto":
                    cfg = dataclasses.replace(cfg, device=dev)
                out = Path(str(cfg.out))
                out.parent.mkdir(parents=True, exist_ok=True)
                spec = out.parent / f".{out.name}.job.json"  # beside the run: train wants an empty --out
                spec.write_text(json.dumps(dataclasses.asdict(cfg)))
                log = out.parent / f"{out.name}.log"
                fh = log.open("wb")
                proc = subprocess.Popen([sys.executable, "-m", "fercli.train.jobs", str(spec)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=fh)
                running[i] = (proc, name, mode, device, time.perf_counter(), log, fh)
                emit("job_start", {"name": name, "pid": proc.pid, "device": device, "mode": mode})
            for i in list(running):
                proc, name, mode, device, t_start, log, fh = running[i]
                rc = proc.poll()
                if rc is None:
                    continue
                fh.close()
                del running[i]
                out = Path(str(cfgs[i].out))
                images = 0
                if rc == 0:
                    try:
                        s = read_json(out / SUMMARY, "run summary")
                        images = int(round(s["images_per_second"] * s["seconds"]))
                    except (FerError, KeyError, TypeError):
                        pass  # the run finished; only its image count (for img/s) is unknown
                status = "done" if rc == 0 else ("killed" if rc < 0 else "failed")
                err = None if rc == 0 else (_last_line(log) or (f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"))
                results[i] = JobResult(name, str(out), status, mode, device, rc,
                                       round(time.perf_counter() - t_start, 3), images, err)
                (out.parent / f".{out.name}.job.json").unlink(missing_ok=True)
                emit("job_end", dataclasses.asdict(results[i]))
            if running:
                time.sleep(poll_s)
    except BaseException:
        # Ctrl-C / an error in the parent: stop the children (their last.pt stays resumable).
        for proc, *_ in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc, *_ in running.values():
            proc.wait()
        raise
    seconds = time.perf_counter() - t0
    ordered = [results[i] for i in range(len(cfgs))]
    images = sum(r.images for r in ordered)
    return {"results": ordered, "seconds": round(seconds, 3), "images": images,
            "img_per_s": round(images / max(seconds, 1e-9), 2), "jobs": jobs, "devices": list(devs),
            "failed": sum(r.status in ("failed", "killed") for r in ordered)}




def train_many(cfg: TrainConfig, *, seeds: tuple[int, ...] | None = None, jobs: int = 1,
               devices: tuple[str, ...] | None = None, on_event: JobEvent | None = None) -> dict[str, Any]:
    """`fer train --seeds ... / --fold all` as concurrent runs under one root directory:
    ROOT/seed-S (several seeds) / fold-K (--fold all), each a normal run directory; a k-fold
    root gets its kfold.json (what `fer evaluate` aggregates) once all its folds finished."""
    validate_config(cfg)
    cfg, warning = resolve_pretraining(cfg)  # once here: every run starts the same way
    if warning and on_event is not None:
        on_event("warning", {"message": warning})
    ds = registry.load_dataset(cfg.dataset)
    cfg = resolve_optimizer(cfg, ds.name)
    folds: list[int | None] = [cfg.fold]
    if cfg.fold == -1:
        check_fold_all(ds)
        folds = list(range(int(ds.fold.max()) + 1))
    root = run_dir_for(cfg, ds.name)
    seeds = seeds or (cfg.seed,)
    cfgs, bases = [], []
    for seed in seeds:
        base = root / f"seed-{seed}" if len(seeds) > 1 else root
        bases.append((seed, base))
        for fold in folds:
            out = base / f"fold-{fold}" if cfg.fold == -1 else base
            cfgs.append(dataclasses.replace(cfg, seed=seed, fold=fold, out=str(out), resume=False, force=False))
    report = run_configs(cfgs, jobs=jobs, devices=devices, force=cfg.force, on_event=on_event)
    if cfg.fold == -1:
        for seed, base in bases:
            if all((base / f"fold-{f}" / SUMMARY).is_file() for f in folds):
                atomic_write_json(base / "kfold.json", {"folds": len(folds),
                                                         "config": dataclasses.asdict(dataclasses.replace(cfg, seed=seed))})
    report["root"] = str(root)
    return report


def _child(spec_path: str) -> int:
    """One run in this process: the config comes from the JSON file the scheduler wrote."""
    try:
        cfg = TrainConfig(**read_json(spec_path, "job config"))
        train(cfg)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
