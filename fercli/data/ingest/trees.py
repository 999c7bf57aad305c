"""Input trees of `fer prepare`: a directory or a zip archive behind one small interface.

`open_src` turns SRC into a `DirTree` (a folder), a `ZipTree` (a .zip, checked for unsafe
entries up front and read with one handle per thread) or None (another file, e.g. a CSV).
Junk names (dot files, __MACOSX, Thumbs.db, desktop.ini) are invisible in both; the input
is only ever read.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path

from fercli.errors import FerError
from fercli.vision.images import MAX_FILE_BYTES, BadImage, read_image_file

#: A zip member larger than this (uncompressed) is refused rather than read into memory.
MAX_MEMBER_BYTES = MAX_FILE_BYTES

IMAGE_EXTS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
)
JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


def is_junk(name: str) -> bool:
    return name.startswith(".") or name in JUNK_NAMES


class Tree:
    """Read-only view of a directory or zip: children(prefix), walk(prefix), read(rel)."""

    kind = ""
    path: Path

    def children(self, prefix: str) -> tuple[list[str], list[str]]:  # (dirs, files), sorted
        raise NotImplementedError

    def walk(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def where(self, rel: str) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DirTree(Tree):
    kind = "folder"

    def __init__(self, path: Path) -> None:
        self.path = path

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        dirs: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(self.path / prefix if prefix else self.path) as it:
                for e in it:
                    if is_junk(e.name):
                        continue
                    (dirs if e.is_dir() else files).append(e.name)
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        except OSError as exc:
            raise FerError(f"cannot read folder {self.where(prefix)}: {exc.strerror}") from None
        return sorted(dirs), sorted(files)

    def walk(self, prefix: str) -> list[str]:
        out: list[str] = []
        base = self.path / prefix if prefix else self.path
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not is_junk(d)]
            rel = Path(dirpath).relative_to(self.path).as_posix()
            rel = "" if rel == "." else rel + "/"
            out.extend(rel + f for f in filenames if not is_junk(f))
        out.sort()
        return out

    def read(self, rel: str) -> bytes:
        return read_image_file(self.path / rel)

    def where(self, rel: str) -> str:
        return str(self.path / rel) if rel else str(self.path)


_UNSAFE_DRIVE = re.compile(r"^[A-Za-z]:")


class ZipTree(Tree):
    kind = "zip"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise FerError(f"{path}: not a valid zip archive ({exc})") from None
        self._local = threading.local()
        self._local.zf = zf
        self._handles = [zf]
        self._lock = threading.Lock()
        self.sizes: dict[str, int] = {}
        self._dirs: dict[str, set[str]] = {"": set()}
        self._files: dict[str, list[str]] = {"": []}
        for info in zf.infolist():
            name = info.filename
            parts = re.split(r"[\\/]", name)
            if name.startswith(("/", "\\")) or _UNSAFE_DRIVE.match(name) or ".." in parts:
                zf.close()
                raise FerError(
                    f"{path}: unsafe zip entry {name!r} (absolute path or '..'); refusing the archive"
                )
            if info.is_dir():
                parts = [p for p in name.split("/") if p]
                self._add_dirs(parts)
                continue
            parts = name.split("/")
            if any(is_junk(p) for p in parts):
                continue
            self._add_dirs(parts[:-1])
            parent = "".join(p + "/" for p in parts[:-1])
            self._files.setdefault(parent, []).append(parts[-1])
            self.sizes[name] = info.file_size

    def _add_dirs(self, parts: Sequence[str]) -> None:
        prefix = ""
        for p in parts:
            if is_junk(p):
                return
            self._dirs.setdefault(prefix, set()).add(p)
            prefix += p + "/"
            self._dirs.setdefault(prefix, set())
            self._files.setdefault(prefix, [])

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        return sorted(self._dirs.get(prefix, ())), sorted(self._files.get(prefix, ()))

    def walk(self, prefix: str) -> list[str]:
        return sorted(n for n in self.sizes if n.startswith(prefix))

    def _zf(self) -> zipfile.ZipFile:
        zf = getattr(self._local, "zf", None)
        if zf is None:  # one handle per thread: ZipFile reads are not safe to share
            zf = zipfile.ZipFile(self.path)
            self._local.zf = zf
            with self._lock:
                self._handles.append(zf)
        return zf

    def read(self, rel: str) -> bytes:
        size = self.sizes.get(rel, 0)
        if size > MAX_MEMBER_BYTES:
            raise BadImage(f"zip member too large ({size} bytes uncompressed)")
        try:
            return self._zf().read(rel)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise BadImage(f"corrupt zip member ({exc})") from None
        except (RuntimeError, NotImplementedError) as exc:  # encrypted / unsupported method
            raise BadImage(f"cannot read zip member ({exc})") from None

    def where(self, rel: str) -> str:
        return f"{self.path}:{rel}" if rel else str(self.path)

    def close(self) -> None:
        for zf in self._handles:
            zf.close()


def open_src(src: Path | str, accepted: Sequence[str], what: str) -> tuple[Path, Tree | None]:
    """(path, tree): a DirTree for a folder, a ZipTree for a zip, None for another file."""
    p = Path(src)
    if not p.exists():
        raise FerError(f"SRC {p} does not exist")
    if p.is_dir():
        return p, DirTree(p)
    if p.suffix.lower() == ".zip" or zipfile.is_zipfile(p):
        return p, ZipTree(p)
    if p.suffix.lower() == ".csv":
        return p, None
    raise FerError(f"{p}: not a known {what} layout; accepted: " + "; ".join(accepted))


def no_layout(where: str, what: str, accepted: Sequence[str]) -> FerError:
    return FerError(f"{where}: matches no known {what} layout; accepted: " + "; ".join(accepted))

