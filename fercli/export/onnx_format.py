"""ONNX: `fer export --format onnx` and the onnxruntime backend of `fer predict`.

The graph is the whole classifier, so any ONNX runtime can use it without fercli:

    faces  uint8 (N, 1, 48, 48)  greyscale face crops (fercli.vision.faces.crop_face, INTER_AREA)
      -> /255, the model's FaceInput (resize to its image size when that is not 48,
         ImageNet normalisation, grey -> 3 channels), trunk(s), head
      -> logits / T when the model records a calibration temperature T (fercli.evaluation.calibration)
      -> probs float32 (N, C), softmax included; N is a dynamic axis

The B-CNN head's fused autograd Function (fercli.model.networks._SignedSqrtL2Normalize, a training
optimisation) is replaced by the identical plain composition F.normalize(signed_sqrt(.)),
which every exporter understands (tests/test_onnx.py checks the outputs against torch).

Metadata (ONNX metadata_props, strings): `fercli_format` = ONNX_FORMAT, `classes` (JSON
list), `image_size`, `input_size`, `input`, `output`, and `fercli_meta` (JSON: the same
provenance block the .npz export carries: spec, training command, dataset sha256, code
versions). A file without `fercli_format`, or whose input is not uint8 (N, 1, 48, 48) or whose
output width differs from its class list, is refused with one line naming it.

fp16 weights (the default, as for .npz): each large float initializer is stored as float16
and cast back to float32 by a Cast node at the graph's start; onnxruntime folds the casts
when it builds the session, so inference runs in fp32 on half the file size.

The --backend onnx path for a torch model (.npz / .pt / run dir) converts it once and caches
the ONNX file under $FER_CACHE_DIR/onnx (default ~/.cache/fercli/onnx), keyed by the sha256
of the weights, the spec, torch's version and ONNX_FORMAT, so the ~3 s export is paid once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fercli.errors import FerError
from fercli.export.npz_format import export_meta
from fercli.export.onnx_runtime import INPUT_NAME, ONNX_FORMAT, OUTPUT_NAME
from fercli.export.sidecar import sidecar_path
from fercli.files import atomic_write_bytes, atomic_write_many, json_bytes
from fercli.model.networks import BilinearResNet34, signed_sqrt
from fercli.model.temperature import temperature_of
from fercli.vision.faces import FACE_SIZE, crop_face, resize_face
from fercli.vision.images import IMAGE_EXTENSIONS, BadImage, load_grey

OPSET = 17
CACHE_KEEP = 3  # converted graphs kept in the cache (fp32 85-180 MB, int8 a quarter; each counts)
CALIBRATION_FACES = 256  # int8 activation ranges: enough faces for stable min/max
# Two public-domain portraits (sample_images/README.md), 160x160 grey, face box (30, 30, 100,
# 100): the calibration faces of the int8 graph `fer predict` builds for the shipped model
# (devtools/release/make_calibration_faces.py writes the file).
CALIBRATION_ASSET = Path(__file__).resolve().parents[1] / "assets" / "calibration_faces.npz"
CALIBRATION_FACE_BOX = (30, 30, 100, 100)
INT8_CACHE_TAG = "int8-sample-v1"  # bump when sample_calibration_faces or quantize_int8 change
FP16_MIN_ELEMENTS = 1024  # smaller initializers (biases, BN vectors) stay fp32: no size to win


# --------------------------------------------------------------------------- export


class ProbsGraph(nn.Module):
    """uint8 faces (N, 1, 48, 48) -> probabilities (N, C): what the ONNX graph computes."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model.eval()
        self.temperature = temperature  # the model's calibration T (1: none recorded)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = faces.float() / 255.0  # (N, 1, 48, 48) in [0, 1], as model.inference.predict_logits
        m = self.model
        if isinstance(m, BilinearResNet34):
            b = m.bilinear(x)  # (N, 512, 512), eq. (1)-(2)
            z = F.normalize(signed_sqrt(b.flatten(1)), dim=1)  # eq. (4)-(6), = the fused Function
            logits = m.fc(z)  # (N, C), eq. (7)
        else:
            logits = m(x)
        if self.temperature != 1.0:  # no node at all for an uncalibrated model
            logits = logits / self.temperature
        return logits.softmax(1)


def _to_fp16(model_proto: Any) -> list[str]:
    """Store large float initializers as float16 + a Cast back to float32 (in place)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph
    casts, converted = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < FP16_MIN_ELEMENTS or not np.all(np.isfinite(arr.astype(np.float16))):
            continue  # tiny, or fp16 would overflow (keep fp32, as the .npz export does)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), name + "__fp16"))
        casts.append(helper.make_node("Cast", [name + "__fp16"], [name], to=TensorProto.FLOAT,
                                      name=f"cast_{len(casts)}"))
        converted.append(name)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model_proto)
    return converted


def onnx_bytes(model: nn.Module, meta: dict[str, Any], dtype: str = "float16") -> bytes:
    """Serialise `model` (any fercli model, eval mode, CPU) as an ONNX graph with metadata."""
    try:
        import onnx
    except ImportError:
        raise FerError("ONNX export needs the `onnx` package: pip install onnx") from None
    if dtype not in ("float16", "float32"):
        raise FerError(f"--dtype {dtype!r} is not one of: float16, float32")
    temperature = temperature_of(meta)
    graph = ProbsGraph(model.to("cpu").float().eval(), temperature)
    x = torch.zeros(2, 1, FACE_SIZE, FACE_SIZE, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation / tracer notices
        # dynamo=False: the TorchScript exporter needs only `onnx` (not onnxscript).
        torch.onnx.export(graph, (x,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    if dtype == "float16":
        _to_fp16(proto)
    classes = list(meta["classes"])
    props = {
        "fercli_format": ONNX_FORMAT,
        "classes": json.dumps(classes),
        "image_size": str(int(meta.get("image_size") or (meta.get("model_spec") or {}).get("image_size", FACE_SIZE))),
        "input_size": str(FACE_SIZE),
        "input": f"{INPUT_NAME}: uint8 (N, 1, {FACE_SIZE}, {FACE_SIZE}) greyscale face crops "
                 "(INTER_AREA, as in training); preprocessing is inside the graph",
        "output": f"{OUTPUT_NAME}: float32 (N, {len(classes)}) softmax probabilities, columns = classes"
                  + (f"; logits divided by the temperature {temperature:.6g} before the softmax (calibration, "
                     f"fitted on {meta['calibration'].get('split')})" if temperature != 1.0 else ""),
        "fercli_meta": json.dumps({**meta, "format": ONNX_FORMAT, "dtype": dtype}, default=str),
    }
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "fercli"
    return proto.SerializeToString()


def calibration_faces(folder: Path | str, count: int = CALIBRATION_FACES) -> np.ndarray:
    """Up to `count` face crops (uint8 (K, 48, 48)) from the images under `folder` (recursive,
    a fixed seed-0 sample), resized as `fer prepare` resizes dataset images."""
    import random


    folder = Path(folder)
    if not folder.is_dir():
        raise FerError(f"--int8-calibration {folder}: not a folder of face images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    random.Random(0).shuffle(files)
    faces = []
    for p in files:
        try:
            faces.append(resize_face(load_grey(p), FACE_SIZE))
        except BadImage:
            continue
        if len(faces) == count:
            break
    if len(faces) < 8:
        raise FerError(f"--int8-calibration {folder}: found {len(faces)} readable face images, need at least 8")
    return np.stack(faces)


def sample_calibration_faces(count: int = CALIBRATION_FACES, seed: int = 0) -> np.ndarray:
    """`count` uint8 (count, 48, 48) faces drawn from the two shipped sample portraits: each
    rotated ±15°, scaled 0.9-1.1, shifted ±8%, cropped with a 0-40% margin, mirrored half the
    time, and given a random gamma, contrast, brightness and noise (fixed seed).

    Why two faces suffice: they set the activation ranges, not the weights. Calibrated on them,
    the shipped model's int8 graph kept 97.6% of its float labels on PublicTest (64.36% vs
    64.53%), as many as 256 FER2013 Training faces did (docs/benchmarks.md)."""
    import cv2


    with np.load(CALIBRATION_ASSET) as z:
        portraits = z["faces"]  # (2, 160, 160) uint8
    rng = np.random.default_rng(seed)
    x, y, w, h = CALIBRATION_FACE_BOX
    out = []
    for k in range(count):
        g = portraits[k % len(portraits)]
        cx, cy = x + w / 2 + rng.uniform(-0.08, 0.08) * w, y + h / 2 + rng.uniform(-0.08, 0.08) * h
        m = cv2.getRotationMatrix2D((cx, cy), rng.uniform(-15, 15), rng.uniform(0.9, 1.1))
        r = cv2.warpAffine(g, m, (g.shape[1], g.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        c = crop_face(r, CALIBRATION_FACE_BOX, margin=rng.uniform(0.0, 0.4)).astype(np.float32)
        if rng.random() < 0.5:
            c = c[:, ::-1]
        c = 255 * (c / 255) ** rng.uniform(0.6, 1.6)
        c = (c - c.mean()) * rng.uniform(0.6, 1.4) + c.mean() + rng.uniform(-30, 30)
        c += rng.normal(0, rng.uniform(0, 6), c.shape)
        out.append(np.clip(c, 0, 255).astype(np.uint8))
    return np.stack(out)


def quantize_int8(fp32: bytes, faces: np.ndarray, calibration: str | None = None) -> bytes:
    """Static int8 quantisation (onnxruntime QDQ: per-channel int8 weights, uint8 activations
    whose ranges are calibrated on `faces`, uint8 (K, 48, 48)); metadata carried over.
    Why: at batch 1 the model is bound by reading its weights (ResNet34 trunk: 85 MB in fp32
    per face), and int8 reads a quarter of that (docs/benchmarks.md has the measurements)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [faces[i:i + 16, None] for i in range(0, len(faces), 16)]  # (16, 1, 48, 48) each

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.it, None)
            return None if b is None else {INPUT_NAME: np.ascontiguousarray(b)}

    src = onnx.load_from_string(fp32)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b, c = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(a, "wb") as fh:
            fh.write(fp32)
        quant_pre_process(a, b, skip_symbolic_shape=True)
        # Only the convolutional trunk is quantised (the convs and residual adds: the weights
        # and the work); the head after it stays float: the signed sqrt of eq. (5) is steepest
        # at 0, where uint8 steps are coarsest, and the softmax would come in steps of 1/255.
        # (Measured, shipped model, PublicTest: fp32 64.53%; trunk only 64.34%, 97.7% of
        # labels as fp32; whole graph 64.47%, 97.3%.) The head: every node after the last
        # Conv that is not part of a ResNet34 trunk (those are named /trunk...).
        nodes = list(src.graph.node)
        last_conv = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=-1)
        keep_float = [n.name for i, n in enumerate(nodes) if i > last_conv and "/trunk" not in n.name]
        # reduce_range: 7-bit weights. On x86 CPUs without VNNI (AVX2, plain AVX-512) the
        # u8 x s8 kernels add pairs of products in int16, which saturates with 8-bit weights:
        # on a 2-core AVX2 EPYC the shipped model fell from 64.5% to 52.5% on PublicTest
        # (65% of labels as fp32), and quantising conv1 alone did that. With 7 bits: 64.34%.
        # The file may run on any CPU, so this holds wherever it is exported.
        quantize_static(b, c, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_float)
        q = onnx.load(c)
    del q.metadata_props[:]
    for prop in src.metadata_props:
        e = q.metadata_props.add()
        e.key, e.value = prop.key, prop.value
        if prop.key == "fercli_meta":
            meta = json.loads(prop.value)
            meta.update(dtype="int8", quantization={
                "method": "onnxruntime static QDQ of the trunks, per-channel 7-bit (reduce_range) int8 "
                          "weights, uint8 activations; head and softmax in float",
                "calibration_faces": len(faces), "calibration": calibration,
                "note": "accuracies in this metadata are the float model's; the int8 graph was not measured"})
            e.value = json.dumps(meta, default=str)
    return q.SerializeToString()


def export_onnx(src: Path | str, out_path: Path | str, dtype: str = "float16",
                int8_calibration: Path | str | None = None) -> dict[str, Any]:
    """`fer export SRC --format onnx`: a run dir / .pt checkpoint / exported .npz -> .onnx.
    With `int8_calibration` (a folder of face crops, e.g. FER2013 Training): static int8."""
    src, out_path = Path(src), Path(out_path)
    if out_path.suffix != ".onnx":
        raise FerError(f"--out {out_path}: an ONNX model must be a .onnx file")
    calib = calibration_faces(int8_calibration) if int8_calibration is not None else None
    model, meta = export_meta(src, dtype)
    if calib is not None:
        meta = {**meta, "int8_calibration": str(int8_calibration), "int8_calibration_faces": len(calib)}
        data = quantize_int8(onnx_bytes(model, meta, "float32"), calib)
        dtype = "int8"
    else:
        data = onnx_bytes(model, meta, dtype)
    meta = {**meta, "format": ONNX_FORMAT, "opset": OPSET, "dtype": dtype}
    sidecar = sidecar_path(out_path)  # <name>.onnx.json: beside a <name>.npz export, each keeps its own
    atomic_write_many([(out_path, data), (sidecar, json_bytes(meta))])  # both or neither
    return {**meta, "path": str(out_path), "files": [str(out_path)], "sidecar": str(sidecar),
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "sharded": False}


# --------------------------------------------------------------------------- cache of converted graphs


def cache_dir() -> Path:
    root = os.environ.get("FER_CACHE_DIR")
    return Path(root) / "onnx" if root else Path.home() / ".cache" / "fercli" / "onnx"


def weights_key(model: nn.Module) -> str:
    """sha256 over the spec, every state-dict tensor, torch's version and ONNX_FORMAT."""
    h = hashlib.sha256()
    h.update(json.dumps(getattr(model, "spec", {}), sort_keys=True, default=str).encode())
    h.update(f"{torch.__version__}|{ONNX_FORMAT}|{OPSET}".encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


INT8_CALIBRATION = f"{CALIBRATION_FACES} augmented crops of the 2 sample portraits (fercli/assets/{CALIBRATION_ASSET.name})"


def int8_graph(model: nn.Module, classes: tuple[str, ...] | list[str], meta: dict[str, Any]) -> bytes:
    """The int8 graph `fer predict --precision int8` runs for `model`, built afresh (no cache):
    the fp32 graph quantised on sample_calibration_faces. The bundled model's ships prebuilt."""
    fp32 = onnx_bytes(model, {**meta, "classes": list(classes)}, dtype="float32")
    return quantize_int8(fp32, sample_calibration_faces(), calibration=INT8_CALIBRATION)


def cached_onnx_bytes(model: nn.Module, classes: tuple[str, ...] | list[str],
                      meta: dict[str, Any], int8: bool = False) -> bytes:
    """The ONNX graph (fp32 weights: the torch model's exact values) of a torch model, from
    the cache when it is there; written back atomically, silently skipped if unwritable.
    int8: the graph quantised by quantize_int8 on sample_calibration_faces (cached too)."""
    key = weights_key(model)
    temperature = temperature_of(meta)
    if temperature != 1.0:  # the division by T is in the graph: another graph, another file
        key += "-t" + hashlib.sha256(repr(temperature).encode()).hexdigest()[:16]
    fp32_path = cache_dir() / f"{key}.onnx"

    def fp32() -> bytes:
        return _cached(fp32_path, lambda: onnx_bytes(model, {**meta, "classes": list(classes)}, dtype="float32"))

    if not int8:
        return fp32()
    return _cached(fp32_path.with_name(f"{fp32_path.stem}-{INT8_CACHE_TAG}.onnx"),
                   lambda: quantize_int8(fp32(), sample_calibration_faces(), calibration=INT8_CALIBRATION))


def _cached(path: Path, build: Any) -> bytes:
    """path's bytes, or build() written to path (atomically; skipped if unwritable)."""
    try:
        data = path.read_bytes()
        os.utime(path)  # most recently used: kept by the pruning below
        return data
    except OSError:
        pass
    data = build()
    try:
        atomic_write_bytes(path, data)
        # fp32 graphs are 85-180 MB: keep only the few most recently used graphs.
        old = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)[CACHE_KEEP:]
        for p in old:
            p.unlink(missing_ok=True)
    except (FerError, OSError):
        pass  # a read-only home: convert again next time
    return data
