"""The fault matrix: faults of the machine, not of the input, across prepare, evaluate,
export, predict and ablate (training's own checkpoints are covered with the run logic).

A full disk (ENOSPC), a quota (EDQUOT), a read-only file system (EROFS), no permission
(EACCES), a folder deleted under a running job and torch's error on a failed write must each
end as one `error: <path>: ...` line on stderr naming the file, exit code 1, no traceback, no
temp file left, and the previous good output byte-for-byte intact.

Two kinds of case: `real_*` ones write onto a small tmpfs mounted for the test (full, or
remounted read-only), which needs root and is skipped with a reason elsewhere; the others
raise the same errnos from the write calls by monkeypatching, and run everywhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from test_engine import make_fer_like
from typer.testing import CliRunner

from fercli import files
from fercli.cli import app
from fercli.data import prepared
from fercli.data.ingest import prepare_ckplus
from fercli.data.prepared import FER2013_CLASSES
from fercli.errors import FerError
from fercli.model import checkpoints
from tests.fixtures import make_ckplus48_tree, tree_digest, untrained_run

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_images" / "astronaut.jpg"
WORDS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
         errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Stock:
    """Inputs shared by every case, built once; cases never write into them."""

    ck48: Path  # a tiny CK+48 tree
    ck: Path  # it, prepared (CK+ layout, for ablate)
    fer: Path  # a tiny FER2013-shaped prepared dataset
    run: Path  # a run directory whose best.pt is an untrained resnet34 (FER2013 classes)


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Stock:
    root = tmp_path_factory.mktemp("stock")
    ck48 = make_ckplus48_tree(root / "ck48")
    ck = prepare_ckplus(ck48, out=root / "ck").out
    return Stock(ck48=ck48, ck=ck, fer=make_fer_like(root / "fer", n_per_split=(8, 4, 4)),
                 run=untrained_run(root / "run", list(FER2013_CLASSES)))


class Mounts:
    """Small tmpfs file systems under the test's folder, unmounted at teardown."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def __call__(self, where: Path, size: str = "1m") -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root: the monkeypatched cases cover these faults")
        where.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()[:80]})")
        self.points.append(where)
        return where

    @staticmethod
    def read_only(where: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)

    @staticmethod
    def fill(where: Path) -> None:
        """Fill the file system to its last byte with one file."""
        fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        chunk = 1 << 16
        try:
            while chunk:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    chunk //= 4
        finally:
            os.close(fd)
        assert shutil.disk_usage(where).free == 0

    def unmount_all(self) -> None:
        for p in reversed(self.points):
            if subprocess.run(["umount", str(p)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.fixture
def mount():  # type: ignore[no-untyped-def]
    m = Mounts()
    yield m
    m.unmount_all()


# ----------------------------------------------------------------------------- fault injection


def _oserror(err: int, filename: str | None = None) -> OSError:
    return OSError(err, os.strerror(err), *([filename] if filename else []))


def fail_writes(mp: pytest.MonkeyPatch, err: int, after: int = 0) -> None:
    """The atomic writers' byte writes fail with `err` after `after` of them succeeded
    (os.write reports a full disk without a file name, as here)."""
    calls = {"n": 0}
    real = files._write_all

    def write(fd: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            os.write(fd, bytes(data[: len(data) // 2]))  # a half-written temp file to clean up
            raise _oserror(err)
        real(fd, data)

    mp.setattr(files, "_write_all", write)


def fail_temp_files(mp: pytest.MonkeyPatch, err: int) -> None:
    """Creating fercli's temp files and folders fails with `err` (where EROFS and EACCES
    really strike)."""
    for name in ("mkstemp", "mkdtemp"):
        real = getattr(tempfile, name)

        def make(*a, _real=real, **k):  # type: ignore[no-untyped-def]
            if str(k.get("prefix", "")).startswith(files.TMP_PREFIX):
                raise _oserror(err, str(Path(k.get("dir", ".")) / (files.TMP_PREFIX + "x")))
            return _real(*a, **k)

        mp.setattr(tempfile, name, make)


def fail_npz(mp: pytest.MonkeyPatch, err: int) -> None:
    """`fer prepare`'s data.npz fails like zipfile's close() on a full disk: half a file, and
    an OSError that names no file."""

    def write_npz(path: Path, cols: dict) -> None:
        path.write_bytes(b"PK\x03\x04" + b"\0" * 1000)
        raise _oserror(err)

    mp.setattr(prepared, "_write_npz", write_npz)


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    args: list[str]  # the fer command line
    words: str  # what the one line must say
    culprit: Path  # the file or folder it must name
    intact: list[Path]  # previous good outputs: byte-for-byte unchanged
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards
    space: bool = False  # the line must say what is needed and what is free


def _previous(*paths: Path) -> list[Path]:
    """Stand-ins for a previous good output: files that must survive the failed write."""
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"previous good " + p.name.encode() + b"\n")
    return list(paths)


def _previous_dataset(stock: Stock, out: Path) -> list[Path]:
    prepare_ckplus(stock.ck48, out=out)
    return [out]


def _run_dir(t: Path, stock: Stock) -> Path:
    """A run directory of its own (evaluate writes into it) sharing the stock best.pt."""
    run = t / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "best.pt").symlink_to(stock.run / "best.pt")
    return run


def _evaluate(run: Path, stock: Stock) -> list[str]:
    return ["evaluate", str(run), "--dataset", str(stock.fer), "--device", "cpu", "--json"]


def _predict(stock: Stock, *extra: str) -> list[str]:
    return ["predict", str(SAMPLE), "--model", str(stock.run), "--device", "cpu", "--json", *extra]


def _fake_ablation_runs(mp: pytest.MonkeyPatch) -> None:
    """Ablate's training and evaluation replaced by a result: the case is about its JSON/CSV."""
    from fercli.ablation import ablate

    def run_one(cfg, decision, run_dir, emit, info, trained=False, metrics=None):  # type: ignore[no-untyped-def]
        return {"seed": info["seed"], "fold": info["fold"], "run_dir": str(run_dir), "status": "trained",
                "accuracy": 0.5, "split": "fold 0", "best_epoch": 1, "rerun_reason": None}

    mp.setattr(ablate, "_run_one", run_one)
    # No checkpoint is written by the faked runs, so the look-before-the-leap space check
    # (tests/test_train_faults.py) has nothing to guard here.
    from fercli.train import checkpointing

    mp.setattr(checkpointing, "ensure_checkpoint_space", lambda *a, **k: [])


def _ablate(stock: Stock, out: Path) -> list[str]:
    return ["ablate", "--dataset", str(stock.ck), "--epochs", "1", "--folds-limit", "1", "--seeds", "0",
            "--device", "cpu", "--out", str(out), "--json", "--no-estimate"]


# Each builder gets (work folder, stock, monkeypatch, mount) and returns a Case.


def real_prepare_ck_full_disk(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    fs = mount(t / "fs", "256k")
    intact = _previous_dataset(s, fs / "ck")
    mount.fill(fs)
    return Case(["prepare", "ck+", str(s.ck48), "--out", str(fs / "ck"), "--force"], WORDS[errno.ENOSPC],
                fs / "ck", intact, space=True)


def real_prepare_out_on_read_only(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    fs = mount(t / "fs", "256k")
    intact = _previous_dataset(s, fs / "old")
    mount.read_only(fs)
    return Case(["prepare", "ck+", str(s.ck48), "--out", str(fs / "sub" / "ck")], WORDS[errno.EROFS],
                fs / "sub" / "ck", intact, absent=[fs / "sub"])


def real_export_npz_full_disk(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    fs = mount(t / "fs", "1m")
    intact = _previous(fs / "model.npz", fs / "model.npz.json")
    mount.fill(fs)
    return Case(["export", str(s.run), "--out", str(fs / "model.npz")], WORDS[errno.ENOSPC], fs / "model.npz",
                intact, space=True)


def real_export_shards_disk_full_midway(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    """Three 1 MB parts fit, the fourth does not: the parts already written go too."""
    fs = mount(t / "fs", "3500k")
    intact = _previous(fs / "model.npz.part0", fs / "model.npz.index.json", fs / "model.json")
    return Case(["export", str(s.run), "--out", str(fs / "model.npz"), "--max-shard-mb", "1"],
                WORDS[errno.ENOSPC], fs / "model.npz.part3", intact, absent=[fs / "model.npz.part1"], space=True)


def real_evaluate_metrics_full_disk(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    mount(t / "run", "64k")
    run = _run_dir(t, s)
    intact = _previous(run / "metrics.json", run / "confusion.png")
    mount.fill(run)
    return Case(_evaluate(run, s), WORDS[errno.ENOSPC], run / "metrics.json", intact, space=True)


def real_predict_csv_read_only(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    fs = mount(t / "fs", "64k")
    intact = _previous(fs / "faces.csv")
    mount.read_only(fs)
    return Case(_predict(s, "--csv", str(fs / "faces.csv")), WORDS[errno.EROFS], fs / "faces.csv", intact)


def real_predict_annotate_read_only(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    fs = mount(t / "fs", "64k")
    intact = _previous(fs / "annotated" / "astronaut.jpg")
    mount.read_only(fs)
    return Case(_predict(s, "--annotate", str(fs / "annotated")), WORDS[errno.EROFS],
                fs / "annotated" / "astronaut.jpg", intact)


def real_predict_video_annotate_disk_full(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    """OpenCV's video writer raises nothing on a full disk: the file read back must catch it."""
    from tests.test_video import face_frames, write_clip

    clip = write_clip(t / "clip.mp4", face_frames(12))
    fs = mount(t / "fs", "64k")
    intact = _previous(fs / "annotated" / "clip.mp4")
    mount.fill(fs)
    return Case(["predict", str(clip), "--model", str(s.run), "--device", "cpu", "--json", "--detector", "haar",
                 "--annotate", str(fs / "annotated")], WORDS[errno.ENOSPC], fs / "annotated" / "clip.mp4", intact)


def real_predict_video_annotate_disk_fills_midway(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    """The writer opens, then drops every frame past the 64 kB and still exits cleanly."""
    from tests.test_video import face_frames, write_clip

    clip = write_clip(t / "clip.mp4", face_frames(30))
    fs = mount(t / "fs", "64k")
    intact = _previous(fs / "annotated" / "clip.mp4")
    return Case(["predict", str(clip), "--model", str(s.run), "--device", "cpu", "--json", "--detector", "haar",
                 "--annotate", str(fs / "annotated")], WORDS[errno.ENOSPC], fs / "annotated" / "clip.mp4", intact)


def real_ablate_json_read_only(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    _fake_ablation_runs(mp)
    fs = mount(t / "fs", "64k")
    intact = _previous(fs / "ablation.json", fs / "ablation.csv")
    mount.read_only(fs)
    return Case(_ablate(s, fs), WORDS[errno.EROFS], fs / "ablation.json", intact)


def prepare_disk_full(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    intact = _previous_dataset(s, t / "data" / "ck")
    fail_npz(mp, errno.ENOSPC)
    return Case(["prepare", "ck+", str(s.ck48), "--out", str(t / "data" / "ck"), "--force"],
                WORDS[errno.ENOSPC], t / "data" / "ck", intact, space=True)


def prepare_quota_exceeded(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    fail_npz(mp, errno.EDQUOT)
    return Case(["prepare", "ck+", str(s.ck48), "--out", str(t / "data" / "ck")], WORDS[errno.EDQUOT],
                t / "data" / "ck", [], absent=[t / "data" / "ck"], space=True)


def prepare_read_only(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    intact = _previous_dataset(s, t / "data" / "ck")
    fail_temp_files(mp, errno.EROFS)
    return Case(["prepare", "ck+", str(s.ck48), "--out", str(t / "data" / "ck"), "--force"], WORDS[errno.EROFS],
                t / "data" / "ck", intact)


def prepare_permission_denied(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    fail_temp_files(mp, errno.EACCES)
    return Case(["prepare", "ck+", str(s.ck48), "--out", str(t / "data" / "ck")], WORDS[errno.EACCES],
                t / "data" / "ck", [], absent=[t / "data" / "ck"])


def prepare_folder_deleted_while_running(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    """The output's folder is deleted after prepare began writing into it: a real ENOENT."""
    (t / "data").mkdir()
    real = prepared._write_npz

    def write_npz(path: Path, cols: dict) -> None:
        shutil.rmtree(t / "data")
        real(path, cols)

    mp.setattr(prepared, "_write_npz", write_npz)
    return Case(["prepare", "ck+", str(s.ck48), "--out", str(t / "data" / "ck")],
                f"folder {t / 'data'} was deleted while writing", t / "data" / "ck", [], absent=[t / "data"])


def export_npz_read_only(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    intact = _previous(t / "out" / "model.npz", t / "out" / "model.npz.json")
    fail_temp_files(mp, errno.EROFS)
    return Case(["export", str(s.run), "--out", str(t / "out" / "model.npz")], WORDS[errno.EROFS],
                t / "out" / "model.npz", intact)


def export_shards_disk_full_midway(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    intact = _previous(t / "model.npz.part0", t / "model.npz.part1", t / "model.npz.index.json", t / "model.npz.json")
    fail_writes(mp, errno.ENOSPC, after=2)
    return Case(["export", str(s.run), "--out", str(t / "model.npz"), "--max-shard-mb", "8"],
                WORDS[errno.ENOSPC], t / "model.npz.part2", intact, absent=[t / "model.npz.part3"], space=True)


def export_onnx_disk_full(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    from fercli.export import onnx_format

    # The graph itself is tested in test_onnx; here only its write matters.
    mp.setattr(onnx_format, "onnx_bytes", lambda model, meta, dtype: b"\x08\x07" * 4096)
    intact = _previous(t / "model.onnx", t / "model.onnx.json")
    fail_writes(mp, errno.ENOSPC)
    return Case(["export", str(s.run), "--format", "onnx", "--out", str(t / "model.onnx")], WORDS[errno.ENOSPC],
                t / "model.onnx", intact, space=True)


def evaluate_metrics_disk_full(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    run = _run_dir(t, s)
    intact = _previous(run / "metrics.json")
    fail_writes(mp, errno.ENOSPC)
    return Case(_evaluate(run, s), WORDS[errno.ENOSPC], run / "metrics.json", intact, space=True)


def evaluate_png_permission_denied(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    """matplotlib's own open() of the temp PNG is refused."""
    from matplotlib.figure import Figure

    def savefig(self, fname, *a, **k):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied", str(fname))

    mp.setattr(Figure, "savefig", savefig)
    run = _run_dir(t, s)
    return Case(_evaluate(run, s), WORDS[errno.EACCES], run / "confusion.png", _previous(run / "confusion.png"))


def predict_annotate_permission_denied(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    intact = _previous(t / "annotated" / "astronaut.jpg")
    fail_temp_files(mp, errno.EACCES)
    return Case(_predict(s, "--annotate", str(t / "annotated")), WORDS[errno.EACCES],
                t / "annotated" / "astronaut.jpg", intact)


def predict_csv_quota_exceeded(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    intact = _previous(t / "faces.csv")
    fail_writes(mp, errno.EDQUOT)
    return Case(_predict(s, "--csv", str(t / "faces.csv")), WORDS[errno.EDQUOT], t / "faces.csv", intact,
                space=True)


def ablate_csv_disk_full(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    """The JSON's temp file fits, the CSV's does not: neither replaces its previous file."""
    _fake_ablation_runs(mp)
    intact = _previous(t / "abl" / "ablation.json", t / "abl" / "ablation.csv")
    fail_writes(mp, errno.ENOSPC, after=1)
    return Case(_ablate(s, t / "abl"), WORDS[errno.ENOSPC], t / "abl" / "ablation.csv", intact, space=True)


def uncaught_oserror_from_a_writer(t: Path, s: Stock, mp: pytest.MonkeyPatch, mount: Mounts) -> Case:
    """A write outside the atomic writers: the CLI's last line of defence words it the same."""
    from fercli.export import npz_format

    def export_model(*a, **k):  # type: ignore[no-untyped-def]
        raise _oserror(errno.ENOSPC, str(t / "elsewhere.bin"))

    mp.setattr(npz_format, "export_model", export_model)
    return Case(["export", str(s.run), "--out", str(t / "model.npz")], WORDS[errno.ENOSPC], t / "elsewhere.bin",
                [], absent=[t / "model.npz"])


CASES: dict[str, Callable[[Path, Stock, pytest.MonkeyPatch, Mounts], Case]] = {
    f.__name__: f for f in (
        real_prepare_ck_full_disk, real_prepare_out_on_read_only, real_export_npz_full_disk,
        real_export_shards_disk_full_midway, real_evaluate_metrics_full_disk, real_predict_csv_read_only,
        real_predict_annotate_read_only, real_predict_video_annotate_disk_full,
        real_predict_video_annotate_disk_fills_midway, real_ablate_json_read_only, prepare_disk_full, prepare_quota_exceeded,
        prepare_read_only, prepare_permission_denied, prepare_folder_deleted_while_running, export_npz_read_only, export_shards_disk_full_midway,
        export_onnx_disk_full, evaluate_metrics_disk_full, evaluate_png_permission_denied,
        predict_annotate_permission_denied, predict_csv_quota_exceeded, ablate_csv_disk_full,
        uncaught_oserror_from_a_writer,
    )
}


def test_matrix_has_at_least_15_cases_covering_every_writer():
    """≥ 15 cases, and ≥ 12 that need no root (the real_* ones are skipped without it)."""
    assert len(CASES) >= 15 and len([n for n in CASES if not n.startswith("real_")]) >= 12
    commands = {n.removeprefix("real_").split("_")[0] for n in CASES}
    assert commands >= {"prepare", "export", "evaluate", "predict", "ablate"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fault(name, tmp_path, stock, monkeypatch, mount):
    monkeypatch.setenv("FER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # ablate: no ImageNet weights
    work = tmp_path / "w"
    work.mkdir()
    case = CASES[name](work, stock, monkeypatch, mount)
    digests = {p: tree_digest(p) for p in case.intact}
    inputs = {p: tree_digest(p) for p in (stock.ck48, stock.fer, stock.run)}
    res = runner.invoke(app, case.args)
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert lines[0].startswith(f"error: {case.culprit}: "), (case.culprit, lines[0])
    assert case.words in lines[0], (case.words, lines[0])
    if case.space:
        assert "needs ~" in lines[0] and " free)" in lines[0], lines[0]
    assert res.stdout.strip() == "", res.stdout  # no partial results, not even JSON
    leftovers = list(work.rglob(files.TMP_PREFIX + "*"))
    assert not leftovers, leftovers
    for p, d in digests.items():
        assert tree_digest(p) == d, f"previous good output changed: {p}"
    for p in case.absent:
        assert not p.exists(), f"partial output left: {p}"
    for p, d in inputs.items():
        assert tree_digest(p) == d, f"input modified: {p}"


# ----------------------------------------------------------------------------- library level


def _checkpoint(value: float, rows: int = 256) -> dict:
    return {"format": checkpoints.CHECKPOINT_FORMAT, "w": torch.full((rows, 1024), value)}  # rows x 4 kB


def test_real_checkpoint_on_full_disk_names_the_file_and_keeps_the_last_good_one(tmp_path, mount):
    """torch.save's C++ writer fails with `RuntimeError: ... inline_container ... unexpected
    pos` and no errno: the file system's state says it was a full disk."""
    fs = mount(tmp_path / "fs", "1m")
    checkpoints.save_checkpoint(fs / "last.pt", _checkpoint(1.0, rows=160))  # 655 kB: one fits, two do not
    before = (fs / "last.pt").read_bytes()
    with pytest.raises(files.WriteFault) as info:
        checkpoints.save_checkpoint(fs / "last.pt", _checkpoint(2.0, rows=160))
    msg = str(info.value)
    assert msg.startswith(f"{fs / 'last.pt'}: no space left on device (needs ~655 kB, ") and "free)" in msg, msg
    assert 300_000 < shutil.disk_usage(fs).free < 400_000  # the failed temp file's space is back
    assert info.value.exit_code == 1 and info.value.errno == errno.ENOSPC
    assert (fs / "last.pt").read_bytes() == before
    assert sorted(p.name for p in fs.iterdir()) == ["last.pt"]


def test_torch_write_error_is_read_off_the_disk(tmp_path, monkeypatch):
    """The same RuntimeError where the disk is not full is a failed write, not a full disk;
    where it is full (disk_usage says 0 free), a full disk."""
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, _checkpoint(1.0))
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):  # type: ignore[no-untyped-def]
        Path(f).write_bytes(b"PK half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(files.WriteFault, match=r"last\.pt: write failed \(torch\.save: \[enforce fail"):
        checkpoints.save_checkpoint(path, _checkpoint(2.0))
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 256, 0, 0, 16, 0, 0, 0, 255)))
    with pytest.raises(files.WriteFault, match=r"last\.pt: no space left on device \(needs ~1\.0 MB"):
        checkpoints.save_checkpoint(path, _checkpoint(2.0))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_into_a_deleted_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = torch.save

    def save_after_rm(obj, f, *a, **k):  # type: ignore[no-untyped-def]
        shutil.rmtree(run)
        real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_after_rm)
    with pytest.raises(files.WriteFault, match=f"last.pt: folder {run} was deleted while writing"):
        checkpoints.save_checkpoint(run / "last.pt", _checkpoint(2.0))
    assert list(tmp_path.iterdir()) == []


def test_a_bug_inside_a_writer_is_not_dressed_as_a_fault(tmp_path):
    """Only failed writes are translated: a bug keeps its type (and its traceback)."""
    with pytest.raises(ValueError), files.atomic_save(tmp_path / "x.png") as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("a bug")
    with pytest.raises(KeyboardInterrupt), files.atomic_directory(tmp_path / "d"):
        raise KeyboardInterrupt
    with pytest.raises(FileNotFoundError), files.atomic_save(tmp_path / "y.bin"):
        (tmp_path.parent / "some-input-that-is-missing").read_bytes()  # a read, outside the target's folder
    assert list(tmp_path.iterdir()) == []


def test_wrong_kind_of_path_stays_a_bad_input(tmp_path):
    """A folder where the file should go is the user's input (exit code 2), not the machine's."""
    (tmp_path / "out.json").mkdir()
    with pytest.raises(FerError) as info:
        files.atomic_write_json(tmp_path / "out.json", {"a": 1})
    assert not isinstance(info.value, files.WriteFault) and info.value.exit_code == 2
    assert str(info.value).startswith(f"{tmp_path / 'out.json'}: is a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_fault_survives_pickling():
    import pickle

    fault = files.WriteFault("/x/y.pt", errno.EROFS)
    back = pickle.loads(pickle.dumps(fault))
    assert isinstance(back, files.WriteFault) and str(back) == str(fault) == "/x/y.pt: read-only file system"
    assert back.exit_code == 1 and back.errno == errno.EROFS


# ----------------------------------------------------------------------------- SIGKILL mid-write

_KILLED_WRITER = r"""
import os, sys, time
from pathlib import Path
from fercli import files

target, moment = Path(sys.argv[1]), sys.argv[2]
real_replace, real_write = os.replace, files._write_all

def ready_then_block():
    print("ready", flush=True)
    time.sleep(600)

def replace(src, dst):
    if moment == "before-rename":
        assert Path(src).read_bytes() == b"new" * 100_000  # the temp file is complete
        ready_then_block()
    real_replace(src, dst)
    if moment == "after-rename":
        ready_then_block()

def write(fd, data):
    if moment == "mid-write":
        os.write(fd, bytes(data[:1000]))
        ready_then_block()
    real_write(fd, data)

os.replace = replace
files._write_all = write
files.atomic_write_bytes(target, b"new" * 100_000)
"""


@pytest.mark.parametrize("moment", ["mid-write", "before-rename", "after-rename"])
def test_sigkill_while_writing_leaves_the_old_or_the_new_file(tmp_path, moment):
    target = tmp_path / "metrics.json"
    target.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), moment], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == (b"new" * 100_000 if moment == "after-rename" else b"old")
    temps = [p.name for p in tmp_path.iterdir() if p.name.startswith(files.TMP_PREFIX)]
    assert len(temps) == (0 if moment == "after-rename" else 1), temps  # a kill cannot clean up; the name says so
    # the name carries the killed writer, so the sweep knows the temp is stale and removes it alone
    swept = files.sweep_stale_temps(tmp_path)
    assert [n for n, _ in swept] == temps and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert target.read_bytes() == (b"new" * 100_000 if moment == "after-rename" else b"old")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process
    return proc.pid


def test_sweep_removes_only_temps_whose_writer_on_this_machine_is_gone(tmp_path):
    host, dead = files._host_tag(), _dead_pid()
    other_host = "0" * 6 if host != "0" * 6 else "1" * 6
    stale_file = tmp_path / f".fer-tmp-{host}-{dead}-abc.pt"
    stale_file.write_bytes(b"x" * 5000)
    stale_dir = tmp_path / f".fer-tmp-{host}-{dead}-data-xyz"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "a.npz").write_bytes(b"y" * 300)
    kept = [tmp_path / f".fer-tmp-{host}-{os.getpid()}-mine.json",  # this process: still writing
            tmp_path / f".fer-tmp-{host}-{os.getppid()}-parent.json",  # a live process
            tmp_path / f".fer-tmp-{other_host}-{dead}-shared.json",  # another machine's pid space
            tmp_path / ".fer-tmp-k2j3h4.json",  # no writer in the name: cannot tell
            tmp_path / "last.pt"]
    for p in kept:
        p.write_bytes(b"z")
    assert sorted(files.sweep_stale_temps(tmp_path)) == sorted([(stale_file.name, 5000), (stale_dir.name, 300)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    assert files.sweep_stale_temps(tmp_path / "missing") == []
    # what the writers create carries this process's name
    with files.atomic_save(tmp_path / "new.bin") as tmp:
        assert tmp.name.startswith(f".fer-tmp-{host}-{os.getpid()}-")
        tmp.write_bytes(b"1")


def test_real_disk_full_reports_what_is_needed(tmp_path, mount):
    """The figures in the message are the file system's: the write needs ~50 kB, none is free."""
    fs = mount(tmp_path / "fs", "64k")
    mount.fill(fs)
    with pytest.raises(files.WriteFault) as info:
        files.atomic_write_json(fs / "m.json", {"x": "y" * 50_000})
    assert str(info.value) == f"{fs / 'm.json'}: no space left on device (needs ~50 kB, 0 bytes free)"
    assert sorted(p.name for p in fs.iterdir()) == ["filler"]
