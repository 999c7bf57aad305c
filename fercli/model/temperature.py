"""A model's temperature as plain math over logits: applying it (softmax(z / T)), reading it
from a model's metadata, and fitting it (Guo et al. 2017). numpy only, no torch: the onnxruntime
inference path reads a shipped model's temperature without loading the training stack.

One scalar T > 0 divides the logits before the softmax: p = softmax(z / T). T > 1 softens an
overconfident model; the argmax cannot change, since dividing by a positive number keeps the
order of each row's logits.

T is fitted by minimising the NLL on the selection split only (fercli.evaluation.calibrate
holds the guard). The NLL is convex in beta = 1/T (a log-sum-exp of lines in beta minus a
line), so its derivative in beta,

    dNLL/dbeta = mean_i ( E_{p_i}[z_i] - z_{i,y_i} ),      p_i = softmax(beta z_i),

increases with beta, and bisection on its sign (in log beta, within TEMPERATURE_BOUNDS) finds
the minimum exactly and deterministically: no learning rate, no random start.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fercli.errors import FerError

TEMPERATURE_BOUNDS = (0.01, 100.0)  # a fit at a bound: the split cannot pin T down (calibrate.fit_record keeps T = 1)
_BISECTION_STEPS = 200  # log-beta interval of width ~9.2 halved 200 times: far below float64 spacing


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) in float64, rows (N, C) summing to 1 (max-subtracted: no overflow).

    Log-probabilities work as logits too: softmax ignores a per-row shift."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_temperature(t: Any, where: str = "temperature") -> float:
    """T as a float, or a one-line FerError when it is not a finite positive number."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise FerError(f"{where}: {t!r} is not a finite positive temperature")
    return float(t)


def temperature_of(meta: dict[str, Any] | None) -> float:
    """The T a model's metadata records (checkpoint or export: meta["calibration"]
    ["temperature"]), or 1.0 when it records none: such a model behaves as uncalibrated."""
    cal = (meta or {}).get("calibration")
    if not isinstance(cal, dict) or cal.get("temperature") is None:
        return 1.0
    return check_temperature(cal["temperature"], "calibration.temperature in the model's metadata")


def _dnll_dbeta(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    p = softmax(z, 1.0 / beta)
    return float(np.mean((p * z).sum(axis=1) - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS that minimises NLL(softmax(logits / T), labels).

    logits (N, C) (or log-probabilities: the same fit), labels (N,) ints. Exact bisection on
    the sign of dNLL/dbeta in log beta (see the module docstring); deterministic."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise FerError(f"fit_temperature: need logits (N, C) and labels (N,) with N > 0, got "
                       f"{z.shape} and {y.shape}")
    if not np.all(np.isfinite(z)):
        raise FerError("fit_temperature: the logits hold NaN or infinity")
    z = z - z.max(axis=1, keepdims=True)  # shift-invariant; keeps E_p[z] well scaled
    lo, hi = math.log(1.0 / TEMPERATURE_BOUNDS[1]), math.log(1.0 / TEMPERATURE_BOUNDS[0])
    if _dnll_dbeta(z, y, math.exp(lo)) >= 0:
        return TEMPERATURE_BOUNDS[1]
    if _dnll_dbeta(z, y, math.exp(hi)) <= 0:
        return TEMPERATURE_BOUNDS[0]
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _dnll_dbeta(z, y, math.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return 1.0 / math.exp((lo + hi) / 2)
