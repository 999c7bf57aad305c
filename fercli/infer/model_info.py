"""ModelInfo: what `fer predict`, the API and `fer serve` say about the model they run
(where it came from, a one-line description, its classes and provenance details). No torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    source: str  # "--model", "bundled default model", "newest local run"
    path: str
    description: str
    classes: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)


DETAIL_KEYS = ("model_spec", "dataset_name", "dataset_sha256", "private_test_accuracy", "training_command",
               "best_epoch", "calibration")


def model_info(source: str, path: Path, info: dict[str, Any], classes: Any, spec: Any) -> ModelInfo:
    spec = info.get("model_spec") or spec or {}
    desc = f"{spec.get('name', '?')}" + (" (shared trunk)" if spec.get("shared_backbone") else "")
    if info.get("dataset_name"):
        desc += f" trained on {info['dataset_name']}"
    acc = info.get("private_test_accuracy")
    if isinstance(acc, (int, float)):
        desc += f", PrivateTest accuracy {100 * acc:.2f}%"
    return ModelInfo(source=source, path=str(path), description=desc, classes=tuple(classes),
                     details={k: info.get(k) for k in DETAIL_KEYS if k in info})
