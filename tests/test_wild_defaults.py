"""One inference path: fer predict, the Python API, fer serve and video read the same face
settings (PredictConfig's), and the pieces behind them (TTA views, re-framing, intensity)."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from typer.main import get_command

from fercli.api import Recognizer as ApiRecognizer
from fercli.cli import app
from fercli.errors import FerError
from fercli.infer.config import PredictConfig
from fercli.infer.recognizer import Recognizer, find_faces
from fercli.infer.video import VideoConfig
from fercli.model.tta import ONNX_TTA_MODES, face_views, view_count
from fercli.serve.config import ServeConfig
from fercli.vision.faces import normalise_face

FACE_FIELDS = ("detector", "tta", "margin", "frame", "intensity")
COMMANDS = get_command(app).commands  # type: ignore[attr-defined]


def _defaults(cls: type) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize("cls", [ServeConfig, VideoConfig])
def test_server_and_video_configs_mirror_predict_config(cls: type) -> None:
    want, got = _defaults(PredictConfig), _defaults(cls)
    for name in FACE_FIELDS:
        assert got[name] == want[name], (cls.__name__, name)


@pytest.mark.parametrize("cls", [Recognizer, ApiRecognizer])
def test_the_python_api_defaults_are_predict_configs(cls: type) -> None:
    params = inspect.signature(cls.__init__).parameters
    want = _defaults(PredictConfig)
    for name in FACE_FIELDS:
        assert params[name].default == want[name], name


@pytest.mark.parametrize("command,config", [("predict", PredictConfig), ("serve", ServeConfig)])
def test_the_cli_defaults_are_predict_configs(command: str, config: type) -> None:
    opts = {p.name: p.default for p in COMMANDS[command].params}
    want = _defaults(PredictConfig)
    checked = [n for n in FACE_FIELDS if n in opts]
    assert "tta" in checked and "detector" in checked
    for name in checked:
        assert opts[name] == want[name], (command, name)


def test_shift_views_move_the_face_and_keep_its_size() -> None:
    faces = np.arange(2 * 48 * 48, dtype=np.uint16).reshape(2, 48, 48).astype(np.uint8)
    for mode in ONNX_TTA_MODES:
        views = face_views(faces, mode)
        assert len(views) == view_count(mode)
        assert all(v.shape == faces.shape and v.dtype == faces.dtype for v in views)
    v = face_views(faces, "shift")
    assert np.array_equal(v[0], faces)
    assert np.array_equal(v[1][:, :, 2:], faces[:, :, :-2])  # content moved right by 2
    assert np.array_equal(v[1][:, :, 0], faces[:, :, 0])  # the edge replicated
    assert np.array_equal(v[4][:, :-2], faces[:, 2:])  # moved up by 2
    flips = face_views(faces, "flip-shift")
    assert np.array_equal(flips[5], faces[..., ::-1])


def test_intensity_modes() -> None:
    rng = np.random.default_rng(0)
    face = (100 + rng.integers(0, 40, (48, 48))).astype(np.uint8)  # a low-contrast face
    assert normalise_face(face, "none") is face
    stretched = normalise_face(face, "stretch")
    assert stretched.min() <= 3 and stretched.max() >= 252
    assert normalise_face(face, "equalize").max() == 255
    assert np.array_equal(normalise_face(np.full((48, 48), 7, np.uint8), "stretch"), np.full((48, 48), 7))
    with pytest.raises(FerError):
        normalise_face(face, "gamma")


def test_frame_recrops_a_given_face() -> None:
    grey = np.zeros((100, 100), np.uint8)
    grey[25:75, 25:75] = 200
    _, (same,) = find_faces(grey, "none", 0.2, frame=1.0, intensity="none")
    _, (inner,) = find_faces(grey, "none", 0.2, frame=0.5, intensity="none")
    _, (outer,) = find_faces(grey, "none", 0.2, frame=2.0, intensity="none")
    assert (inner == 200).all()  # the centre half is all bright square
    assert 0.2 < (same == 200).mean() < 0.3
    assert (outer == 200).mean() < (same == 200).mean()  # padded with the (dark) edge pixels
