"""Which model classifies the faces, and on what: the model behind `fer predict --model` (one
resolver, fercli.model.locate) and the backend that runs it. No Typer or Rich here, and no
torch unless the prediction needs it:

    bundled model, CPU, precision auto|int8, TTA none|flip|shift|flip-shift
        → its int8 ONNX graph shipped in fercli/assets, on onnxruntime        (no torch)
    an .onnx graph                                                          → onnxruntime (no torch)
    anything else (a run, a .pt, an .npz, --backend torch, CUDA, fp32, ten-crop)
        → fercli.infer.torch_backend: torch, or the model converted to ONNX once (cached)

Temperature: a model whose metadata records one (calibration.temperature, fitted on its
selection split) has its logits divided by T before the softmax on every backend; the ONNX
graphs carry the division inside. A model without one is unchanged.

Precision on onnxruntime: int8 (--precision int8, or auto for the bundled default model) is
the graph quantised on calibration faces drawn from the two shipped sample portraits. For the
default it keeps 97.6% of the float labels on PublicTest (64.00% vs 64.53%) and is faster than
fp32 at batch 1 on a CPU (figures: docs/benchmarks.md); other models are not measured, so auto
keeps them fp32.
"""

from __future__ import annotations

import os
import shutil
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fercli.errors import FerError, missing_extra
from fercli.export.onnx_runtime import OnnxClassifier, ort_available
from fercli.files import SHARD_INDEX_SUFFIX, read_shards
from fercli.infer.config import PredictConfig
from fercli.infer.model_info import ModelInfo, model_info
from fercli.model.locate import DEFAULT_GRAPH, ModelRef, locate
from fercli.model.tta import ONNX_TTA_MODES

BACKENDS = ("auto", "torch", "onnx")
# fer predict --precision: what the classifier computes in (the training precisions are
# fercli.train.config.TRAIN_PRECISIONS, a different choice).
PRECISIONS = ("auto", "fp32", "int8")
Classifier = Any  # torch_backend.FaceClassifier | export.onnx_runtime.OnnxClassifier (one predict_proba contract)


def gpu_present() -> bool:
    """Whether this machine may have a CUDA GPU, decided without importing torch: an NVIDIA
    driver is loaded (or nvidia-smi is on PATH) and torch is installed to use it."""
    driver = os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
    return driver and find_spec("torch") is not None


def _cpu(cfg: PredictConfig) -> bool:
    return cfg.device == "cpu" or (cfg.device == "auto" and not gpu_present())


def shipped_graph_serves(cfg: PredictConfig, ref: ModelRef) -> bool:
    """The bundled model's shipped int8 graph answers exactly what the torch route would build
    for these settings (the same graph: tests/test_onnx.py), so no torch is needed."""
    return (ref.bundled and cfg.backend in ("auto", "onnx") and cfg.precision in ("auto", "int8")
            and cfg.tta in ONNX_TTA_MODES and _cpu(cfg) and ort_available()
            and Path(f"{DEFAULT_GRAPH}{SHARD_INDEX_SUFFIX}").is_file())


def _shipped_graph(cfg: PredictConfig, ref: ModelRef) -> tuple[Classifier, ModelInfo, str]:
    clf = OnnxClassifier(read_shards(Path(f"{DEFAULT_GRAPH}{SHARD_INDEX_SUFFIX}")), name=str(ref.path), device="cpu")
    info = model_info(ref.source, ref.path, clf.meta, clf.classes, {})
    why = "--backend onnx" if cfg.backend == "onnx" else "auto: CPU, onnxruntime"
    why += ", int8 (--precision int8)" if cfg.precision == "int8" else ", int8 (auto: the bundled model)"
    return clf, info, why


def _onnx_file(cfg: PredictConfig, ref: ModelRef) -> tuple[Classifier, ModelInfo, str]:
    """An .onnx graph: onnxruntime runs it (torch cannot)."""
    if cfg.backend == "torch":
        raise FerError(f"--model {ref.path} is an ONNX graph: it runs with --backend onnx or auto, not torch")
    if not ort_available():
        raise FerError(f"--model {ref.path}: running an ONNX model needs onnxruntime (pip install onnxruntime)")
    if cfg.tta not in ONNX_TTA_MODES:
        raise FerError(f"--tta {cfg.tta} needs the torch backend; {ref.path} is an ONNX graph with a fixed 48x48 input")
    if cfg.device == "cuda":
        import onnxruntime as ort  # installed: ort_available() said so

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise FerError("--device cuda requested but no CUDA GPU is available (use --device cpu)")
    clf = OnnxClassifier(ref.path, device=cfg.device)
    graph = clf.describe()["precision"]
    if cfg.precision != "auto" and cfg.precision != graph:
        raise FerError(f"--precision {cfg.precision}: {ref.path} is an {graph} graph (its precision was fixed "
                       f"by `fer export`; --int8-calibration makes an int8 one)")
    return clf, model_info("--model", ref.path, clf.meta, clf.classes, {}), "an .onnx model"


def make_classifier(cfg: PredictConfig) -> tuple[Classifier, ModelInfo, str]:
    """(classifier, model info, why this backend) for cfg.model / cfg.backend / cfg.device."""
    ref = locate(cfg.model, "--model", fallback=True)
    if ref.kind == "onnx":
        return _onnx_file(cfg, ref)
    if shipped_graph_serves(cfg, ref):
        return _shipped_graph(cfg, ref)
    try:
        # Deferred: torch is the [train] extra. The two routes above serve the bundled model
        # and .onnx graphs without it, so `pip install fercli` predicts without torch.
        from fercli.infer import torch_backend
    except ModuleNotFoundError as exc:
        raise missing_extra(f"predicting with {ref.path} (--backend {cfg.backend}, --precision {cfg.precision}, "
                            f"--tta {cfg.tta}, --device {cfg.device})", exc) from None
    return torch_backend.torch_classifier(cfg, ref)
