"""Test-time augmentation, by name (no torch: `fer predict` validates --tta before it loads a
model). The views of the 48x48 modes are face_views here (numpy, so the fixed-input ONNX
graphs run them as one batch); ten-crop's are fercli.model.inference._tta_views:

    none      the face
    flip      the face and its mirror image, probabilities averaged
    shift     the face and 4 copies moved SHIFT_PX pixels left, right, up and down (edges
              replicated), all 48x48: probabilities averaged
    flip-shift  shift's 5 views and their 5 mirrors
    ten-crop  4 corners + centre at 90 % size, each also mirrored (the model resizes the crops
              back to its input size): torch only, the ONNX graphs take 48x48 faces alone

Measured on wild-dev and FER2013 PublicTest: docs/results.md, "Faces in the wild".
"""

from __future__ import annotations

import numpy as np

TTA_MODES = ("none", "flip", "shift", "flip-shift", "ten-crop")
# what the fixed 48x48 input of an ONNX graph can run: views of the same size
ONNX_TTA_MODES = ("none", "flip", "shift", "flip-shift")
SHIFT_PX = 2  # 4 % of 48: about the spread of FER2013's face centres


def view_count(tta: str) -> int:
    """How many views (forward passes per face) a mode runs."""
    return {"none": 1, "flip": 2, "shift": 5, "flip-shift": 10, "ten-crop": 10}[tta]


def face_views(faces: np.ndarray, tta: str) -> list[np.ndarray]:
    """The views of (N, ..., H, W) faces for a same-size mode (ONNX_TTA_MODES), each the
    input's shape and dtype; their probabilities are averaged."""
    views = [faces]
    if tta in ("shift", "flip-shift"):
        s = SHIFT_PX
        pad = [(0, 0)] * (faces.ndim - 2) + [(s, s), (s, s)]
        p = np.pad(faces, pad, mode="edge")
        h, w = faces.shape[-2:]
        # content moved right, left, down, up by s pixels
        views += [p[..., s:s + h, :w], p[..., s:s + h, 2 * s:2 * s + w],
                  p[..., :h, s:s + w], p[..., 2 * s:2 * s + h, s:s + w]]
    if tta in ("flip", "flip-shift"):
        views += [v[..., ::-1] for v in views]
    return [np.ascontiguousarray(v) for v in views]
