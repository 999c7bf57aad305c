"""fercli.plots: what a reader of the figures must be able to see (checked on the figure
objects, not on pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from fercli import plots  # noqa: E402


def _bins(rows: list[tuple[int, float, float]], k: int = 10) -> list[dict]:  # type: ignore[type-arg]
    out = [{"lo": b / k, "hi": (b + 1) / k, "count": 0, "accuracy": None, "confidence": None} for b in range(k)]
    for b, (count, acc, conf) in enumerate(rows, start=k - len(rows)):
        out[b].update(count=count, accuracy=acc, confidence=conf)
    return out


def test_loss_curve_of_a_two_epoch_run_has_whole_epoch_ticks_only(tmp_path: Path) -> None:
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 0.3 * e, "val_acc": 0.2 * e}
               for e in (1, 2)]
    fig = plots.loss_curve_figure(history)
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # not 1.2, 1.4, ...
    plots._plt().close(fig)
    plots.plot_loss_curve(history, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_reliability_plot_names_the_overlap_and_shows_each_bins_faces(tmp_path: Path) -> None:
    # One bin of a single face at accuracy 1 (a full-height bar), one underconfident bin (its
    # gap is drawn over the bar: the blended colour), one overconfident bin.
    before = _bins([(1, 1.0, 0.62), (40, 0.9, 0.75), (300, 0.7, 0.95)])
    after = _bins([(5, 0.8, 0.8), (336, 0.75, 0.78)])
    fig = plots.reliability_figure(before, after, "test")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "accuracy" in labels and any("inside the bar" in s for s in labels), labels
    overlap = next(h for h, s in zip(fig.axes[0].get_legend().legend_handles, labels, strict=True)
                   if "inside the bar" in s)
    assert tuple(overlap.get_facecolor()[:3]) == pytest.approx(plots._overlap_colour())
    assert any("few" in s or "<" in s for s in labels)  # the hatched bins are explained
    counts = [t.get_text() for t in fig.axes[0].texts]
    assert counts == ["1", "40", "300"]  # every bar says how many faces it rests on
    assert [t.get_text() for t in fig.axes[1].texts] == ["5", "336"]
    hatched = [p.get_hatch() for p in fig.axes[0].patches[:3]]  # the accuracy bars, in bin order
    assert hatched == ["///", None, None]  # 1 face: hatched; 40 and 300 faces (≥ 1%): plain
    plots._plt().close(fig)
    plots.plot_reliability(before, after, tmp_path / "rel.png", "test")
    assert (tmp_path / "rel.png").stat().st_size > 0
