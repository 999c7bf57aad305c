"""Provenance: the code version a run, checkpoint or export records is true."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fercli import provenance
from fercli.export.npz_format import export_model
from fercli.model.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from fercli.model.networks import build_model
from fercli.train.config import make_train_config
from fercli.train.runs import train
from tests.fixtures import make_fer_like

REPO = Path(__file__).resolve().parents[1]
SHA = re.compile(r"[0-9a-f]{40}(\+dirty)?")
needs_checkout = pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None,
                                    reason="not running from a git checkout of fercli")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _repo_with_copy(root: Path, subdir: str) -> Path:
    """Another project's repository that vendors a committed copy of fercli/ at `subdir`."""
    root.mkdir()
    _git(root, "init", "-q")
    (root / "README").write_text("another project\n")
    dest = root / subdir / "fercli"
    shutil.copytree(REPO / "fercli", dest, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "vendor fercli")
    return dest


@needs_checkout
def test_own_checkout_records_its_commit() -> None:
    v = provenance.code_version()
    assert SHA.fullmatch(v), v
    assert v.split("+")[0] == _git(REPO, "rev-parse", "HEAD")


@needs_checkout
@pytest.mark.parametrize("subdir", [".", "vendor"])
def test_copy_inside_another_repository_is_unknown(tmp_path: Path, subdir: str) -> None:
    # A copy of the code inside another repository must not record that repository's commit.
    dest = _repo_with_copy(tmp_path / "other", subdir)
    other_head = _git(tmp_path / "other", "rev-parse", "HEAD")
    v = provenance.code_version(dest)
    assert other_head not in v
    assert v == f"unknown (fercli {provenance.__version__})"


def test_outside_any_repository_is_unknown(tmp_path: Path) -> None:
    dest = tmp_path / "site-packages" / "fercli"
    shutil.copytree(REPO / "fercli", dest, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    assert provenance.code_version(dest).startswith("unknown (fercli ")


@needs_checkout
def test_untracked_module_counts_as_dirty(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", "--no-hardlinks", str(REPO), str(clone))
    clean = provenance.code_version(clone / "fercli")
    assert SHA.fullmatch(clean) and not clean.endswith("+dirty"), clean
    (clone / "fercli" / "new_module.py").write_text("X = 1\n")  # never `git add`ed
    assert provenance.code_version(clone / "fercli") == clean + "+dirty"


@needs_checkout
def test_a_process_keeps_the_version_of_the_code_it_imported(tmp_path: Path) -> None:
    """A commit made in the checkout while a process runs (a 40-run ablation takes hours)
    does not relabel that process's later records; the checkout itself, asked by path, does
    change."""
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", "--no-hardlinks", str(REPO), str(clone))
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from fercli import provenance\n"
        "first = provenance.code_version()\n"
        "clone = Path(sys.argv[1])\n"
        "(clone / 'NOTES').write_text('x')\n"
        "subprocess.run(['git', 'add', 'NOTES'], cwd=clone, check=True)\n"
        "subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'n'], cwd=clone, check=True)\n"
        "print(first, provenance.code_version(), provenance.code_version(clone / 'fercli'))\n")
    out = subprocess.run([sys.executable, "-c", script, str(clone)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(clone)}, check=True).stdout.split()
    first, again, on_disk = out
    assert SHA.fullmatch(first) and again == first
    assert on_disk == _git(clone, "rev-parse", "HEAD") != first


@pytest.mark.slow
def test_resume_keeps_the_first_config_and_checkpoints_carry_the_code(tmp_path: Path) -> None:
    ds = make_fer_like(tmp_path / "ds", n_per_split=(16, 8, 8))
    base = dict(dataset=str(ds), model="resnet34", pretrained=False, batch_size=8, device="cpu",
                out=str(tmp_path / "run"), augment=False, channels_last=False, precision="fp32")
    train(make_train_config(**base, epochs=1))
    first = json.loads((tmp_path / "run" / "config.json").read_text())
    train(make_train_config(**base, epochs=2, resume=True))
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["started"] == first["started"] and info["code_version"] == first["code_version"]
    assert info["config"] == first["config"]  # the original start, not the resumed call's
    (ev,) = info["resumes"]
    assert ev["from_epoch"] == 1 and ev["code_version"] == provenance.code_version()
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(tmp_path / "run" / name)["code_version"] == provenance.code_version()


@pytest.mark.parametrize("image_size", [48, 64])
def test_export_records_training_and_exporting_code(tmp_path: Path, image_size: int) -> None:
    model = build_model("resnet34", 7, image_size=image_size, pretrained=False)
    ck = tmp_path / "model.pt"
    save_checkpoint(ck, {"format": CHECKPOINT_FORMAT, "model_spec": dict(model.spec),
                         "model": {k: v.clone() for k, v in model.state_dict().items()},
                         "classes": list("abcdefg"), "code_version": "f" * 40, "config": {}})
    info = export_model(ck, tmp_path / "m.npz")
    assert info["code_version"] == "f" * 40  # the code that trained the weights
    assert info["exported_with_code_version"] == provenance.code_version()
    assert "48x48" in info["input"]
    if image_size != 48:
        assert f"resizes it to {image_size}x{image_size}" in info["input"]
    else:
        assert "resizes" not in info["input"]
