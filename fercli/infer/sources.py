"""A model reference → one loaded torch model with its provenance: what `fer evaluate`,
`fer calibrate`, `fer export`, `fer train --init-from` and the torch backend of `fer predict`
load. Which file a reference names is fercli.model.locate (one resolver, one set of errors);
this module reads it.

Nothing here executes code from a file: checkpoints load with weights_only=True, exports with
allow_pickle=False. Every failure is a one-line FerError naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from fercli.errors import FerError
from fercli.export.npz_format import load_exported
from fercli.files import SHARD_INDEX_SUFFIX, read_json, sha256_file
from fercli.model.checkpoints import load_checkpoint, model_from_checkpoint
from fercli.model.locate import locate
from fercli.provenance import training_label


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

    def info(self) -> dict[str, Any]:
        """The model's metadata as `fer predict` describes it: an export's __meta__, or the
        same fields read from a checkpoint."""
        if self.kind == "exported":
            return dict(self.meta)
        return {"model_spec": self.spec, "dataset_name": self.dataset_name, "best_epoch": self.best_epoch,
                "best_val_acc": self.selection_acc, "calibration": self.calibration}


def load_exported_source(path: Path) -> ModelSource:
    model, info = load_exported(path)
    npz = Path(str(path)[: -len(SHARD_INDEX_SUFFIX)]) if path.name.endswith(SHARD_INDEX_SUFFIX) else path
    if npz.is_file():
        sha = sha256_file(npz)
    else:  # shards: load_exported has checked the reassembled bytes against the index's sha256
        sha = str(read_json(Path(f"{npz}{SHARD_INDEX_SUFFIX}"), "shard index").get("sha256"))
    meta = {k: v for k, v in info.items() if k not in ("path", "bytes")}
    return ModelSource(model=model, classes=list(info["classes"]), kind="exported", path=npz, sha256=sha,
                       train_config=dict(meta.get("train_config") or {}),
                       dataset_name=meta.get("dataset_name"), dataset_sha256=meta.get("dataset_sha256"),
                       code_version=meta.get("code_version"), device=meta.get("device"),
                       best_epoch=meta.get("best_epoch"), selection_acc=meta.get("best_val_acc"), meta=meta,
                       calibration=meta.get("calibration"))


def load_checkpoint_source(path: Path) -> ModelSource:
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


def load_model_source(ref: str | Path | None, what: str = "model", *, fallback: bool = False) -> ModelSource:
    """Load ONE torch model from a reference (fercli.model.locate); `what` names the option."""
    found = locate(ref, what, fallback=fallback)
    if found.kind == "onnx":
        raise FerError(f"{what} {found.path} is an ONNX graph: it runs on onnxruntime (fer predict, fer serve) "
                       f"but has no torch weights to load here; give the run, .pt or .npz it was exported from")
    if found.kind == "exported":
        return load_exported_source(found.path)
    return load_checkpoint_source(found.path)
