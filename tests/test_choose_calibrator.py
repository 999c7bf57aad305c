"""devtools/release/choose_calibrator.py: the ensemble-temperature fit is the optimum it claims,
keeps every label, and the PublicTest rule can pick either candidate."""

from __future__ import annotations

import numpy as np
import pytest

from devtools.release import choose_calibrator as cc
from fercli.model.temperature import softmax


def _draw(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)  # one label per row drawn from p


def _logits(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, size=(n, 7))


def test_ets_weights_satisfy_the_optimality_conditions() -> None:
    """At the EM's w, d(mean log p_y)/dw_k = mean_i q_ik / (q_i . w) is 1 on every weight in use
    (and at most 1 on a zero weight): the KKT conditions of the simplex-constrained maximum."""
    z = _logits(4000, 0)
    p_true = 0.5 * softmax(z, 2.0) + 0.2 * softmax(z) + 0.3 / 7
    y = _draw(p_true, np.random.default_rng(1))
    t, w = cc.fit_ets(z, y)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
    rows = np.arange(len(y))
    q = np.stack([softmax(z, t)[rows, y], softmax(z)[rows, y], np.full(len(y), 1 / 7)], axis=1)
    grad = (q / (q @ w)[:, None]).mean(axis=0)
    assert np.all(np.abs(grad[w > 1e-6] - 1.0) < 1e-6)
    assert np.all(grad[w <= 1e-6] <= 1.0 + 1e-6)
    assert w[2] > 0.2  # a third of the labels are noise: the uniform part is found


def test_ets_probabilities_sum_to_one_and_keep_every_label() -> None:
    z = _logits(500, 2)
    p = cc.ets_probs(z, 1.7, np.array([0.6, 0.3, 0.1]))
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.array_equal(p.argmax(axis=1), z.argmax(axis=1))


@pytest.mark.parametrize("noise, expected", [(0.0, "temperature"), (0.4, "ets")])
def test_the_rule_picks_the_candidate_the_data_was_drawn_from(noise: float, expected: str) -> None:
    """Labels drawn from softmax(z / 2): one temperature is the truth and ETS's extra weights
    buy nothing held out; labels where 40 % are uniform noise: only the mixture can say so."""
    z = _logits(3000, 3)
    y = _draw((1 - noise) * softmax(z, 2.0) + noise / 7, np.random.default_rng(4))
    held_out = cc.cross_fit(z, y, seeds=range(3))
    assert cc.choose(held_out) == expected
    assert held_out["temperature"]["scores"] == 6


def test_a_tie_keeps_temperature() -> None:
    same = {"nll": 1.0, "nll_std": 0.0, "ece": 0.0, "ece_std": 0.0, "scores": 2}
    assert cc.choose({"temperature": same, "ets": {**same, "nll": 1.0 - cc.TIE / 2}}) == "temperature"
    assert cc.choose({"temperature": same, "ets": {**same, "nll": 1.0 - 2 * cc.TIE}}) == "ets"
