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


def loss_curve_figure(history: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """The loss and accuracy panels of a run's history (epochs on whole-number ticks only)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    ax_l.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_l.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax_l.set_ylabel("cross-entropy loss")
    ax_a.plot(epochs, [100 * h["train_acc"] for h in history], label="train")
    ax_a.plot(epochs, [100 * h["val_acc"] for h in history], label="validation")
    ax_a.set_ylabel("accuracy (%)")
    for ax in (ax_l, ax_a):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a 2-epoch run: 1, 2 (not 1.2, 1.4)
        ax.legend()
    fig.suptitle("Training curves (cf. paper Fig. 10)")
    fig.tight_layout()
    return fig


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    _save(loss_curve_figure(history), path)


def _save(fig: Any, path: Path) -> None:
    with atomic_save(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _plt().close(fig)


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


ACCURACY_COLOUR, GAP_COLOUR, GAP_ALPHA = "#4c72b0", "#dd8452", 0.45
FEW_FACES = 10  # a bin of fewer faces (or under 1% of them) is hatched: its bar rests on little


def _overlap_colour() -> tuple[float, float, float]:
    """What the translucent gap looks like drawn over the accuracy bar (a bin whose accuracy
    exceeds its mean confidence): the one blend of the two colours, for the legend."""
    from matplotlib.colors import to_rgb

    gap, acc = to_rgb(GAP_COLOUR), to_rgb(ACCURACY_COLOUR)
    return tuple(GAP_ALPHA * g + (1 - GAP_ALPHA) * a for g, a in zip(gap, acc, strict=True))  # type: ignore[return-value]


def _reliability_panel(ax: Any, bins: list[dict[str, Any]], name: str) -> None:
    width = bins[0]["hi"] - bins[0]["lo"]
    full = [b for b in bins if b["count"]]
    n = sum(b["count"] for b in full)
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in full) / max(n, 1)
    lows = [b["lo"] for b in full]
    bars = ax.bar(lows, [b["accuracy"] for b in full], width=width, align="edge",
                  color=ACCURACY_COLOUR, edgecolor="white")
    ax.bar(lows, [b["confidence"] - b["accuracy"] for b in full], width=width, bottom=[b["accuracy"] for b in full],
           align="edge", color=GAP_COLOUR, alpha=GAP_ALPHA, edgecolor=GAP_COLOUR)
    few = max(FEW_FACES, 0.01 * n)
    for bar, b in zip(bars, full, strict=True):
        if b["count"] < few:
            bar.set_hatch("///")
        # Each bar's face count above it: a full-height bar of one face says so.
        ax.text(b["lo"] + width / 2, max(b["accuracy"], b["confidence"]) + 0.015, str(b["count"]),
                ha="center", va="bottom", fontsize=7, rotation=90, color="#333333")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.13)  # room for the counts above a bar of accuracy 1
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_title(f"{name}: ECE {100 * ece:.2f}% ({len(bins)} bins, n={n})")


def reliability_figure(before: list[dict[str, Any]], after: list[dict[str, Any]], title: str):  # type: ignore[no-untyped-def]
    """Two panels (before / after T): per equal-width confidence bin (calibration.reliability_bins),
    the accuracy as a bar beside the diagonal a calibrated model follows, the gap to the bin's
    mean confidence shaded (over the bar where accuracy exceeds confidence), the bin's face
    count above it and bins of few faces hatched; each panel's title gives its ECE."""
    from matplotlib.patches import Patch

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    for ax, bins, name in ((axes[0], before, "before T"), (axes[1], after, "after T")):
        _reliability_panel(ax, bins, name)
    axes[0].set_ylabel("accuracy")
    handles = [
        Patch(facecolor=ACCURACY_COLOUR, edgecolor="white", label="accuracy"),
        Patch(facecolor=GAP_COLOUR, alpha=GAP_ALPHA, edgecolor=GAP_COLOUR,
              label="gap to mean confidence (above: overconfident)"),
        Patch(facecolor=_overlap_colour(), edgecolor=GAP_COLOUR, label="gap inside the bar (underconfident)"),
        Patch(facecolor="white", edgecolor="#333333", hatch="///", label=f"bin of < {FEW_FACES} faces or < 1%"),
        plt.Line2D([0, 1], [0, 1], color="k", linestyle="--", linewidth=1, label="calibrated"),
    ]
    axes[0].legend(handles=handles, loc="upper left", fontsize=7, title="number above a bar: its faces",
                   title_fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reliability(before: list[dict[str, Any]], after: list[dict[str, Any]], path: Path, title: str) -> None:
    _save(reliability_figure(before, after, title), path)
