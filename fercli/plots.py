"""PNG figures: the loss curve (paper Fig. 10), the confusion matrix (Fig. 9), the
reliability diagram (calibration before and after temperature scaling) and the
emotions-over-time chart of a video (`fer predict clip.mp4 --plot`, fercli.plot_emotions).

matplotlib with the Agg backend, written atomically. Imported lazily by callers because
matplotlib costs ~0.5 s to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fercli.errors import FerError
from fercli.files import atomic_save


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    ax_l.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_l.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("cross-entropy loss")
    ax_l.legend()
    ax_a.plot(epochs, [100 * h["train_acc"] for h in history], label="train")
    ax_a.plot(epochs, [100 * h["val_acc"] for h in history], label="validation")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("accuracy (%)")
    ax_a.legend()
    fig.suptitle("Training curves (cf. paper Fig. 10)")
    fig.tight_layout()
    with atomic_save(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import numpy as np

    plt = _plt()
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # row-normalised: recall per class
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center",
                    fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_save(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def plot_emotions(timeline: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Emotions over time: one line per class, the probability averaged over the faces
    (tracks) seen at each analysed frame, against time_s. `timeline` is the DataFrame of
    Recognizer.predict_video / `fer predict clip.mp4 --csv` (columns time_s and p_<class>).
    A timeline without faces gives a chart that says so. Written atomically."""
    cols = [c for c in getattr(timeline, "columns", []) if str(c).startswith("p_")]
    if "time_s" not in getattr(timeline, "columns", []) or not cols:
        raise FerError("plot_emotions needs a video timeline (columns time_s and p_<class>), "
                       "as Recognizer.predict_video returns")
    path = Path(path)
    mean = timeline.groupby("time_s")[cols].mean().sort_index()  # (frames, classes)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    for c in cols:
        ax.plot(mean.index, mean[c], label=c[2:], marker="." if len(mean) < 30 else None)
    if len(mean) == 0:
        ax.text(0.5, 0.5, "no face found", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax.set_title(title or "emotions over time")
    fig.tight_layout()
    with atomic_save(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def plot_reliability(before: list[dict[str, Any]], after: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels (before / after T): per equal-width confidence bin (calibration.reliability_bins),
    the accuracy as a bar beside the diagonal a calibrated model follows, the gap to the bin's
    mean confidence shaded; each panel's title gives its ECE."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    for ax, bins, name in ((axes[0], before, "before T"), (axes[1], after, "after T")):
        width = bins[0]["hi"] - bins[0]["lo"]
        full = [b for b in bins if b["count"]]
        n = sum(b["count"] for b in full)
        ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in full) / max(n, 1)
        ax.bar([b["lo"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
               color="#4c72b0", edgecolor="white", label="accuracy")
        ax.bar([b["lo"] for b in full], [b["confidence"] - b["accuracy"] for b in full], width=width,
               bottom=[b["accuracy"] for b in full], align="edge", color="#dd8452", alpha=0.45,
               edgecolor="#dd8452", label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
        for b in full:
            ax.text(b["lo"] + width / 2, 0.01, str(b["count"]), ha="center", va="bottom", fontsize=6,
                    rotation=90, color="white")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(f"{name}: ECE {100 * ece:.2f}% ({len(bins)} bins, n={n})")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_save(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
