"""One model reference → one loaded model with its provenance.

`fer evaluate TARGET` and `fer train --init-from SOURCE` accept the same references:

    default                 the model shipped in fercli/assets (fercli.infer.classifier.DEFAULT_MODEL)
    RUN_DIR                 a `fer train` run directory: its best.pt (selected on validation)
    CHECKPOINT.pt           a fercli checkpoint (torch.load weights_only=True)
    MODEL.npz               an exported model (`fer export`), or its shards via .npz.index.json

Nothing here executes code from a file: checkpoints load with weights_only=True, exports with
allow_pickle=False. Every failure is a one-line FerError naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from fercli.errors import FerError
from fercli.files import read_json, sha256_file
from fercli.provenance import training_label

DEFAULT_REF = "default"


@dataclass(frozen=True)
class ModelSource:
    """A loaded model (CPU, fp32, eval mode) and what is known about where it came from."""

    model: nn.Module
    classes: list[str]
    kind: str  # "checkpoint" | "exported"
    path: Path  # the file read: best.pt / x.pt / x.npz (or x.npz when its shards were read)
    sha256: str  # of the checkpoint file, or of the (reassembled) .npz archive
    train_config: dict[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None
    dataset_sha256: str | None = None
    code_version: str | None = None  # the code that trained the weights, when recorded
    device: str | None = None  # the device that trained them, when recorded
    best_epoch: int | None = None
    selection_acc: float | None = None  # accuracy on the selection split at best_epoch, when recorded
    meta: dict[str, Any] = field(default_factory=dict)  # an export's __meta__ (empty for .pt)
    calibration: dict[str, Any] | None = None  # the recorded temperature and its split, when fitted

    @property
    def spec(self) -> dict[str, Any]:
        return dict(getattr(self.model, "spec", {}))

    def provenance(self) -> dict[str, Any]:
        """What config.json / metrics.json record about this model (JSON-serialisable)."""
        return {"path": str(self.path), "kind": self.kind, "sha256": self.sha256,
                "code_version": self.code_version, "model_spec": self.spec,
                "dataset_name": self.dataset_name, "dataset_sha256": self.dataset_sha256,
                "trained_on_device": self.device, "best_epoch": self.best_epoch,
                "training": training_label(self.train_config) if self.train_config else "unknown"}


def default_model_path() -> Path:
    from fercli.infer.classifier import DEFAULT_MODEL

    return Path(DEFAULT_MODEL)


def is_exported_ref(path: Path) -> bool:
    from fercli.export.npz_format import INDEX_SUFFIX, exported_exists

    return (path.suffix == ".npz" or path.name.endswith(INDEX_SUFFIX)
            or (not path.exists() and exported_exists(path)))


def resolve_ref(ref: str | Path) -> Path:
    """`default` → the shipped model's path; anything else → that path (~ expanded)."""
    if str(ref) == DEFAULT_REF:
        path = default_model_path()
        from fercli.export.npz_format import exported_exists

        if not exported_exists(path):
            raise FerError(f"no shipped default model at {path} (reinstall fercli, or give a model path)")
        return path
    return Path(ref).expanduser()


def load_exported_source(path: Path) -> ModelSource:
    from fercli.export.npz_format import INDEX_SUFFIX, load_exported

    model, info = load_exported(path)
    npz = Path(str(path)[: -len(INDEX_SUFFIX)]) if path.name.endswith(INDEX_SUFFIX) else path
    if npz.is_file():
        sha = sha256_file(npz)
    else:  # shards: load_exported has checked the reassembled bytes against the index's sha256
        sha = str(read_json(Path(f"{npz}{INDEX_SUFFIX}"), "shard index").get("sha256"))
    meta = {k: v for k, v in info.items() if k not in ("path", "bytes")}
    return ModelSource(model=model, classes=list(info["classes"]), kind="exported", path=npz, sha256=sha,
                       train_config=dict(meta.get("train_config") or {}),
                       dataset_name=meta.get("dataset_name"), dataset_sha256=meta.get("dataset_sha256"),
                       code_version=meta.get("code_version"), device=meta.get("device"),
                       best_epoch=meta.get("best_epoch"), selection_acc=meta.get("best_val_acc"), meta=meta,
                       calibration=meta.get("calibration"))


def load_checkpoint_source(path: Path) -> ModelSource:
    from fercli.model.checkpoints import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).eval()
    config_json = path.parent / "config.json"  # beside a run's checkpoints; a bare .pt has none
    run_info = read_json(config_json, "run config") if config_json.is_file() else {}
    best = ckpt.get("best") or {}
    return ModelSource(model=model, classes=list(ckpt["classes"]), kind="checkpoint", path=path,
                       sha256=sha256_file(path), train_config=dict(ckpt.get("config") or {}),
                       dataset_name=ckpt.get("dataset_name"), dataset_sha256=ckpt.get("dataset_sha256"),
                       code_version=ckpt.get("code_version") or run_info.get("code_version"),
                       device=run_info.get("device"), best_epoch=best.get("epoch"),
                       selection_acc=best.get("val_acc"), calibration=ckpt.get("calibration"))


def load_model_source(ref: str | Path, what: str = "model") -> ModelSource:
    """Load ONE model from a reference (see the module docstring); `what` names the option."""
    from fercli.model.checkpoints import BEST_CHECKPOINT

    path = resolve_ref(ref)
    if is_exported_ref(path):
        return load_exported_source(path)
    if path.is_dir():
        if (path / BEST_CHECKPOINT).is_file():
            return load_checkpoint_source(path / BEST_CHECKPOINT)
        if any(path.glob("fold-*/" + BEST_CHECKPOINT)):
            raise FerError(f"{what} {path} is a k-fold root with one model per fold; give one fold, "
                           f"e.g. {path / 'fold-0'}")
        raise FerError(f"{what} {path}: no {BEST_CHECKPOINT} in this directory (give a `fer train` run "
                       f"directory, a .pt checkpoint, an exported .npz or 'default')")
    if not path.exists():
        raise FerError(f"{what} {path} does not exist (give a run directory, a .pt checkpoint, an "
                       f"exported .npz or 'default')")
    return load_checkpoint_source(path)
