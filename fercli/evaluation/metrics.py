"""Classification metrics in the layout of the paper's Tables 1–2 (scikit-learn based)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Rows of the confusion matrix are true classes, columns predicted (Fig. 9's layout).
    Every class appears even when it has no samples, so tables line up across folds.
    """
    labels = list(range(len(classes)))
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "num_samples": int(y_true.size),
        "accuracy": float(np.mean(y_true == y_pred)) if y_true.size else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


def aggregate_folds(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std (population std over folds) of accuracy and macro-F1, and the mean accuracy
    on the selection folds (fold K+1 chose fold K's checkpoint): the figure to choose recipes
    by, None unless every fold recorded it."""
    acc = np.array([m["accuracy"] for m in fold_metrics])
    f1 = np.array([m["macro_f1"] for m in fold_metrics])
    sel = [m.get("selection_accuracy") for m in fold_metrics]
    return {
        "folds": len(fold_metrics),
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std()),
        "macro_f1_mean": float(f1.mean()),
        "macro_f1_std": float(f1.std()),
        "selection_accuracy_mean": None if None in sel else float(np.mean(sel)),
    }
