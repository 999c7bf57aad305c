"""Calibration: temperature scaling (Guo et al. 2017) and the numbers that say whether a
probability means what it says.

One scalar T > 0 divides the logits before the softmax: p = softmax(z / T). T > 1 softens
an overconfident model; the argmax (the label, and so the accuracy) cannot change because
dividing by a positive number keeps the order of each row's logits.

T is fitted by minimising the NLL on the selection split only (fercli.evaluation.calibrate
holds the guard). The NLL is convex in beta = 1/T (a log-sum-exp of lines in beta minus a
line), so its derivative in beta,

    dNLL/dbeta = mean_i ( E_{p_i}[z_i] - z_{i,y_i} ),      p_i = softmax(beta z_i),

increases with beta, and bisection on its sign (in log beta, within TEMPERATURE_BOUNDS) finds
the minimum exactly and deterministically: no learning rate, no random start.

Metrics (probabilities p (N, C), labels y (N,)):
    ECE   sum_b |B_b|/N |acc(B_b) - conf(B_b)| over 15 equal-width bins of the top-1
          probability ((0, 1/15], (1/15, 2/15], ...); MCE: the largest such gap over
          non-empty bins.
    NLL   -mean log p_{i, y_i}
    Brier mean_i sum_c (p_ic - [c == y_i])^2 (the multi-class score, 0 best, 2 worst)
    ECE 95 % interval: the 2.5th and 97.5th percentiles of the ECE over ECE_RESAMPLES
          bootstrap resamples of the faces (Efron's percentile bootstrap). An ECE moves by
          sampling alone, the more the fewer faces (a CK+ fold holds ~100), so a difference
          well inside the interval says little. Resampling adds noise to every bin, so the
          interval leans above a small ECE rather than centring on it.
    ECE of a calibrated model (consistency resampling, Broecker & Smith 2007): the median and
          95th percentile of the ECE over ECE_RESAMPLES resamples in which the faces are drawn
          as above and each label is drawn from the model's own probabilities, so the model is
          calibrated by construction. Even then the binned ECE is not 0 on a finite split; an
          ECE above the 95th percentile is miscalibration the split's size cannot explain.

Only numpy and torch here: the inference code (fercli.infer, fercli.export) imports
TemperatureScaled and temperature_of without pulling in datasets or training.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from fercli.errors import FerError

ECE_BINS = 15
ECE_RESAMPLES = 1000  # bootstrap resamples for the ECE's 95 % interval (seeded: deterministic)
TEMPERATURE_BOUNDS = (0.01, 100.0)  # a fit at a bound: the split cannot pin T down (calibrate.fit_record keeps T = 1)
_BISECTION_STEPS = 200  # log-beta interval of width ~9.2 halved 200 times: far below float64 spacing
_BOOTSTRAP_DRAWS = 4_000_000  # face draws held at once by ece_interval (~100 MB)
_TINY = 1e-300  # log(0) guard for the NLL


# --------------------------------------------------------------------------- applying T


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


class TemperatureScaled(nn.Module):
    """model(x) / T: the logits a calibrated model's softmax sees. Wrapping the model (not
    rescaling afterwards) makes every path apply T per view before the softmax: eager,
    TorchScript, CUDA graphs, flip and ten-crop TTA, and the ONNX graph alike."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = check_temperature(temperature)
        self.spec = getattr(model, "spec", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature  # (N, C)


# --------------------------------------------------------------------------- fitting T


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


# --------------------------------------------------------------------------- metrics


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], _TINY))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(labels, dtype=np.int64)]
    return float(np.mean(((p - onehot) ** 2).sum(axis=1)))


def _top1_bins(probs: np.ndarray, labels: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per face: top-1 probability (N,), whether it is right (N,) bool, and its bin (N,)."""
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == np.asarray(labels, dtype=np.int64)
    # ceil(conf * B) - 1: conf exactly b/B goes to bin b-1, as the half-open (lo, hi] says
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    return conf, correct, idx


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """One entry per equal-width bin of the top-1 probability: its edges, how many faces fell
    in it, their accuracy and mean confidence (None for an empty bin). Bin b holds
    confidences in (b/B, (b+1)/B]; the top-1 probability of C classes is ≥ 1/C > 0."""
    conf, correct, idx = _top1_bins(probs, labels, bins)
    out = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                    "accuracy": float(correct[m].mean()) if n else None,
                    "confidence": float(conf[m].mean()) if n else None})
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    rows = reliability_bins(probs, labels, bins)
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]) / max(n, 1))


def _resampled_eces(probs: np.ndarray, labels: np.ndarray, bins: int, resamples: int, seed: int,
                    *, draw_labels: bool) -> np.ndarray:
    """The ECE of `resamples` bootstrap resamples of the faces (resamples,): with the observed
    labels, or (draw_labels) with each resampled face's label drawn from its own probabilities.

    Per resample r, with s = N face indices drawn with replacement, bin sums replace the bin
    means: ECE_r = sum_b |sum_{i in B_b} correct_i - sum_{i in B_b} conf_i| / N, which is
    sum_b |B_b|/N |acc(B_b) - conf(B_b)| (the ece() above) with the means multiplied out. A
    label drawn from p_i is the top-1 class with probability conf_i: only that enters the ECE."""
    n = len(labels)
    conf, correct, idx = _top1_bins(probs, labels, bins)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _BOOTSTRAP_DRAWS // n))  # resamples at a time: bounded memory
    eces = []
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(r, n))  # (r, N) face indices
        c = conf[draws]  # (r, N)
        ok = rng.random((r, n)) < c if draw_labels else correct[draws]  # (r, N) top-1 right?
        offset = (np.arange(r)[:, None] * bins + idx[draws]).ravel()  # (r*N,) bin of each draw, per resample
        gap = np.bincount(offset, weights=(ok - c).ravel(), minlength=r * bins)  # (r*bins,)
        eces.append(np.abs(gap.reshape(r, bins)).sum(axis=1) / n)  # (r,)
    return np.concatenate(eces)


def ece_interval(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS,
                 resamples: int = ECE_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval (lo, hi) of the ECE of probabilities (N, C)."""
    if len(labels) == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(_resampled_eces(probs, labels, bins, resamples, seed, draw_labels=False), [2.5, 97.5])
    return (float(lo), float(hi))


def ece_if_calibrated(probs: np.ndarray, bins: int = ECE_BINS, resamples: int = ECE_RESAMPLES,
                      seed: int = 0) -> tuple[float, float]:
    """(median, 95th percentile) of the ECE that a model calibrated by construction, with these
    probabilities (N, C) on N faces, would show: consistency resampling (module docstring)."""
    p = np.asarray(probs, dtype=np.float64)
    if len(p) == 0:
        return (float("nan"), float("nan"))
    labels = p.argmax(axis=1)  # unused when labels are drawn; gives _top1_bins its shape
    mid, p95 = np.percentile(_resampled_eces(p, labels, bins, resamples, seed, draw_labels=True), [50, 95])
    return (float(mid), float(p95))


def mce(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    gaps = [abs(r["accuracy"] - r["confidence"]) for r in reliability_bins(probs, labels, bins) if r["count"]]
    return float(max(gaps, default=0.0))


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE (with its 95 % bootstrap interval and the median and 95th percentile a calibrated
    model would show on as many faces), MCE, NLL, Brier, accuracy and mean top-1
    probability of probabilities (N, C)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return {"ece": ece(p, y, bins), "ece_ci95": list(ece_interval(p, y, bins)),
            "ece_if_calibrated": list(ece_if_calibrated(p, bins)), "mce": mce(p, y, bins),
            "nll": nll(p, y), "brier": brier(p, y),
            "accuracy": float(np.mean(p.argmax(axis=1) == y)) if len(y) else float("nan"),
            "mean_confidence": float(p.max(axis=1).mean()) if len(y) else float("nan"),
            "bins": bins, "num_samples": int(len(y))}
