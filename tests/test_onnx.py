"""ONNX export and the onnxruntime backend: agreement with torch on real faces, metadata,
backend selection, and the one-line errors for ONNX files that are not fercli models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from fercli.cli import app
from fercli.errors import FerError
from fercli.export.onnx_format import (
    OPSET,
    calibration_faces,
    export_onnx,
    onnx_bytes,
    quantize_int8,
)
from fercli.export.onnx_runtime import ONNX_FORMAT, OnnxClassifier
from fercli.infer.classifier import make_classifier
from fercli.infer.config import PredictConfig
from fercli.infer.sources import load_model_source
from fercli.infer.torch_backend import FaceClassifier
from fercli.model.networks import build_model
from fercli.vision.faces import FACE_SIZE, crop_face, detect_faces
from fercli.vision.images import load_grey
from tests.fixtures import CLASSES, SAMPLE_DIR, make_run

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))


def sample_faces() -> np.ndarray:
    """Every Haar face of the sample photos, cropped as fer predict does: (K, 48, 48) uint8,
    plus mirrored and shifted copies so the batch is not tiny."""
    crops = []
    for p in sorted(SAMPLE_DIR.glob("*.jpg")):
        g = load_grey(p)
        crops += [crop_face(g, b, FACE_SIZE, margin=0.2) for b in detect_faces(g, "haar")]
    base = np.stack(crops)
    return np.concatenate([base, base[:, :, ::-1], np.roll(base, 3, axis=2)])


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    d = tmp_path_factory.mktemp("onnx") / "run"
    return d, make_run(d, metrics={"split": "private_test", "accuracy": 0.5, "macro_f1": 0.4})


def torch_probs(model: torch.nn.Module, faces: np.ndarray) -> np.ndarray:
    return FaceClassifier(model, CLASSES, torch.device("cpu"), optimize="eager").predict_proba(faces)


def test_export_onnx_matches_torch_and_carries_metadata(resnet_run, tmp_path: Path) -> None:
    d, model = resnet_run
    res = runner.invoke(app, ["export", str(d), "--format", "onnx", "--dtype", "float32",
                              "-o", str(tmp_path / "m.onnx"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["format"] == ONNX_FORMAT and info["opset"] >= 17
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["fercli_format"] == ONNX_FORMAT and json.loads(props["classes"]) == CLASSES
    meta = json.loads(props["fercli_meta"])
    assert meta["dataset_sha256"] == "ab" * 32 and meta["private_test_accuracy"] == 0.5
    assert meta["exported_with_code_version"] and "fer train" in meta["training_command"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [x.dim_value for x in dims[1:]] == [1, 48, 48]  # dynamic batch

    faces = sample_faces()
    clf = OnnxClassifier(tmp_path / "m.onnx")
    got, want = clf.predict_proba(faces), torch_probs(model, faces)
    assert got.shape == (len(faces), len(CLASSES))
    np.testing.assert_allclose(got, want, atol=1e-3)
    # The batch axis is dynamic: one face at a time gives the same answer.
    np.testing.assert_allclose(clf.predict_proba(faces[:1], batch_size=1), want[:1], atol=1e-3)
    # flip TTA averages the mirrored face, as the torch path does.
    tt = FaceClassifier(model, CLASSES, torch.device("cpu")).predict_proba(faces, tta="flip")
    np.testing.assert_allclose(clf.predict_proba(faces, tta="flip"), tt, atol=1e-3)
    # so do the shifted views (one batch through the fixed 48x48 graph)
    tt = FaceClassifier(model, CLASSES, torch.device("cpu")).predict_proba(faces, tta="flip-shift")
    np.testing.assert_allclose(clf.predict_proba(faces, tta="flip-shift"), tt, atol=1e-3)
    assert np.abs(clf.predict_proba(faces, tta="shift") - got).max() > 1e-6  # the views differ


def test_bcnn_graph_with_resize_matches_torch(tmp_path: Path) -> None:
    """The B-CNN head (plain ops instead of the fused Function) and FaceInput's resize (the
    model runs at 64 px) are in the graph; fp16 weights stay within 1e-3 of fp32 torch."""
    torch.manual_seed(1)
    model = build_model("bcnn-resnet34", len(CLASSES), image_size=64, shared_backbone=True).eval()
    faces = sample_faces()
    want = torch_probs(model, faces)
    meta = {"classes": CLASSES, "model_spec": dict(model.spec)}
    for dtype, tol in (("float32", 1e-4), ("float16", 1e-3)):
        clf = OnnxClassifier(onnx_bytes(model, meta, dtype=dtype))
        np.testing.assert_allclose(clf.predict_proba(faces), want, atol=tol)


@pytest.fixture(scope="module")
def default_onnx() -> tuple[torch.nn.Module, OnnxClassifier]:
    """The shipped (trained) model and its fp16 ONNX export, as `fer export --format onnx` writes it."""
    src = load_model_source(None)
    return src.model, OnnxClassifier(onnx_bytes(src.model, {"classes": list(src.classes)}, dtype="float16"))


def _agree(model: torch.nn.Module, clf: OnnxClassifier, faces: np.ndarray) -> None:
    want = FaceClassifier(model, clf.classes, torch.device("cpu"), optimize="eager").predict_proba(faces)
    # A trained model tells faces apart: not one constant output (which any scaling bug could
    # still match within 1e-3), but several predicted classes and clearly different vectors.
    assert len(set(want.argmax(axis=1).tolist())) >= 2, "a trained model predicts one class for every face"
    assert np.abs(want[:, None, :] - want[None, :, :]).sum(-1).max() > 0.5
    # fp16 graph vs fp32 torch: measured max 1.07e-3 on 40 real faces with the 64-epoch
    # shipped model (its sharper outputs; the 25-epoch model stayed under 1e-3).
    np.testing.assert_allclose(clf.predict_proba(faces), want, atol=2e-3)


@pytest.mark.slow
def test_shipped_model_onnx_matches_torch_on_sample_faces(default_onnx) -> None:
    _agree(*default_onnx, sample_faces())


@pytest.mark.slow
@pytest.mark.realdata
def test_shipped_model_onnx_matches_torch_on_fer2013_crops(fer2013_folders: Path, default_onnx) -> None:
    files = sorted((fer2013_folders / "test").rglob("*.jpg"))[::97][:40]
    faces = np.stack([load_grey(p) for p in files])
    assert faces.shape == (40, 48, 48)
    _agree(*default_onnx, faces)


def test_backend_selection(resnet_run, tmp_path: Path) -> None:
    d, _ = resnet_run
    pick = lambda **kw: make_classifier(PredictConfig(inputs=("x",), model=str(d), device="cpu", **kw))  # noqa: E731
    clf, _, why = pick(backend="torch")
    assert isinstance(clf, FaceClassifier)
    clf, _, why = pick(backend="auto")
    assert isinstance(clf, OnnxClassifier) and "auto" in why
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx")), "the conversion is cached"
    clf, _, why = pick(backend="auto", tta="ten-crop")  # ten-crop needs other input sizes
    assert isinstance(clf, FaceClassifier) and "ten-crop" in why
    with pytest.raises(FerError, match="ten-crop"):
        pick(backend="onnx", tta="ten-crop")
    export_onnx(d, tmp_path / "m.onnx", dtype="float32")
    clf, info, why = make_classifier(PredictConfig(inputs=("x",), model=str(tmp_path / "m.onnx")))
    assert isinstance(clf, OnnxClassifier) and info.classes == tuple(CLASSES)
    with pytest.raises(FerError, match="m.onnx"):
        make_classifier(PredictConfig(inputs=("x",), model=str(tmp_path / "m.onnx"), backend="torch"))
    # Precision: auto keeps a model that is not the bundled one in fp32; int8 is asked for.
    assert pick(backend="auto")[0].describe()["precision"] == "fp32"
    clf, _, why = pick(precision="int8")
    assert clf.describe()["precision"] == "int8" and "int8" in why
    assert clf.meta["quantization"]["calibration"].startswith("256 augmented crops of the 2 sample portraits")
    assert len(list((tmp_path / "cache" / "onnx").glob("*-int8-*.onnx"))) == 1  # cached beside the fp32 graph
    with pytest.raises(FerError, match="an fp32 graph"):  # an exported graph's precision is fixed
        make_classifier(PredictConfig(inputs=("x",), model=str(tmp_path / "m.onnx"), precision="int8"))
    from fercli.infer.predict import validate

    for bad, msg in ((dict(precision="int4"), "--precision"), (dict(precision="int8", backend="torch"), "onnxruntime")):
        with pytest.raises(FerError, match=msg):
            validate(PredictConfig(inputs=("x",), **bad))


@pytest.mark.slow
@pytest.mark.realdata
def test_int8_graphs_keep_the_shipped_models_labels(fer2013_prepared) -> None:
    """The int8 graph `fer predict` runs by default on the CPU (auto: the bundled model,
    calibrated on the sample portraits) must give the float graph's label on ≥ 95% of 449
    PublicTest faces (measured on all 3,589: 97.6%; `fer export --int8-calibration` on 256
    FER2013 Training faces: 97.8%, the same quantize_int8). Without 7-bit weights (reduce_range)
    a non-VNNI x86 CPU saturates its int16 sums: 65% on a 2-core AVX2 EPYC, failing this test."""
    from fercli.data.prepared import load_prepared

    clf, info, why = make_classifier(PredictConfig(inputs=("x",), device="cpu"))
    assert isinstance(clf, OnnxClassifier) and clf.describe()["precision"] == "int8" and "bundled" in why
    fp32, _, _ = make_classifier(PredictConfig(inputs=("x",), device="cpu", precision="fp32"))
    assert fp32.describe()["precision"] == "fp32"
    ds = load_prepared(fer2013_prepared.out)
    pub = ds.images[ds.indices("public_test")][::8]
    agree = (clf.predict_proba(pub).argmax(1) == fp32.predict_proba(pub).argmax(1)).mean()
    assert agree >= 0.95, agree
    res = runner.invoke(app, ["predict", str(SAMPLE_DIR / "astronaut.jpg"), "--detector", "none"])
    assert res.exit_code == 0 and "onnxruntime int8" in " ".join(res.stderr.split())


def test_sample_calibration_faces_are_fixed_varied_faces() -> None:
    from fercli.export.onnx_format import sample_calibration_faces

    a, b = sample_calibration_faces(), sample_calibration_faces(count=16)
    assert a.shape == (256, 48, 48) and a.dtype == np.uint8
    assert np.array_equal(a[:16], b)  # the same faces every time (cache key INT8_CACHE_TAG)
    assert len({x.tobytes() for x in a}) == 256 and 60 < a.mean() < 190 and a.std() > 30
    # (How well they calibrate is tested on real faces: test_int8_graphs_keep_the_shipped_models_labels.)


def test_cli_onnx_and_torch_backends_agree(resnet_run, tmp_path: Path) -> None:
    d, _ = resnet_run
    export_onnx(d, tmp_path / "m.onnx", dtype="float32")
    out = {}
    for name, args in (("torch", ["--model", str(d), "--backend", "torch"]),
                       ("onnx", ["--model", str(d), "--backend", "onnx"]),
                       ("file", ["--model", str(tmp_path / "m.onnx")])):
        res = runner.invoke(app, ["predict", str(SAMPLE_DIR), "--detector", "haar", "--json", *args])
        assert res.exit_code == 0, res.output
        out[name] = json.loads(res.stdout)
    for a, b, c in zip(out["torch"], out["onnx"], out["file"], strict=True):
        assert len(a["faces"]) == len(b["faces"]) == len(c["faces"]) > 0
        for fa, fb, fc in zip(a["faces"], b["faces"], c["faces"], strict=True):
            assert fa["box"] == fb["box"] == fc["box"]
            for k in CLASSES:
                assert abs(fa["probs"][k] - fb["probs"][k]) < 1e-3 and abs(fa["probs"][k] - fc["probs"][k]) < 1e-3


def _plain_onnx(path: Path, in_shape: tuple[int, ...], with_meta: bool) -> None:
    """An ONNX model that is not a fercli model (optionally with fercli's metadata)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(in_shape[1:])), len(CLASSES)))
    x = torch.zeros(in_shape, dtype=torch.uint8)

    class F(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t):  # type: ignore[no-untyped-def]
            return self.net(t.float()).softmax(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(F(), (x,), str(path), dynamo=False, opset_version=OPSET, input_names=["faces"],
                          dynamic_axes={"faces": {0: "n"}})
    if with_meta:
        proto = onnx.load(str(path))
        for k, v in (("fercli_format", ONNX_FORMAT), ("classes", json.dumps(CLASSES))):
            e = proto.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(proto, str(path))


@pytest.mark.parametrize("case", ["no-metadata", "wrong-input", "garbage", "missing"])
def test_onnx_that_is_not_a_fercli_model_is_one_line_error(case: str, tmp_path: Path) -> None:
    p = tmp_path / f"{case}.onnx"
    if case == "no-metadata":
        _plain_onnx(p, (1, 1, 48, 48), with_meta=False)
        expect = "not a fercli ONNX model"
    elif case == "wrong-input":
        _plain_onnx(p, (1, 3, 48, 48), with_meta=True)
        expect = "input must be uint8"
    elif case == "garbage":
        p.write_bytes(b"\x08\x07not really protobuf" * 10)
        expect = "not a readable ONNX model"
    else:
        expect = "does not exist"
    res = runner.invoke(app, ["predict", str(SAMPLE_DIR / "astronaut.jpg"), "--model", str(p), "--json"])
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and expect in res.stderr and str(p) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


class TinyFaceNet(torch.nn.Module):
    """A small conv net with a fercli-like FaceInput contract (N, 1, 48, 48) floats -> logits:
    int8 quantisation is tested on it because quantising ResNet34 takes a minute here."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, stride=2), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, len(CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 4 - 2)


def test_int8_quantisation_keeps_float_softmax_metadata_and_predictions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyFaceNet().eval()
    faces = sample_faces()
    fp32 = onnx_bytes(net, {"classes": CLASSES, "model_spec": {"name": "tiny"}}, dtype="float32")
    q = quantize_int8(fp32, faces)
    inits = onnx.load_from_string(q).graph.initializer
    int8 = [t for t in inits if t.data_type == onnx.TensorProto.INT8]
    assert sum(np.prod(t.dims) for t in int8) == (16 * 9 + 16) + (32 * 16 * 9 + 32)  # both convs' weights
    # (+ their per-channel zero points), and nothing else
    floats = {tuple(t.dims) for t in inits if t.data_type == onnx.TensorProto.FLOAT}
    assert (len(CLASSES), 32) in floats  # the head (linear layer) stays float
    clf = OnnxClassifier(q)
    assert clf.meta["dtype"] == "int8" and clf.meta["quantization"]["calibration_faces"] == len(faces)
    assert clf.classes == tuple(CLASSES)
    p = clf.predict_proba(faces)
    want = OnnxClassifier(fp32).predict_proba(faces)
    assert p.shape == want.shape and np.allclose(p.sum(1), 1)
    assert np.abs(p - want).max() < 0.05 and (p.argmax(1) == want.argmax(1)).mean() >= 0.8
    assert len(np.unique(np.round(p, 6))) > 20  # the softmax is not quantised to 1/255 steps


def test_int8_calibration_folder_and_flag_errors(resnet_run, tmp_path: Path) -> None:
    d, _ = resnet_run
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(sample_faces()):
        cv2.imwrite(str(calib / f"{i}.png"), f)
    got = calibration_faces(calib)
    assert got.shape == (12, 48, 48) and got.dtype == np.uint8
    res = runner.invoke(app, ["export", str(d), "--int8-calibration", str(calib), "-o", str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "onnx only" in res.stderr
    (tmp_path / "few").mkdir()
    res = runner.invoke(app, ["export", str(d), "--format", "onnx", "--int8-calibration", str(tmp_path / "few"),
                              "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "few" in res.stderr and not (tmp_path / "x.onnx").exists()


def test_npz_and_onnx_exports_in_one_folder_keep_their_own_sidecars(resnet_run, tmp_path: Path) -> None:
    d, _ = resnet_run
    for fmt, name in (("npz", "ck.npz"), ("onnx", "ck.onnx")):
        res = runner.invoke(app, ["export", str(d), "--format", fmt, "--dtype", "float32", "-o", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        assert f"metadata: {tmp_path / (name + '.json')}" in res.output
    assert json.loads((tmp_path / "ck.npz.json").read_text())["format"] == "fercli-export-v1"
    assert json.loads((tmp_path / "ck.onnx.json").read_text())["format"] == ONNX_FORMAT
    assert not (tmp_path / "ck.json").exists()
