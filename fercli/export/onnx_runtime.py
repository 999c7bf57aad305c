"""Running a fercli ONNX graph on onnxruntime: numpy and onnxruntime only, no torch. This is
what `fer predict`, `fer serve` and fercli.Recognizer run the bundled model on (its int8
graph ships in fercli/assets), and any `.onnx` that `fer export --format onnx` wrote.

    faces uint8 (N, 48, 48) → (N, 1, 48, 48) → session.run → probs float32 (N, C)
      → float64, [TTA: mean over fercli.model.tta.face_views, one batch] → rows renormalised to sum 1

The graph's format, names and metadata are described in fercli.export.onnx_format, which
builds graphs from torch models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fercli.device import cpu_threads
from fercli.errors import FerError
from fercli.model.tta import ONNX_TTA_MODES, face_views
from fercli.vision.faces import FACE_SIZE

ONNX_FORMAT = "fercli-onnx-v1"
INPUT_NAME = "faces"
OUTPUT_NAME = "probs"


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxClassifier:
    """onnxruntime twin of fercli.infer.torch_backend.FaceClassifier: same predict_proba contract."""

    def __init__(self, source: bytes | Path | str, *, name: str = "<in memory>", device: str = "cpu",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.name = str(source) if not isinstance(source, bytes) else name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: no warnings on stderr
        want_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
        if isinstance(source, bytes):
            payload: bytes | str = source
        else:
            p = Path(source)
            if p.is_dir():
                raise FerError(f"{p} is a directory; expected a .onnx model file")
            if not p.is_file():
                raise FerError(f"model file {p} does not exist")
            payload = str(p)
        try:
            self.session = ort.InferenceSession(payload, opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise FerError(f"{self.name}: not a readable ONNX model ({first})") from None
        self.providers = tuple(self.session.get_providers())
        self.meta, self.classes = self._check()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.threads = opts.intra_op_num_threads

    def _check(self) -> tuple[dict[str, Any], tuple[str, ...]]:
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("fercli_format") != ONNX_FORMAT:
            raise FerError(f"{self.name}: not a fercli ONNX model (no fercli_format={ONNX_FORMAT} "
                           f"metadata; export one with `fer export RUN --format onnx`)")
        try:
            classes = json.loads(props.get("classes", ""))
            meta = json.loads(props.get("fercli_meta", "{}"))
        except ValueError:
            raise FerError(f"{self.name}: unreadable fercli metadata (classes / fercli_meta are not JSON)") from None
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise FerError(f"{self.name}: metadata has no class list")
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(ins[0].shape) if len(ins) == 1 else None
        if (shape is None or len(shape) != 4 or shape[1:] != [1, FACE_SIZE, FACE_SIZE]
                or ins[0].type != "tensor(uint8)"):
            got = f"{ins[0].type} {shape}" if len(ins) == 1 else f"{len(ins)} inputs"
            raise FerError(f"{self.name}: input must be uint8 (N, 1, {FACE_SIZE}, {FACE_SIZE}) face crops, "
                           f"got {got}")
        oshape = list(outs[0].shape) if len(outs) == 1 else None
        if oshape is None or len(oshape) != 2 or oshape[1] != len(classes):
            raise FerError(f"{self.name}: output must be (N, {len(classes)}) probabilities, got {oshape}")
        self.input_name = ins[0].name
        return meta if isinstance(meta, dict) else {}, tuple(classes)

    def describe(self) -> dict[str, Any]:
        return {"backend": "onnxruntime", "device": str(self.device), "providers": list(self.providers),
                # float16-stored weights are cast to float32 inside the graph: they compute in fp32
                "threads": self.threads, "precision": "int8" if self.meta.get("dtype") == "int8" else "fp32"}

    def prepare(self) -> OnnxClassifier:
        return self

    def predict_proba(self, faces: np.ndarray, *, tta: str = "none", batch_size: int = 64) -> np.ndarray:
        """uint8 faces (N, 48, 48) -> probabilities (N, C) float64, each row summing to 1.
        A TTA mode (flip, shift, flip-shift) averages the probabilities of the face's views,
        run through the graph together (as the torch path)."""
        if faces.shape[0] == 0:
            return np.zeros((0, len(self.classes)))
        if faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
            raise ValueError(f"faces must be N x {FACE_SIZE} x {FACE_SIZE}, got {faces.shape}")
        if tta not in ONNX_TTA_MODES:
            raise FerError(f"--tta {tta} needs other crop sizes than the ONNX graph's fixed "
                           f"{FACE_SIZE}x{FACE_SIZE} input: use --backend torch")
        x = np.ascontiguousarray(faces, dtype=np.uint8)[:, None]  # (N, 1, 48, 48)
        out = []
        for s in range(0, x.shape[0], batch_size):
            views = face_views(x[s:s + batch_size], tta)
            p = self.session.run(None, {self.input_name: np.concatenate(views)})[0].astype(np.float64)
            out.append(p.reshape(len(views), -1, p.shape[1]).mean(axis=0))
        p = np.concatenate(out)
        return p / p.sum(axis=1, keepdims=True)
