"""Training survives its own checkpoints: a checkpoint that cannot be written (full disk,
quota, read-only or vanished folder, torch's failed zip write) stops the run with one
`error:` line naming the epoch, the step and the file; the last good last.pt stays and
`--resume` finishes once the fault is gone. A run whose checkpoints cannot fit is refused
before its first epoch.

Faults are injected two ways: OSErrors raised from the checkpoint write (every machine), and
a real small tmpfs filled up (where `mount -t tmpfs` works, i.e. as root; skipped otherwise).
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from test_engine import make_fer_like, tiny_cfg
from typer.testing import CliRunner

from fercli import files
from fercli.cli import app
from fercli.errors import FerError
from fercli.files import TMP_PREFIX, atomic_save
from fercli.model import checkpoints
from fercli.train import checkpointing, runs
from fercli.train.checkpointing import WRITER_THREAD, Cadence, Checkpointer

runner = CliRunner()
Usage = namedtuple("Usage", "total used free")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(res) -> str:  # type: ignore[no-untyped-def]
    assert "Traceback" not in res.output, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _train_args(ds: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", str(ds), "--arch", "resnet34", "--no-pretrained", "--epochs", "2",
            "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--checkpoint-every", "1", "--out", str(out),
            "-q", *extra]


def _temp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(f"{TMP_PREFIX}*")]


# ----------------------------------------------------------------------------- the writer alone


def _checkpointer(run_dir: Path, last_good: int | None = None) -> Checkpointer:
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = {"model_spec": {"name": "toy"}, "classes": ["a", "b"], "config": {}, "world_size": 1}
    return Checkpointer(run_dir, identity, cadence=Cadence.parse("1"), epochs=5, steps_per_epoch=3,
                        last_good=last_good)


def _save(ck: Checkpointer, epoch: int) -> None:
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ck.save(epoch, model=model, optimizer=opt, ema=None, best={"epoch": epoch + 1, "val_acc": 0.5},
            history=[{"epoch": epoch + 1, "checkpoint_seconds": 0.0}], improved=True)


def _partial_write_then(exc: BaseException):  # type: ignore[no-untyped-def]
    """A save_checkpoint that gets as far as a temp file with some bytes in it, then fails."""
    def save(path, payload):  # type: ignore[no-untyped-def]
        with atomic_save(path) as tmp:
            tmp.write_bytes(b"PK\x03\x04 half a checkpoint")
            raise exc
    return save


FAULTS = [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device (needs ~", "free space"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded (needs ~", "free space"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system", "make {run} writable"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied", "make {run} writable"),
    # fercli.files names a folder that vanished under the write in its own words
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), "deleted while it was being written",
     "make {run} writable"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 85131264 vs 85131152"),
     "torch could not finish the file, the disk is probably full", "free space"),
    # fercli.files' own one-line error (it names the file: not repeated)
    (lambda path: FerError(f"{path}: no space left on device (needs ~86 MB, 3 MB free)"),
     "no space left on device (needs ~86 MB, 3 MB free)", "free space"),
]


@pytest.mark.parametrize("exc,reason,fix", FAULTS, ids=["ENOSPC", "EDQUOT", "EROFS", "EACCES", "vanished", "torch-zip",
                                                         "FerError"])
def test_a_failed_write_is_one_line_naming_epoch_step_and_file(tmp_path, monkeypatch, exc, reason, fix):
    run_dir = tmp_path / "run"
    ck = _checkpointer(run_dir, last_good=1)
    (run_dir / "last.pt").write_bytes(b"the good one")
    if callable(exc):
        exc = exc(run_dir / "best.pt")
    monkeypatch.setattr(checkpoints, "save_checkpoint", _partial_write_then(exc))
    _save(ck, epoch=3)
    with pytest.raises(FerError) as err:
        ck.wait()
    msg = str(err.value)
    assert "\n" not in msg and err.value.exit_code == 1
    assert f"epoch 4 (step 12): cannot write {run_dir / 'best.pt'}: {reason}" in msg
    assert f"{run_dir / 'last.pt'} from epoch 2 is kept: {fix.format(run=run_dir)}, then `fer train ... --resume`" in msg
    assert "`fer ablate` resumes it by itself" in msg
    assert (run_dir / "last.pt").read_bytes() == b"the good one" and _temp_leftovers(tmp_path) == []
    ck.wait()  # the failure is raised once, not again


def test_without_a_last_checkpoint_the_error_says_to_start_over(tmp_path, monkeypatch):
    ck = _checkpointer(tmp_path / "run")
    monkeypatch.setattr(checkpoints, "save_checkpoint", _partial_write_then(OSError(errno.ENOSPC, "No space")))
    _save(ck, epoch=0)
    with pytest.raises(FerError, match=r"no last.pt was written yet: free space, then `fer train \.\.\. --force` "
                                       r"\(same --out\) starts it over"):
        ck.wait()


def test_a_bug_in_the_writer_keeps_its_own_exception(tmp_path, monkeypatch):
    ck = _checkpointer(tmp_path / "run")
    monkeypatch.setattr(checkpoints, "save_checkpoint", _partial_write_then(KeyError("not a disk fault")))
    _save(ck, epoch=0)
    with pytest.raises(KeyError):
        ck.wait()


def test_check_raises_the_writers_failure_without_waiting(tmp_path, monkeypatch):
    """check() (called after every train step) returns at once while a write is in flight and
    raises once it has failed."""
    release = threading.Event()

    def slow_then_full(path, payload):  # type: ignore[no-untyped-def]
        release.wait(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_checkpoint", slow_then_full)
    ck = _checkpointer(tmp_path / "run")
    _save(ck, epoch=0)
    t0 = time.perf_counter()
    ck.check()  # in flight: nothing to report, no waiting
    assert time.perf_counter() - t0 < 1.0
    release.set()
    deadline = time.time() + 10
    with pytest.raises(FerError, match="epoch 1 .*no space left on device"):
        while time.time() < deadline:
            ck.check()
            time.sleep(0.01)


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.slow
def test_a_full_disk_at_last_pt_stops_the_run_and_resume_finishes(tmp_path, monkeypatch):
    """`fer train` whose second last.pt hits ENOSPC: one error line, exit 1, the first last.pt
    intact, no temp files; with the space back, `--resume` finishes the run."""
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    out = tmp_path / "run"
    real = checkpoints.save_checkpoint
    good: dict[str, str] = {}

    def full_at_second_last(path, payload):  # type: ignore[no-untyped-def]
        if path.name == "last.pt" and payload["epoch"] == 1:
            _partial_write_then(OSError(errno.ENOSPC, "No space left on device"))(path, payload)
        real(path, payload)
        good[path.name] = _sha(path)

    monkeypatch.setattr(checkpoints, "save_checkpoint", full_at_second_last)
    res = runner.invoke(app, _train_args(ds, out))
    assert res.exit_code == 1, res.output
    line = _one_error_line(res)
    assert f"epoch 2 (step 4): cannot write {out / 'last.pt'}: no space left on device" in line
    assert f"{out / 'last.pt'} from epoch 1 is kept" in line and "--resume" in line
    assert _sha(out / "last.pt") == good["last.pt"] and checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 0
    assert _temp_leftovers(out) == [] and not (out / "train_summary.json").exists()

    monkeypatch.setattr(checkpoints, "save_checkpoint", real)  # space freed
    # what a writer killed mid-checkpoint would have left: the resume sweeps it before its space check
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f"{TMP_PREFIX}{files._host_tag()}-{dead.pid}-last.pt").write_bytes(b"\0" * 100_000)
    res = runner.invoke(app, _train_args(ds, out, "--resume"))
    assert res.exit_code == 0, res.output
    last = checkpoints.load_checkpoint(out / "last.pt")
    assert last["epoch"] == 1 and [h["epoch"] for h in last["history"]] == [1, 2]
    assert (out / "train_summary.json").is_file() and _temp_leftovers(out) == []
    # The space estimate covers what was written, give or take a MB.
    cfg = runs.resolve_optimizer(tiny_cfg(ds, out), "fer2013")
    best_est, last_est = checkpointing.checkpoint_bytes(cfg)
    for est, f in ((best_est, out / "best.pt"), (last_est, out / "last.pt")):
        assert 0 <= est - f.stat().st_size <= 2 * checkpointing.FILE_OVERHEAD, (est, f.stat().st_size)


@pytest.mark.slow
def test_a_background_write_failure_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
    """best.pt of epoch 1 fails in the writer thread: the run stops after the first step of
    epoch 2, not at the end of the run or of the epoch."""
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    monkeypatch.setattr(checkpoints, "save_checkpoint", _partial_write_then(OSError(errno.ENOSPC, "No space")))
    steps = []
    real_make = runs.make_train_step

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        step = real_make(*args, **kwargs)
        real_call = step.__class__.__call__

        class Counted(step.__class__):  # type: ignore[misc, name-defined]
            def __call__(self, *a, **k):  # type: ignore[no-untyped-def]
                while any(t.name == WRITER_THREAD for t in threading.enumerate()):
                    time.sleep(0.01)  # the failing write has finished before this step runs
                steps.append(1)
                return real_call(self, *a, **k)

        step.__class__ = Counted
        return step

    monkeypatch.setattr(runs, "make_train_step", counting)
    events = []
    with pytest.raises(FerError) as err:
        runs.train(tiny_cfg(ds, tmp_path / "run", batch_size=4, epochs=3), on_event=lambda k, i: events.append((k, i)))
    assert len(steps) == 3  # 2 steps of epoch 1, then the first of epoch 2 reported the failure
    assert [i["epoch"] for k, i in events if k == "epoch_end"] == [1]
    assert f"epoch 1 (step 2): cannot write {tmp_path / 'run' / 'best.pt'}" in str(err.value)
    assert "no last.pt was written yet" in str(err.value)


# ----------------------------------------------------------------------------- look before the leap


def test_train_refuses_a_run_whose_checkpoints_cannot_fit(tmp_path, monkeypatch):
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 50 * 10**6, 50 * 10**6))
    res = runner.invoke(app, _train_args(ds, tmp_path / "run"))
    assert res.exit_code == 1, res.output
    line = _one_error_line(res)
    # resnet34: 85 MB of weights; Adam-GC keeps two moments: last.pt ~255 MB; + a temp copy.
    assert "not enough disk space for the run" in line and "50 MB free" in line
    assert "(best.pt ~87 MB + last.pt ~257 MB with the optimizer state" in line and "need ~601 MB" in line
    assert not (tmp_path / "run").exists()


def test_the_estimate_counts_runs_the_cadence_and_what_is_already_there(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 0, 10**12))
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    cfg = runs.resolve_optimizer(tiny_cfg(ds, tmp_path / "a"), "fer2013")
    best, last = checkpointing.checkpoint_bytes(cfg)
    (one,) = checkpointing.estimate_checkpoint_space([cfg])
    assert one.need_bytes == best + last + checkpointing.FILE_OVERHEAD + last
    every = runs.resolve_optimizer(tiny_cfg(ds, tmp_path / "a", checkpoint_every="1"), "fer2013")
    assert checkpointing.estimate_checkpoint_space([every])[0].need_bytes == one.need_bytes  # replaced, not kept
    three = [runs.resolve_optimizer(tiny_cfg(ds, tmp_path / f"r{i}", seed=i), "fer2013") for i in range(3)]
    (est,) = checkpointing.estimate_checkpoint_space(three, concurrent=2)
    assert est.runs == 3 and est.need_bytes == 3 * (best + last + checkpointing.FILE_OVERHEAD) + 2 * last
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "last.pt").write_bytes(b"\0" * 1000)  # --resume replaces it
    assert checkpointing.estimate_checkpoint_space([cfg])[0].need_bytes == one.need_bytes - 1000
    sgd = runs.resolve_optimizer(tiny_cfg(ds, tmp_path / "s", optimizer="sgd-gc", ema=0.9), "fer2013")
    # One momentum buffer + the average ≈ two moments (they differ by the BatchNorm statistics).
    assert 0 < checkpointing.checkpoint_bytes(sgd)[1] - last < 10**6


def test_ablate_refuses_a_ladder_that_cannot_fit(tmp_path, monkeypatch):
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 10**9, 10**9))
    monkeypatch.setenv("FER_OFFLINE", "1")
    res = runner.invoke(app, ["ablate", "--dataset", str(ds), "--out", str(tmp_path / "abl"), "--epochs", "1",
                              "--device", "cpu", "-q", "--weights", str(tmp_path / "no-weights.pth")])
    assert res.exit_code == 1, res.output
    line = _one_error_line(res)
    assert "not enough disk space for 3 runs" in line and "1000 MB free" in line and "(per run, up to best.pt" in line
    assert not (tmp_path / "abl").exists()


# ----------------------------------------------------------------------------- a real small disk


@pytest.fixture()
def small_disk(tmp_path):  # type: ignore[no-untyped-def]
    """Mount a tmpfs of the size given to the returned function (root only)."""
    mounted: list[Path] = []

    def mount(mb: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def test_a_real_disk_too_small_is_refused_before_training(tmp_path, small_disk):
    disk = small_disk(100)
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    res = runner.invoke(app, _train_args(ds, disk / "run"))
    assert res.exit_code == 1, res.output
    assert "not enough disk space" in _one_error_line(res)
    assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_a_real_disk_filling_up_mid_run_then_resume(tmp_path, small_disk, monkeypatch):
    """A 300 MB tmpfs; --freeze-backbone keeps last.pt at the weights' 85 MB. After epoch 1's
    checkpoints another file takes the rest of the disk: epoch 2's write fails for real (torch's
    zip writer or the OS says so), the run stops in one line with epoch 1's last.pt intact;
    with the file deleted, --resume finishes."""
    disk = small_disk(300)
    ds = make_fer_like(tmp_path / "fer", n_per_split=(8, 4, 4))
    out = disk / "run"
    real_save = Checkpointer.save

    def fill_before_epoch_2(self, epoch, **kw):  # type: ignore[no-untyped-def]
        if epoch == 1:
            self.wait()
            with open(disk / "filler", "wb") as fh:  # all but 1 MB of what is left
                fh.write(b"\0" * max(0, shutil.disk_usage(disk).free - 2**20))
        return real_save(self, epoch, **kw)

    monkeypatch.setattr(Checkpointer, "save", fill_before_epoch_2)
    res = runner.invoke(app, _train_args(ds, out, "--freeze-backbone"))
    assert res.exit_code == 1, res.output
    line = _one_error_line(res)
    assert "training stopped in epoch 2 (step 4): cannot write" in line and "MB free" in line, line
    assert f"{out / 'last.pt'} from epoch 1 is kept: free space" in line
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 0 and _temp_leftovers(disk) == []

    monkeypatch.setattr(Checkpointer, "save", real_save)
    (disk / "filler").unlink()
    res = runner.invoke(app, _train_args(ds, out, "--freeze-backbone", "--resume"))
    assert res.exit_code == 0, res.output
    assert checkpoints.load_checkpoint(out / "last.pt")["epoch"] == 1 and _temp_leftovers(disk) == []


def test_the_progress_report_says_what_the_sweep_removed(capsys):
    from fercli.cli import report

    with report.TrainProgress(quiet=False) as progress:
        progress("swept_temps", {"run_dir": "/runs/a", "files": [".fer-tmp-x"], "bytes": 2_500_000})
    assert "removed 1 temporary file(s), 2.5 MB, that a killed writer left in /runs/a" in capsys.readouterr().err
    with report.TrainProgress(quiet=True) as progress:
        progress("swept_temps", {"run_dir": "/runs/a", "files": [".fer-tmp-x"], "bytes": 2_500_000})
    assert "removed" not in capsys.readouterr().err
