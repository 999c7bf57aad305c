"""Atomic file and directory writes, shared by prepare, train, evaluate and predict.

Everything the tool writes goes to a temporary sibling first and is renamed into place, so a
kill (SIGKILL, power loss) leaves either the old complete file or the new complete file,
never a mixture. Temp names start with `.fer-tmp-` so a leftover is easy to recognise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fercli.errors import FerError

TMP_PREFIX = ".fer-tmp-"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the final file the mode a plain open() would."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def ensure_writable_parent(path: Path) -> None:
    """Create `path`'s parent, or fail with a one-line error naming it."""
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FerError(f"cannot create directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FerError(f"directory {parent} is not writable")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory and os.replace."""
    path = Path(path)
    ensure_writable_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _default_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_save(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path`, else delete it.

    For writers that want a filename (torch.save, np.savez, PIL.Image.save, matplotlib).
    """
    path = Path(path)
    ensure_writable_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        _default_mode(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(target: Path | str, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temp sibling and rename it onto `target` only on success.

    Refuses an existing `target` unless `force`. With `force` the old directory is moved
    aside and deleted only after the new one is in place. Two concurrent writers each build
    their own temp dir; os.rename onto a non-empty directory fails, so exactly one wins and
    the other gets a one-line error — never a mixture of both.
    """
    target = Path(target)
    if target.exists() and not force:
        raise FerError(f"output {target} already exists (use --force to replace it)")
    ensure_writable_parent(target)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + target.name + "-", dir=target.parent))
    try:
        yield tmp
        _fsync_dir(tmp)
        _default_mode(tmp, directory=True)
        if target.exists():
            if not force:
                raise FerError(f"output {target} appeared while writing (another process?)")
            trash = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "old-", dir=target.parent))
            os.rename(target, trash / "old")
            os.rename(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(tmp, target)
            except OSError:
                raise FerError(f"output {target} appeared while writing (another process?)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_load_weights_only(path: Path) -> Any:
    """torch.load that runs no code from the file (weights_only=True), the one way fercli reads
    .pt files. Torch warns on stderr about a pickle protocol newer than its own (any raw
    pickle.dump file); the caller turns a refused file into one `error:` line, so that warning
    would only print above it."""
    import torch  # here, not at the top: the writers above must not pay for importing torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def read_json(path: Path | str, what: str = "JSON record") -> dict[str, Any]:
    """The JSON object stored in `path`, the one way fercli reads a JSON record (run configs,
    metrics, manifests, shard indexes). A missing or unreadable file, text that is not JSON, or
    JSON that is not an object is a FerError that names the file and `what` it should hold.
    Callers for which a record is optional check `path.is_file()` first."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FerError(f"{path}: no such file (expected a {what})") from None
    except OSError as exc:
        raise FerError(f"{path}: cannot read this {what} ({exc.strerror or exc})") from None
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FerError(f"{path}: not a valid {what} ({exc})") from None
    if not isinstance(obj, dict):
        raise FerError(f"{path}: not a valid {what} (a JSON object was expected, not {type(obj).__name__})")
    return obj
