"""The one detection-size rule: photos are scaled down to a long side for detection, boxes
mapped back to full resolution and faces cropped there; `fer serve --detect-max-side` picks
that side for the server, `fer predict` keeps its photo scale."""

from __future__ import annotations

import numpy as np
import pytest
from serving import SAMPLES

import fercli
from fercli.errors import FerError
from fercli.infer.recognizer import to_grey
from fercli.infer.video import iou
from fercli.serve.config import ServeConfig, validate
from fercli.vision.faces import YUNET_MAX_SIDE, detect_faces, resolve_detector
from fercli.vision.images import load_grey

PHOTOS = {"two_faces.jpg": 2, "astronaut.jpg": 1, "grace_hopper.jpg": 1}


@pytest.fixture(scope="module")
def detector() -> str:
    return resolve_detector("auto")


def test_no_max_side_is_the_photo_scale_fer_predict_uses(detector: str) -> None:
    g = load_grey(SAMPLES / "two_faces.jpg")
    default = YUNET_MAX_SIDE if detector == "yunet" else 1280
    assert detect_faces(g, detector) == detect_faces(g, detector, None) == detect_faces(g, detector, default)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_a_smaller_detection_size_finds_the_same_faces_in_full_resolution_coordinates(detector: str, name: str) -> None:
    g = load_grey(SAMPLES / name)
    full = detect_faces(g, detector)
    small = detect_faces(g, detector, 320)
    assert len(full) == len(small) == PHOTOS[name]
    for a, b in zip(full, small, strict=True):
        assert iou(a, b) >= 0.8, (a, b)  # the boxes are mapped back to the full image
        assert b[0] + b[2] <= g.shape[1] and b[1] + b[3] <= g.shape[0]


@pytest.fixture(scope="module")
def recognizers() -> tuple[fercli.Recognizer, fercli.Recognizer]:
    base = fercli.Recognizer()
    return base, fercli.Recognizer(detect_max_side=320, classifier=base.classifier)


def test_the_recognizer_crops_at_full_resolution_whatever_the_detection_size(recognizers) -> None:  # type: ignore[no-untyped-def]
    base, small = recognizers
    assert base.detect_max_side is None and small.detect_max_side == 320
    data = (SAMPLES / "two_faces.jpg").read_bytes()
    found = small.find_faces(data)
    assert [b for b, _ in found] == detect_faces(load_grey(SAMPLES / "two_faces.jpg"), small.detector, 320)
    assert all(c.shape == (48, 48) and c.dtype == np.uint8 for _, c in found)


def test_find_faces_in_grey_is_find_faces_of_the_decoded_image(recognizers) -> None:  # type: ignore[no-untyped-def]
    base, _ = recognizers
    for name in PHOTOS:
        path = SAMPLES / name
        a, b = base.find_faces(path), base.find_faces_in_grey(to_grey(path))
        assert [x for x, _ in a] == [x for x, _ in b]
        assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))


@pytest.mark.parametrize("bad", [0, 100, 5000])
def test_a_detection_size_out_of_range_is_one_line_naming_the_flag(bad: int) -> None:
    with pytest.raises(FerError, match="--detect-max-side"):
        validate(ServeConfig(detect_max_side=bad))
    with pytest.raises(FerError, match="^detect_max_side must be"):  # the API names its keyword
        fercli.Recognizer(detect_max_side=bad)
