"""A model reference → which file it names and what kind of model that is: the one resolver
behind `fer predict --model`, `fer evaluate TARGET`, `fer calibrate`, `fer export`,
`fer serve --model`, `fer train --init-from` and fercli.Recognizer(model=...).

    None                    the bundled default, else the newest ./runs/**/best.pt
    default                 the model shipped in fercli/assets (DEFAULT_MODEL)
    RUN_DIR                 a `fer train` run directory: its best.pt (selected on validation)
    CHECKPOINT.pt           a fercli checkpoint
    MODEL.npz               an exported model (`fer export`), or its shards via .npz.index.json
    MODEL.onnx              an ONNX graph (`fer export --format onnx`): onnxruntime only

Only paths are looked at here (no torch, nothing read but directory entries): loading is
fercli.infer.sources (torch) or fercli.export.onnx_runtime (onnxruntime). Every failure is a
one-line FerError naming the option and the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fercli.errors import FerError
from fercli.files import SHARD_INDEX_SUFFIX, sharded_exists

DEFAULT_REF = "default"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS_DIR / "default_model.npz"
# The bundled model's int8 graph (sharded beside the .npz): what the CPU runs without torch.
DEFAULT_GRAPH = ASSETS_DIR / "default_model.int8.onnx"
RUNS_DIR = Path("runs")
BEST_CHECKPOINT = "best.pt"  # fercli.model.checkpoints.BEST_CHECKPOINT, named without torch
BUNDLED = "bundled default model"
KINDS = ("exported", "checkpoint", "onnx")
ACCEPTED = "a run directory, a .pt checkpoint, an exported .npz, an .onnx graph or 'default'"


@dataclass(frozen=True)
class ModelRef:
    """Where a model reference points: kind (exported | checkpoint | onnx), the file, and how
    it was chosen (the option that named it, the bundled default, the newest local run)."""

    kind: str
    path: Path
    source: str

    @property
    def bundled(self) -> bool:
        return self.path.resolve() == DEFAULT_MODEL.resolve()


def is_exported_ref(path: Path) -> bool:
    return (path.suffix == ".npz" or path.name.endswith(SHARD_INDEX_SUFFIX)
            or (not path.exists() and sharded_exists(path)))


def newest_run_checkpoint(root: Path = RUNS_DIR) -> Path | None:
    """The most recently written best.pt under `root`, or None."""
    if not root.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for p in root.rglob(BEST_CHECKPOINT):
        try:
            m = p.stat().st_mtime
        except OSError:
            continue
        if best is None or m > best[0]:
            best = (m, p)
    return best[1] if best else None


def no_model_message() -> str:
    return (f"no model to predict with: no bundled model at {DEFAULT_MODEL} and no trained run "
            f"under ./{RUNS_DIR}; train one with `fer prepare fer2013 SRC && fer train --dataset fer2013` "
            f"or pass --model RUN_DIR|CHECKPOINT.pt|MODEL.npz|MODEL.onnx")


def _bundled() -> ModelRef:
    if not sharded_exists(DEFAULT_MODEL):
        raise FerError(f"no shipped default model at {DEFAULT_MODEL} (reinstall fercli, or give a model path)")
    return ModelRef("exported", DEFAULT_MODEL, BUNDLED)


def locate(ref: str | Path | None, what: str = "--model", *, fallback: bool = False) -> ModelRef:
    """The model `ref` names (see the module docstring); `what` names the option in errors.
    None means the bundled default; with `fallback` (fer predict, the API, fer serve) a
    missing bundled model falls back to the newest local run."""
    if ref is None or str(ref) == DEFAULT_REF:
        if ref is None and fallback and not sharded_exists(DEFAULT_MODEL):
            newest = newest_run_checkpoint()
            if newest is None:
                raise FerError(no_model_message())
            return ModelRef("checkpoint", newest, "newest local run (no bundled model)")
        return _bundled()
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".onnx":
        if path.is_dir():
            raise FerError(f"{what} {path} is a directory; expected a .onnx model file")
        if not path.is_file():
            raise FerError(f"{what} {path} does not exist (give {ACCEPTED})")
        return ModelRef("onnx", path, what)
    if is_exported_ref(path):
        if path.name.endswith(SHARD_INDEX_SUFFIX):
            path = Path(str(path)[: -len(SHARD_INDEX_SUFFIX)])
        return ModelRef("exported", path, what)
    if path.is_dir():
        if (path / BEST_CHECKPOINT).is_file():
            return ModelRef("checkpoint", path / BEST_CHECKPOINT, what)
        if any(path.glob("fold-*/" + BEST_CHECKPOINT)):
            raise FerError(f"{what} {path} is a k-fold root with one model per fold; give one fold, "
                           f"e.g. {path / 'fold-0'}")
        raise FerError(f"{what} {path}: no {BEST_CHECKPOINT} in this directory (give {ACCEPTED})")
    if not path.exists():
        raise FerError(f"{what} {path} does not exist (give {ACCEPTED})")
    return ModelRef("checkpoint", path, what)
