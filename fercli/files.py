"""Atomic file and directory writes, shared by prepare, train, evaluate and predict.

Everything the tool writes goes to a temporary sibling first and is renamed into place, so a
kill (SIGKILL, power loss) leaves either the old complete file or the new complete file,
never a mixture. Temp names start with `.fer-tmp-` so a leftover is easy to recognise, then
name their writer (a hash of the host name and the process id): a kill leaves its temp behind,
and sweep_stale_temps removes those whose writer is gone (`fer train` does so in its run
directory before it writes).

A write the machine refuses (full disk or quota, read-only file system, no permission, a folder
deleted under the running job, torch.save's zip-writer error) removes its temp file and raises
WriteFault: one line naming the file asked for (with what it needs and what is free, for
space), exit code 1. The previous file stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fercli.errors import FerError

TMP_PREFIX = ".fer-tmp-"
_OWNED_TEMP = re.compile(r"^\.fer-tmp-([0-9a-f]{6})-(\d+)-")  # host hash, pid


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _tmp_prefix(name: str = "") -> str:
    """`.fer-tmp-<host hash>-<pid>-<name>`: the writer in the name, for sweep_stale_temps."""
    return f"{TMP_PREFIX}{_host_tag()}-{os.getpid()}-{name}"


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # alive under another user (or not a pid we can ask about): keep
    return False


def sweep_stale_temps(folder: Path | str) -> list[tuple[str, int]]:
    """Remove the temp files and folders in `folder` that a writer on this machine left when it
    was killed (SIGKILL, OOM, power loss: no chance to clean up), i.e. whose process is gone.
    A live writer's temp, another machine's (a shared folder) and one without a writer in its
    name are kept. Returns (name, bytes) of what was removed; a folder that cannot be read
    gives []."""
    host, removed = _host_tag(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = _OWNED_TEMP.match(entry.name)
        if not m or m.group(1) != host or int(m.group(2)) == os.getpid() or not _process_gone(int(m.group(2))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
                shutil.rmtree(path)
            else:
                size = entry.stat(follow_symlinks=False).st_size
                path.unlink()
        except OSError:
            continue  # gone meanwhile, or not ours to remove: leave it
        removed.append((entry.name, size))
    return removed


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


class WriteFault(FerError):
    """A write the machine refused: a full disk or quota, a read-only or vanished folder, no
    permission. Exit code 1; the message names the file the user asked for (never a temp
    name) and, for space, what the write needed and what is free."""

    def __init__(self, path: Path | str, err: int, needed: int | None = None, detail: str | None = None) -> None:
        self.path = Path(path)
        self.errno = err
        self.needed = needed
        super().__init__(describe_fault(self.path, err, needed, detail), exit_code=1)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Crosses process boundaries (multiprocessing) with its message as first measured.
        return (_rebuilt_fault, (str(self.path), self.errno, self.needed, str(self)))


def _rebuilt_fault(path: str, err: int, needed: int | None, message: str) -> WriteFault:
    fault = WriteFault.__new__(WriteFault)
    FerError.__init__(fault, message, exit_code=1)
    fault.path, fault.errno, fault.needed = Path(path), err, needed
    return fault


# A path that names the wrong thing (a file where a folder must be, a name too long) is the
# user's input: exit code 2 like every other bad input. Any other errno on a write is the
# machine's (exit code 1).
_PATH_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ELOOP}
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WORDS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
          errno.EPERM: "operation not permitted", errno.EIO: "input/output error",
          errno.EFBIG: "file too large"}
# What torch.save's C++ zip writer says when a write, or opening its file, fails; the errno
# itself is lost.
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos",
                         "cannot be opened", "Parent directory")
# torch.save's failure carries no errno: below this much free space a failed write is a full disk.
_FULL_BELOW = 1 << 20


def _human(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.1f} GB"
    if n >= 10**6:
        return f"{n / 1e6:.1f} MB" if n < 10**7 else f"{n / 1e6:.0f} MB"
    if n >= 10**3:
        return f"{n / 1e3:.0f} kB"
    return f"{n} bytes"


def _free_bytes(path: Path) -> int | None:
    """Free space on the file system that holds `path` (its nearest existing folder)."""
    for d in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(d).free
    return None


def _deleted_folder(path: Path) -> Path | None:
    """The outermost folder above `path` that no longer exists, or None if its folder does."""
    missing = None
    for d in path.parents:
        if d.exists():
            break
        missing = d
    return missing


def describe_fault(path: Path | str, err: int, needed: int | None = None, detail: str | None = None) -> str:
    """`<path>: no space left on device (needs ~N MB, M MB free)` and the like: one line."""
    path = Path(path)
    if err == errno.ENOENT:
        gone = _deleted_folder(path)
        what = f"folder {gone} was deleted while writing" if gone else "deleted while it was being written"
        return f"{path}: {what}"
    words = _WORDS.get(err) or (os.strerror(err).lower() if err else "write failed")
    extra = []
    if err in _SPACE_ERRNOS:
        if needed:
            extra.append(f"needs ~{_human(needed)}")
        free = _free_bytes(path)
        if free is not None:
            extra.append(f"{_human(free)} free")
    if detail:
        extra.append(detail)
    return f"{path}: {words}" + (f" ({', '.join(extra)})" if extra else "")


def fault_from_oserror(exc: OSError) -> FerError | None:
    """An OSError that no writer translated (the CLI's last line of defence): a one-line
    FerError (exit code 1) naming its file, or None for an errno that is not the machine's."""
    if exc.errno not in (*_WORDS, errno.ENOENT) or (exc.errno == errno.ENOENT and exc.filename is None):
        return None
    if exc.filename is None:
        return FerError(_WORDS[exc.errno], exit_code=1)
    path = Path(os.fsdecode(exc.filename))
    if exc.errno == errno.ENOENT:  # a read or a write: say what is gone, not which
        gone = _deleted_folder(path)
        return FerError(f"{path}: no such file or directory" + (f" (folder {gone} is gone)" if gone else ""),
                        exit_code=1)
    return WriteFault(path, exc.errno)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError that caused `exc` (itself, or one in its cause/context chain)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _within(filename: Any, folders: tuple[Path, ...]) -> bool:
    if filename is None:
        return True  # zipfile/torch raise on close() without a name: it was the file being written
    try:
        p = Path(os.fsdecode(filename)).absolute()
    except TypeError:
        return False
    return any(p == f or f in p.parents for f in folders)


def _diagnose(exc: BaseException, folders: tuple[Path, ...]) -> tuple[int, str | None] | None:
    """(errno, detail) when `exc` is a failed write into `folders`, else None (a bug, Ctrl-C,
    a bad input: not ours to translate). Called before the temp file is removed: torch's
    write failure carries no errno, so it is read off the file system's state."""
    if isinstance(exc, FerError | KeyboardInterrupt | SystemExit | GeneratorExit):
        return None
    os_err = _os_error_in(exc)
    if os_err is not None:
        if not _within(os_err.filename, folders):
            return None  # e.g. a missing input read inside the block
        return os_err.errno, None
    text = str(exc)
    if not (isinstance(exc, RuntimeError) and any(m in text for m in _TORCH_WRITE_FAILURES)):
        return None
    err = _folder_fault(folders[0])
    if err is not None:
        return err, None
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return 0, f"torch.save: {first[:120]}"


def _folder_fault(folder: Path) -> int | None:
    """The errno a write into `folder` would meet, read off the file system's state: gone,
    read-only, (nearly) full, not writable; None when nothing stands in the way."""
    if not folder.exists():
        return errno.ENOENT
    with contextlib.suppress(OSError):
        st = os.statvfs(folder)
        if st.f_flag & os.ST_RDONLY:
            return errno.EROFS
        if st.f_bavail * st.f_frsize < _FULL_BELOW:
            return errno.ENOSPC
    if not os.access(folder, os.W_OK):
        return errno.EACCES
    return None


def silent_write_fault(path: Path | str, tmp: Path | str) -> WriteFault | None:
    """For a writer that reports no error (OpenCV's VideoWriter fails to open, or drops frames
    on a full disk and exits cleanly) and left no good temp file `tmp` for `path`: the fault
    that the state of tmp's folder explains, or None when it explains none."""
    err = _folder_fault(Path(tmp).parent)
    return None if err is None else WriteFault(path, err)


def _raise_fault(path: Path, diagnosis: tuple[int, str | None], needed: int | None, exc: BaseException) -> None:
    err, detail = diagnosis
    # The failed writer's frames (in the whole exception chain: torch's zip writer sits in the
    # frames of the error its own cleanup met) still hold its open temp file, which keeps its
    # space though unlinked: release them, or the free space reported would be 0.
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__
    if err in _PATH_ERRNOS:
        raise FerError(f"{path}: {os.strerror(err).lower()}") from exc
    raise WriteFault(path, err, needed, detail) from exc


def ensure_writable_parent(path: Path) -> None:
    """Create `path`'s parent, or fail with a one-line error naming it."""
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in _PATH_ERRNOS or exc.errno is None:
            raise FerError(f"cannot create directory {parent}: {exc.strerror}") from None
        raise WriteFault(path, exc.errno) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        with contextlib.suppress(OSError):
            if os.statvfs(parent).f_flag & os.ST_RDONLY:
                raise WriteFault(path, errno.EROFS)
        raise WriteFault(path, errno.EACCES, detail=f"folder {parent} is not writable")


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is down (a short write is legal); a full disk raises ENOSPC."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write_many(items: list[tuple[Path | str, bytes]]) -> None:
    """Write several files all or nothing: every temp file first, then the renames in order.

    For files that only make sense together (an export and its sidecar; shards and their
    index, which goes last). A failed write (full disk, read-only folder, ...) removes every
    temp file and renames nothing, so the previous set stays whole; it raises WriteFault
    naming the file and the space the whole set needs.
    """
    items = [(Path(p), d) for p, d in items]
    needed = sum(len(d) for _, d in items)
    temps: list[tuple[Path, Path]] = []  # (temp, final) not yet renamed
    current = items[0][0] if items else Path()
    try:
        for path, data in items:
            current = path
            ensure_writable_parent(path)
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), dir=path.parent)
            temps.append((Path(tmp), path))
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            _default_mode(Path(tmp))
        while temps:
            tmp_path, current = temps[0]
            os.replace(tmp_path, current)
            temps.pop(0)
    except BaseException as exc:
        diagnosis = _diagnose(exc, (current.parent.absolute(),))
        for tmp_path, _ in temps:
            with contextlib.suppress(OSError):
                tmp_path.unlink()
        if diagnosis is None:
            raise
        _raise_fault(current, diagnosis, needed, exc)
    for parent in dict.fromkeys(p.parent for p, _ in items):
        _fsync_dir(parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory and os.replace."""
    atomic_write_many([(path, data)])


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_bytes(obj: Any) -> bytes:
    """The JSON every fercli file is written as (indented, in insertion order)."""
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


@contextlib.contextmanager
def atomic_save(path: Path | str, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it onto `path`, else delete it.

    For writers that want a filename (torch.save, np.savez, PIL.Image.save, matplotlib).
    A failed write inside the block (an OSError on the temp file, torch's serialization
    error) becomes a WriteFault naming `path`; `size_hint` (bytes) goes into its message.
    """
    path = Path(path)
    ensure_writable_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        _raise_fault(path, (exc.errno or 0, None), size_hint, exc)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        _default_mode(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as exc:
        diagnosis = _diagnose(exc, (path.parent.absolute(),))
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if diagnosis is None:
            raise
        _raise_fault(path, diagnosis, size_hint, exc)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(target: Path | str, force: bool = False, size_hint: int | None = None) -> Iterator[Path]:
    """Build a directory in a temp sibling and rename it onto `target` only on success.

    Refuses an existing `target` unless `force`. With `force` the old directory is moved
    aside and deleted only after the new one is in place. Two concurrent writers each build
    their own temp dir; os.rename onto a non-empty directory fails, so exactly one wins and
    the other gets a one-line error — never a mixture of both. A failed write inside the
    block becomes a WriteFault naming `target` (with `size_hint` bytes as what it needs);
    the old directory is untouched.
    """
    target = Path(target)
    if target.exists() and not force:
        raise FerError(f"output {target} already exists (use --force to replace it)")
    ensure_writable_parent(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target.name + "-"), dir=target.parent))
    except OSError as exc:
        _raise_fault(target, (exc.errno or 0, None), size_hint, exc)
    try:
        yield tmp
        _fsync_dir(tmp)
        _default_mode(tmp, directory=True)
        if target.exists():
            if not force:
                raise FerError(f"output {target} appeared while writing (another process?)")
            trash = Path(tempfile.mkdtemp(prefix=_tmp_prefix("old-"), dir=target.parent))
            os.rename(target, trash / "old")
            os.rename(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                raise FerError(f"output {target} appeared while writing (another process?)") from None
    except BaseException as exc:
        diagnosis = _diagnose(exc, (target.parent.absolute(),))
        shutil.rmtree(tmp, ignore_errors=True)
        if diagnosis is None:
            raise
        _raise_fault(target, diagnosis, size_hint, exc)
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


# --------------------------------------------------------------------------- shards
# A large shipped file (the bundled model's .npz, its int8 ONNX graph) is kept as parts of at
# most a few MB beside an index naming each part with its size and sha256, and the sha256 of
# the whole: git and package indexes handle the parts, and a truncated or swapped part is
# caught before any byte of it is used.

SHARD_INDEX_SUFFIX = ".index.json"
SHARD_PART_SUFFIX = ".part"


def shard_files(out_path: Path, data: bytes, max_bytes: int, fmt: str,
                extra: dict[str, Any] | None = None) -> list[tuple[Path, bytes]]:
    """(path, bytes) of `data` cut into parts of ≤ max_bytes, then its index (last, so a
    writer that renames in order publishes the index after every part)."""
    files: list[tuple[Path, bytes]] = []
    parts = []
    for i, start in enumerate(range(0, len(data), max(1, max_bytes))):
        chunk = data[start:start + max_bytes]
        p = Path(f"{out_path}{SHARD_PART_SUFFIX}{i}")
        files.append((p, chunk))
        parts.append({"file": p.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    index = {"format": fmt, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "parts": parts, **(extra or {})}
    files.append((Path(f"{out_path}{SHARD_INDEX_SUFFIX}"), json_bytes(index)))
    return files


def sharded_exists(path: Path | str) -> bool:
    """True if `path` or its shard index exists."""
    return Path(path).is_file() or Path(f"{path}{SHARD_INDEX_SUFFIX}").is_file()


def read_shards(index_path: Path) -> bytes:
    """The bytes a shard index describes, each part and the whole checked against its sha256;
    a one-line FerError naming the index or the part otherwise."""
    index = read_json(index_path, "fercli shard index")
    if not index or not isinstance(index.get("parts"), list) or "sha256" not in index:
        raise FerError(f"{index_path}: not a fercli shard index (expected parts and sha256)")
    chunks = []
    for i, part in enumerate(index["parts"]):
        if not isinstance(part, dict) or not isinstance(part.get("file"), str):
            raise FerError(f"{index_path}: part {i} is malformed")
        name = part["file"]
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise FerError(f"{index_path}: part name {name!r} is not a plain file name")
        p = index_path.parent / name
        try:
            chunk = p.read_bytes()
        except OSError as exc:
            raise FerError(f"{p}: cannot read model shard ({exc.strerror or exc})") from None
        if len(chunk) != part.get("bytes") or hashlib.sha256(chunk).hexdigest() != part.get("sha256"):
            raise FerError(f"{p}: shard is truncated or corrupt (size or sha256 differs from {index_path.name})")
        chunks.append(chunk)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != index["sha256"]:
        raise FerError(f"{index_path}: reassembled model does not match its sha256")
    return data
