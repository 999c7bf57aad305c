"""The human-readable .json sidecar beside an exported model.

The sidecar is named after the model file with its extension: `ck.npz.json`, `ck.onnx.json`
(a sharded `ck.npz` has it beside its index, also `ck.npz.json`), so an `.npz` and an `.onnx`
export in one folder each keep their own. Older exports named it `ck.json`; find_sidecar and
read_sidecar fall back to that name when the new one is absent. The loaders never read a
sidecar: an export's metadata is inside the file itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fercli.files import SHARD_INDEX_SUFFIX, read_json


def _model_file(model: Path | str) -> Path:
    """The model file a reference names (a shard index `ck.npz.index.json` names `ck.npz`)."""
    return Path(str(model).removesuffix(SHARD_INDEX_SUFFIX))


def sidecar_path(model: Path | str) -> Path:
    """Where an export writes the sidecar of `model`: `ck.npz` -> `ck.npz.json`."""
    path = _model_file(model)
    return path.with_name(path.name + ".json")


def legacy_sidecar_path(model: Path | str) -> Path:
    """The name older exports gave the sidecar: `ck.npz` -> `ck.json`."""
    return _model_file(model).with_suffix(".json")


def find_sidecar(model: Path | str) -> Path | None:
    """The sidecar of `model` that exists: its own name first, else the older `ck.json`."""
    for path in (sidecar_path(model), legacy_sidecar_path(model)):
        if path.is_file():
            return path
    return None


def read_sidecar(model: Path | str) -> dict[str, Any]:
    """The metadata in the sidecar of `model` (either name); a FerError naming the expected
    file when there is none."""
    path = find_sidecar(model)
    return read_json(path if path is not None else sidecar_path(model), "model metadata sidecar")
