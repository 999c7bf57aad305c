"""Which model classifies the faces, and how: the model behind `fer predict --model`
(a run, a .pt, an exported .npz or .onnx, else the bundled default, else the newest local
run), and the backend that runs it (torch eager / frozen TorchScript / CUDA graphs, or
onnxruntime). No Typer or Rich here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fercli.errors import FerError
from fercli.evaluation.calibration import TemperatureScaled, check_temperature, temperature_of
from fercli.vision.faces import FACE_SIZE

if TYPE_CHECKING:
    from fercli.infer.config import PredictConfig

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = ASSETS_DIR / "default_model.npz"
RUNS_DIR = Path("runs")
BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "int8")


@dataclass(frozen=True)
class ModelInfo:
    source: str  # "--model", "bundled default", "newest local run"
    path: str
    description: str
    classes: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- model


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
    shape (engine.GraphedInference: batch 1 is launch-bound there). fp32 on the CPU: bf16
    autocast measured no faster at batch 1 there.
    """

    def __init__(self, model: torch.nn.Module, classes: list[str] | tuple[str, ...],
                 device: torch.device, *, channels_last: bool = True, optimize: str = CPU_OPTIMIZE,
                 temperature: float = 1.0) -> None:
        from fercli.device import autocast_dtype

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
        self._graphed: Any = None  # CUDA: engine.GraphedInference, built on first use

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
            from fercli.train.engine import GraphedInference

            if self._graphed is None:
                self._graphed = GraphedInference(self.model, self.amp_dtype)
            return self._graphed  # type: ignore[no-any-return]
        if self.optimize == "jit" or (self.optimize == "auto" and n_forward_faces >= JIT_MIN_FACES):
            self.prepare()
        return self._frozen if self._frozen is not None else self.model

    def predict_proba(self, faces: np.ndarray, *, tta: str = "none", batch_size: int = 64) -> np.ndarray:
        """uint8 faces (N, 48, 48) -> probabilities (N, C) float64, each row summing to 1."""
        from fercli.train.engine import predict_logits

        if faces.shape[0] == 0:
            return np.zeros((0, len(self.classes)))
        if faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
            raise ValueError(f"faces must be N x {FACE_SIZE} x {FACE_SIZE}, got {faces.shape}")
        x = torch.from_numpy(np.ascontiguousarray(faces)).unsqueeze(1).to(self.device)
        # The frozen model was traced on 48x48 input (its resize branch is baked in): ten-crop's
        # smaller views must run eager.
        model = self.model if tta == "ten-crop" else self._runner(faces.shape[0] * (2 if tta == "flip" else 1))
        logp = predict_logits(model, x, batch_size=batch_size, amp_dtype=self.amp_dtype,
                              tta=tta, channels_last=self.channels_last)
        p = logp.double().exp().cpu().numpy()
        return p / p.sum(axis=1, keepdims=True)


def _newest_run_checkpoint(root: Path) -> Path | None:
    from fercli.model.checkpoints import BEST_CHECKPOINT

    if not root.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for p in root.rglob(BEST_CHECKPOINT):
        try:
            m = p.stat().st_mtime
        except OSError:
            continue
        if best is None or m > best[0]:
            best = (m, p)
    return best[1] if best else None


def _load_any(path: Path) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """A run dir (best.pt), a .pt checkpoint, or an exported .npz (or its shard index)."""
    from fercli.export.npz_format import INDEX_SUFFIX, exported_exists, load_exported
    from fercli.model.checkpoints import BEST_CHECKPOINT, load_checkpoint, model_from_checkpoint

    if path.is_dir():
        if (path / BEST_CHECKPOINT).is_file():
            path = path / BEST_CHECKPOINT
        elif any(path.glob("fold-*/" + BEST_CHECKPOINT)):
            raise FerError(f"--model {path} is a k-fold root with one model per fold; pass one fold, "
                           f"e.g. {path / 'fold-0'}")
        else:
            raise FerError(f"--model {path}: no {BEST_CHECKPOINT} in this directory (give a `fer train` "
                           f"run directory, a .pt checkpoint or an exported .npz)")
    if path.suffix == ".npz" or path.name.endswith(INDEX_SUFFIX) or (not path.exists() and exported_exists(path)):
        model, info = load_exported(path)
        return model, list(info["classes"]), info
    if not path.exists():
        raise FerError(f"--model {path} does not exist")
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    info = {"model_spec": ckpt["model_spec"], "dataset_name": ckpt.get("dataset_name"),
            "best_epoch": (ckpt.get("best") or {}).get("epoch"),
            "best_val_acc": (ckpt.get("best") or {}).get("val_acc"), "calibration": ckpt.get("calibration")}
    return model, list(ckpt["classes"]), info


def no_model_message() -> str:
    return (f"no model to predict with: no bundled model at {DEFAULT_MODEL} and no trained run "
            f"under ./{RUNS_DIR}; train one with `fer prepare fer2013 SRC && fer train --dataset fer2013` "
            f"or pass --model RUN_DIR|CHECKPOINT.pt|MODEL.npz")


def resolve_model(ref: str | None) -> tuple[torch.nn.Module, ModelInfo]:
    """--model, else the bundled default model, else the newest ./runs/**/best.pt."""
    from fercli.export.npz_format import exported_exists

    if ref is not None:
        source, path = "--model", Path(ref).expanduser()
    elif exported_exists(DEFAULT_MODEL):
        source, path = "bundled default model", DEFAULT_MODEL
    else:
        newest = _newest_run_checkpoint(RUNS_DIR)
        if newest is None:
            raise FerError(no_model_message())
        source, path = "newest local run (no bundled model)", newest
    model, classes, info = _load_any(path)
    return model, _model_info(source, path, info, classes, getattr(model, "spec", {}))


def _model_info(source: str, path: Path, info: dict[str, Any], classes: Any, spec: Any) -> ModelInfo:
    spec = info.get("model_spec") or spec or {}
    desc = f"{spec.get('name', '?')}" + (" (shared trunk)" if spec.get("shared_backbone") else "")
    if info.get("dataset_name"):
        desc += f" trained on {info['dataset_name']}"
    acc = info.get("private_test_accuracy")
    if isinstance(acc, (int, float)):
        desc += f", PrivateTest accuracy {100 * acc:.2f}%"
    return ModelInfo(source=source, path=str(path), description=desc, classes=tuple(classes),
                     details={k: info.get(k) for k in ("model_spec", "dataset_name", "dataset_sha256",
                                                      "private_test_accuracy", "training_command",
                                                      "best_epoch", "calibration") if k in info})


Classifier = Any  # FaceClassifier | fercli.export.onnx_format.OnnxClassifier (same predict_proba contract)


def make_classifier(cfg: PredictConfig) -> tuple[Classifier, ModelInfo, str]:
    """(classifier, model info, why this backend) for cfg.model / cfg.backend / cfg.device.

    An .onnx model runs on onnxruntime (torch cannot run it). A torch model (.npz / .pt /
    run dir) runs on onnxruntime with --backend onnx, and with auto on the CPU when
    onnxruntime is installed and the TTA fits the graph's fixed 48x48 input: it was faster
    there at batch 1 and 64 (devtools/benchmarks/bench_predict.py, docs/benchmarks.md). The conversion is
    cached (fercli.export.onnx_format.cached_onnx_bytes). A failed conversion under auto falls back
    to torch and says why.

    Temperature: a model whose metadata records one (calibration.temperature, fitted on its
    selection split) has its logits divided by T before the softmax on every backend; the
    ONNX conversion puts the division inside the graph. A model without one is unchanged.

    Precision on onnxruntime: int8 (--precision int8, or auto for the bundled default model)
    is the graph quantised on calibration faces drawn from the two shipped sample portraits.
    For the default it keeps 97.6% of the float labels on PublicTest (64.00% vs 64.53%) and is
    faster than fp32 at batch 1 on a CPU (figures: docs/benchmarks.md); other models are not
    measured, so auto keeps them fp32.
    """
    from fercli.device import resolve_device

    if cfg.model is not None and Path(cfg.model).suffix.lower() == ".onnx":
        from fercli.export.onnx_format import OnnxClassifier, ort_available

        if cfg.backend == "torch":
            raise FerError(f"--model {cfg.model} is an ONNX graph: it runs with --backend onnx or auto, not torch")
        if not ort_available():
            raise FerError(f"--model {cfg.model}: running an ONNX model needs onnxruntime (pip install onnxruntime)")
        if cfg.tta not in ("none", "flip"):
            raise FerError(f"--tta {cfg.tta} needs the torch backend; {cfg.model} is an ONNX graph with a fixed 48x48 input")
        if cfg.device == "cuda" and not torch.cuda.is_available():
            resolve_device("cuda")  # the one-line "no CUDA GPU" error
        path = Path(cfg.model).expanduser()
        clf = OnnxClassifier(path, device=cfg.device)
        graph = clf.describe()["precision"]
        if cfg.precision != "auto" and cfg.precision != graph:
            raise FerError(f"--precision {cfg.precision}: {cfg.model} is an {graph} graph (its precision was fixed "
                           f"by `fer export`; --int8-calibration makes an int8 one)")
        info = _model_info("--model", path, clf.meta, clf.classes, {})
        return clf, info, "an .onnx model"
    device = resolve_device(cfg.device)
    model, info = resolve_model(cfg.model)
    why = "--backend torch"
    if cfg.backend == "onnx" or cfg.precision == "int8" or (cfg.backend == "auto" and device.type == "cpu"):
        from fercli.export.onnx_format import OnnxClassifier, cached_onnx_bytes, ort_available

        problem = None
        if not ort_available():
            problem = "onnxruntime is not installed"
        elif cfg.tta not in ("none", "flip"):
            problem = f"--tta {cfg.tta} needs other input sizes than the ONNX graph's 48x48"
        bundled = Path(info.path).resolve() == DEFAULT_MODEL.resolve()
        int8 = cfg.precision == "int8" or (cfg.precision == "auto" and bundled and device.type == "cpu")
        if problem is None:
            try:
                data = cached_onnx_bytes(model, info.classes, {**info.details, "source_model": info.path}, int8=int8)
                clf = OnnxClassifier(data, name=info.path, device=str(device))
                why = ("--backend onnx" if cfg.backend == "onnx"
                       else "auto: CPU, onnxruntime" if device.type == "cpu" else "onnxruntime")
                if int8:
                    why += ", int8 (--precision int8)" if cfg.precision == "int8" else ", int8 (auto: the bundled model)"
                return clf, info, why
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
    return FaceClassifier(model, info.classes, device, temperature=temperature_of(info.details)), info, why


