"""Reliability: SIGKILL + resume, untrusted checkpoints, concurrent prepare, tampered data."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fercli.cli import app
from fercli.data.prepared import load_prepared
from fercli.model import checkpoints
from tests.fixtures import make_ck_like, make_fer_like

REPO = Path(__file__).resolve().parents[1]


def fer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fercli", *args]


def sub_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["FER_OFFLINE"] = "1"
    return env


# ----------------------------------------------------------------------------- interruption


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """A real `fer train` process SIGKILLed inside epoch 2 of 2 (6 steps an epoch); --resume
    then repeats the uninterrupted run bit for bit. Only the killed run needs its own
    process; the resume and the reference run in this one (same kernels, same threads)."""
    ds = make_fer_like(tmp_path / "fer", n_per_split=(24, 4, 4))
    args = ["train", "--dataset", str(ds), "--arch", "resnet34", "--no-pretrained", "--epochs", "2",
            "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--checkpoint-every", "1", "--quiet"]
    killed_run = tmp_path / "killed"
    proc = subprocess.Popen(fer_cmd(*args, "--out", str(killed_run)), env=sub_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed_run / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "first epoch never finished"
        time.sleep(0.05)
    time.sleep(0.2)  # inside epoch 2 (6 steps of ~0.2 s on a 2-core CPU)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()  # else the pipe is closed by the garbage collector, with a ResourceWarning in a later test
    assert proc.returncode == -signal.SIGKILL
    # Whatever the kill interrupted, what is on disk loads and is a complete epoch.
    ckpt = checkpoints.load_checkpoint(killed_run / "last.pt")
    assert ckpt["epoch"] < 1, "the run finished before it was killed; the test proves nothing"

    r = CliRunner().invoke(app, [*args, "--out", str(killed_run), "--resume"])
    assert r.exit_code == 0, r.output
    full_run = tmp_path / "full"
    r = CliRunner().invoke(app, [*args, "--out", str(full_run)])
    assert r.exit_code == 0, r.output
    a = checkpoints.load_checkpoint(full_run / "last.pt")
    b = checkpoints.load_checkpoint(killed_run / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    strip = lambda hs: [{k: v for k, v in h.items() if k != "img_per_s" and not k.endswith("_seconds")} for h in hs]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def test_interrupted_checkpoint_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"format": checkpoints.CHECKPOINT_FORMAT, "x": torch.ones(3)})
    before = path.read_bytes()

    def boom(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(path, {"format": checkpoints.CHECKPOINT_FORMAT, "x": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------------------- untrusted files


class _Payload:
    """Unpickling this calls os.system to create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_crafted_pickle_checkpoint_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": checkpoints.CHECKPOINT_FORMAT, "model_spec": _Payload(marker), "model": {},
               "classes": []}
    if container == "torch-zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    gc.collect()  # what earlier tests left to the collector warns now, not inside the block below
    with warnings.catch_warnings(record=True) as caught:  # outside pytest, a warning prints on stderr
        warnings.simplefilter("always")
        r = CliRunner().invoke(app, ["evaluate", str(evil)])
    assert r.exit_code != 0
    assert "refused" in r.output and "evil.pt" in r.output
    assert "Traceback" not in r.output
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert [str(w.message) for w in caught] == []  # e.g. torch's "Detected pickle protocol 4" for raw pickles
    assert not marker.exists(), "the pickle payload ran"


# ----------------------------------------------------------------------------- checksums


def test_train_refuses_tampered_dataset_via_cli(tmp_path):
    ds = make_ck_like(tmp_path / "ck")
    data = ds / "data.npz"
    raw = bytearray(data.read_bytes())
    raw[200] ^= 0x01
    data.write_bytes(bytes(raw))
    r = CliRunner().invoke(app, ["train", "--dataset", str(ds), "--arch", "resnet34", "--no-pretrained",
                                 "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert r.exit_code != 0
    assert "sha256" in r.output and "data.npz" in r.output
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- concurrency


@pytest.mark.realdata
@pytest.mark.parametrize("force", [False, True])
def test_two_concurrent_prepares_leave_one_valid_dataset(tmp_path, ckplus48_dir, force):
    out = tmp_path / "ck"
    extra = ["--force"] if force else []
    procs = [subprocess.Popen(fer_cmd("prepare", "ck+", str(ckplus48_dir), "--out", str(out), "--json", *extra),
                              env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    if force:
        assert codes == [0, 0], results
    else:
        assert codes[0] == 0 and codes[1] != 0, results
        loser = next(err for c, err in results if c != 0)
        assert "ck" in loser and "Traceback" not in loser
    ds = load_prepared(out)  # verifies sha256 of data.npz against the manifest
    assert len(ds) == 981
    assert sorted(p.name for p in out.iterdir()) == ["data.npz", "manifest.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fer-tmp-")]
