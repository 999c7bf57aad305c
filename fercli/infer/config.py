"""What `fer predict` (and every caller of the inference path) asks for: one frozen config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictConfig:
    inputs: tuple[str, ...]
    model: str | None = None  # run dir | .pt checkpoint | exported .npz | .onnx; None = default model
    detector: str = "auto"  # auto (yunet if installed, else haar) | haar | yunet | none (image = one face)
    # The face settings below were chosen on wild-dev and FER2013 PublicTest (docs/results.md,
    # "Faces in the wild"): the mirror-image TTA and a contrast stretch help both; a detected
    # box gets FER2013's framing (YuNet's box fills 96 % of a FER2013 face's side: margin 0.05).
    tta: str = "flip"  # none | flip | shift | flip-shift (| ten-crop: torch)
    device: str = "auto"
    margin: float = 0.05  # enlarge the detected box by this fraction of its size (2.5% per side)
    frame: float = 1.0  # --detector none: the centred square, this fraction of the image's long side (>1 pads)
    intensity: str = "stretch"  # none | equalize | stretch: the grey levels of each 48x48 crop
    batch_size: int = 64
    annotate: str | None = None  # folder for annotated copies
    csv: str | None = None  # CSV file, one row per face
    backend: str = "auto"  # auto | torch | onnx (onnxruntime); see make_classifier
    precision: str = "auto"  # auto | fp32 | int8 (onnxruntime only); see make_classifier
