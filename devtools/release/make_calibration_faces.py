"""Build fercli/assets/calibration_faces.npz: the two public-domain sample portraits
(sample_images/README.md) as 160x160 grey crops around their Haar boxes, from which
fercli.export.onnx_format.sample_calibration_faces draws the int8 calibration faces.

    .venv/bin/python devtools/release/make_calibration_faces.py

Boxes from sample_images/README.md (OpenCV 4.14 Haar); side = 1.6 x the box, so the face box
is (30, 30, 100, 100) in each crop (CALIBRATION_FACE_BOX).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fercli.export.onnx_format import CALIBRATION_ASSET  # noqa: E402
from fercli.vision.faces import crop_face  # noqa: E402
from fercli.vision.images import load_grey  # noqa: E402

BOXES = {"astronaut.jpg": (177, 66, 95, 95), "grace_hopper.jpg": (156, 104, 222, 222)}

if __name__ == "__main__":
    crops = np.stack([crop_face(load_grey(REPO / "sample_images" / f), box, size=160, margin=0.6)
                      for f, box in BOXES.items()])
    np.savez_compressed(CALIBRATION_ASSET, faces=crops, sources=np.array(list(BOXES)))
    print(CALIBRATION_ASSET, crops.shape, CALIBRATION_ASSET.stat().st_size, "bytes")
