"""Shared fixtures: paths to the real datasets in ../shared/datasets (skip when absent)."""

from __future__ import annotations

import fcntl
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FER_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
CACHE = Path(os.environ.get("FER_TEST_CACHE", Path.home() / ".cache" / "fercli-tests"))


def pytest_configure(config: pytest.Config) -> None:
    """Under `make test` (pytest-xdist, one worker per core) each worker gets an equal share of
    the cores, and so do the `fer` processes its tests start: N workers x all cores each would
    oversubscribe the CPU and slow every test. A plain `pytest` keeps torch's default."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1 and os.environ.get("PYTEST_XDIST_WORKER"):
        share = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = share
        import torch

        torch.set_num_threads(int(share))


@pytest.fixture(scope="session")
def ckplus48_dir() -> Path:
    p = SHARED / "CK+48"
    if not p.is_dir():
        pytest.skip(f"real CK+48 not found at {p}")
    return p


@pytest.fixture(scope="session")
def fer2013_folders() -> Path:
    """The FER2013 image-folder layout, unpacked once from the shared jpegpack into a cache."""
    pack = SHARED / "fer2013.jpegpack"
    tool = SHARED.parent / "tools" / "jpegpack.py"
    if not pack.is_file() or not tool.is_file():
        pytest.skip(f"FER2013 pack not found at {pack}")
    dest = CACHE / "fer2013-unpacked"
    done = CACHE / "fer2013-unpacked.ok"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "fer2013-unpacked.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel workers (make test): one unpacks, the others wait
        _unpack_once(pack, tool, dest, done)
    # The pack unpacks to DEST/fer2013/{train,test} or DEST/{train,test}; return the root
    # that holds train/ and test/.
    for cand in (dest / "fer2013", dest):
        if (cand / "train").is_dir():
            return cand
    pytest.skip(f"unexpected layout in {dest}")


def _unpack_once(pack: Path, tool: Path, dest: Path, done: Path) -> None:
    if done.exists() and not any((c / "train").is_dir() for c in (dest / "fer2013", dest)):
        done.unlink()  # a stale marker (e.g. the cache was a link into a cleaned /tmp)
    if not done.exists():
        tmp = CACHE / f"fer2013-unpacking-{os.getpid()}"
        subprocess.run([sys.executable, str(tool), "unpack", str(pack), str(tmp)], check=True,
                       capture_output=True)
        if dest.is_symlink():
            dest.unlink()
        elif dest.exists():
            import shutil
            shutil.rmtree(dest)
        tmp.rename(dest)
        done.write_text("ok\n")


@pytest.fixture(scope="session")
def fer2013_prepared(fer2013_folders: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The real FER2013 prepared once per test run from the image folders (decoding its 35,887
    JPEGs takes ~10 s): the PrepareResult, whose .out is the prepared directory. Under
    pytest-xdist the workers share one copy in the run's common temp folder: the first
    prepares it under a lock, the others read what it wrote. Tests never write to it."""
    from fercli.data.ingest import prepare_fer2013

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # shared by this run's workers
    done = root / "fer2013-real.pickle"  # the first worker's PrepareResult, for the others
    with open(root / "fer2013-real.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            result = prepare_fer2013(fer2013_folders, out=root / "fer2013-real" / "folders")
            done.write_bytes(pickle.dumps(result))
        return pickle.loads(done.read_bytes())


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never depend on the terminal: every Rich console they see is 200 columns wide
    and colourless, whatever COLUMNS the suite runs under (it must pass with COLUMNS=60)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    from fercli.cli import report

    for con in (report.console, report.err_console):
        monkeypatch.setattr(con, "_width", 200)
