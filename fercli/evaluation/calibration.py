"""Calibration metrics: the numbers that say whether a probability means what it says.
Applying and fitting a temperature is fercli.model.temperature.

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

numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15
ECE_RESAMPLES = 1000  # bootstrap resamples for the ECE's 95 % interval (seeded: deterministic)
_BOOTSTRAP_DRAWS = 4_000_000  # face draws held at once by ece_interval (~100 MB)
_TINY = 1e-300  # log(0) guard for the NLL




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
