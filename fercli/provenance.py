"""Provenance: which code produced a run, a checkpoint or an exported model.

`code_version()` records a git commit only when the enclosing checkout is *this* project's:
its toplevel must track fercli's own files (fercli/__init__.py and fercli/provenance.py at
that path) and its history must start at fercli's first commit (a shallow clone, which has
no root, is accepted on the tracked files alone). A copy of the code inside another repository (as on the first GPU run, whose
model recorded the enclosing repository's commit) or an installed wheel gives
`unknown (fercli X.Y.Z)` instead of a wrong commit. Untracked files count as dirty: a new
module that is not committed yet changes what the code does.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fercli import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
# Paths, relative to the repository toplevel, that only fercli's own checkout tracks.
_OWN_FILES = ("fercli/__init__.py", "fercli/provenance.py")
# The first commit of fercli's history: a repository that vendors a copy of the code has
# another root.
ROOT_COMMIT = "b668a10a3ac9da8a6e90d2635130623baf4cd803"


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=10).stdout.strip()


_THIS_PROCESS: str | None = None  # code_version() as this process first saw it


def code_version(package_dir: Path | None = None) -> str:
    """`<commit>[+dirty]` of fercli's own checkout, else `unknown (fercli <version>)`.

    Without an argument (this process's own code) it is read once, at the first call, and
    kept: a process runs the code it imported, so a commit or an edit made while it runs (a
    ladder of 40 runs takes hours) must not relabel its later runs. Long commands call it
    as they start (runs.train, the ablation's plan)."""
    global _THIS_PROCESS
    if package_dir is None:
        if _THIS_PROCESS is None:
            _THIS_PROCESS = _checkout_version(PACKAGE_DIR)
        return _THIS_PROCESS
    return _checkout_version(package_dir)


def _checkout_version(package_dir: Path) -> str:
    here = package_dir.resolve()
    unknown = f"unknown (fercli {__version__})"
    try:
        top = _git(["rev-parse", "--show-toplevel"], here)
        if not top:
            return unknown
        top_path = Path(top).resolve()
        # The package must sit at <toplevel>/fercli, and the checkout must track our files.
        if here != top_path / "fercli":
            return unknown
        tracked = _git(["ls-files", "--", *_OWN_FILES], top_path).splitlines()
        if sorted(tracked) != sorted(_OWN_FILES):
            return unknown
        sha = _git(["rev-parse", "HEAD"], top_path)
        if not sha:
            return unknown
        shallow = _git(["rev-parse", "--is-shallow-repository"], top_path) == "true"
        if not shallow and ROOT_COMMIT not in _git(["rev-list", "--max-parents=0", "HEAD"], top_path).split():
            return unknown
        # Untracked files count (a new, uncommitted module changes the code); ignored ones don't.
        dirty = _git(["status", "--porcelain", "--untracked-files=normal"], top_path)
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return unknown


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp(**extra: Any) -> dict[str, Any]:
    """The provenance block every checkpoint and export carries."""
    return {"code_version": code_version(), "fercli_version": __version__, **extra}


def training_label(config: dict[str, Any]) -> str:
    """What the trunks started from, as every report must say it (never guessed)."""
    if config.get("init_from") and config.get("init_head"):
        return "from scratch, fine-tuned"  # the whole source model, on its own dataset (runs._init_from)
    if config.get("init_from"):
        return "FER2013-pretrained"
    if config.get("pretrained") or config.get("weights"):
        return "ImageNet-pretrained"
    return "from scratch"
