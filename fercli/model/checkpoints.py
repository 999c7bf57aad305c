"""Checkpoint files: format marker, atomic save, safe load, rebuild the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fercli.errors import FerError
from fercli.files import atomic_save, torch_load_weights_only
from fercli.model.networks import model_from_spec

CHECKPOINT_FORMAT = "fercli-checkpoint-v1"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"



def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) payload: about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file + rename: a kill never leaves a half-written checkpoint, and
    a failed write (full disk, read-only folder) is a WriteFault naming `path`."""
    with atomic_save(path, size_hint=_tensor_bytes(payload)) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a fercli checkpoint without executing code from it (weights_only=True)."""
    path = Path(path)
    if path.is_dir():
        raise FerError(f"{path} is a directory; expected a checkpoint file (.pt)")
    if not path.is_file():
        raise FerError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch_load_weights_only(path)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise FerError(f"{path}: refused to load: the file contains code or objects that are "
                           f"not plain tensors (untrusted pickle)") from None
        raise FerError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FerError(f"{path}: not a fercli checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    for key in ("model_spec", "model", "classes"):
        if key not in ckpt:
            raise FerError(f"{path}: checkpoint is missing '{key}'")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], path: Path | str = "checkpoint") -> nn.Module:
    """Rebuild the architecture from its spec and load the weights, strictly."""
    model = model_from_spec(ckpt["model_spec"], empty=True)  # the strict load fills every weight
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise FerError(f"{path}: weights do not fit model {ckpt['model_spec'].get('name')}: {first[:160]}") from None
    return model



def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # Strip torch.compile's `_orig_mod.` prefix if present; store contiguous CPU tensors.
    return {k.replace("_orig_mod.", ""): v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}



def cpu_copy(obj: Any, contiguous: bool = False) -> Any:
    """A deep copy with every tensor on the CPU (a real copy even for CPU tensors), so a
    background write sees this moment's values while training goes on. Strides are kept
    unless `contiguous`: fused Adam pairs each moment with its (channels_last) param by
    memory position, so optimizer state must come back in the layout it was saved in."""
    if torch.is_tensor(obj):
        fmt = torch.contiguous_format if contiguous else torch.preserve_format
        return obj.detach().to("cpu", memory_format=fmt, copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v, contiguous) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v, contiguous) for v in obj)
    return obj
