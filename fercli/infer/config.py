"""What `fer predict` (and every caller of the inference path) asks for: one frozen config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictConfig:
    inputs: tuple[str, ...]
    model: str | None = None  # run dir | .pt checkpoint | exported .npz | .onnx; None = default model
    detector: str = "auto"  # auto (yunet if installed, else haar) | haar | yunet | none (image = one face)
    tta: str = "none"  # none | flip | shift | flip-shift (| ten-crop: torch)
    device: str = "auto"
    margin: float = 0.2  # enlarge the detected box by this fraction of its size (10% per side)
    frame: float = 1.0  # --detector none: the centred square, this fraction of the image's long side (>1 pads)
    intensity: str = "none"  # none | equalize | stretch: the grey levels of each 48x48 crop
    batch_size: int = 64
    annotate: str | None = None  # folder for annotated copies
    csv: str | None = None  # CSV file, one row per face
    backend: str = "auto"  # auto | torch | onnx (onnxruntime); see make_classifier
    precision: str = "auto"  # auto | fp32 | int8 (onnxruntime only); see make_classifier
