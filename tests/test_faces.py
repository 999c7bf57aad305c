"""One image path for `fer prepare` and `fer predict` (fercli.vision.images + fercli.vision.faces).

The same file must reach the model as the same 48x48 uint8 array whether it is training
data or a photo to classify: these tests run both commands' real code on the same files
and compare the arrays, then pin the decoder's policies (alpha on white, EXIF orientation)
and crop_face's margin and edge handling.
"""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fercli.data.ingest import prepare_fer2013
from fercli.data.prepared import load_prepared
from fercli.errors import FerError
from fercli.infer import predict as P
from fercli.vision import faces
from fercli.vision.faces import crop_face, detect_faces, resize_face
from fercli.vision.images import decode_bgr, decode_grey
from tests.fixtures import SAMPLE_DIR, face_image, make_fer_folders

TINY_COUNTS = {s: {c: 1 for c in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")}
               for s in ("train", "public_test", "private_test")}


def rgba_face(size: int = 64) -> np.ndarray:
    """A real face whose left third is fully transparent, the rest opaque, one band half-transparent."""
    grey = face_image(size)
    rgba = np.dstack([grey, np.roll(grey, 3, axis=1), grey // 2, np.full_like(grey, 255)])
    rgba[:, : size // 3, 3] = 0
    rgba[: size // 8, :, 3] = 128
    rgba[:, : size // 3, :3] = 17  # what a decoder that ignores alpha would show
    return rgba


def exif_rotated_jpeg(path: Path) -> Path:
    """A non-square face photo stored sideways with EXIF orientation 6 (rotate 90° clockwise)."""
    upright = Image.fromarray(np.asarray(Image.open(SAMPLE_DIR / "astronaut.jpg"))[20:260, 120:330])
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    return path


class _Recorder:
    """Stands in for FaceClassifier: records the faces `fer predict` would feed the model."""

    device = torch.device("cpu")
    classes = ("a", "b")

    def __init__(self) -> None:
        self.faces: list[np.ndarray] = []

    def predict_proba(self, x: np.ndarray, *, tta: str = "none", batch_size: int = 64) -> np.ndarray:
        self.faces.extend(x)
        return np.full((x.shape[0], 2), 0.5)

    def describe(self) -> dict:
        return {}


def _predict_faces(path: Path, detector: str = "none", intensity: str = "none") -> list[np.ndarray]:
    """The 48x48 arrays `fer predict` classifies; levels as they are unless `intensity` says."""
    rec = _Recorder()
    res = P.run_predict(P.PredictConfig(inputs=(str(path),), detector=detector, intensity=intensity),
                        classifier=rec)
    assert res.images[0].error is None, res.images[0].error
    return rec.faces


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (array in prepare's data.npz, array predict classifies)} for the same files."""
    root = tmp_path_factory.mktemp("same")
    src = make_fer_folders(root / "fer", TINY_COUNTS)
    happy = src / "train" / "happy"
    files = {
        "sample_jpeg": shutil.copy(SAMPLE_DIR / "astronaut.jpg", happy / "Training_90001.jpg"),
        "rgba_png": happy / "Training_90002.png",
        "small_png": happy / "Training_90003.png",  # smaller than 48: enlarged, not shrunk
        "exif_jpeg": exif_rotated_jpeg(happy / "Training_90004.jpg"),
        "rgb16_png": happy / "Training_90005.png",  # 16 bits per sample: rounded, not truncated
    }
    Image.fromarray(rgba_face(), "RGBA").save(files["rgba_png"])
    rgb16 = np.dstack([face_image(64).astype(np.uint16) * 257] * 3)
    rgb16 += np.random.default_rng(0).integers(0, 257, rgb16.shape, dtype=np.uint16)
    cv2.imwrite(str(files["rgb16_png"]), rgb16)
    Image.fromarray(face_image(30)).save(files["small_png"])
    ds = load_prepared(prepare_fer2013(src, out=root / "out").out)
    out = {}
    for name, f in files.items():
        (i,) = np.flatnonzero(ds.source == f"train/happy/{Path(f).name}")
        (got,) = _predict_faces(Path(f))
        out[name] = (ds.images[i], got)
    return out


@pytest.mark.parametrize("name", ["sample_jpeg", "rgba_png", "small_png", "exif_jpeg", "rgb16_png"])
def test_prepare_and_predict_give_identical_48x48_arrays(both_paths, name: str) -> None:
    prepared, predicted = both_paths[name]
    assert prepared.shape == predicted.shape == (48, 48)
    assert prepared.dtype == predicted.dtype == np.uint8
    np.testing.assert_array_equal(prepared, predicted)


def test_the_shared_path_applies_the_policies(both_paths) -> None:
    # Transparent pixels are white in both commands (not the 17 hidden under alpha 0) ...
    prepared, _ = both_paths["rgba_png"]
    assert (prepared[8:, :14] == 255).all()
    # ... and the sideways-stored photo is upright: it matches the upright original.
    upright = cv2.cvtColor(np.asarray(Image.open(SAMPLE_DIR / "astronaut.jpg"))[20:260, 120:330],
                           cv2.COLOR_RGB2GRAY)
    ref = cv2.resize(upright, (48, 48), interpolation=cv2.INTER_AREA).astype(int)
    prepared, _ = both_paths["exif_jpeg"]
    assert np.abs(prepared.astype(int) - ref).mean() < 4
    assert np.abs(np.rot90(prepared).astype(int) - ref).mean() > 20


def test_predict_detector_crop_is_crop_face_with_its_margin() -> None:
    path = SAMPLE_DIR / "astronaut.jpg"
    default = P.PredictConfig(inputs=())
    (got,) = _predict_faces(path, "haar")
    grey = decode_grey(path.read_bytes())[0]
    (box,) = detect_faces(grey, "haar")
    crop = crop_face(grey, box, 48, margin=default.margin)
    np.testing.assert_array_equal(got, crop)
    assert default.margin == 0.05
    # The default levels (contrast stretch) are applied to that one crop, after it.
    (stretched,) = _predict_faces(path, "haar", default.intensity)
    np.testing.assert_array_equal(stretched, faces.normalise_face(crop, default.intensity))


# ------------------------------------------------------------------------------ decoder policy


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_alpha_is_composited_on_white_in_every_mode() -> None:
    v = np.full((8, 8), 60, np.uint8)
    alpha = np.zeros((8, 8), np.uint8)
    alpha[:, 4:] = 255
    alpha[:2, :] = 128
    want = np.where(alpha == 255, 60, 255).astype(np.uint8)
    want[:2, :] = (60 * 128 + 255 * 127 + 127) // 255  # 156: half way to white
    rgba = np.dstack([v, v, v, alpha])
    cases = {
        "rgba": _png(rgba, "RGBA"),
        "grey+alpha": _png(np.dstack([v, alpha]), "LA"),
        "rgba-16bit": _png_rgba16(rgba),
    }
    for name, data in cases.items():
        grey, reasons = decode_grey(data)
        np.testing.assert_array_equal(grey, want, err_msg=name)
        assert reasons, name
        np.testing.assert_array_equal(decode_bgr(data), np.dstack([want] * 3), err_msg=name)
    # A palette image with a transparent index: that colour becomes white, the others stay.
    index = np.zeros((8, 8), np.uint8)
    index[:, 4:] = 1
    pal = Image.fromarray(index, "P")
    pal.putpalette([200, 0, 0, 60, 60, 60] + [0] * 762)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    grey, reasons = decode_grey(buf.getvalue())
    assert reasons == ("palette",)
    assert (grey[:, :4] == 255).all() and (grey[:, 4:] == 60).all()
    # Opaque alpha changes nothing: same pixels as the RGB image.
    opaque = rgba.copy()
    opaque[..., 3] = 255
    np.testing.assert_array_equal(decode_grey(_png(opaque, "RGBA"))[0], v)


def _png_rgba16(rgba8: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba8, cv2.COLOR_RGBA2BGRA).astype(np.uint16) * 257)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation: int, tmp_path: Path) -> None:
    from PIL import ImageOps

    stored = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10) * 4
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "o.png"
    Image.fromarray(stored).save(p, exif=exif.tobytes())
    with Image.open(p) as im:
        want = np.asarray(ImageOps.exif_transpose(im))
    grey, reasons = decode_grey(p.read_bytes())
    np.testing.assert_array_equal(grey, want)
    assert ("exif-orientation" in reasons) == (orientation != 1)


# ------------------------------------------------------------------------------ crop_face


def _pattern(h: int = 100, w: int = 120) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def test_crop_face_margin_sets_the_square_around_the_box() -> None:
    g = _pattern()
    box = (40, 30, 50, 50)
    np.testing.assert_array_equal(crop_face(g, box, 50), g[30:80, 40:90])  # margin 0: the box
    np.testing.assert_array_equal(crop_face(g, box, 50), crop_face(g, box, 50, margin=0.0))
    # margin 0.2 adds 10% per side: a 60 px square on the same centre.
    np.testing.assert_array_equal(crop_face(g, box, 60, margin=0.2), g[25:85, 35:95])
    # Resized with INTER_AREA (resize_face), shrinking or enlarging, as prepare always has.
    np.testing.assert_array_equal(crop_face(g, box, 48, margin=0.2),
                                  cv2.resize(g[25:85, 35:95], (48, 48), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(crop_face(g, (10, 10, 20, 20), 48),
                                  cv2.resize(g[10:30, 10:30], (48, 48), interpolation=cv2.INTER_AREA))
    # A non-square box is squared on its longer side, centred.
    np.testing.assert_array_equal(crop_face(g, (40, 40, 30, 10), 30), g[30:60, 40:70])


def test_crop_face_replicates_edges_outside_the_image() -> None:
    g = _pattern()
    padded = np.pad(g, 20, mode="edge")
    # Box at the top-left corner with margin 1.0: a 40 px square from (-10, -10).
    np.testing.assert_array_equal(crop_face(g, (0, 0, 20, 20), 40, margin=1.0), padded[10:50, 10:50])
    # Bottom-right corner.
    np.testing.assert_array_equal(crop_face(g, (100, 80, 20, 20), 40, margin=1.0),
                                  padded[90:130, 110:150])
    c = crop_face(g, (115, 95, 5, 5), 48, margin=2.0)
    assert c.shape == (48, 48) and c.dtype == np.uint8


def test_resize_face_returns_a_copy_at_the_target_size() -> None:
    g = _pattern(48, 48)
    out = resize_face(g, 48)
    np.testing.assert_array_equal(out, g)
    assert out is not g and not np.shares_memory(out, g)


# ------------------------------------------------------------------------------ detector


def test_one_haar_detector_per_thread() -> None:
    here = faces.haar_detector()
    assert faces.haar_detector() is here
    other: list = []
    t = threading.Thread(target=lambda: other.append(faces.haar_detector()))
    t.start()
    t.join()
    assert other and other[0] is not here


def test_missing_cascade_is_one_clear_ferror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd) -> None:
    monkeypatch.setattr(faces, "_LOCAL", threading.local())
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    capfd.readouterr()
    with pytest.raises(FerError, match="cannot load OpenCV's Haar cascade .*opencv-python-headless<5"):
        faces.haar_detector()  # no cascade file
    assert capfd.readouterr().err == ""  # the FerError is the only line (no OpenCV log line)
    (tmp_path / faces.HAAR_CASCADE).write_text("not a cascade")
    with pytest.raises(FerError, match="cannot load OpenCV's Haar cascade .*opencv-python-headless<5"):
        faces.haar_detector()  # a corrupt one
    (tmp_path / faces.HAAR_CASCADE).write_text('<?xml version="1.0"?><opencv_storage></opencv_storage>')
    with pytest.raises(FerError, match="cannot load OpenCV's Haar cascade .*opencv-python-headless<5"):
        faces.haar_detector()  # valid XML, but no cascade in it
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(FerError, match="has no Haar cascade face detector"):
        faces.haar_detector()
