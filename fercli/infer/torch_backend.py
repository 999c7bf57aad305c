"""The torch backend of `fer predict`: a torch model (run dir, .pt, .npz) classifying faces
eagerly, frozen into TorchScript, or replayed from CUDA graphs, or converted once to ONNX for
onnxruntime. Imported only when a prediction needs torch (fercli.infer.classifier decides):
the bundled model's int8 graph runs without it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from fercli.device import autocast_dtype, resolve_device
from fercli.errors import FerError
from fercli.export.onnx_format import cached_onnx_bytes, int8_graph
from fercli.export.onnx_runtime import OnnxClassifier, ort_available
from fercli.infer.config import PredictConfig
from fercli.infer.model_info import ModelInfo, model_info
from fercli.infer.sources import load_model_source
from fercli.model.inference import GraphedInference, TemperatureScaled, predict_logits
from fercli.model.locate import BUNDLED, DEFAULT_MODEL, ModelRef
from fercli.model.temperature import check_temperature, temperature_of
from fercli.model.tta import ONNX_TTA_MODES, view_count
from fercli.vision.faces import FACE_SIZE

OPTIMIZE_MODES = ("auto", "eager", "jit")
# What `fer predict` uses on the CPU. devtools/benchmarks/bench_predict.py (docs/benchmarks.md): a frozen
# TorchScript model (trace + freeze + optimize_for_inference, oneDNN fusion) is faster per
# face at batch 1 but no faster at batch 64, and building it costs seconds — so a one-shot
# CLI run stays eager and batched; a long-lived caller classifying one face at a time (a
# webcam loop, a server) should pass optimize="jit".
CPU_OPTIMIZE = "eager"
JIT_MIN_FACES = 64  # "auto": freeze only for runs with at least this many faces


class FaceClassifier:
    """A model ready for inference: eval mode, channels_last, inference_mode, batched.

    On the CPU it can run the model frozen into TorchScript (see JIT_MIN_FACES and
    docs/benchmarks.md); on CUDA it replays CUDA graphs of the bf16 forward, one per batch
    shape (model.inference.GraphedInference: batch 1 is launch-bound there). fp32 on the CPU: bf16
    autocast measured no faster at batch 1 there.
    """

    def __init__(self, model: torch.nn.Module, classes: list[str] | tuple[str, ...],
                 device: torch.device, *, channels_last: bool = True, optimize: str = CPU_OPTIMIZE,
                 temperature: float = 1.0) -> None:
        if optimize not in OPTIMIZE_MODES:
            raise ValueError(f"optimize must be one of {OPTIMIZE_MODES}, got {optimize!r}")
        self.device = device
        self.classes = tuple(classes)
        self.channels_last = channels_last
        # A calibrated model's logits are divided by T before every softmax (each TTA view
        # too, as in the ONNX graph); T = 1 leaves the model itself, exactly as uncalibrated.
        self.temperature = check_temperature(temperature)
        if self.temperature != 1.0:
            model = TemperatureScaled(model, self.temperature)
        self.model = model.to(device).eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = autocast_dtype(device, "auto") if device.type == "cuda" else None
        self.optimize = optimize if device.type == "cpu" else "eager"
        self._frozen: torch.nn.Module | None = None
        self._frozen_error: str | None = None
        self._graphed: Any = None  # CUDA: model.inference.GraphedInference, built on first use

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "channels_last": self.channels_last,
                "precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
                "threads": torch.get_num_threads(), "optimize": self.optimize, "temperature": self.temperature,
                "torchscript": self._frozen is not None, "torchscript_error": self._frozen_error}

    def prepare(self) -> FaceClassifier:
        """Build the frozen TorchScript model now (optimize jit/auto on the CPU)."""
        if self.optimize == "eager" or self._frozen is not None or self._frozen_error is not None:
            return self
        x = torch.zeros(1, 1, FACE_SIZE, FACE_SIZE, device=self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit deprecation notices, tracer warnings
                traced = torch.jit.trace(self.model, x, check_trace=False)
                self._frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        except Exception as exc:  # any failure: stay eager, say why in describe()
            self._frozen_error = f"{type(exc).__name__}: {str(exc).strip()[:120]}"
        return self

    def _runner(self, n_forward_faces: int) -> torch.nn.Module:
        if self.device.type == "cuda":
            if self._graphed is None:
                self._graphed = GraphedInference(self.model, self.amp_dtype)
            return self._graphed  # type: ignore[no-any-return]
        if self.optimize == "jit" or (self.optimize == "auto" and n_forward_faces >= JIT_MIN_FACES):
            self.prepare()
        return self._frozen if self._frozen is not None else self.model

    def predict_proba(self, faces: np.ndarray, *, tta: str = "none", batch_size: int = 64) -> np.ndarray:
        """uint8 faces (N, 48, 48) -> probabilities (N, C) float64, each row summing to 1."""
        if faces.shape[0] == 0:
            return np.zeros((0, len(self.classes)))
        if faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
            raise ValueError(f"faces must be N x {FACE_SIZE} x {FACE_SIZE}, got {faces.shape}")
        x = torch.from_numpy(np.ascontiguousarray(faces)).unsqueeze(1).to(self.device)
        # The frozen model was traced on 48x48 input (its resize branch is baked in): ten-crop's
        # smaller views must run eager.
        model = self.model if tta == "ten-crop" else self._runner(faces.shape[0] * view_count(tta))
        logp = predict_logits(model, x, batch_size=batch_size, amp_dtype=self.amp_dtype,
                              tta=tta, channels_last=self.channels_last)
        p = logp.double().exp().cpu().numpy()
        return p / p.sum(axis=1, keepdims=True)


def torch_classifier(cfg: PredictConfig, ref: ModelRef) -> tuple[Any, ModelInfo, str]:
    """(classifier, model info, why this backend) for a torch model: onnxruntime with
    --backend onnx / --precision int8, and with auto on the CPU when the TTA fits the graph's
    fixed 48x48 input (faster there at batch 1 and 64: docs/benchmarks.md); torch otherwise.
    The conversion is cached (fercli.export.onnx_format.cached_onnx_bytes); a failed one under
    auto falls back to torch and says why."""
    device = resolve_device(cfg.device)
    src = load_model_source(ref.path, "--model")
    info = model_info(ref.source, ref.path, src.info(), src.classes, src.spec)
    why = "--backend torch"
    if cfg.backend == "onnx" or cfg.precision == "int8" or (cfg.backend == "auto" and device.type == "cpu"):
        problem = None
        if not ort_available():
            problem = "onnxruntime is not installed"
        elif cfg.tta not in ONNX_TTA_MODES:
            problem = f"--tta {cfg.tta} needs other input sizes than the ONNX graph's 48x48"
        int8 = cfg.precision == "int8" or (cfg.precision == "auto" and ref.bundled and device.type == "cpu")
        if problem is None:
            try:
                data = cached_onnx_bytes(src.model, info.classes, {**info.details, "source_model": info.path}, int8=int8)
                clf = OnnxClassifier(data, name=info.path, device=str(device))
                return clf, info, onnx_reason(cfg, device.type, int8)
            except FerError as exc:
                problem = str(exc)
            except Exception as exc:  # an exporter failure on an unusual model: torch still works
                problem = f"ONNX conversion failed ({type(exc).__name__}: {str(exc).strip()[:100]})"
        if cfg.backend == "onnx" or cfg.precision == "int8":
            flag = "--backend onnx" if cfg.backend == "onnx" else "--precision int8"
            raise FerError(f"{flag}: {problem}")
        why = f"auto: torch ({problem})"
    elif cfg.backend == "auto":
        why = f"auto: torch on {device.type}"
    return FaceClassifier(src.model, info.classes, device, temperature=temperature_of(info.details)), info, why


def onnx_reason(cfg: PredictConfig, device_type: str, int8: bool) -> str:
    """Why onnxruntime runs the model, as `fer predict` reports it."""
    why = ("--backend onnx" if cfg.backend == "onnx"
           else "auto: CPU, onnxruntime" if device_type == "cpu" else "onnxruntime")
    if int8:
        why += ", int8 (--precision int8)" if cfg.precision == "int8" else ", int8 (auto: the bundled model)"
    return why


BUNDLED_SOURCE = "fercli/assets/default_model.npz"  # the shipped graph's source_model: no machine's path


def bundled_graph_bytes() -> bytes:
    """The int8 graph of the bundled model, built from its shipped weights exactly as the torch
    route builds it (same metadata, save source_model): what fercli/assets ships as
    default_model.int8.onnx (devtools/release/ship_graph.py writes it; tests/test_onnx.py
    checks the shipped one against this)."""
    src = load_model_source(None)
    info = model_info(BUNDLED, DEFAULT_MODEL, src.info(), src.classes, src.spec)
    return int8_graph(src.model, info.classes, {**info.details, "source_model": BUNDLED_SOURCE})
