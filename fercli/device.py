"""Device and precision: which device a run uses, its human-readable name, and autocast."""

from __future__ import annotations

import os
import platform
import sys
from typing import TYPE_CHECKING

from fercli.errors import FerError

if TYPE_CHECKING:
    import torch

# The choices of every --device. Torch is imported inside the functions below, not here:
# the training config and the torchrun launcher read this tuple without paying ~4 s for torch.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FerError("--device cuda requested but no CUDA GPU is available (use --device cpu)")
    if name not in DEVICES:
        raise FerError(f"--device {name!r} is not one of: {', '.join(DEVICES)}")
    return torch.device(name)


def cpu_threads() -> int:
    """Threads for CPU inference: torch's intra-op count when torch is loaded, else the CPUs
    this process may run on (torch's own default on the machines measured), without importing
    torch for it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def device_name(device: torch.device | str) -> str:
    """A device in words: the GPU's name, or the CPU's with its thread count."""
    if getattr(device, "type", device) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {cpu_threads()} threads)"


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast where it pays: always on CUDA; on CPU only with native bf16 support."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # On a CPU without AVX512-BF16/AMX bf16 autocast is slower than fp32.
    try:
        caps = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        caps = ""
    return torch.bfloat16 if "AVX512" in caps.upper() else None


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Fast kernels on CUDA unless --deterministic.

    Fast: cudnn.benchmark (autotunes conv algorithms for the static batch shape) and TF32
    for fp32 matmuls/convs. Deterministic: both off and torch.use_deterministic_algorithms
    (warn_only: a few backward kernels, e.g. adaptive pooling on CUDA, have no deterministic
    form and only warn), so a resumed run repeats the uninterrupted one bit for bit on the
    same GPU model and torch version.
    """
    import torch

    if deterministic:
        # cuBLAS needs a fixed workspace for reproducible results; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Only when the setting changes: the call imports torch._inductor (2.7 s on a 2-core AVX2
    # CPU), which every `fer train` paid at start-up for a default it already had.
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
